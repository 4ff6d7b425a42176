"""Migration benchmark: every step against the copy ceiling, at several corpus sizes.

Run from the repository root (PostgreSQL admin DSN from $BENCH_ADMIN_DSN, default
postgresql://postgres@127.0.0.1:5432/postgres):

    .venv/bin/python -m benchmarks.run [--sizes 10000,50000,100000] [--skip-dagster]
                                       [--dagster-sizes 10000,100000] [--api-prefix 10000]
                                       [--profile-import 50000] [--scale-out]
                                       [--steps copy_ceiling,migrate] [--ui-sizes 1000000]
                                       [--sync-changed-threads 88]
                                       [--out benchmarks/results/latest.json]
    .venv/bin/python -m benchmarks.run --smoke --out /tmp/smoke.json   # ~300 checkpoints

For each size, in this one run on this machine:

- ``copy_ceiling``: binary COPY (``copy.set_types``) of the SQLite rows exactly as they are
  (checkpoints and writes, same columns, with primary keys) into a fresh database;
- ``api_loop``: the official-API loop, ``PostgresSaver.put`` for every tuple of
  ``SqliteSaver.list(None)`` plus ``put_writes`` per task of its pending writes, into a fresh
  database after ``setup()``; on large corpora measured on the first ``--api-prefix``
  checkpoints and extrapolated linearly (labelled ``extrapolated`` in the JSON);
- ``export`` (``write_export``), ``import`` (``import_export`` into a fresh database),
  ``verify`` (``verify_migration`` with the source and the default read-back sample);
- ``migrate``: ``checkpoint-assets migrate`` end to end through the console script, with a
  fresh DAGSTER_HOME and a fresh target database;
- ``rollback`` (after ``migrate``, from the database it loaded): ``checkpoint-assets
  rollback --to NEW.sqlite`` end to end through the console script (export from
  PostgreSQL, restore, verification), with its ratio to ``migrate``;
- with ``--scale-out``: the import again with 1, 2 and 4 concurrent batch loader processes
  (``import_N_loaders``), each into a fresh database;
- ``dagster_ui`` (for --ui-sizes, default the largest): against the Dagster instance
  ``migrate`` left, the wall time of ``checkpoint-assets checks`` and of the GraphQL query
  the batches asset's partitions page makes to ``dagster dev``; ``migrate`` also reports
  the disk its export and caches take against the SQLite file;
- ``sync`` (after ``migrate``, on a private copy of the corpus): the application changes 1%
  of the threads (new turns, resumed interrupts, interrupt writes replaced in place), adds 20
  threads and deletes 0.2% (untimed, ``sync_change``); then ``checkpoint-assets sync
  --propagate-deletes`` (console script, its peak RSS) and ``checkpoint-assets cutover``:
  it syncs and verifies every thread while the application makes a last change (a fifth
  of the first) and stops, then waits for quiet; the ``cutover`` figure is the window the
  command prints (the last write it saw -> quiet -> final sync -> every thread proven
  equal, the batches unchanged since the first verification taken over by their row
  versions; before issue 21 it started at quiet), each also as a ratio to the ``migrate``
  time;
- ``dagster_backfill`` (not with --skip-dagster; only for --dagster-sizes): every batch
  partition as a backfill through ``dagster dev``, next to the same partitions loaded
  in-process (benchmarks/backfill_paths.py's machinery);
- ``live`` (issue 23; e.g. ``--sizes 100000,1000000 --steps live``): benchmarks/live_sync.py
  on a private copy of the corpus: a sync with nothing changed, after 50 threads changed,
  after 45 changed and 5 deleted; the application's request latency idle and while syncs
  run; the cutover window under a steady writer. Its targets are in the table with the
  others;
- ``fleet`` (issue 24; e.g. ``--sizes 1000000 --steps migrate,fleet``): the corpus cut
  into ``--fleet-sources`` SQLite files (default 200, whole threads; benchmarks/fleet.py)
  and migrated at once (``migrate --source DIR``), against the one file's ``migrate`` of
  the same run; then the partitions page's GraphQL query against the home it left.

Every step runs in a fresh subprocess, so its peak RSS is its own: the step process's
high-water mark (VmHWM: interpreter and imports included) or, for steps that start another
program (migrate, dagster dev), the largest VmHWM among that program's processes (sampled).
Not ``ru_maxrss``: on Linux it carries the parent's high-water mark across vfork + exec. Seconds
are measured inside the step process around the work itself, except for ``migrate`` (around
the console script: process start, imports and Dagster instance included). Corpora are
generated once with ``build_scaled_corpus`` and cached in benchmarks/.cache/; sizes above
100K (e.g. ``--sizes 100000,1000000 --steps copy_ceiling,migrate,dagster_ui``) clone the
100K corpus's threads under new thread ids (SQLite INSERT .. SELECT, a few minutes). Every database
is created with a unique name and dropped afterwards. Results go to --out (mode 0600).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import io
import json
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.fleet import DEFAULT_SOURCES as DEFAULT_FLEET_SOURCES
from benchmarks.fleet import ensure_fleet, fleet_targets, step_fleet
from checkpoint_assets.engine.core.private_files import write_private_json

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "latest.json"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CHECKPOINTS_PER_THREAD = 11.4  # build_scaled_corpus: 12 per thread, 7 for every eighth
SMOKE_SIZE = 300
CLONE_BASE_SIZE = 100_000  # larger corpora are this one's threads copied under new ids
RESULT_MARK = "BENCH_RESULT "

STEPS = ("copy_ceiling", "api_loop", "export", "import", "verify", "migrate", "sync",
         "rollback", "dagster_ui", "dagster_backfill", "live", "fleet")
SMOKE_STEPS = tuple(s for s in STEPS
                    if s not in ("dagster_ui", "dagster_backfill", "live", "fleet"))
# Results of the sync step besides its own: the cutover window (see step_cutover).
SYNC_RESULTS = ("sync", "cutover")
SYNC_CHANGED_FRACTION, SYNC_NEW_THREADS = 0.01, 20
# Timings of a different kind (not a pass over the corpus): no ratio to the copy ceiling.
NOT_CORPUS_STEPS = ("profile_import", "dagster_ui", "live")

# The targets.
IMPORT_MAX_X_CEILING = 3.0
MIGRATE_MAX_X_CEILING = 8.0
# Issue 12, goal 1: migrate (export, load, checks, verification) >= 5x faster than the
# official per-checkpoint loop (which only loads), import >= 20x.
MIN_X_FASTER_THAN_API = {"migrate": 5.0, "import": 20.0}
MAX_RSS_MB = 1024.0
# Issue 15: the way back, after a migrate in the same run.
ROLLBACK_MAX_X_MIGRATE = 2.0
SYNC_MAX_X_MIGRATE = 0.10
CUTOVER_MAX_X_MIGRATE = 0.25
SYNC_MAX_SPREAD = 1.5
MAX_RSS_GROWTH = 0.20          # between the two largest sizes (50K -> 100K)
DAGSTER_MAX_X_IN_PROCESS = 3.0
# How much the seconds per 1K checkpoints may grow from the 100K size (or the smallest, if
# 100K is not in the run) to the largest for the run to count as linear.
MAX_PER_1K_GROWTH = 0.20
MAX_DISK_X_SQLITE = 1.5
MAX_CHECKS_SECONDS = 2.0
MAX_PAGE_QUERY_SECONDS = 3.0


# --------------------------------------------------------------------------- corpora


def threads_for(size: int) -> int:
    """Threads of build_scaled_corpus that give about ``size`` checkpoints."""
    return max(1, round(size / CHECKPOINTS_PER_THREAD))


def ensure_corpus(size: int, directory: Path) -> Path:
    """The cached corpus of about ``size`` checkpoints, generated (atomically) if missing;
    sizes above CLONE_BASE_SIZE are clones of that corpus (ensure_cloned_corpus)."""
    from checkpoint_assets_tests.corpus_graphs import build_scaled_corpus

    if size > CLONE_BASE_SIZE:
        return ensure_cloned_corpus(size, directory)
    threads = threads_for(size)
    path = directory / f"scaled-{threads}-seed0.sqlite"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    print(f"generating a corpus of ~{size} checkpoints ({threads} threads) -> {path}",
          flush=True)
    build_scaled_corpus(partial, threads=threads, seed=0)
    os.replace(partial, path)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def ensure_cloned_corpus(size: int, directory: Path) -> Path:
    """The cached corpus of about ``size`` (> CLONE_BASE_SIZE) checkpoints: the
    CLONE_BASE_SIZE corpus's threads, copied under new thread ids (``<id>-c1``, ...) with
    SQLite's own INSERT .. SELECT, so a million checkpoints take minutes, not an hour of
    running the graph. Content is the base corpus's, byte for byte, per copy."""
    base = ensure_corpus(CLONE_BASE_SIZE, directory)
    copies = max(2, round(size / CLONE_BASE_SIZE))
    path = directory / f"cloned-{copies}x-{base.name}"
    if path.exists():
        return path
    partial = path.with_name(f".{path.name}.partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"),
                     Path(f"{partial}-journal")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    print(f"cloning {base.name} {copies} times -> {path}", flush=True)
    with _read_only(base) as conn:
        conn.execute("VACUUM INTO ?", (str(partial),))  # copy 0: the base as it is
    conn = sqlite3.connect(partial)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("ATTACH DATABASE ? AS base", (f"file:{base}?mode=ro",))
        for table in ("checkpoints", "writes"):
            columns = [row[1] for row in conn.execute(f"PRAGMA base.table_info({table})")]
            others = ", ".join(c for c in columns if c != "thread_id")
            for copy in range(1, copies):
                conn.execute(f"INSERT INTO main.{table} (thread_id, {others}) "
                             f"SELECT thread_id || ?, {others} FROM base.{table}",
                             (f"-c{copy}",))
                conn.commit()
        # As SqliteSaver leaves its databases (and as read-only readers such as the API
        # loop's SqliteSaver.setup() expect them): in WAL mode.
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    os.replace(partial, path)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def corpus_info(path: Path) -> dict[str, Any]:
    """Rows and bytes of a corpus, read straight from SQLite."""
    with _read_only(path) as conn:
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("checkpoints", "writes")}
        threads = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
    return {"path": str(path), "threads": threads, "checkpoints": counts["checkpoints"],
            "writes": counts["writes"], "bytes": path.stat().st_size}


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- databases


@contextmanager
def fresh_database(admin_dsn: str, label: str) -> Iterator[str]:
    """A new, empty database with a unique name; dropped afterwards whatever happens."""
    from checkpoint_assets.embedded_postgres import temporary_database

    with temporary_database(admin_dsn, f"ca_bench_{label}") as dsn:
        yield dsn


# --------------------------------------------------------------------------- code snapshot

SNAPSHOT_PACKAGES = ("checkpoint_assets", "checkpoint_assets_tests", "benchmarks")
SNAPSHOT_FILES = ("pyproject.toml", "workspace.yaml")


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Copy the code every step runs into ``dest`` and describe it.

    The working tree may be edited while the benchmark runs (several engineers share it);
    every step process imports from this copy (PYTHONPATH and cwd), so one run measures one
    version of the code. Returns the git commit, whether the tree differed from it, and a
    SHA-256 over the copied package sources.
    """
    ignore = shutil.ignore_patterns("__pycache__", ".cache", "results", "*.pyc")
    for name in SNAPSHOT_PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in SNAPSHOT_FILES:
        shutil.copyfile(REPO / name, dest / name)
    digest = hashlib.sha256()
    for path in sorted((dest / "checkpoint_assets").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {"git_commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "checkpoint_assets"),
            "checkpoint_assets_sha256": digest.hexdigest(), "snapshot": str(dest)}


# --------------------------------------------------------------------------- steps
# Each step function runs inside its own worker process (see run_worker) and returns a dict
# with at least "seconds"; worker_main adds the peak RSS and CPU seconds.


COPY_TABLES = {
    "checkpoints": (
        ("CREATE TABLE checkpoints (thread_id text NOT NULL, checkpoint_ns text NOT NULL "
         "DEFAULT '', checkpoint_id text NOT NULL, parent_checkpoint_id text, type text, "
         "checkpoint bytea, metadata bytea, "
         "PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))"),
        ("thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type",
         "checkpoint", "metadata"),
        ("text", "text", "text", "text", "text", "bytea", "bytea"),
    ),
    "writes": (
        ("CREATE TABLE writes (thread_id text NOT NULL, checkpoint_ns text NOT NULL DEFAULT "
         "'', checkpoint_id text NOT NULL, task_id text NOT NULL, task_path text NOT NULL "
         "DEFAULT '', idx integer NOT NULL, channel text NOT NULL, type text, value bytea, "
         "PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx))"),
        ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "task_path", "idx",
         "channel", "type", "value"),
        ("text", "text", "text", "text", "text", "int4", "text", "text", "bytea"),
    ),
}


def step_copy_ceiling(source: str, dsn: str) -> dict[str, Any]:
    """Binary COPY of the SQLite rows as they are into tables of the same shape."""
    rows: dict[str, int] = {}
    with psycopg.connect(dsn) as pg, _read_only(Path(source)) as lite:
        for ddl, _, _ in COPY_TABLES.values():
            pg.execute(ddl)
        pg.commit()
        started = time.perf_counter()
        for table, (_, columns, types) in COPY_TABLES.items():
            names = sql.SQL(", ").join(map(sql.Identifier, columns))
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table), names)
            count = 0
            with pg.cursor().copy(statement) as copy:
                copy.set_types(list(types))
                for row in lite.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                    copy.write_row(row)
                    count += 1
            rows[table] = count
        pg.commit()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "checkpoints": rows["checkpoints"], "writes": rows["writes"]}


def step_api_loop(source: str, dsn: str, limit: int | None) -> dict[str, Any]:
    """PostgresSaver.put + put_writes for every SqliteSaver.list(None) tuple (or a prefix)."""
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.sqlite import SqliteSaver

    checkpoints = writes = 0
    first_tuple_seconds = 0.0
    with _read_only(Path(source)) as lite, PostgresSaver.from_conn_string(dsn) as saver:
        saver.setup()
        sqlite_saver = SqliteSaver(lite)
        started = time.perf_counter()
        for item in sqlite_saver.list(None):
            if checkpoints == 0:
                first_tuple_seconds = time.perf_counter() - started
            if limit is not None and checkpoints >= limit:
                break
            configurable = {"thread_id": item.config["configurable"]["thread_id"],
                            "checkpoint_ns": item.config["configurable"]["checkpoint_ns"]}
            if item.parent_config:
                configurable["checkpoint_id"] = item.parent_config["configurable"][
                    "checkpoint_id"]
            saved = saver.put({"configurable": configurable}, item.checkpoint, item.metadata,
                              item.checkpoint["channel_versions"])
            by_task: dict[str, list[tuple[str, Any]]] = defaultdict(list)
            for task_id, channel, value in item.pending_writes or []:
                by_task[task_id].append((channel, value))
            for task_id, task_writes in by_task.items():
                saver.put_writes(saved, task_writes, task_id, "")
                writes += len(task_writes)
            checkpoints += 1
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "checkpoints": checkpoints, "writes": writes,
            "first_tuple_seconds": first_tuple_seconds}


def step_export(source: str, export: str) -> dict[str, Any]:
    """write_export of the whole corpus."""
    from checkpoint_assets.engine.export.writer import write_export

    started = time.perf_counter()
    manifest = write_export(source, export)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "checkpoints": manifest.checkpoints, "writes": manifest.writes,
            "batches": len(manifest.batches), "export_bytes": manifest.size_bytes}


def step_import(export: str, dsn: str, workers: int | None = None) -> dict[str, Any]:
    """read_manifest + import_export into an empty database, with ``workers`` concurrent
    batch loader processes (None: what ``checkpoint-assets import`` chooses)."""
    from checkpoint_assets.engine.core.workers import workers_for
    from checkpoint_assets.engine.export.reader import read_manifest
    from checkpoint_assets.engine.load.pipeline import import_export
    from checkpoint_assets.engine.load.target import Target

    started = time.perf_counter()
    manifest = read_manifest(export)
    workers = workers or workers_for(manifest)
    summary = import_export(manifest, Target(dsn), workers=workers)
    seconds = time.perf_counter() - started
    rows = {r["table"]: r["imported"] for r in summary.table_rows()}
    return {"seconds": seconds, "checkpoints": rows["checkpoints"],
            "writes": rows["checkpoint_writes"], "blobs": rows["checkpoint_blobs"],
            "batches": len(summary.batches), "workers": workers}


def step_profile_import(export: str, dsn: str) -> dict[str, Any]:
    """The import under cProfile (not a timing): the top functions by own time."""
    from checkpoint_assets.engine.export.reader import read_manifest
    from checkpoint_assets.engine.load.pipeline import import_export
    from checkpoint_assets.engine.load.target import Target

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    import_export(read_manifest(export), Target(dsn))
    profiler.disable()
    seconds = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    top = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in sorted(
            raw.items(), key=lambda kv: kv[1][2], reverse=True)[:15]:
        top.append({"function": f"{_short(file)}:{line}({name})", "calls": calls,
                    "tottime": round(tottime, 3), "cumtime": round(cumtime, 3)})
    total: float = stats.total_tt  # type: ignore[attr-defined]
    return {"seconds": seconds, "total_tottime": round(total, 3), "top_by_tottime": top,
            "pstats_text": text.getvalue()}


def _short(file: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def step_verify(source: str, export: str, dsn: str) -> dict[str, Any]:
    """verify_migration with the source and the default read-back sample."""
    from checkpoint_assets.engine.export.reader import read_manifest
    from checkpoint_assets.engine.load.target import Target
    from checkpoint_assets.engine.verify.migration import verify_migration

    started = time.perf_counter()
    manifest = read_manifest(export)
    report = verify_migration(manifest, Target(dsn), source_path=source)
    seconds = time.perf_counter() - started
    if not report.passed:
        failed = [name for name, check in report.checks.items() if not check.passed]
        raise RuntimeError(f"verification failed: {failed}")
    return {"seconds": seconds, "checkpoints": manifest.checkpoints, "writes": manifest.writes,
            "checks_passed": len(report.checks)}


def console_env(dsn: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any CHECKPOINT_ASSETS_ setting, plus the target DSN (if
    given) and ``extra``."""
    from checkpoint_assets.settings import TARGET_DSN_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS_")}
    return {**env, **({TARGET_DSN_ENV: dsn} if dsn else {}), **(extra or {})}


def console_script() -> Path:
    """The checkpoint-assets console script of this interpreter's environment."""
    return Path(sys.executable).with_name("checkpoint-assets")


def run_console_script(work: Path, dsn: str, arguments: list[str],
                       env_extra: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """Run ``checkpoint-assets <arguments> --report FILE`` in ``work`` with the target DSN
    and no other CHECKPOINT_ASSETS_ variable; (wall seconds, its JSON report). Raises with
    the end of its output when it fails."""
    command_name = arguments[0]
    report = work / f"{command_name}-report.json"
    env, script = console_env(dsn, env_extra), console_script()
    log = work / f"{command_name}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        status = subprocess.run([str(script), *arguments, "--report", str(report)], cwd=work,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                check=False).returncode
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{command_name} exited {status}: {log.read_text()[-3000:]}")
    return seconds, json.loads(report.read_text())


def step_migrate(source: str, dsn: str, workdir: str) -> dict[str, Any]:
    """``checkpoint-assets migrate`` via the console script: fresh DAGSTER_HOME and target."""
    work = Path(workdir)
    seconds, result = run_console_script(
        work, dsn, ["migrate", "--source", source, "--export", str(work / "run.export")],
        {"DAGSTER_HOME": str(work / "dagster_home")})
    disk = disk_use(Path(source), work)
    runs = result["runs"]
    batches = [r for r in runs if r["step"] == "batch"]
    in_process = result["seconds"]
    breakdown = migrate_breakdown(seconds, in_process, runs)
    with _read_only(Path(source)) as lite:
        checkpoints = lite.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    return {"seconds": seconds, "checkpoints": checkpoints, "batch_runs": len(batches),
            "in_process_seconds": in_process, "breakdown_seconds": breakdown,
            "all_checks_passed": result["ok"], "disk": disk,
            "batch_seconds_by_tenth": batch_seconds_by_tenth(batches)}


def step_sync_change(source: str, changed_threads: int | None = None,
                     seed: int = 1) -> dict[str, Any]:
    """The application writes to the migrated source (benchmarks/live_changes.py): 1% of
    the threads (or ``changed_threads``) get a new turn, a resume or a replaced interrupt
    write; 20 new threads; 0.2% deleted (or a fifth of ``changed_threads``)."""
    from benchmarks.live_changes import apply_live_changes

    started = time.perf_counter()
    changed = _changed_threads(source, changed_threads)
    deleted = max(1, round(changed / 5))  # 0.2% of the threads when 1% change
    change = apply_live_changes(source, changed=changed, added=SYNC_NEW_THREADS,
                                deleted=deleted, seed=seed)
    return {"seconds": time.perf_counter() - started,
            **{kind: len(getattr(change, kind)) for kind in (
                "new_turns", "resumed", "replaced_writes", "added", "deleted")},
            "changed_threads": change.changed_threads()}


def _changed_threads(source: str, changed_threads: int | None) -> int:
    """Threads a change touches: ``changed_threads``, or 1% of the source's threads."""
    from benchmarks.live_changes import corpus_thread_ids

    return changed_threads or max(3, round(len(corpus_thread_ids(source))
                                           * SYNC_CHANGED_FRACTION))


def step_sync(source: str, export: str, dsn: str) -> dict[str, Any]:
    """``checkpoint-assets sync --propagate-deletes`` via the console script: what changed
    since the migrate's export, applied to its target (process start included)."""
    work = Path(export).parent
    seconds, report = run_console_script(
        work, dsn, ["sync", "--source", source, "--export", export, "--propagate-deletes"])
    return {"seconds": seconds, "in_process_seconds": report["seconds"],
            "added": len(report["added"]), "changed": len(report["changed"]),
            "deleted": len(report["deleted"]), "threads_read": report["threads_read"],
            "read_every_thread": report["read_every_thread"], "rows": report["rows"]}


CUTOVER_QUIET_SECONDS = 3.0


def step_cutover(source: str, export: str, dsn: str,
                 changed_threads: int | None = None) -> dict[str, Any]:
    """``checkpoint-assets cutover --quiet-seconds 3`` via the console script, with the
    application still writing when it starts: after the cutover's catch-up sync, while it
    verifies every thread, the application makes a last change (a fifth of the sync's) and
    stops; the cutover then waits for 3 quiet seconds. The window is the cutover's own figure:
    the last write it saw -> quiet -> final sync of that change -> every thread proven
    equal."""
    # Imported before the clock: the change must start while the cutover still verifies.
    import benchmarks.live_changes  # noqa: F401
    from checkpoint_assets.engine.operations.live import FIRST_VERIFICATION_MESSAGE

    work = Path(export).parent
    report_path = work / "cutover-report.json"
    log = work / "cutover.log"
    env, script = console_env(dsn), console_script()
    last_change_threads = max(5, _changed_threads(source, changed_threads) // 5)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(script), "cutover", "--source", source, "--export", export,
             "--propagate-deletes", "--quiet-seconds", str(CUTOVER_QUIET_SECONDS),
             "--report", str(report_path)], cwd=work, env=env, stdout=out,
            stderr=subprocess.STDOUT)
        # The last change lands after the catch-up sync, while every thread is verified.
        while process.poll() is None and \
                FIRST_VERIFICATION_MESSAGE.encode() not in log.read_bytes():
            time.sleep(0.05)
        last_change = step_sync_change(source, last_change_threads, seed=2)
        status = process.wait()
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"cutover exited {status}: {log.read_text()[-3000:]}")
    report = json.loads(report_path.read_text())
    window = float(report["window"]["cutover window"].split(" s", 1)[0])
    return {"seconds": window, "command_seconds": seconds,
            "window": report["window"], "last_change": last_change,
            "final_sync_moved": report["sync"]["moved"],
            "final_sync_seconds": report["sync"]["seconds"],
            "checkpoints": report["counts"]["export"]["checkpoints"]}


def step_rollback(dsn: str, workdir: str) -> dict[str, Any]:
    """``checkpoint-assets rollback`` via the console script, from the database ``migrate``
    just loaded into a new SQLite file (export, restore, verification end to end)."""
    work = Path(workdir)
    seconds, result = run_console_script(
        work, dsn, ["rollback", "--to", str(work / "rolled-back.sqlite")])
    return {"seconds": seconds, "checkpoints": result["counts"]["sqlite"]["checkpoints"],
            "all_checks_passed": result["ok"],
            "sqlite_bytes": (work / "rolled-back.sqlite").stat().st_size}


def batch_seconds_by_tenth(batches: list[dict[str, Any]]) -> list[float]:
    """Mean seconds per batch in each tenth of the batches, in load order: flat when a
    batch's cost does not grow with the tables."""
    seconds = [r["seconds"] for r in batches]
    tenth = max(1, len(seconds) // 10)
    return [round(sum(part) / len(part), 3) for i in range(0, len(seconds), tenth)
            if (part := seconds[i:i + tenth])]


def disk_use(source: Path, work: Path) -> dict[str, Any]:
    """Bytes the export and its caches (every file migrate left in ``work`` but the Dagster
    home, its log and report) take on disk, against the SQLite file (with -wal)."""
    def used(path: Path) -> int:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return sum(f.stat().st_blocks * 512 for f in files)

    own = {"dagster_home", "migrate.log", "migrate-report.json"}
    parts = {p.name: used(p) for p in work.iterdir() if p.name not in own}
    sqlite_bytes = sum(used(p) for p in (source, Path(f"{source}-wal")) if p.exists())
    total = sum(parts.values())
    return {"export_and_caches_bytes": total, "parts": parts, "sqlite_bytes": sqlite_bytes,
            "ratio_to_sqlite": total / sqlite_bytes if sqlite_bytes else None,
            "dagster_home_bytes": used(work / "dagster_home")}


PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
    }
  }
}
"""
UI_REPEATS = 3


def step_dagster_ui(source: str, workdir: str, fleet: str | None = None) -> dict[str, Any]:
    """Against the Dagster instance a ``migrate`` (or ``fleet``: the fleet file it wrote)
    step left in ``workdir``: the wall time of ``checkpoint-assets checks`` (a fresh
    process each time), and of the GraphQL query the batches asset's partitions page makes
    (PartitionHealthQuery, as the UI's bundle sends it) to ``dagster dev``; each
    UI_REPEATS times, the first cold."""
    from checkpoint_assets.partitions import BATCHES_ASSET
    from checkpoint_assets.settings import EXPORT_ENV, FLEET_ENV, SOURCE_ENV
    from checkpoint_assets_tests.dagster_dev_support import DagsterDev

    work = Path(workdir)
    place = {FLEET_ENV: fleet} if fleet else {SOURCE_ENV: source,
                                              EXPORT_ENV: str(work / "run.export")}
    env = console_env(None, {"DAGSTER_HOME": str(work / "dagster_home"), **place})
    script = console_script()
    checks = []
    for _ in range(UI_REPEATS):
        started = time.perf_counter()
        done = subprocess.run([str(script), "checks"], cwd=work, env=env, capture_output=True,
                              text=True, check=False)
        checks.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"checks exited {done.returncode}: {done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
    dev = DagsterDev(work, env, work / "dagster-dev.log")
    queries = []
    try:
        dev.wait_until_serving()
        for _ in range(UI_REPEATS):
            started = time.perf_counter()
            data = dev.gql(PARTITION_HEALTH_QUERY,
                           {"assetKey": {"path": list(BATCHES_ASSET.path)}})
            queries.append(time.perf_counter() - started)
    finally:
        dev.stop()
    node = data["assetNodeOrError"]
    partitions = len(node["partitionKeysByDimension"][0]["partitionKeys"])
    materialized = len(node["assetPartitionStatuses"]["materializedPartitions"])
    return {"seconds": min(checks), "checks_seconds": checks,
            "partitions_page_query_seconds": queries, "partitions": partitions,
            "materialized_partitions": materialized,
            "checks_output_tail": done.stdout[-1500:]}


def migrate_breakdown(wall: float, in_process: float,
                      runs: list[dict[str, Any]]) -> dict[str, float]:
    """Where ``migrate``'s wall time went, from its --report runs.

    Batch runs may run in parallel worker processes, so their summed seconds can exceed
    the batch phase's wall time; the phase's wall time is what is left of the in-process
    time after the export and verification runs (it includes reading check results).
    """
    def total(step: str) -> float:
        return sum(r["seconds"] for r in runs if r["step"] == step)

    export, verification, batch_sum = total("export"), total("verification"), total("batch")
    phase = in_process - export - verification
    return {"process_start_imports_and_exit": wall - in_process, "export_run": export,
            "batch_phase_wall": phase, "batch_runs_summed": batch_sum,
            "batch_parallelism": batch_sum / phase if phase > 0 else 0.0,
            "verification_run": verification}


def step_dagster_backfill(admin_dsn: str, source: str, workdir: str,
                          batch_size: int) -> dict[str, Any]:
    """backfill_paths.py: every partition in-process, then as a ``dagster dev`` backfill."""
    from benchmarks import backfill_paths

    work = Path(workdir)
    in_process = backfill_paths.in_process(admin_dsn, work, Path(source), batch_size)
    dev = backfill_paths.through_dagster_dev(admin_dsn, work, Path(source), batch_size)
    with _read_only(Path(source)) as lite:
        checkpoints = lite.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    return {"seconds": dev["launch_to_all_runs_done"], "checkpoints": checkpoints,
            "batch_size": batch_size, "in_process": in_process, "dagster_dev": dev,
            "note": "seconds = backfill launch until every partition run finished; the export "
                    "is taken in-process beforehand and not timed (backfill_paths.py). "
                    "Peak RSS: the largest process below the step process (dagster dev, "
                    "its daemon, webserver, code server and run workers)."}


def step_live(size: int, corpus: str, admin_dsn: str) -> dict[str, Any]:
    """Live operations at this size (benchmarks/live_sync.py, in this process): syncs by
    change size, the application's latency by phase, the cutover window under a steady
    writer. ``seconds``: the 50-thread change's sync (median)."""
    from benchmarks.live_sync import measure

    result = measure(size, admin_dsn, changed=50, repeat=3, latency_seconds=45.0,
                     cutover_quiet=2.0, corpus=Path(corpus))
    return {**result, "seconds": result["changed"]["median_seconds"]}


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "copy_ceiling": step_copy_ceiling, "api_loop": step_api_loop, "export": step_export,
    "import": step_import, "profile_import": step_profile_import, "verify": step_verify,
    "migrate": step_migrate, "rollback": step_rollback, "dagster_ui": step_dagster_ui,
    "dagster_backfill": step_dagster_backfill, "sync_change": step_sync_change,
    "sync": step_sync, "cutover": step_cutover, "live": step_live, "fleet": step_fleet,
}


CHILD_PROCESS_STEPS = frozenset({"import", "migrate", "sync", "cutover", "rollback",
                                 "dagster_backfill", "fleet"})
# Scale-out: the import with this many concurrent batch loader processes (issue: 1, 2, 4).
SCALE_OUT_LOADERS = (1, 2, 4)
SAMPLE_SECONDS = 0.2


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process in MB; 0.0 if it is gone or a zombie.

    Not ``ru_maxrss``: on Linux that carries the parent's high-water mark across
    fork/vfork + exec, so every worker would report at least the orchestrator's peak.
    """
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int | str, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (by parent pid)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children[int(fields[1])].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TreeSampler(threading.Thread):
    """Polls the processes below this one: each one's VmHWM and the tree's summed RSS."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_by_pid: dict[int, tuple[float, str]] = {}
        self.peak_tree_sum_mb = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        """One pass over the tree."""
        total = 0.0
        for pid in descendants(os.getpid()):
            total += _status_kb(pid, "VmRSS") / 1024
            hwm = vm_hwm_mb(pid)
            if hwm > self.peak_by_pid.get(pid, (0.0, ""))[0]:
                self.peak_by_pid[pid] = (hwm, _command(pid))
        self.peak_tree_sum_mb = max(self.peak_tree_sum_mb, total)

    def stop(self) -> None:
        """Stop sampling (after a final pass)."""
        self._stop_event.set()
        self.join()

    def peak(self) -> tuple[float, str]:
        """The largest VmHWM seen and the command line of that process."""
        return max(self.peak_by_pid.values(), default=(0.0, ""))


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(Path(a).name if i == 0 else a
                    for i, a in enumerate(raw.decode(errors="replace").split("\0")[:4]))


def worker_main(step: str) -> None:
    """Run one step with the parameters read from stdin; print its result as JSON.

    Peak RSS: this process's VmHWM, or for steps that start other programs the largest
    VmHWM among the processes below this one (sampled every SAMPLE_SECONDS).
    """
    params = json.loads(sys.stdin.read())
    sampler = TreeSampler() if step in CHILD_PROCESS_STEPS else None
    if sampler:
        sampler.start()
    try:
        result = STEP_FUNCTIONS[step](**params)
    finally:
        if sampler:
            sampler.stop()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    import checkpoint_assets

    result.update({"code": str(Path(checkpoint_assets.__file__).parent),
                   "self_peak_rss_mb": vm_hwm_mb(),
                   "cpu_seconds_self": own.ru_utime + own.ru_stime,
                   "cpu_seconds_children": children.ru_utime + children.ru_stime})
    if sampler:
        peak, command = max(sampler.peak(), (vm_hwm_mb(), "the step process itself"))
        result.update({"peak_rss_mb": peak, "peak_rss_process": command,
                       "peak_rss_tree_sum_mb": sampler.peak_tree_sum_mb + vm_hwm_mb(),
                       "peak_rss_how": f"largest VmHWM of the step process and the processes "
                                      f"it started (sampled every {SAMPLE_SECONDS} s); the "
                                      "tree sum adds the step process's own peak"})
    else:
        result.update({"peak_rss_mb": result["self_peak_rss_mb"],
                       "peak_rss_how": "VmHWM of the step process"})
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(step: str, params: dict[str, Any], log_dir: Path,
               code: Path) -> dict[str, Any]:
    """Run ``step`` in a fresh Python process importing from ``code`` (the snapshot) and
    return its result (raises on failure)."""
    log = log_dir / f"{step}-{uuid.uuid4().hex[:6]}.log"
    load_before = os.getloadavg()
    env = {**os.environ, "PYTHONPATH": str(code)}
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--worker", step],
                              input=json.dumps(params), cwd=code, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=err, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"step {step} failed (exit {done.returncode}):\n"
                           f"{log.read_text()[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK):])
    result["load_average_1min_before_after"] = [round(load_before[0], 2),
                                                round(os.getloadavg()[0], 2)]
    return result


# --------------------------------------------------------------------------- one size


def measure_size(size: int, corpus: Path, admin: str, args: argparse.Namespace,
                 steps: tuple[str, ...], work_root: Path, code: Path) -> dict[str, Any]:
    """Every step for one corpus, each in its own process and its own fresh database."""
    info = corpus_info(corpus)
    total = info["checkpoints"]
    work = Path(tempfile.mkdtemp(prefix=f"size-{size}-", dir=work_root))
    export = str(work / "run.export")
    source = str(corpus)
    if "sync" in steps:  # the application writes to it: a private copy, migrated first
        source = str(shutil.copyfile(corpus, work / corpus.name))
    results: dict[str, dict[str, Any]] = {}

    def run(step: str, params: dict[str, Any]) -> dict[str, Any]:
        print(f"  [{size}] {step} ...", end="", flush=True)
        result = run_worker(step, params, work_root, code)
        print(f" {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
              flush=True)
        return result

    try:
        if "copy_ceiling" in steps:
            with fresh_database(admin, "copy") as dsn:
                results["copy_ceiling"] = run("copy_ceiling", {"source": source, "dsn": dsn})
        if "api_loop" in steps:
            limit = args.api_prefix if args.api_prefix and args.api_prefix < total else None
            with fresh_database(admin, "api") as dsn:
                result = run("api_loop", {"source": source, "dsn": dsn, "limit": limit})
            results["api_loop"] = extrapolate(result, total)
        if "export" in steps:
            results["export"] = run("export", {"source": source, "export": export})
        if "import" in steps:
            with fresh_database(admin, "import") as dsn:
                results["import"] = run("import", {"export": export, "dsn": dsn})
                if "verify" in steps:
                    results["verify"] = run("verify", {"source": source, "export": export,
                                                       "dsn": dsn})
        if args.scale_out and "import" in steps:
            for loaders in SCALE_OUT_LOADERS:
                with fresh_database(admin, f"loaders{loaders}") as dsn:
                    results[f"import_{loaders}_loaders"] = run(
                        "import", {"export": export, "dsn": dsn, "workers": loaders})
        if args.profile_import == size:
            with fresh_database(admin, "profile") as dsn:
                print(f"  [{size}] import under cProfile (not a timing) ...", flush=True)
                profile = run_worker("profile_import", {"export": export, "dsn": dsn},
                                     work_root, code)
                results["profile_import"] = profile
                print(profile["pstats_text"], flush=True)
        if "migrate" in steps:
            migrate_dir = Path(tempfile.mkdtemp(prefix="migrate-", dir=work))
            with fresh_database(admin, "migrate") as dsn:
                results["migrate"] = run("migrate", {"source": source, "dsn": dsn,
                                                     "workdir": str(migrate_dir)})
                if "rollback" in steps:
                    results["rollback"] = run("rollback", {"dsn": dsn,
                                                           "workdir": str(migrate_dir)})
                if "dagster_ui" in steps:
                    results["dagster_ui"] = run("dagster_ui", {"source": source,
                                                               "workdir": str(migrate_dir)})
                if "sync" in steps:
                    change = run("sync_change", {"source": source,
                                                 "changed_threads": args.sync_changed_threads})
                    chained = {"source": source, "export": str(migrate_dir / "run.export"),
                               "dsn": dsn}
                    results["sync"] = {**run("sync", chained), "change": change}
                    results["cutover"] = run("cutover", {
                        **chained, "changed_threads": args.sync_changed_threads})
                    for name in SYNC_RESULTS:
                        results[name]["ratio_to_migrate"] = (
                            results[name]["seconds"] / results["migrate"]["seconds"])
        if "fleet" in steps:
            fleet_dir = ensure_fleet(corpus, args.fleet_sources, corpus.parent)
            fleet_work = Path(tempfile.mkdtemp(prefix="fleet-", dir=work))
            with fresh_database(admin, "fleet") as dsn:
                results["fleet"] = run("fleet", {"fleet_dir": str(fleet_dir), "dsn": dsn,
                                                 "workdir": str(fleet_work)})
                results["fleet"]["ratio_to_migrate"] = (
                    results["fleet"]["seconds"] / results["migrate"]["seconds"]
                    if "migrate" in results else None)
                results["fleet"]["dagster_ui"] = run("dagster_ui", {
                    "source": source, "workdir": str(fleet_work),
                    "fleet": str(fleet_work / "exports" / "fleet.json")})
        if "live" in steps:
            results["live"] = run("live", {"size": size, "corpus": str(corpus),
                                           "admin_dsn": admin})
        if "dagster_backfill" in steps:
            dagster_dir = Path(tempfile.mkdtemp(prefix="dagster-", dir=work))
            results["dagster_backfill"] = run("dagster_backfill", {
                "admin_dsn": admin, "source": source, "workdir": str(dagster_dir),
                "batch_size": args.dagster_batch_size})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ceiling = results.get("copy_ceiling", {}).get("seconds")
    for name, result in results.items():
        if name in NOT_CORPUS_STEPS:
            continue
        result["checkpoints_per_second"] = total / result["seconds"]
        result["seconds_per_1k_checkpoints"] = result["seconds"] / total * 1000
        # CPU seconds of the step's processes: less sensitive to other work on the machine.
        cpu = result.get("cpu_seconds_self", 0.0) + result.get("cpu_seconds_children", 0.0)
        result["cpu_seconds_per_1k_checkpoints"] = cpu / total * 1000
        result["ratio_to_copy_ceiling"] = result["seconds"] / ceiling if ceiling else None
    return {"corpus": info, "steps": results}


def extrapolate(result: dict[str, Any], total: int) -> dict[str, Any]:
    """Scale a prefix measurement of the API loop linearly to the whole corpus.

    The time to the first tuple (SqliteSaver.list sorts the whole table once) is counted
    once; the per-checkpoint part is scaled by total / measured.
    """
    measured = result["checkpoints"]
    if measured >= total:
        result["extrapolated"] = False
        return result
    once = result["first_tuple_seconds"]
    per_checkpoint = (result["seconds"] - once) / measured
    result.update({
        "extrapolated": True,
        "measured_checkpoints": measured,
        "measured_seconds": result["seconds"],
        "measured_writes": result.pop("writes"),
        "seconds": once + per_checkpoint * total,
        "checkpoints": total,
        "extrapolation": f"linear: first-tuple time once + (measured - first-tuple time) "
                         f"x {total}/{measured}; peak RSS is the prefix run's",
    })
    return result


# --------------------------------------------------------------------------- targets


def in_process_batches_wall(in_process: dict[str, Any]) -> float:
    """Wall seconds of loading every batch in-process (the backfill minus its verification
    run; the per-partition seconds overlap in parallel workers, so their sum is not it)."""
    return in_process["wall_seconds_including_verification"] - in_process["verification_seconds"]


def evaluate_targets(sizes: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/MISS (or n/a) for every target of the issue, per size where it applies."""
    targets: list[dict[str, Any]] = []

    def add(name: str, size: int | str, value: float | None, limit: str,
            ok: bool | None, detail: str = "") -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        targets.append({"target": name, "size": size, "value": value, "limit": limit,
                        "status": status, "detail": detail})

    def step(size: int, name: str) -> dict[str, Any] | None:
        return sizes[size]["steps"].get(name)

    def rss(result: dict[str, Any]) -> float:
        return memory_mb(result)

    for size in sorted(sizes):
        imp, mig, api = step(size, "import"), step(size, "migrate"), step(size, "api_loop")
        if imp and imp.get("ratio_to_copy_ceiling") is not None:
            ratio = imp["ratio_to_copy_ceiling"]
            add("import <= 3x copy ceiling", size, ratio, f"<= {IMPORT_MAX_X_CEILING}",
                ratio <= IMPORT_MAX_X_CEILING)
        if mig and mig.get("ratio_to_copy_ceiling") is not None:
            ratio = mig["ratio_to_copy_ceiling"]
            add("migrate <= 8x copy ceiling", size, ratio, f"<= {MIGRATE_MAX_X_CEILING}",
                ratio <= MIGRATE_MAX_X_CEILING)
        for name, result in (("migrate", mig), ("import", imp)):
            if result and api:
                speedup, least = api["seconds"] / result["seconds"], MIN_X_FASTER_THAN_API[name]
                add(f"{name} >= {least:.0f}x faster than the API loop", size, speedup,
                    f">= {least}", speedup >= least,
                    "API loop extrapolated from a prefix" if api.get("extrapolated") else "")
        back = step(size, "rollback")
        if back and mig:
            ratio = back["seconds"] / mig["seconds"]
            add(f"rollback <= {ROLLBACK_MAX_X_MIGRATE:g}x migrate", size, ratio, f"<= {ROLLBACK_MAX_X_MIGRATE}",
                ratio <= ROLLBACK_MAX_X_MIGRATE,
                "both end to end through the console script, the rollback from the "
                "database that migrate loaded, in the same run")
        synced, cutover = step(size, "sync"), step(size, "cutover")
        if synced and mig:
            ratio = synced["seconds"] / mig["seconds"]
            add(f"sync <= {SYNC_MAX_X_MIGRATE:.0%} of migrate", size, ratio, f"<= {SYNC_MAX_X_MIGRATE}",
                ratio <= SYNC_MAX_X_MIGRATE, "console script, process start included")
        if cutover and mig:
            ratio = cutover["seconds"] / mig["seconds"]
            add(f"cutover window <= {CUTOVER_MAX_X_MIGRATE:.0%} of migrate", size, ratio,
                f"<= {CUTOVER_MAX_X_MIGRATE}", ratio <= CUTOVER_MAX_X_MIGRATE,
                "the window cutover prints: last write -> every thread proven equal")
        for name, result in (("import", imp), ("migrate", mig), ("rollback", back),
                             ("sync", synced)):
            if result:
                add(f"{name} peak RSS <= 1 GB", size, rss(result),
                    f"<= {MAX_RSS_MB:.0f} MB", rss(result) <= MAX_RSS_MB,
                    "sum over its processes" if "peak_rss_tree_sum_mb" in result else "")
        if mig and "disk" in mig:
            ratio = mig["disk"]["ratio_to_sqlite"]
            add("export and its caches <= 1.5x the SQLite file", size, ratio,
                f"<= {MAX_DISK_X_SQLITE}", ratio is not None and ratio <= MAX_DISK_X_SQLITE,
                "files migrate leaves beside the export, Dagster home not included")
        ui = step(size, "dagster_ui")
        if ui:
            checks = min(ui["checks_seconds"])
            add("`checkpoint-assets checks` <= 2 s", size, checks, f"<= {MAX_CHECKS_SECONDS}",
                checks <= MAX_CHECKS_SECONDS,
                f"{ui['partitions']} partitions; best of {len(ui['checks_seconds'])}, "
                "process start included")
            query = max(ui["partitions_page_query_seconds"])
            add("partitions page GraphQL query <= 3 s", size, query,
                f"<= {MAX_PAGE_QUERY_SECONDS}", query <= MAX_PAGE_QUERY_SECONDS,
                f"{ui['partitions']} partitions; worst of "
                f"{len(ui['partitions_page_query_seconds'])}, the first cold")
        dag = step(size, "dagster_backfill")
        if dag and mig:
            ratio = dag["seconds"] / mig["seconds"]
            add("dagster backfill <= 3x in-process migrate", size, ratio,
                f"<= {DAGSTER_MAX_X_IN_PROCESS}", ratio <= DAGSTER_MAX_X_IN_PROCESS,
                "the issue's wording: dagster dev launch -> all partition runs done, against "
                "`checkpoint-assets migrate` end to end")
        if dag:
            base = in_process_batches_wall(dag["in_process"])
            ratio = dag["seconds"] / base if base else None
            add("dagster backfill <= 3x the same batches in-process", size, ratio,
                f"<= {DAGSTER_MAX_X_IN_PROCESS}",
                None if ratio is None else ratio <= DAGSTER_MAX_X_IN_PROCESS,
                "stricter, like for like: the same partitions loaded by in-process runs "
                "(backfill_paths.py), wall time, verification excluded from both")
    ordered = sorted(sizes)
    for name in ("import", "migrate"):
        present = [s for s in ordered if step(s, name)]
        if len(present) < 2:
            add(f"{name} peak RSS within 20% between the two largest sizes", "-", None,
                f"<= {MAX_RSS_GROWTH:.0%}", None, "needs two sizes")
            add(f"{name} linear (s per 1K checkpoints)", "-", None,
                f"growth <= {MAX_PER_1K_GROWTH:.0%}", None, "needs two sizes")
            continue
        small, large = present[-2], present[-1]
        growth = rss(step(large, name)) / rss(step(small, name)) - 1
        add(f"{name} peak RSS within 20% between the two largest sizes",
            f"{small}->{large}", growth, f"<= {MAX_RSS_GROWTH:.0%}",
            abs(growth) <= MAX_RSS_GROWTH)
        first = CLONE_BASE_SIZE if CLONE_BASE_SIZE in present[:-1] else present[0]
        last = present[-1]
        per_1k = {s: step(s, name)["seconds_per_1k_checkpoints"] for s in (first, last)}
        growth = per_1k[last] / per_1k[first] - 1
        add(f"{name} linear (s per 1K checkpoints)", f"{first}->{last}", growth,
            f"growth <= {MAX_PER_1K_GROWTH:.0%}",
            growth <= MAX_PER_1K_GROWTH,
            ", ".join(f"{s}: {v:.3f} s/1K, CPU "
                      f"{step(s, name).get('cpu_seconds_per_1k_checkpoints', 0.0):.3f} s/1K"
                      for s, v in per_1k.items()))
    syncs = {size: sizes[size]["steps"]["sync"]["seconds"] for size in sorted(sizes)
             if "sync" in sizes[size]["steps"]}
    if len(syncs) >= 2:
        ratio = max(syncs.values()) / min(syncs.values())
        add("sync times within 1.5x across sizes (the same change)", "all", ratio,
            f"<= {SYNC_MAX_SPREAD}", ratio <= SYNC_MAX_SPREAD,
            "needs --sync-changed-threads N for the same change at every size")
    for size in sorted(sizes):
        fleet = step(size, "fleet")
        if fleet:
            for name, value, limit, met in fleet_targets(step(size, "migrate"), fleet,
                                                         fleet.get("dagster_ui")):
                add(name, size, value, limit, met if value is not None else None)
    live = [sizes[size]["steps"]["live"] for size in sorted(sizes)
            if "live" in sizes[size]["steps"]]
    if live:
        from benchmarks.live_sync import verdicts

        for name, verdict in verdicts(live).items():
            value = verdict.get("seconds", verdict.get("x"))
            add(f"live: {name}", verdict.get("size", "/".join(
                str(n) for n in verdict.get("sizes", ()))), value,
                f"<= {verdict['target']}", verdict["result"] == "PASS")
    return targets


# --------------------------------------------------------------------------- output


def memory_mb(result: dict[str, Any]) -> float:
    """The memory a step needs: its process's peak RSS, or for steps that start other
    programs the larger of their biggest process's peak and their summed RSS."""
    return max(result["peak_rss_mb"], result.get("peak_rss_tree_sum_mb", 0.0))


def render_table(sizes: dict[int, dict[str, Any]]) -> str:
    """Every figure: seconds, checkpoints/s, peak RSS, ratio to the ceiling, s per 1K."""
    header = (f"{'size':>7}  {'step':<17} {'seconds':>9} {'ckpt/s':>9} {'peak RSS MB':>11} "
              f"{'x ceiling':>9} {'s/1K':>7}  note")
    tree_note = "; RSS: largest process {:.0f} MB, all its processes {:.0f} MB"
    lines = [header, "-" * len(header)]
    for size in sorted(sizes):
        steps = sizes[size]["steps"]
        scale_out = [f"import_{n}_loaders" for n in SCALE_OUT_LOADERS]
        for name in (*STEPS, "cutover", *scale_out):
            r = steps.get(name)
            if r is None or name in NOT_CORPUS_STEPS:
                continue
            ratio = r.get("ratio_to_copy_ceiling")
            note = ""
            if r.get("extrapolated"):
                note = f"extrapolated from the first {r['measured_checkpoints']} checkpoints"
            if name == "dagster_backfill":
                note = (f"in-process same partitions: "
                        f"{in_process_batches_wall(r['in_process']):.1f} s wall")
            if name in SYNC_RESULTS:
                note = f"{r['ratio_to_migrate']:.3f}x the migrate"
            if "peak_rss_tree_sum_mb" in r:
                note += tree_note.format(r["peak_rss_mb"], r["peak_rss_tree_sum_mb"])
            lines.append(
                f"{size:>7}  {name:<17} {r['seconds']:>9.2f} {r['checkpoints_per_second']:>9.0f}"
                f" {memory_mb(r):>11.0f} {ratio if ratio is not None else float('nan'):>9.2f}"
                f" {r['seconds_per_1k_checkpoints']:>7.3f}  {note}")
        if "migrate" in steps and "disk" in steps["migrate"]:
            disk = steps["migrate"]["disk"]
            lines.append(f"{size:>7}  disk: export and caches "
                         f"{disk['export_and_caches_bytes'] / 1e6:.0f} MB = "
                         f"{disk['ratio_to_sqlite']:.2f}x the SQLite file "
                         f"({disk['sqlite_bytes']/1e6:.0f} MB); Dagster home "
                         f"{disk['dagster_home_bytes']/1e6:.0f} MB")
        if "dagster_ui" in steps:
            ui = steps["dagster_ui"]
            lines.append(f"{size:>7}  {ui['partitions']} partitions: `checks` "
                         f"{_seconds_list(ui['checks_seconds'])}; partitions page GraphQL "
                         f"{_seconds_list(ui['partitions_page_query_seconds'])}")
    return "\n".join(lines)


def _seconds_list(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values) + " s"


def render_targets(targets: list[dict[str, Any]]) -> str:
    """The targets as PASS/MISS lines."""
    lines = []
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        detail = f"  ({t['detail']})" if t["detail"] else ""
        lines.append(f"{t['status']:<5} {t['target']:<58} {t['size']!s:<14} "
                     f"{value:>8}  {t['limit']}{detail}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where and when this run happened."""
    try:
        with psycopg.connect(os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN)) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        server = "unknown"
    return {"started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "postgresql": server, "argv": sys.argv[1:],
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "notes": [("One run on one shared machine: other work may be using the CPU at "
                       "the same time (see load_average_* per step)."),
                      ("PostgreSQL runs on the same machine; its CPU and memory are not in "
                       "the peak RSS figures, which are the client processes'.")]}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000",
                        help="approximate checkpoints per corpus, comma-separated")
    parser.add_argument("--skip-dagster", action="store_true",
                        help="do not run the dagster dev backfill")
    parser.add_argument("--dagster-sizes", default=None,
                        help="sizes that get the dagster dev backfill (default: the smallest)")
    parser.add_argument("--dagster-batch-size", type=int, default=1000,
                        help="checkpoints per batch partition for the dagster backfill")
    parser.add_argument("--api-prefix", type=int, default=10000,
                        help="measure the API loop on this many checkpoints and extrapolate "
                             "(0: the whole corpus)")
    parser.add_argument("--profile-import", type=int, default=None, metavar="SIZE",
                        help="also run the import of this size under cProfile (untimed)")
    parser.add_argument("--scale-out", action="store_true",
                        help="also time the import with 1, 2 and 4 concurrent batch loader "
                             "processes against the one PostgreSQL")
    parser.add_argument("--smoke", action="store_true",
                        help=f"~{SMOKE_SIZE} checkpoints in a temp dir, no dagster dev")
    parser.add_argument("--ui-sizes", default=None,
                        help="sizes whose migrate is followed by the dagster_ui step (`checks` "
                             "and the partitions page's GraphQL query; default: the largest)")
    parser.add_argument("--steps", default=None,
                        help=f"only these steps, comma-separated (of {','.join(STEPS)}); "
                             "e.g. copy_ceiling,migrate,dagster_ui for a 1M run")
    parser.add_argument("--sync-changed-threads", type=int, default=None,
                        help="the sync step changes this many threads (and deletes a fifth "
                             "as many) at every size, instead of 1%% (and 0.2%%): the same "
                             "change on corpora of different sizes")
    parser.add_argument("--fleet-sources", type=int, default=DEFAULT_FLEET_SOURCES,
                        help="the fleet step cuts the corpus into this many SQLite files "
                             f"(default {DEFAULT_FLEET_SOURCES})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and the targets, write the JSON."""
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    admin = os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    report: dict[str, Any] = {"environment": environment(), "sizes": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        work_root = Path(tmp)
        code = work_root / "code"
        report["environment"]["code"] = snapshot_code(code)
        if args.smoke:
            plan = [(SMOKE_SIZE, ensure_corpus(SMOKE_SIZE, work_root / "corpus"), SMOKE_STEPS)]
        else:
            sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
            dagster_sizes = ({int(s) for s in args.dagster_sizes.split(",")}
                             if args.dagster_sizes else {sizes[0]})
            ui_sizes = ({int(s) for s in args.ui_sizes.split(",")} if args.ui_sizes
                        else {sizes[-1]})
            wanted = set(args.steps.split(",")) if args.steps else set(STEPS)
            plan = []
            for size in sizes:
                skipped = {"dagster_backfill"} if args.skip_dagster or \
                    size not in dagster_sizes else set()
                if size not in ui_sizes:
                    skipped.add("dagster_ui")
                steps = tuple(s for s in STEPS if s in wanted and s not in skipped)
                plan.append((size, ensure_corpus(size, CACHE), steps))
        results: dict[int, dict[str, Any]] = {}
        for size, corpus, steps in plan:
            print(f"size {size}: {corpus}", flush=True)
            results[size] = measure_size(size, corpus, admin, args, steps, work_root, code)
    targets = evaluate_targets(results)
    profile = {s: r["steps"].pop("profile_import") for s, r in results.items()
               if "profile_import" in r["steps"]}
    report["sizes"] = {str(s): r for s, r in results.items()}
    report["targets"] = targets
    report["seconds_per_1k_checkpoints"] = {
        name: {str(s): r["steps"][name]["seconds_per_1k_checkpoints"]
               for s, r in results.items() if name in r["steps"]}
        for name in STEPS if name not in NOT_CORPUS_STEPS}
    if profile:
        report["import_profile"] = {str(s): {k: v for k, v in p.items() if k != "pstats_text"}
                                    for s, p in profile.items()}
    report["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["environment"]["total_seconds"] = time.perf_counter() - started
    print()
    print(render_table(results))
    print()
    print(render_targets(targets))
    write_private_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
