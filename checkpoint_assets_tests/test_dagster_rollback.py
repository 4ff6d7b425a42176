"""The rollback asset group (checkpoint_rollback), materialized in-process.

Under test: the group's lineage, partitions and checks in the code location; a rollback
as asset runs (the export, one run per restored batch partition, the verification) against
a real PostgreSQL migrated by this tool, with every check passing and the new SQLite file
published under its final name only by the verification; re-materializing a restored
batch afterwards changes nothing.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import dagster as dg
import psycopg
from langgraph.checkpoint.postgres import PostgresSaver

from checkpoint_assets.assets.rollback import ROLLBACK_CHECK_NAMES
from checkpoint_assets.check_results import latest_check_evaluations
from checkpoint_assets.definitions import build_definitions, defs
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.rollback.sqlite_target import work_path
from checkpoint_assets.engine.verify.check_table import SQLITE_THREADS_NOT_IN_POSTGRES
from checkpoint_assets.partitions import (
    EXPORT_FILE_VERIFIES,
    RESTORED_BATCH_MATCHES_EXPORT,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_GROUP_NAME,
    ROLLBACK_PARTITIONS_NAME,
    ROLLBACK_VERIFICATION_ASSET,
    rollback_partitions,
)
from checkpoint_assets.resources import RollbackResource, build_resources
from checkpoint_assets.settings import Settings
from checkpoint_assets_tests.dagster_support import (
    check_results,
    materialize,
    write_corpus,
)

CHECKPOINTS_SQL = "SELECT * FROM checkpoints ORDER BY thread_id, checkpoint_ns, checkpoint_id"
WRITES_SQL = "SELECT * FROM writes ORDER BY thread_id, checkpoint_ns, checkpoint_id, task_id, idx"


def test_rollback_group_declares_lineage_partitions_and_checks() -> None:
    graph = defs.resolve_asset_graph()
    assert graph.get(RESTORED_BATCHES_ASSET).parent_keys == {ROLLBACK_EXPORT_ASSET}
    assert graph.get(ROLLBACK_VERIFICATION_ASSET).parent_keys == {RESTORED_BATCHES_ASSET}
    assert graph.get(RESTORED_BATCHES_ASSET).partitions_def == rollback_partitions
    for key in (ROLLBACK_EXPORT_ASSET, RESTORED_BATCHES_ASSET, ROLLBACK_VERIFICATION_ASSET):
        assert graph.get(key).group_name == ROLLBACK_GROUP_NAME
        assert graph.get(key).description
    checks = {(k.asset_key, k.name) for k in graph.asset_check_keys
              if graph.get(k.asset_key).group_name == ROLLBACK_GROUP_NAME}
    assert checks == {(ROLLBACK_EXPORT_ASSET, EXPORT_FILE_VERIFIES),
                      (RESTORED_BATCHES_ASSET, RESTORED_BATCH_MATCHES_EXPORT),
                      *((ROLLBACK_VERIFICATION_ASSET, n) for n in ROLLBACK_CHECK_NAMES)}


def test_a_rollback_as_asset_runs_publishes_a_verified_file(
        target_dsn: str, tmp_path: Path, monkeypatch: object) -> None:
    source = write_corpus(tmp_path / "app.sqlite", threads=6)
    import_export(write_export(source, tmp_path / "forward.export", batch_size=12),
                  Target(target_dsn))
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)  # type: ignore[attr-defined]
    back = tmp_path / "back.sqlite"
    resources = build_resources(replace(Settings.from_env(), source=str(source),
                                        readback_threads=None))
    resources["rollback"] = RollbackResource(
        to_path=str(back), batch_size=12, original_export=str(tmp_path / "forward.export"))
    code = build_definitions(resources, staging=False)

    with dg.instance_for_test() as instance:
        export_run = materialize(code, instance, ROLLBACK_EXPORT_ASSET)
        assert export_run.success
        keys = sorted(instance.get_dynamic_partitions(ROLLBACK_PARTITIONS_NAME))
        assert len(keys) >= 2
        for key in keys:
            run = materialize(code, instance, RESTORED_BATCHES_ASSET, partition=key)
            assert run.success and check_results(run, instance)[
                RESTORED_BATCH_MATCHES_EXPORT].passed, key
        assert not back.exists() and work_path(back).exists()  # not yet verified

        verification = materialize(code, instance, ROLLBACK_VERIFICATION_ASSET)

        results = check_results(verification, instance)
        assert set(results) == set(ROLLBACK_CHECK_NAMES)
        assert all(e.passed for e in results.values()), {
            n: e.metadata for n, e in results.items() if not e.passed}
        assert back.exists() and not work_path(back).exists()
        # `checkpoint-assets checks` lists the rollback's checks once a rollback ran.
        rows = {(r.asset, r.check): r for r in latest_check_evaluations(instance, code)}
        assert rows[("restored_checkpoint_batches", RESTORED_BATCH_MATCHES_EXPORT)].passed
        assert all(rows[("rollback_verification", n)].passed for n in ROLLBACK_CHECK_NAMES)
        with closing(sqlite3.connect(source)) as a, closing(sqlite3.connect(back)) as b:
            # Given the forward export, every checkpoint comes back in its original bytes.
            assert a.execute(CHECKPOINTS_SQL).fetchall() == \
                b.execute(CHECKPOINTS_SQL).fetchall()
            assert a.execute(WRITES_SQL).fetchall() == b.execute(WRITES_SQL).fetchall()
            before = b.execute(CHECKPOINTS_SQL).fetchall()
        # Restoring a batch again, now into the published file, changes nothing.
        again = materialize(code, instance, RESTORED_BATCHES_ASSET, partition=keys[0])
        assert again.success
        with closing(sqlite3.connect(back)) as b:
            assert b.execute(CHECKPOINTS_SQL).fetchall() == before


def test_a_conflicting_row_fails_its_batch_with_the_key_and_changes_nothing(
        target_dsn: str, tmp_path: Path, monkeypatch: object) -> None:
    source = write_corpus(tmp_path / "app.sqlite", threads=2)
    import_export(write_export(source, tmp_path / "forward.export"), Target(target_dsn))
    with closing(sqlite3.connect(source)) as conn, conn:
        key = conn.execute("SELECT thread_id, checkpoint_id FROM checkpoints "
                           "ORDER BY 1, 2 LIMIT 1").fetchone()
        conn.execute("UPDATE checkpoints SET metadata = ? WHERE thread_id = ? AND "
                     "checkpoint_id = ?", (b'{"edited": true}', *key))
    with closing(sqlite3.connect(source)) as conn:
        before = conn.execute(CHECKPOINTS_SQL).fetchall()
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)  # type: ignore[attr-defined]
    resources = build_resources(replace(Settings.from_env(), source=str(source)))
    resources["rollback"] = RollbackResource(to_path=str(source))  # the original file
    code = build_definitions(resources, staging=False)

    with dg.instance_for_test() as instance:
        assert materialize(code, instance, ROLLBACK_EXPORT_ASSET).success
        [partition] = instance.get_dynamic_partitions(ROLLBACK_PARTITIONS_NAME)
        run = materialize(code, instance, RESTORED_BATCHES_ASSET, partition=partition)

        assert not run.success
        check = check_results(run, instance)[RESTORED_BATCH_MATCHES_EXPORT]
        assert not check.passed
        assert {"thread_id": key[0], "checkpoint_ns": "", "checkpoint_id": key[1]} in \
            check.metadata["mismatch_keys"].value
    with closing(sqlite3.connect(source)) as conn:
        assert conn.execute(CHECKPOINTS_SQL).fetchall() == before


def test_threads_deleted_on_postgres_are_a_warning_until_the_resource_removes_them(
        target_dsn: str, tmp_path: Path, monkeypatch: object) -> None:
    """The rollback group into the original file after the application on PostgreSQL
    deleted a thread (issue 21, item 4): the verification passes with the WARN check
    sqlite_threads_not_in_postgres naming the thread, which stays in the file; with the
    resource's remove_deleted_threads the verification removes it first (named in its
    notes and the materialization's metadata) and every check passes."""
    source = write_corpus(tmp_path / "app.sqlite", threads=3)
    import_export(write_export(source, tmp_path / "forward.export"), Target(target_dsn))
    with psycopg.connect(target_dsn, autocommit=True, prepare_threshold=0) as conn:
        PostgresSaver(conn).delete_thread("support-001")
    monkeypatch.setenv("CHECKPOINT_ASSETS_TARGET_DSN", target_dsn)  # type: ignore[attr-defined]
    resources = build_resources(replace(Settings.from_env(), source=str(source)))

    def threads() -> set[str]:
        with closing(sqlite3.connect(source)) as conn:
            return {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}

    with dg.instance_for_test() as instance:
        for remove in (False, True):
            resources["rollback"] = RollbackResource(to_path=str(source),
                                                     remove_deleted_threads=remove)
            code = build_definitions(resources, staging=False)
            assert materialize(code, instance, ROLLBACK_EXPORT_ASSET).success
            for key in instance.get_dynamic_partitions(ROLLBACK_PARTITIONS_NAME):
                assert materialize(code, instance, RESTORED_BATCHES_ASSET, partition=key).success
            verification = materialize(code, instance, ROLLBACK_VERIFICATION_ASSET)
            assert verification.success
            results = check_results(verification, instance)
            deleted = results[SQLITE_THREADS_NOT_IN_POSTGRES]
            others = [n for n in ROLLBACK_CHECK_NAMES if n != SQLITE_THREADS_NOT_IN_POSTGRES]
            assert all(results[n].passed for n in others)
            metadata = verification.asset_materializations_for_node(
                ROLLBACK_VERIFICATION_ASSET.path[-1])[0].metadata
            if not remove:
                assert not deleted.passed and deleted.severity == dg.AssetCheckSeverity.WARN
                assert [m["thread_id"] for m in deleted.metadata["mismatch_keys"].value] == [
                    "support-001"]
                assert "support-001" in threads()
                assert metadata["removed_threads"].value == []
            else:
                assert deleted.passed
                assert "support-001" in deleted.metadata["notes"].value
                assert "support-001" not in threads() and threads() == {"support-000",
                                                                        "support-002"}
                assert metadata["removed_threads"].value == ["support-001"]
