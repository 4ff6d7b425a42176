"""A migration run by Dagster itself, as on several hosts: the shipped
``dagster-distributed.yaml`` (PostgreSQL-backed instance, queued run coordinator) under a real
``dagster dev``, driven only through its GraphQL API.

Under test: with that instance configuration the export run, a backfill of every batch
partition through the daemon (several ranged runs dequeued and running at once) and the
verification (started by its automation condition) complete; every batch is materialized exactly once with one passed
``batch_matches_export`` result, every verification check passes, and the whole history is
in Dagster's PostgreSQL database, none of it in SQLite files under the home. What cannot be
proven on one machine is that the runs start on other hosts: the file names the launchers
that do that (README, "Migrating across several hosts").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import SENSOR_NAME_TAG
from psycopg.conninfo import conninfo_to_dict

from checkpoint_assets.partitions import (
    AUTOMATION_SENSOR,
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    VERIFICATION_ASSET,
)
from checkpoint_assets.project import DISTRIBUTED_INSTANCE_YAML
from checkpoint_assets.settings import DAGSTER_PG_ENV
from checkpoint_assets_tests.dagster_dev_support import (
    LAUNCH_BACKFILL,
    LAUNCH_RUN,
    LOCATION,
    RUN_TAGS,
    DagsterDev,
    asset_key,
    finished_backfill,
    latest_check_statuses,
    run_status,
    wait_for,
)
from checkpoint_assets_tests.dagster_support import dagster_dev_project, fresh_database

THREADS = 60  # one thread per batch: 60 batches, three ranged runs of up to 25
BATCH_SIZE = 5
RUN_SECONDS = 180
AUTOMATION_SECONDS = 120  # the sensor's interval, then a run process and the verification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def distributed_project(tmp_path: Path, target_dsn: str,
                        admin_dsn: str) -> Iterator[dict[str, Any]]:
    """A project whose DAGSTER_HOME holds the shipped dagster-distributed.yaml, its storage
    in a fresh PostgreSQL database named only through the environment."""
    with fresh_database(admin_dsn) as dagster_db:
        params = conninfo_to_dict(dagster_db)
        if str(params.get("host", "")).startswith("/"):
            pytest.skip("dagster-postgres needs a TCP host; the test server is socket-only")
        _, export, env = dagster_dev_project(tmp_path, target_dsn, threads=THREADS,
                                             batch_size=BATCH_SIZE)
        home = Path(env["DAGSTER_HOME"])
        (home / "dagster.yaml").write_bytes(DISTRIBUTED_INSTANCE_YAML.read_bytes())
        env.update({DAGSTER_PG_ENV["hostname"]: str(params.get("host", "localhost")),
                    DAGSTER_PG_ENV["port"]: str(params.get("port", "5432")),
                    DAGSTER_PG_ENV["username"]: str(params.get("user", "postgres")),
                    DAGSTER_PG_ENV["password"]: str(params.get("password", "")),
                    DAGSTER_PG_ENV["db_name"]: str(params["dbname"])})
        yield {"env": {**os.environ, **env}, "cwd": tmp_path, "home": home,
               "dagster_db": dagster_db}


def test_backfill_on_a_shared_postgres_instance_with_queued_runs(
    distributed_project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export -> backfill of every batch (ranged runs at once, through the queue) ->
    verification by itself: every batch once, every check passed, all history in
    PostgreSQL."""
    project = distributed_project
    dev = DagsterDev(project["cwd"], project["env"], project["cwd"] / "dev.log")
    try:
        dev.wait_until_serving()
        export_run = _launch(dev, EXPORT_ASSET)
        assert wait_for(lambda: run_status(dev, export_run), RUN_SECONDS, "the export run",
                        dev) == "SUCCESS", dev.tail()

        launched = dev.gql(LAUNCH_BACKFILL, {"params": {
            "assetSelection": [asset_key(BATCHES_ASSET)], "allPartitions": True,
            "title": "every batch, through the queue"}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        done = wait_for(lambda: finished_backfill(dev, launched["backfillId"]), RUN_SECONDS,
                        "the backfill", dev)
        assert done["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), done
        runs = done["runs"]
        assert len(runs) >= 3 and {r["status"] for r in runs} == {"SUCCESS"}, runs
        at_once = _most_at_once(runs)
        assert at_once >= 2, f"the queue ran one run at a time: {runs}"
        print(f"\nbackfill: {len(runs)} ranged runs, up to {at_once} at once")

        # The verification is not launched by hand: its automation condition (the sensor
        # runs by default) starts it once every batch is loaded, as on any deployment.
        latest = wait_for(lambda: _all_passed(latest_check_statuses(dev, VERIFICATION_ASSET)),
                          AUTOMATION_SECONDS, "the verification to run by itself and pass",
                          dev)
        [verification_run] = {e["runId"] for e in latest.values()}
        tags = dev.gql(RUN_TAGS, {"id": verification_run})["runOrError"]["tags"]
        assert {"key": SENSOR_NAME_TAG, "value": AUTOMATION_SENSOR} in tags, tags
    finally:
        dev.stop()

    for name, value in project["env"].items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
        assert len(keys) == THREADS
        assert _materializations_per_partition(instance) == Counter(dict.fromkeys(keys, 1))
        assert _passed_checks_per_partition(instance) == Counter(dict.fromkeys(keys, 1))
    with psycopg.connect(project["dagster_db"]) as conn:
        stored_runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    # The export, the backfill's runs and the verification: nothing ran twice.
    assert stored_runs == 1 + len(runs) + 1
    assert not list(project["home"].glob("**/*.db")), "no SQLite storage beside PostgreSQL"


def _all_passed(latest: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The checks' latest executions once every one of them succeeded, else None."""
    return latest if all(e and e["status"] == "SUCCEEDED" for e in latest.values()) else None


def _launch(dev: DagsterDev, asset: dg.AssetKey) -> str:
    """Launch one run of ``asset`` as the UI's Materialize button does; its run id."""
    launched = dev.gql(LAUNCH_RUN, {"params": {"selector": {
        "repositoryLocationName": LOCATION, "repositoryName": "__repository__",
        "jobName": "__ASSET_JOB", "assetSelection": [asset_key(asset)]}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _most_at_once(runs: list[dict[str, Any]]) -> int:
    """The largest number of ``runs`` in progress at the same moment."""
    edges = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs],
                   key=lambda edge: (edge[0], edge[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _materializations_per_partition(instance: dg.DagsterInstance) -> Counter[str]:
    """How many times each batch partition was materialized."""
    records = instance.fetch_materializations(BATCHES_ASSET, limit=10_000).records
    return Counter(r.partition_key for r in records)


def _passed_checks_per_partition(instance: dg.DagsterInstance) -> Counter[str]:
    """How many passed ``batch_matches_export`` results each batch partition has."""
    check_key = dg.AssetCheckKey(BATCHES_ASSET, BATCH_MATCHES_EXPORT)
    found = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=10_000)
    passed = [r for r in found if r.event and r.event.asset_check_evaluation
              and r.event.asset_check_evaluation.passed]
    return Counter(r.event.asset_check_evaluation.partition for r in passed)


def test_the_distributed_configuration_is_valid_and_names_no_secret() -> None:
    """The shipped file loads as a Dagster instance configuration and holds no value that
    differs per deployment: every connection setting comes from the environment."""
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DISTRIBUTED_INSTANCE_YAML.parent),
                                        config_filename=DISTRIBUTED_INSTANCE_YAML.name)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    database = config["storage"]["postgres"]["postgres_db"]
    assert {field: value for field, value in database.items() if field != "scheme"} == {
        field: {"env": name} for field, name in DAGSTER_PG_ENV.items()}
