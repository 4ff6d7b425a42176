"""A failing batch partition, in-process: it ends FAILED with a failed check, and a backfill
of failed and missing partitions re-runs only that partition once the cause is removed.

The cause is real: a row planted in the target under one of the batch's keys with other
content, as an application already writing to PostgreSQL would leave it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
)
from psycopg.types.json import Jsonb

from checkpoint_assets.assets.publish import unpassed_checks
from checkpoint_assets.check_results import latest_check_evaluations, partition_statuses
from checkpoint_assets.engine.export.reader import read_batch, read_manifest
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCHES_ASSET,
    EXPORT_ASSET,
    partition_keys_by_batch,
)
from checkpoint_assets.runner import backfill_in_process, migrate_in_process
from checkpoint_assets.settings import TARGET_DSN_ENV
from checkpoint_assets_tests.dagster_support import (
    definitions,
    materialize,
    table_snapshot,
    with_password,
    write_corpus,
)

PASSWORD = "pw-not-in-errors"
FAILING_BATCH = "batch-00002"  # the export file's key of the batch that conflicts


def plant_conflict(dsn: str, export: Path, key: str) -> dict[str, str]:
    """Insert a checkpoint row under a key of batch ``key`` (the export file's key, e.g.
    batch-00002) with different content."""
    thread = next(read_batch(read_manifest(export), key))
    row = thread.checkpoints[0]
    Target(dsn).setup()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, checkpoint, "
            "metadata) VALUES (%s, %s, %s, %s, %s)",
            (row.thread_id, row.checkpoint_ns, row.checkpoint_id,
             Jsonb({"planted": True}), Jsonb({})))
    return {"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
            "checkpoint_id": row.checkpoint_id}


def test_failed_partition_is_backfilled_alone(
    target_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conflict -> FAILED partition + failed check; remove it -> backfill loads only it."""
    source = write_corpus(tmp_path / "support.sqlite", threads=6)
    export = tmp_path / "export.export"
    monkeypatch.setenv(TARGET_DSN_ENV, with_password(target_dsn, PASSWORD))
    settings = {"source": str(source), "export": str(export), "batch_size": 12,
                "readback_threads": None}
    with dg.instance_for_test() as instance:
        # The export alone, to learn the batches and plant a conflict in one of them.
        code = definitions(source, export, batch_size=settings["batch_size"])
        assert materialize(code, instance, EXPORT_ASSET).success
        planted = plant_conflict(target_dsn, export, FAILING_BATCH)
        failing = partition_keys_by_batch(read_manifest(export))[FAILING_BATCH]

        result = migrate_in_process(**settings, instance=instance)
        assert not result.passed
        assert result.failed_batches == result.conflicted_batches == [failing]
        assert any("verification" in s for s in result.skipped)
        failed_run = next(r for r in result.runs if r.partition == failing)
        assert "conflict" in failed_run.error.lower() and PASSWORD not in failed_run.error

        # The batches are loaded in ranged runs; the rest of the failing run still loaded.
        assert any(r.run_id == failed_run.run_id and r.success for r in result.runs)
        statuses = partition_statuses(instance)
        assert statuses[failing] == "FAILED"
        assert {s for k, s in statuses.items() if k != failing} == {"MATERIALIZED"}
        # The failed check is recorded for that partition, naming the conflicting key.
        check_key = dg.AssetCheckKey(BATCHES_ASSET, BATCH_MATCHES_EXPORT)
        info = {i.partition_key: i for i in
                instance.event_log_storage.get_asset_check_partition_info([check_key])}
        assert info[failing].latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
        assert info[failing].is_current  # counted as FAILED by Dagster's partition view
        evaluation = next(
            r for r in instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=50) if r.partition == failing)
        metadata = evaluation.event.asset_check_evaluation.metadata
        assert planted in metadata["mismatch_keys"].value
        assert evaluation.run_id == failed_run.run_id
        # The conflict was not retried (it cannot go away by itself) and left no residue.
        logs = instance.all_logs(failed_run.run_id)
        assert not [e for e in logs if e.dagster_event and e.dagster_event.is_step_up_for_retry]
        with psycopg.connect(target_dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s",
                                (planted["thread_id"],)).fetchone()[0]
        assert rows == 1, "only the planted row: the failed batch's transaction rolled back"
        row = next(r for r in latest_check_evaluations(instance)
                   if r.check == BATCH_MATCHES_EXPORT)
        assert row.passed is False and row.run_id == failed_run.run_id
        assert row.partitions == f"{len(statuses) - 1}/{len(statuses)} passed"
        assert row.summary.startswith(failing)

        # Remove the cause; the backfill of failed and missing partitions runs only it.
        with psycopg.connect(target_dsn) as conn:
            conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id = %s",
                         (planted["thread_id"], planted["checkpoint_id"]))
        others = table_snapshot(target_dsn)
        backfill = backfill_in_process(**settings, instance=instance)
        assert [(r.step, r.partition) for r in backfill.runs] == [
            ("batch", failing), ("verification", None)]
        assert backfill.passed, backfill.render()
        assert set(partition_statuses(instance).values()) == {"MATERIALIZED"}
        assert table_snapshot(target_dsn) != others  # the batch's rows were added


def test_a_batch_loaded_without_its_check_result_is_loaded_and_checked_again(
    target_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped between a batch's materialization and its check result (a Ctrl-C can
    land there) leaves the partition MATERIALIZED with no current passed check: `backfill`
    loads and checks that batch again, and only it, and then passes."""
    source = write_corpus(tmp_path / "support.sqlite", threads=6)
    export = tmp_path / "export.export"
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    settings = {"source": str(source), "export": str(export), "batch_size": 12}
    with dg.instance_for_test() as instance:
        assert migrate_in_process(**settings, instance=instance).passed
        unproven = partition_keys_by_batch(read_manifest(export))[FAILING_BATCH]
        # What the stopped run stored: the batch's materialization, and no check result.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(BATCHES_ASSET, partition=unproven))
        assert partition_statuses(instance)[unproven] == "MATERIALIZED"
        # Every reader agrees that the batch is unproven: the checks table and the publish
        # gate count only a passed result of the batch's latest materialization.
        row = next(r for r in latest_check_evaluations(instance)
                   if r.check == BATCH_MATCHES_EXPORT)
        total = len(partition_statuses(instance))
        assert row.partitions == f"{total - 1}/{total} passed" and not row.ok
        assert {"check": f"imported_checkpoint_batches:{BATCH_MATCHES_EXPORT}[{unproven}]",
                "problem": "not passed on the batch's latest load"} in unpassed_checks(instance)

        result = backfill_in_process(**settings, instance=instance)

        assert result.passed, result.render()
        assert [r.partition for r in result.runs if r.step == "batch"] == [unproven]
