"""Load every batch partition of one corpus twice: in-process (the CLI path) and as a
backfill through a real ``dagster dev`` (the daemon path), and report the times.

Usage (PostgreSQL from $BENCH_ADMIN_DSN, default postgresql://postgres@127.0.0.1:5432/postgres):

    .venv/bin/python benchmarks/backfill_paths.py --threads 400 --batch-size 250

Each path gets a fresh target database and a fresh DAGSTER_HOME (shipped dagster.yaml, so
the pool limit applies). The export is taken in-process for both and not timed. Results
are printed and written to benchmarks/results/backfill_paths.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.partitions import BATCHES_ASSET, EXPORT_ASSET
from checkpoint_assets.project import SQLITE_INSTANCE_YAML
from checkpoint_assets.run_steps import project_instance
from checkpoint_assets.runner import backfill_in_process, partition_statuses
from checkpoint_assets.settings import BATCH_SIZE_ENV, EXPORT_ENV, SOURCE_ENV, TARGET_DSN_ENV
from checkpoint_assets_tests.corpus_graphs import build_scaled_corpus
from checkpoint_assets_tests.dagster_dev_support import (
    LAUNCH_BACKFILL,
    DagsterDev,
    asset_key,
    finished_backfill,
    finished_runs,
    wait_for,
)
from checkpoint_assets_tests.dagster_support import fresh_database


def fresh_home(path: Path) -> Path:
    """An empty DAGSTER_HOME with the shipped dagster.yaml."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    shutil.copyfile(SQLITE_INSTANCE_YAML, path / "dagster.yaml")
    return path


def set_env(home: Path, dsn: str, source: Path, export: Path, batch_size: int) -> None:
    os.environ.update({"DAGSTER_HOME": str(home), TARGET_DSN_ENV: dsn, SOURCE_ENV: str(source),
                       EXPORT_ENV: str(export), BATCH_SIZE_ENV: str(batch_size)})


def export_in_process() -> int:
    """Materialize the export asset into the current DAGSTER_HOME; return the partitions."""
    with project_instance() as instance:
        job = build_definitions().resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, asset_selection=[EXPORT_ASSET]).success
        return len(partition_statuses(instance))


def in_process(admin: str, work: Path, source: Path, batch_size: int) -> dict[str, Any]:
    """Every partition in in-process runs (what `checkpoint-assets backfill` does)."""
    with fresh_database(admin) as dsn:
        set_env(fresh_home(work / "home-inprocess"), dsn, source, work / "run.export",
                batch_size)
        export_in_process()
        started = time.perf_counter()
        result = backfill_in_process()  # every partition is missing: loads them all
        wall = time.perf_counter() - started
    assert result.passed, result.render()
    batches = [r for r in result.runs if r.step == "batch"]
    verification = sum(r.seconds for r in result.runs if r.step == "verification")
    return {"partitions": len(batches),
            "batch_runs_seconds_summed": round(sum(r.seconds for r in batches), 2),
            "verification_seconds": round(verification, 2),
            "wall_seconds_including_verification": round(wall, 2)}


def through_dagster_dev(admin: str, work: Path, source: Path, batch_size: int) -> dict[str, Any]:
    """Every partition as a UI backfill: the daemon launches one run process per range of
    partitions (the batch asset's backfill policy)."""
    with fresh_database(admin) as dsn:
        set_env(fresh_home(work / "home-dev"), dsn, source, work / "run.export", batch_size)
        partitions = export_in_process()
        dev = DagsterDev(work, dict(os.environ), work / "dev.log")
        try:
            dev.wait_until_serving()
            launched_at = time.time()
            started = time.perf_counter()
            launched = dev.gql(LAUNCH_BACKFILL, {"params": {
                "assetSelection": [asset_key(BATCHES_ASSET)], "allPartitions": True}})
            backfill_id = launched["launchPartitionBackfill"]["backfillId"]
            status = wait_for(lambda: finished_backfill(dev, backfill_id), 1800, "backfill",
                              dev)
            completed = time.perf_counter() - started
            runs = wait_for(lambda: finished_runs(dev, backfill_id), 120, "the runs", dev)
            with project_instance() as instance:
                statuses = partition_statuses(instance)
        finally:
            dev.stop()
    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    assert list(statuses.values()) == ["MATERIALIZED"] * partitions, statuses
    first_start = min(r["startTime"] for r in runs)
    last_end = max(r["endTime"] for r in runs)
    runs_done = last_end - launched_at
    return {"partitions": partitions, "runs": len(runs),
            "runs_seconds_sum": round(sum(r["endTime"] - r["startTime"] for r in runs), 2),
            "first_run_started_after": round(first_start - launched_at, 2),
            "first_start_to_last_end": round(last_end - first_start, 2),
            "launch_to_all_runs_done": round(runs_done, 2),
            "launch_to_backfill_completed": round(completed, 2),
            "backfill_status": status["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / ".cache" / "backfill")
    args = parser.parse_args()
    admin = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"scaled-{args.threads}.sqlite"
    if not source.exists():
        build_scaled_corpus(source, threads=args.threads)
    with sqlite3.connect(source) as conn:
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        writes = conn.execute("SELECT count(*) FROM writes").fetchone()[0]
    report: dict[str, Any] = {
        "corpus": {"threads": args.threads, "checkpoints": checkpoints, "writes": writes,
                   "bytes": source.stat().st_size, "batch_size": args.batch_size}}
    report["in_process"] = in_process(admin, work, source, args.batch_size)
    print(json.dumps(report, indent=2), flush=True)
    report["dagster_dev"] = through_dagster_dev(admin, work, source, args.batch_size)
    print(json.dumps(report, indent=2))
    out = REPO / "benchmarks" / "results" / "backfill_paths.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
