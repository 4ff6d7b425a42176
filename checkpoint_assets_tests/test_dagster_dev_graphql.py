"""The same failure and recovery through a real ``dagster dev`` (webserver + daemon), driven
only through its GraphQL API, as a user in the UI would.

Under test: ``dagster dev`` loads the code location from workspace.yaml with every asset and
check; a partition backfill of the batches asset (the daemon path: runs of partition ranges)
leaves the batch with a planted conflict FAILED, and the check's Partitions view (the query
the page makes) counts every other batch passed and that one failed; the verification's
checks no longer read passed; after the conflict is removed, re-executing the backfill
FROM_FAILURE runs only that partition, and the verification runs again by itself (its
automation condition, evaluated by the sensor that runs by default) and passes every
check. The export was taken in-process by the CLI runner against the same DAGSTER_HOME
beforehand: one history for both front ends.

Slow by nature: the backfill daemon wakes every 30 s, and a re-execution needs the first
backfill to be finished, so this needs about three daemon ticks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster._core.storage.tags import SENSOR_NAME_TAG

from checkpoint_assets.check_results import partition_statuses
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.partitions import (
    AUTOMATION_SENSOR,
    BATCH_MATCHES_EXPORT,
    BATCHES_ASSET,
    VERIFICATION_ASSET,
    partition_keys_by_batch,
)
from checkpoint_assets.run_steps import project_instance
from checkpoint_assets.runner import migrate_in_process
from checkpoint_assets_tests.dagster_dev_support import (
    CHECK_EXECUTIONS,
    LAUNCH_BACKFILL,
    PARTITION_STATUSES,
    REEXECUTE_BACKFILL,
    RUN_TAGS,
    DagsterDev,
    asset_key,
    check_partition_statuses,
    finished_backfill,
    finished_runs,
    latest_check_statuses,
    partition_span,
    wait_for,
)
from checkpoint_assets_tests.dagster_support import dagster_dev_project
from checkpoint_assets_tests.test_dagster_backfill import plant_conflict

FAILING_BATCH = "batch-00002"  # the export file's key of the batch with a planted conflict
BACKFILL_SECONDS = 120
# The sensor's interval, the run, and a verification it may be running already (started
# when the first backfill ended) that the new one waits for.
AUTOMATION_SECONDS = 150

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def dev_project(tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        dict[str, Any]]:
    """A persistent DAGSTER_HOME with the shipped dagster.yaml, a corpus exported through
    the CLI runner into it, and a conflict planted in the target for batch FAILING_BATCH."""
    _, export, env = dagster_dev_project(tmp_path, target_dsn, threads=5, batch_size=12)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    first = migrate_in_process()  # export + batches + verification, all from the CLI path
    assert first.passed, first.render()
    with psycopg.connect(target_dsn) as conn:  # start over on an empty target
        conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
    planted = plant_conflict(target_dsn, export, FAILING_BATCH)
    yield {"env": {**os.environ, **env}, "dsn": target_dsn, "planted": planted,
           "cwd": tmp_path,
           "failing": partition_keys_by_batch(read_manifest(export))[FAILING_BATCH]}


def test_backfill_then_reexecute_from_failure_through_dagster_dev(
    dev_project: dict[str, Any]
) -> None:
    """Backfill all batches -> one fails, and the check's partition view says so; fix;
    re-execute FROM_FAILURE -> only that one runs; the verification runs by itself and
    every check passes."""
    failing = dev_project["failing"]
    started = time.monotonic()
    dev = DagsterDev(dev_project["cwd"], dev_project["env"], dev_project["cwd"] / "dev.log")
    try:
        dev.wait_until_serving()
        ready = time.monotonic()

        backfill = dev.gql(LAUNCH_BACKFILL, {"params": {
            "assetSelection": [asset_key(BATCHES_ASSET)], "allPartitions": True,
            "title": "load every batch"}})["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
        first = wait_for(lambda: finished_backfill(dev, backfill["backfillId"]),
                         BACKFILL_SECONDS, "the first backfill", dev)
        assert first["status"] == "COMPLETED_FAILED", first
        failed_runs = [r for r in first["runs"] if r["status"] == "FAILURE"]
        [(start, end)] = [partition_span(r) for r in failed_runs]  # one ranged run failed
        assert start <= failing <= end
        statuses = partition_statuses_of(dev)
        assert statuses["failedPartitions"] == [failing]
        assert failing not in statuses["materializedPartitions"]
        checks = check_partition_statuses(dev, BATCHES_ASSET, BATCH_MATCHES_EXPORT)
        assert checks["failedPartitions"] == [failing], checks
        assert sorted(checks["succeededPartitions"]) == sorted(
            k for k in checks["partitionKeys"] if k != failing), checks
        # The verification's checks of the earlier migration no longer read passed.
        stale = latest_check_statuses(dev, VERIFICATION_ASSET)
        assert not any(e and e["status"] == "SUCCEEDED" for e in stale.values()), stale
        stale_runs = {e["runId"] for e in stale.values() if e}
        execution = dev.gql(CHECK_EXECUTIONS, {"key": asset_key(BATCHES_ASSET),
                                               "name": BATCH_MATCHES_EXPORT,
                                               "partition": failing})["assetCheckExecutions"]
        assert execution[0]["evaluation"]["success"] is False
        assert execution[0]["runId"] == failed_runs[0]["runId"]
        labels = {m["label"] for m in execution[0]["evaluation"]["metadataEntries"]}
        assert {"expected", "actual", "mismatch_keys"} <= labels
        first_done = time.monotonic()

        with psycopg.connect(dev_project["dsn"]) as conn:  # remove the cause
            conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id = %s",
                         (dev_project["planted"]["thread_id"],
                          dev_project["planted"]["checkpoint_id"]))
        retry = dev.gql(REEXECUTE_BACKFILL, {"params": {
            "parentRunId": backfill["backfillId"], "strategy": "FROM_FAILURE"}})
        retry = retry["reexecutePartitionBackfill"]
        assert retry["__typename"] == "LaunchBackfillSuccess", retry
        runs = wait_for(lambda: finished_runs(dev, retry["backfillId"]), BACKFILL_SECONDS,
                        "the re-executed partition", dev)
        assert [(partition_span(r), r["status"]) for r in runs] == [
            ((failing, failing), "SUCCESS")], "only the failed partition runs again"
        assert not partition_statuses_of(dev)["failedPartitions"]
        checks = check_partition_statuses(dev, BATCHES_ASSET, BATCH_MATCHES_EXPORT)
        assert sorted(checks["succeededPartitions"]) == sorted(checks["partitionKeys"])
        second_done = time.monotonic()

        def verified_again() -> dict[str, Any] | None:
            # A verification the automation started while the batch was still failing
            # fails; the one after the repair passes.
            latest = latest_check_statuses(dev, VERIFICATION_ASSET)
            passed = all(e and e["status"] == "SUCCEEDED" and e["runId"] not in stale_runs
                         for e in latest.values())
            return latest if passed else None

        latest = wait_for(verified_again, AUTOMATION_SECONDS,
                          "the verification to run again by itself and pass", dev)
        [run_id] = {e["runId"] for e in latest.values()}
        tags = dev.gql(RUN_TAGS, {"id": run_id})["runOrError"]["tags"]
        assert {"key": SENSOR_NAME_TAG, "value": AUTOMATION_SENSOR} in tags, tags
        print(f"\ndagster dev: ready {ready - started:.1f} s, first backfill "
              f"{first_done - ready:.1f} s, re-execution {second_done - first_done:.1f} s, "
              f"verification {time.monotonic() - second_done:.1f} s")
    finally:
        dev.stop()
    # The UI's runs and the CLI's runs are one history in one instance.
    with project_instance() as instance:
        assert set(partition_statuses(instance).values()) == {"MATERIALIZED"}
        front_ends = {r.dagster_run.tags.get("checkpoint_assets/front_end")
                      for r in instance.get_run_records()}
        assert front_ends == {"cli", None}  # None: launched from the UI / daemon


def partition_statuses_of(dev: DagsterDev) -> dict[str, list[str]]:
    """The batches asset's partition statuses, as the UI shows them."""
    node = dev.gql(PARTITION_STATUSES, {"key": asset_key(BATCHES_ASSET)})["assetNodeOrError"]
    return node["assetPartitionStatuses"]
