"""The command's processes under a careless operator: two migrations at once on a fresh
Dagster home, Ctrl-C (once and twice) in the middle of batches, SIGKILL of an import with
worker processes, and a PostgreSQL role limited to one connection.

Under test: ``checkpoint-assets`` as real subprocesses (their exit status, what they print,
the processes they leave), the Dagster home they share, and the target PostgreSQL. Batches
are caught mid-load deterministically as in test_faults: the test holds a lock the loader
needs and waits until the loader's backend is seen waiting for it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.embedded_postgres import dsn_for_database, temporary_database
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import batch_lock_id as _lock_id
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.partitions import partition_keys_by_batch
from checkpoint_assets.settings import TARGET_DSN_ENV, WORKERS_ENV
from checkpoint_assets_tests.dagster_support import write_corpus
from checkpoint_assets_tests.test_faults import _batch_state, _dbname, _wait_for_backend

CLI = [sys.executable, "-m", "checkpoint_assets.cli"]
IMPORT_TWO_WORKERS = [*CLI, "import", "--workers", "2", "--export"]
BATCH_SIZE = 12
EXIT_INTERRUPTED = 130
# Generous bounds for "stops": far above what any of these takes, far below "for ever".
STOP_TIMEOUT_SECONDS = 90
GONE_TIMEOUT_SECONDS = 30


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportManifest]:
    """A support-agent corpus of 12 threads and its export in batches of 12 checkpoints."""
    root = tmp_path_factory.mktemp("processes")
    source = write_corpus(root / "support.sqlite", threads=12)
    manifest = write_export(source, root / "support.export", batch_size=BATCH_SIZE)
    assert len(manifest.batches) >= 4
    return source, manifest


def _env(home: Path, dsn: str, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
    env.update({"DAGSTER_HOME": str(home), TARGET_DSN_ENV: dsn, WORKERS_ENV: str(workers)})
    return env


def _migrate_args(command: str, source: Path, export: Path, *extra: str) -> list[str]:
    return [*CLI, command, "--source", str(source), "--export", str(export),
            "--batch-size", str(BATCH_SIZE), *extra]


def _running(pids: set[int]) -> set[int]:
    """The processes among ``pids`` that still exist (a zombie has ended)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_until_gone(pids: set[int]) -> set[int]:
    """Wait (bounded) until none of ``pids`` runs; the ones still running."""
    deadline = time.monotonic() + GONE_TIMEOUT_SECONDS
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _running(pids)


def _process_group(pgid: int) -> set[int]:
    """Running processes of process group ``pgid``."""
    members = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                members.add(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return _running(members)


def _hold_batch_mid_load(dsn: str, manifest: ExportManifest, key: str,
                         gate: psycopg.Connection, table_lock: psycopg.Connection,
                         watch: psycopg.Connection) -> None:
    """Let batch ``key`` write its checkpoints and blobs, then hold it waiting for a lock on
    checkpoint_writes (its transaction open); ``gate`` held the batch's advisory lock."""
    _wait_for_advisory_wait(watch, dsn)
    table_lock.execute("LOCK TABLE checkpoint_writes IN SHARE MODE")
    gate.execute("SELECT pg_advisory_unlock_all()")
    _wait_for_backend(watch, _dbname(dsn), 'COPY "checkpoint_writes"%')


@contextmanager
def _command(args: list[str], env: dict[str, str], **popen: Any) -> Iterator[subprocess.Popen]:
    """A command in a process group of its own (as a terminal starts it), killed with its
    group should the test fail first."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_advisory_wait(watch: psycopg.Connection, dsn: str) -> None:
    """Until a loader waits for a batch's advisory lock (inside its transaction)."""
    _wait_for_backend(watch, _dbname(dsn), "SELECT pg_advisory_xact_lock%", "advisory")


def _gate(dsn: str, manifest: ExportManifest, key: str) -> psycopg.Connection:
    gate = psycopg.connect(dsn, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (_lock_id(None, manifest.batch(key).sha256),))
    return gate


# --------------------------------------------------------------------------- item 3: shared home


def _open_home(home: str, start_at: float) -> str:
    """In a fresh process: open the project's instance at ``start_at`` and read from it."""
    os.environ["DAGSTER_HOME"] = home
    from checkpoint_assets.check_results import partition_statuses
    from checkpoint_assets.run_steps import project_instance

    while time.time() < start_at:
        time.sleep(0.001)
    try:
        with project_instance() as instance:
            partition_statuses(instance)
            instance.get_run_records(limit=1)
        return "ok"
    except Exception as exc:  # reported to the test, which shows it
        return f"{type(exc).__name__}: {exc}"


def test_processes_opening_a_fresh_home_at_once_create_its_storage_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes open the same new Dagster home at the same moment: each succeeds,
    and the home works afterwards (no second alembic head, no 'table already exists')."""
    home = tmp_path / "home"
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        start_at = time.time() + 3.0  # after the three interpreters have started
        results = pool.starmap(_open_home, [(str(home), start_at)] * 3)
    assert results == ["ok"] * 3
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # _open_home sets it; undone after the test
    assert _open_home(str(home), 0) == "ok"


def test_two_migrations_at_once_on_a_fresh_home_both_pass_with_their_own_checks(
        corpus: tuple[Path, ExportManifest], tmp_path: Path, admin_dsn: str) -> None:
    """Two `migrate` commands started together on one new home (two targets, two exports
    cut differently) both pass; each prints the check results of its own runs; `checks`
    works on the home afterwards.

    A home's batch partitions are one export's: the second migration waits until the first
    has finished (otherwise its export would replace the partitions the first is loading,
    and a partition's latest load and latest check could come from different migrations)."""
    source, manifest = corpus
    # Batches hold whole threads: a batch size that only differs a little can cut the same
    # batches (and so make the same partition keys) as BATCH_SIZE.
    other_size = BATCH_SIZE * 3
    other = write_export(source, tmp_path / "other-cut.export", batch_size=other_size)
    assert not set(partition_keys_by_batch(other).values()) \
        & set(partition_keys_by_batch(manifest).values())
    home = tmp_path / "home"
    with temporary_database(admin_dsn, "ca_test") as first, \
            temporary_database(admin_dsn, "ca_test") as second:
        with _command(_migrate_args("migrate", source, tmp_path / "first.export", "--json"),
                      _env(home, first, workers=1), cwd=tmp_path) as one, \
                _command([*_migrate_args("migrate", source, tmp_path / "second.export",
                                         "--json"), "--batch-size", str(other_size)],
                         _env(home, second, workers=1), cwd=tmp_path) as two:
            procs = [one, two]
            outputs = [proc.communicate(timeout=600) for proc in procs]
        for proc, (out, err) in zip(procs, outputs):
            assert proc.returncode == 0, out[-3000:] + err[-3000:]
            result = json.loads(out)
            assert result["ok"]
            own_runs = {run["run_id"] for run in result["runs"]}
            assert all(check["ok"] and check["run_id"] in own_runs
                       for check in result["checks"]), result["checks"]
        checks = subprocess.run([*CLI, "checks"], env=_env(home, first, workers=1),
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert checks.returncode == 0, checks.stdout + checks.stderr
        assert "alembic" not in checks.stderr


# --------------------------------------------------------------------------- item 4: Ctrl-C


def test_ctrl_c_during_batches_stops_with_whole_batches_and_backfill_completes(
        corpus: tuple[Path, ExportManifest], tmp_path: Path, target_dsn: str) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while a worker is inside
    a batch's transaction: `migrate` exits 130 within the bound, names what was loaded and
    `checkpoint-assets backfill`, leaves no process; every batch is whole or absent; the
    backfill then loads the rest and every check passes."""
    source, manifest = corpus
    export = tmp_path / "support.export"
    home = tmp_path / "home"
    held = manifest.batches[1].key
    Target(target_dsn).setup()
    with _gate(target_dsn, manifest, held) as gate, \
            psycopg.connect(target_dsn) as table_lock, \
            psycopg.connect(target_dsn, autocommit=True) as watch:
        with _command(_migrate_args("migrate", source, export),
                      _env(home, target_dsn, workers=2), cwd=tmp_path) as proc:
            _hold_batch_mid_load(target_dsn, manifest, held, gate, table_lock, watch)
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=STOP_TIMEOUT_SECONDS)
        table_lock.rollback()
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:] + err[-3000:]
    assert "INTERRUPTED: Migrate" in err and "batches are loaded, each whole" in err
    assert "checkpoint-assets backfill" in err
    assert "Traceback" not in err.split("INTERRUPTED:")[-1]
    assert _wait_until_gone(_process_group(proc.pid)) == set()

    states = {e.key: _batch_state(Target(target_dsn), read_manifest(export), e.key)
              for e in manifest.batches}
    assert states[held] == "absent"

    backfill = subprocess.run(_migrate_args("backfill", source, export, "--json"),
                              env=_env(home, target_dsn, workers=2), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert backfill.returncode == 0, backfill.stdout[-3000:] + backfill.stderr[-3000:]
    result = json.loads(backfill.stdout)
    assert result["ok"]
    reloaded = [r["partition"] for r in result["runs"] if r["step"] == "batch"]
    assert partition_keys_by_batch(manifest)[held] in reloaded
    assert all(_batch_state(Target(target_dsn), manifest, e.key) == "complete"
               for e in manifest.batches)


def test_second_ctrl_c_stops_at_once(corpus: tuple[Path, ExportManifest],
                                     target_dsn: str) -> None:
    """A second Ctrl-C while the first is still waiting for a worker to finish its batch
    stops `import` at once: exit 130, the message says so, no process is left, and the
    held batch is absent from the target."""
    _, manifest = corpus
    held = manifest.batches[0].key
    Target(target_dsn).setup()
    with _gate(target_dsn, manifest, held) as gate, \
            psycopg.connect(target_dsn, autocommit=True) as watch:
        with _command(IMPORT_TWO_WORKERS + [str(manifest.path)],
                      _env(Path("unused"), target_dsn, workers=2)) as proc:
            _wait_for_advisory_wait(watch, target_dsn)
            os.killpg(proc.pid, signal.SIGINT)  # the blocked loader does not stop by itself
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=STOP_TIMEOUT_SECONDS)
        gate.execute("SELECT pg_advisory_unlock_all()")
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:] + err[-3000:]
    assert "stopped at once (second Ctrl-C)" in err
    assert _wait_until_gone(_process_group(proc.pid)) == set()
    assert _batch_state(Target(target_dsn), manifest, held) == "absent"


# --------------------------------------------------------------------------- item 5: SIGKILL


def test_sigkilled_import_leaves_no_worker_process(corpus: tuple[Path, ExportManifest],
                                                   target_dsn: str) -> None:
    """SIGKILL of `import --workers 2` while its workers load: every process it started
    (the loaders and multiprocessing's resource tracker) ends soon after."""
    _, manifest = corpus
    Target(target_dsn).setup()
    with _gate(target_dsn, manifest, manifest.batches[0].key) as gate, \
            psycopg.connect(target_dsn, autocommit=True) as watch:
        with _command(IMPORT_TWO_WORKERS + [str(manifest.path)],
                      _env(Path("unused"), target_dsn, workers=2)) as proc:
            _wait_for_advisory_wait(watch, target_dsn)
            started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            assert len(started) >= 2  # the loaders (and the resource tracker)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        gate.execute("SELECT pg_advisory_unlock_all()")
    assert _wait_until_gone(started) == set()


# --------------------------------------------------------------------------- item 7: one connection


@pytest.fixture
def one_connection_dsn(admin_dsn: str) -> Iterator[str]:
    """A new database owned by a new login role whose CONNECTION LIMIT is 1."""
    name = f"ca_one_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(name)))
    dsn = dsn_for_database(admin_dsn, name)
    try:
        yield psycopg.conninfo.make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_role_limited_to_one_connection_migrates_a_new_database_with_one_worker(
        corpus: tuple[Path, ExportManifest], tmp_path: Path, one_connection_dsn: str) -> None:
    """With one worker, `migrate` sets up the tables, loads and verifies within the role's
    single connection."""
    source, _ = corpus
    run = subprocess.run(_migrate_args("migrate", source, tmp_path / "export.export", "--json"),
                         env=_env(tmp_path / "home", one_connection_dsn, workers=1),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout)["ok"]


@pytest.mark.parametrize("command", [
    # stand-alone import: the error and exit 3
    "import",
    # migrate: the batches fail with the same message (not retried), exit 1
    "migrate",
])
def test_exhausted_connection_limit_is_named_and_not_retried(
        corpus: tuple[Path, ExportManifest], tmp_path: Path, one_connection_dsn: str,
        command: str) -> None:
    """While another session holds the role's one connection, the command says that the
    role's connection limit is reached and what to do, instead of blaming host, port,
    database, user or password."""
    source, manifest = corpus
    args = ([*CLI, "import", "--export", str(manifest.path)] if command == "import"
            else _migrate_args("migrate", source, tmp_path / "export.export"))
    with psycopg.connect(one_connection_dsn):
        run = subprocess.run(args, env=_env(tmp_path / "home", one_connection_dsn, workers=1),
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == (3 if command == "import" else 1), output[-3000:]
    assert "the role's connection limit is reached" in output
    assert "--workers 1" in output
    assert "Check host, port" not in output
    assert "retries the step" not in output
