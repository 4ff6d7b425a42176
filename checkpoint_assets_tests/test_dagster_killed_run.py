"""A Dagster run killed in the middle of its partition.

``checkpoint-assets migrate`` runs as a real process; the test holds the advisory lock of
one batch so that its run is inside the batch's transaction when the process gets SIGKILL.
Afterwards the target holds no part of that batch, the partition is FAILED (not
materialized, not in progress for ever), and a backfill of failed and missing partitions
loads it and passes every check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from checkpoint_assets.abandoned_runs import fail_abandoned_runs
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import batch_lock_id as _lock_id
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.partitions import partition_keys_by_batch
from checkpoint_assets.runner import partition_statuses
from checkpoint_assets.settings import TARGET_DSN_ENV, WORKERS_ENV
from checkpoint_assets_tests.dagster_support import write_corpus
from checkpoint_assets_tests.test_faults import _dbname, _wait_for_backend

CLI = [sys.executable, "-m", "checkpoint_assets.cli"]
KILLED = "batch-00002"  # the export file's key of the batch whose run is killed
BATCH_SIZE = 12


def test_killed_run_leaves_a_failed_partition_that_a_backfill_completes(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL mid-partition: nothing of the batch in PostgreSQL, partition FAILED once the
    next command looks, the backfill reloads only what is missing, all checks pass."""
    source = write_corpus(tmp_path / "support.sqlite", threads=6)
    export = tmp_path / "export.export"
    home = tmp_path / "dagster_home"
    # The same bytes migrate will write (exports are deterministic): learn the batch's lock.
    manifest = write_export(source, export, batch_size=BATCH_SIZE)
    Target(target_dsn).setup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
    env.update({"DAGSTER_HOME": str(home), TARGET_DSN_ENV: target_dsn, WORKERS_ENV: "1"})

    with psycopg.connect(target_dsn, autocommit=True) as gate, \
            psycopg.connect(target_dsn, autocommit=True) as watch:
        gate.execute("SELECT pg_advisory_lock(%s)",
                     (_lock_id(None, manifest.batch(KILLED).sha256),))
        proc = subprocess.Popen(
            [*CLI, "migrate", "--source", str(source),
             "--export", str(export), "--batch-size", str(BATCH_SIZE)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_backend(watch, _dbname(target_dsn), "SELECT pg_advisory_xact_lock%",
                              "advisory")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        gate.execute("SELECT pg_advisory_unlock_all()")

    target = Target(target_dsn)
    assert all(v == 0 for v in compare_batch(target, manifest, KILLED).actual_counts.values())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    with dg.DagsterInstance.get() as instance:
        partitions = partition_keys_by_batch(manifest)
        killed = partitions[KILLED]
        before = partition_statuses(instance)
        assert before[killed] == "IN_PROGRESS"  # what Dagster alone would show for ever
        assert before[partitions["batch-00001"]] == "MATERIALIZED"

        # What the next migrate or backfill does first:
        [killed_run_id] = fail_abandoned_runs(instance)
        killed_run = instance.get_run_by_id(killed_run_id)
        assert killed_run.status == dg.DagsterRunStatus.FAILURE
        # The run loaded a range of batches; the one it had committed stays MATERIALIZED.
        assert killed_run.tags[ASSET_PARTITION_RANGE_START_TAG] <= killed \
            <= killed_run.tags[ASSET_PARTITION_RANGE_END_TAG]
        assert partition_statuses(instance)[killed] == "FAILED"

        # The user's next command: load the failed and missing partitions, then verify.
        backfill = subprocess.run(
            [*CLI, "backfill", "--source", str(source), "--export", str(export),
             "--batch-size", str(BATCH_SIZE), "--json"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert backfill.returncode == 0, backfill.stdout + backfill.stderr
        result = json.loads(backfill.stdout)
        assert result["command"] == "backfill" and result["ok"]
        assert [r["partition"] for r in result["runs"] if r["step"] == "batch"] == [
            k for k, s in before.items() if s != "MATERIALIZED"]
        assert set(partition_statuses(instance).values()) == {"MATERIALIZED"}
    assert compare_batch(target, read_manifest(export), KILLED).passed
