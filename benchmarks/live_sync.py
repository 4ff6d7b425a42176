"""Live operations at scale: what a sync costs by change size, and what the application feels.

Run from the repository root (PostgreSQL admin DSN from $BENCH_ADMIN_DSN, default the local
server)::

    .venv/bin/python -m benchmarks.live_sync [--sizes 100000,1000000] [--changed 50]
                                             [--repeat 3] [--latency-seconds 45]
                                             [--cutover-quiet-seconds 2]
                                             [--out benchmarks/results/live_sync.json]

For each size, on a private copy of the cached benchmark corpus (benchmarks/run.py's, made
once) in WAL mode:

- set-up, untimed: export the copy and load the export into a new PostgreSQL database (the
  one-shot steps are measured by benchmarks/run.py);
- the application keeps its database open, as a running one does (its ``-wal`` exists);
- ``nothing``: one sync (``sync_target``, in this process) with nothing changed;
- ``changed``: the application changes ``--changed`` threads through SqliteSaver (new
  turns, resumed interrupts, replaced interrupt writes: benchmarks/live_changes.py), then
  one sync; ``deleted``: the same with a tenth of them deleted instead;
- each ``--repeat`` times (each change its own); the median seconds, and the threads whose
  fingerprint the sync read;
- ``latency``: a second process runs the chat graph through SqliteSaver at a steady rate
  (a request every 0.2 s, each a new turn of one of its own 500 threads, as many users
  would) and times every request; first ``--latency-seconds`` idle, then as long again
  with a sync every second; p50/p95/p99/max of the requests by phase;
- ``cutover`` (in this process, ``--cutover-quiet-seconds``, default 2): the application
  writes steadily through the catch-up sync and the first verification and stops 3 s
  after the cutover starts waiting for quiet; the window is the cutover's own figure (the
  last write it saw -> proven equal), with the final sync's and the last verification's
  share, and the rounds of sync and comparison it ran before and while it waited.

The goals (issue 23): nothing changed at 1M <= 0.5 s; the same change at 100K and 1M
within 1.3x; the application's p99 while syncing <= 1.5x its idle p99; the cutover window
<= 5 s at 1M and within 1.5x from 100K to 1M.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from benchmarks.run import CACHE, DEFAULT_ADMIN_DSN, ensure_corpus, fresh_database

NOTHING_MAX_SECONDS = 0.5
CHANGE_MAX_SPREAD = 1.3
LATENCY_MAX_X_IDLE = 1.5
CUTOVER_MAX_SECONDS = 5.0
CUTOVER_MAX_SPREAD = 1.5
STOP_AFTER_WAIT_SECONDS = 3.0
REQUEST_EVERY_SECONDS = 0.2
APP_THREADS = 500
WARM_UP_SECONDS = 5.0
WORK = CACHE / "live-sync-work"


def private_copy(size: int, corpus: Path | None = None) -> Path:
    """A copy of ``corpus`` (default: the cached corpus of ``size`` checkpoints) that this
    run may change."""
    corpus = corpus or ensure_corpus(size, CACHE)
    WORK.mkdir(parents=True, exist_ok=True)
    copy = WORK / f"app-{size}.sqlite"
    for old in WORK.glob(f"app-{size}.*"):
        old.unlink()
    shutil.copyfile(corpus, copy)
    with closing(sqlite3.connect(copy)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    return copy


def timed_sync(source: Path, export: Path, dsn: str, **options: Any) -> dict[str, Any]:
    """One ``sync_target`` in this process: seconds, and what it read and moved."""
    from checkpoint_assets.engine.load.target import Target
    from checkpoint_assets.engine.sync.sync_target import sync_target

    started = time.perf_counter()
    report = sync_target(source, export, Target(dsn), **options)
    seconds = time.perf_counter() - started
    found = report.found
    return {"seconds": round(seconds, 4),
            "fingerprints_read": getattr(found, "fingerprints_read", None),
            "threads_read": found.threads_read,
            "moved": len(found.added) + len(found.changed) + len(found.deleted)}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs and their median seconds."""
    return {"median_seconds": round(statistics.median(r["seconds"] for r in runs), 4),
            "runs": runs}


def application(source: str, seconds: float, out: str, stop_file: str | None = None) -> None:
    """The application: a request every REQUEST_EVERY_SECONDS for ``seconds`` (or until
    ``stop_file`` exists), each a new turn of one of its APP_THREADS threads; writes
    [(start, latency)] to ``out``."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from checkpoint_assets_tests.corpus_graphs import build_chat_graph, chat_input, thread_config

    rng = random.Random(7)
    conn = sqlite3.connect(source, check_same_thread=False)
    samples = []
    with closing(conn):
        graph = build_chat_graph(SqliteSaver(conn))
        end = time.time() + seconds
        turn = 0
        while time.time() < end and not (stop_file and os.path.exists(stop_file)):
            turn += 1
            started = time.time()
            graph.invoke(chat_input(rng, turn, with_refund=False),
                         thread_config(f"latency-app-{turn % APP_THREADS:03d}"))
            samples.append((started, time.time() - started))
            time.sleep(max(0.0, started + REQUEST_EVERY_SECONDS - time.time()))
    Path(out).write_text(json.dumps(samples))


def percentiles(latencies: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max in milliseconds."""
    ordered = sorted(latencies)
    if not ordered:
        return {"requests": 0}

    def at(share: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

    return {"requests": len(ordered), "p50_ms": at(0.50), "p95_ms": at(0.95),
            "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 1)}


def latency_by_phase(source: Path, export: Path, dsn: str, seconds: float) -> dict[str, Any]:
    """The application's request latency idle, then with a sync every second."""
    out = WORK / "latency.json"
    context = multiprocessing.get_context("spawn")
    app = context.Process(target=application,
                          args=(str(source), 2 * seconds + WARM_UP_SECONDS + 1, str(out)))
    app.start()
    time.sleep(WARM_UP_SECONDS)  # its imports and first requests are not the idle figure
    idle = (time.time(), time.time() + seconds)
    time.sleep(seconds)
    syncing_from = time.time()
    syncs = []
    while time.time() < syncing_from + seconds:
        next_at = time.time() + 1.0
        syncs.append(timed_sync(source, export, dsn))
        time.sleep(max(0.0, next_at - time.time()))
    syncing = (syncing_from, time.time())
    app.join()
    samples = json.loads(out.read_text())

    def within(window: tuple[float, float]) -> list[float]:
        return [latency for start, latency in samples if window[0] <= start < window[1]]

    phases = {"idle": percentiles(within(idle)), "syncing": percentiles(within(syncing))}
    idle_p99 = phases["idle"].get("p99_ms") or 0
    ratio = phases["syncing"].get("p99_ms", 0) / idle_p99 if idle_p99 else None
    return {**phases, "syncs": len(syncs),
            "sync_median_seconds": round(statistics.median(s["seconds"] for s in syncs), 4),
            "p99_x_idle": None if ratio is None else round(ratio, 2)}


def cutover_under_a_steady_writer(source: Path, export: Path, dsn: str,
                                  quiet_seconds: float) -> dict[str, Any]:
    """``cutover`` (in this process) while the application writes steadily: it keeps
    writing through the catch-up sync and the first verification, and stops
    STOP_AFTER_WAIT_SECONDS after the cutover starts waiting for quiet. The window is the
    cutover's own figure: its last write seen -> proven equal."""
    import threading

    from checkpoint_assets.engine.operations.live import CutoverRequest, SyncRequest, cutover

    stop_file, out = WORK / "stop-writing", WORK / "cutover-writes.json"
    stop_file.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")
    app = context.Process(target=application,
                          args=(str(source), 3600.0, str(out), str(stop_file)))
    app.start()
    time.sleep(WARM_UP_SECONDS)

    rounds: list[str] = []

    def say(line: str) -> None:
        if line.startswith("Waiting until"):
            threading.Timer(STOP_AFTER_WAIT_SECONDS, stop_file.touch).start()
        elif line.lstrip().startswith(("round ", "Caught up")):
            rounds.append(line.strip())

    from checkpoint_assets.engine.core.errors import MigrationError

    started = time.perf_counter()
    try:
        done = cutover(CutoverRequest(sync=SyncRequest(source, export, dsn),
                                      quiet_seconds=quiet_seconds, workers=2), say=say)
    except MigrationError as exc:
        return {"passed": False, "error": str(exc),
                "whole_command_seconds": round(time.perf_counter() - started, 1)}
    finally:
        stop_file.touch()
        app.join()
    timings = done.timings
    return {"passed": done.passed, "window_seconds": round(done.window_seconds, 3),
            "quiet_seconds": quiet_seconds,
            "final_sync_seconds": timings["final_sync_seconds"],
            "second_verification_seconds": timings["verification_seconds"],
            "wait_seconds": timings["wait_seconds"], "rounds": rounds,
            "whole_command_seconds": round(time.perf_counter() - started, 1),
            "application_requests": len(json.loads(out.read_text()))}


def measure(size: int, admin_dsn: str, changed: int, repeat: int,
            latency_seconds: float, cutover_quiet: float | None = 2.0,
            corpus: Path | None = None) -> dict[str, Any]:
    """Every live figure for one corpus size (``corpus``: the benchmark corpus of that
    size, when the caller has it; else the cached one)."""
    from benchmarks.live_changes import apply_live_changes
    from checkpoint_assets.engine.export.writer import write_export
    from checkpoint_assets.engine.load.pipeline import import_export
    from checkpoint_assets.engine.load.target import Target

    source = private_copy(size, corpus)
    export = WORK / f"app-{size}.export"
    started = time.perf_counter()
    manifest = write_export(source, export)
    result: dict[str, Any] = {"size": size, "checkpoints": manifest.checkpoints,
                              "threads": manifest.threads}
    with fresh_database(admin_dsn, f"live{size}") as dsn:
        import_export(manifest, Target(dsn), workers=2)
        result["setup_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{size}: exported and loaded in {result['setup_seconds']} s", flush=True)
        with closing(sqlite3.connect(source)) as running_application:
            running_application.execute("SELECT count(*) FROM writes").fetchone()
            timed_sync(source, export, dsn)  # the first one after the load: warm caches
            result["nothing"] = median_of([timed_sync(source, export, dsn)
                                           for _ in range(repeat)])
            changes = []
            for seed in range(repeat):
                apply_live_changes(source, changed=changed, added=0, deleted=0,
                                   seed=100 + seed)
                changes.append(timed_sync(source, export, dsn))
            result["changed"] = median_of(changes)
            deletions = []
            for seed in range(repeat):
                apply_live_changes(source, changed=changed - changed // 10, added=0,
                                   deleted=changed // 10, seed=200 + seed)
                deletions.append(timed_sync(source, export, dsn, propagate_deletes=True))
            result["deleted"] = median_of(deletions)
            print(f"{size}: nothing {result['nothing']['median_seconds']} s, "
                  f"changed {result['changed']['median_seconds']} s, "
                  f"deleted {result['deleted']['median_seconds']} s", flush=True)
            if latency_seconds > 0:
                result["latency"] = latency_by_phase(source, export, dsn, latency_seconds)
                print(f"{size}: latency {result['latency']}", flush=True)
        if cutover_quiet is not None:
            result["cutover"] = cutover_under_a_steady_writer(source, export, dsn,
                                                              cutover_quiet)
            print(f"{size}: cutover {result['cutover']}", flush=True)
    for leftover in WORK.glob(f"app-{size}.*"):
        leftover.unlink()
    return result


def verdicts(results: list[dict[str, Any]]) -> dict[str, Any]:
    """PASS/MISS of each goal the run measured."""
    out: dict[str, Any] = {}
    largest = max(results, key=lambda r: r["size"])
    nothing = largest["nothing"]["median_seconds"]
    out["nothing_changed_at_largest"] = {
        "size": largest["size"], "seconds": nothing, "target": NOTHING_MAX_SECONDS,
        "result": "PASS" if nothing <= NOTHING_MAX_SECONDS else "MISS"}
    if len(results) > 1:
        smallest = min(results, key=lambda r: r["size"])
        spread = largest["changed"]["median_seconds"] / smallest["changed"]["median_seconds"]
        out["same_change_spread"] = {
            "sizes": [smallest["size"], largest["size"]], "x": round(spread, 2),
            "target": CHANGE_MAX_SPREAD,
            "result": "PASS" if spread <= CHANGE_MAX_SPREAD else "MISS"}
    windows = {r["size"]: r["cutover"].get("window_seconds", float("inf"))
               for r in results if r.get("cutover")}
    if windows:
        largest_window = windows[max(windows)]
        out["cutover_window_at_largest"] = {
            "size": max(windows), "seconds": largest_window, "target": CUTOVER_MAX_SECONDS,
            "result": "PASS" if largest_window <= CUTOVER_MAX_SECONDS else "MISS"}
    if len(windows) > 1:
        spread = windows[max(windows)] / windows[min(windows)]
        out["cutover_window_spread"] = {
            "sizes": [min(windows), max(windows)], "x": round(spread, 2),
            "target": CUTOVER_MAX_SPREAD,
            "result": "PASS" if spread <= CUTOVER_MAX_SPREAD else "MISS"}
    for result in results:
        ratio = (result.get("latency") or {}).get("p99_x_idle")
        if ratio is not None:
            out[f"latency_p99_x_idle_{result['size']}"] = {
                "x": ratio, "target": LATENCY_MAX_X_IDLE,
                "result": "PASS" if ratio <= LATENCY_MAX_X_IDLE else "MISS"}
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every size, print the figures and the verdicts, write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--changed", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=45.0)
    parser.add_argument("--cutover-quiet-seconds", type=float, default=2.0,
                        help="the cutover's --quiet-seconds (negative: no cutover)")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/live_sync.json"))
    args = parser.parse_args(argv)
    admin = os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    quiet = args.cutover_quiet_seconds if args.cutover_quiet_seconds >= 0 else None
    results = [measure(int(size), admin, args.changed, args.repeat, args.latency_seconds,
                       quiet) for size in args.sizes.split(",")]
    report = {"results": results, "goals": verdicts(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["goals"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
