"""Dagster keeps PostgreSQL in step: the source_changed_sync sensor, evaluated directly.

The sensor (stopped by default) notices the SQLite file changed and requests a sync run;
the sync is a new materialization of the export asset whose batches become new partitions
(``g<export id>-s0001-b00001``); the sensor then requests their loads, each with its
``batch_matches_export`` result; the verification covers the export and the sync.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver

from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    EXPORT_ASSET,
    VERIFICATION_ASSET,
)
from checkpoint_assets.sync_sensor import (
    SYNC_BATCHES_JOB,
    SYNC_JOB,
    SYNC_SENSOR,
    source_changed_sync,
)
from checkpoint_assets_tests.dagster_support import (
    check_results,
    definitions,
    materialize,
    migrate,
    write_corpus,
)
from checkpoint_assets_tests.test_changing_source import running_application

pytestmark = [pytest.mark.timeout(180)]


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance,
             cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    """One tick of the sensor, as the daemon would run it."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                      sensor_name=SYNC_SENSOR, resources=defs.resources)
    return source_changed_sync(context)


def test_the_sensor_syncs_a_changed_source_into_new_partitions(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changed source -> sync run -> new partitions loaded -> verification passes."""
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)
    source, export = write_corpus(tmp_path / "app.sqlite", threads=4), tmp_path / "app.export"
    defs = definitions(source, export, batch_size=10)
    assert source_changed_sync.default_status == dg.DefaultSensorStatus.STOPPED
    with dg.DagsterInstance.ephemeral() as instance:
        migrate(defs, instance)
        first = evaluate(defs, instance, None)
        assert isinstance(first, dg.SensorResult)  # no cursor yet: a sync is requested
        quiet = evaluate(defs, instance, first.cursor)
        assert isinstance(quiet, dg.SkipReason)

        with running_application(source) as graph:
            graph.invoke({"messages": [HumanMessage(content="Where is A-4242?", id="h-0")],
                          "customer": "Late Customer", "order_id": "A-4242"},
                         {"configurable": {"thread_id": "support-late"}})
        changed = evaluate(defs, instance, first.cursor)
        assert isinstance(changed, dg.SensorResult) and changed.cursor != first.cursor
        assert [r.job_name for r in changed.run_requests] == [SYNC_JOB]

        sync = defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance)
        assert sync.success
        metadata = sync.asset_materializations_for_node(EXPORT_ASSET.path[-1])[0].metadata
        assert metadata["sync_generation"].value == 1
        assert metadata["threads_added"].value == 1
        new_keys = [k for k in instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
                    if "-s0001-b" in k]
        assert new_keys

        loads = evaluate(defs, instance, changed.cursor)
        assert isinstance(loads, dg.SensorResult)
        assert [(r.job_name, r.partition_key) for r in loads.run_requests] == [
            (SYNC_BATCHES_JOB, k) for k in new_keys]
        job = defs.resolve_job_def(SYNC_BATCHES_JOB)
        for key in new_keys:
            run = job.execute_in_process(instance=instance, partition_key=key)
            assert check_results(run, instance)[BATCH_MATCHES_EXPORT].passed
        assert isinstance(evaluate(defs, instance, changed.cursor), dg.SkipReason)

        verification = materialize(defs, instance, VERIFICATION_ASSET)
        assert verification.success
        assert all(e.passed for e in check_results(verification, instance).values())


def test_the_sensor_says_why_it_requests_nothing_after_a_failed_load(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync partition whose load failed (here: the target application already wrote the
    new thread, a conflict) is not requested again in silence: the sensor's skip reason
    names the partition and its run and says what to do."""
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)
    source, export = write_corpus(tmp_path / "app.sqlite", threads=4), tmp_path / "app.export"
    defs = definitions(source, export, batch_size=10)
    with dg.DagsterInstance.ephemeral() as instance:
        migrate(defs, instance)
        first = evaluate(defs, instance, None)
        with running_application(source) as graph:
            graph.invoke({"messages": [HumanMessage(content="Where is A-4242?", id="h-0")],
                          "customer": "Late Customer", "order_id": "A-4242"},
                         {"configurable": {"thread_id": "support-late"}})
        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
        with psycopg.connect(target_dsn) as conn:  # the PostgreSQL application's own row
            conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
                         "checkpoint, metadata) VALUES ('support-late', '', 'theirs', "
                         "'{}', '{}')")
        (key,) = [k for k in instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
                  if "-s0001-b" in k]
        failed = defs.resolve_job_def(SYNC_BATCHES_JOB).execute_in_process(
            instance=instance, partition_key=key, raise_on_error=False)
        assert not failed.success

        tick = evaluate(defs, instance, first.cursor)
        assert isinstance(tick, dg.SkipReason)
        assert key in tick.skip_message and failed.run_id[:8] in tick.skip_message
        assert "backfill the failed partitions" in tick.skip_message


def test_a_sync_partition_refuses_to_bring_back_a_thread_the_target_deleted(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletions on the target side in Dagster (issue 21, item 3): the application on
    PostgreSQL deleted a thread (PostgresSaver.delete_thread), a straggler on SQLite writes
    it again, the sync run writes a generation; loading its partition fails as a conflict
    whose description says the target application deleted those rows and what to do, its
    batch_matches_export check names the keys, and the thread is not re-created."""
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)
    source, export = write_corpus(tmp_path / "app.sqlite", threads=4), tmp_path / "app.export"
    defs = definitions(source, export, batch_size=10)
    with dg.DagsterInstance.ephemeral() as instance:
        migrate(defs, instance)
        with psycopg.connect(target_dsn, autocommit=True, prepare_threshold=0) as conn:
            PostgresSaver(conn).delete_thread("support-001")
        with running_application(source) as graph:
            graph.invoke({"messages": [HumanMessage(content="Still there?", id="h-late")],
                          "customer": "Straggler", "order_id": "A-1001"},
                         {"configurable": {"thread_id": "support-001"}})
        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
        new_keys = [k for k in instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
                    if "-s0001-b" in k]
        assert len(new_keys) == 1

        run = defs.resolve_job_def(SYNC_BATCHES_JOB).execute_in_process(
            instance=instance, partition_key=new_keys[0], raise_on_error=False)
        assert not run.success
        failure = run.get_step_failure_events()[0].step_failure_data.user_failure_data
        assert "The target application deleted" in failure.description
        assert "'support-001'" in failure.description
        assert "If that deletion is meant to stand" in failure.description
        assert failure.metadata["failure_kind"].value == "conflict"
        check = check_results(run, instance)[BATCH_MATCHES_EXPORT]
        assert not check.passed
        assert {k["conflict"] for k in check.metadata["mismatch_keys"].value} == {
            "deleted in the target"}
        with psycopg.connect(target_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = "
                                "'support-001'").fetchone() == (0,)
