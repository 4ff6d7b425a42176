"""The Dagster assets, materialized in-process against a real PostgreSQL.

Under test: the code location's definitions (lineage, groups, kinds, checks, partitions,
pool), and a full migration as asset runs: the export, one run per batch partition and the
verification, with every check passing and the verification reporting the source's own
counts and digests; re-materializing a loaded partition changes no row; exporting twice
yields the same partitions; the DSN's password never reaches Dagster's storage; staging
mode publishes only verified data, in one transaction.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from checkpoint_assets.assets.imported_batches import (
    ROWS_ALREADY_PRESENT,
    ROWS_INSERTED,
)
from checkpoint_assets.assets.staleness import OUT_OF_DATE
from checkpoint_assets.check_results import latest_check_evaluations, partition_statuses
from checkpoint_assets.definitions import build_definitions, defs
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    AUTOMATION_SENSOR,
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    EXPORT_CHECK_NAMES,
    GROUP_NAME,
    OWNERS,
    PUBLISH_ASSET,
    PUBLISHED_MATCHES_EXPORT,
    TARGET_POOL,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_NAMES,
    VERIFICATION_WARNING_CHECKS,
    batch_partitions,
    manifest_export_id,
    partition_keys,
)
from checkpoint_assets.runner import migrate_in_process
from checkpoint_assets.settings import TARGET_DSN_ENV
from checkpoint_assets_tests.dagster_support import (
    check_results,
    definitions,
    fresh_database,
    materialize,
    migrate,
    sqlite_counts,
    table_snapshot,
    with_password,
    write_corpus,
)

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "pw-must-never-be-stored"
BATCH_SIZE = 12


# --------------------------------------------------------------------------- definitions


def test_definitions_declare_lineage_groups_kinds_and_checks() -> None:
    """export -> batches -> verification; one group; every asset and check documented."""
    dg.Definitions.validate_loadable(defs)
    graph = build_definitions(staging=True).resolve_asset_graph()
    assert graph.get(BATCHES_ASSET).parent_keys == {EXPORT_ASSET}
    assert graph.get(VERIFICATION_ASSET).parent_keys == {BATCHES_ASSET}
    assert graph.get(PUBLISH_ASSET).parent_keys == {VERIFICATION_ASSET}
    for key in (EXPORT_ASSET, BATCHES_ASSET, VERIFICATION_ASSET, PUBLISH_ASSET):
        node = graph.get(key)
        assert node.group_name == GROUP_NAME
        assert node.description and len(node.description) > 80
        assert node.kinds & {"sqlite", "postgres"}
    assert graph.get(BATCHES_ASSET).partitions_def == batch_partitions
    for key in (BATCHES_ASSET, VERIFICATION_ASSET, PUBLISH_ASSET):  # all that use PostgreSQL
        assert graph.get(key).pools == {TARGET_POOL}
    checks = {(k.asset_key, k.name) for k in graph.asset_check_keys
              if graph.get(k.asset_key).group_name == GROUP_NAME}  # the rollback's: own test
    assert checks == {
        *((EXPORT_ASSET, n) for n in EXPORT_CHECK_NAMES),
        (BATCHES_ASSET, BATCH_MATCHES_EXPORT),
        *((VERIFICATION_ASSET, n) for n in VERIFICATION_CHECK_NAMES),
        (PUBLISH_ASSET, PUBLISHED_MATCHES_EXPORT),
    }
    assert all(graph.get_check_spec(k).description for k in graph.asset_check_keys)
    for key in (EXPORT_ASSET, BATCHES_ASSET, VERIFICATION_ASSET, PUBLISH_ASSET):
        node = graph.get(key)  # as Dagster users expect: who owns it, where its code is
        assert node.owners == OWNERS and ASSET_TAGS.items() <= node.tags.items()
        assert "dagster/code_references" in node.metadata
    # The verification follows the batches by itself, evaluated by a sensor that runs by
    # default (nothing to switch on in the UI).
    assert graph.get(VERIFICATION_ASSET).automation_condition is not None
    [sensor] = [s for s in defs.sensors if s.name == AUTOMATION_SENSOR]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Direct mode (the default) has no publish step.
    direct = build_definitions(staging=False).resolve_asset_graph()
    assert PUBLISH_ASSET not in direct.get_all_asset_keys()


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    """`dagster definitions validate`, run from the repository root as the README says,
    loads the code location named in pyproject.toml."""
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run([str(dagster), "definitions", "validate"], cwd=REPO,
                            env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Validation successful for code location checkpoint_assets" in output


def test_partitioned_assets_need_no_run_config() -> None:
    """UI backfills cannot supply run config: every resource field has a value or an EnvVar."""
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.run_config_schema.config_type.fields  # exists, but nothing in it is required
    assert not [name for name, field in job.run_config_schema.config_type.fields.items()
                if field.is_required]


# --------------------------------------------------------------------------- full migration


@pytest.fixture(scope="module")
def migrated(admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One full in-process migration of a real corpus, shared by the tests below."""
    work = tmp_path_factory.mktemp("migrated")
    source = write_corpus(work / "support.sqlite", threads=6)
    with fresh_database(admin_dsn) as dsn, dg.instance_for_test() as instance:
        mp = pytest.MonkeyPatch()
        mp.setenv(TARGET_DSN_ENV, with_password(dsn, PASSWORD))
        code = definitions(source, work / "export.export", batch_size=BATCH_SIZE)
        runs = migrate(code, instance)
        yield {"source": source, "export": work / "export.export", "dsn": dsn,
               "instance": instance, "defs": code, "runs": runs, "work": work}
        mp.undo()


def test_full_migration_passes_every_check(migrated: dict[str, Any]) -> None:
    """Export, every partition and the verification succeed, and every check passes."""
    runs, instance = migrated["runs"], migrated["instance"]
    assert runs["export"].success
    assert set(check_results(runs["export"], instance)) == set(EXPORT_CHECK_NAMES)
    assert all(e.passed for e in check_results(runs["export"], instance).values())
    assert len(runs["batches"]) >= 3, "the corpus should span several batches"
    for key, run in runs["batches"].items():
        assert run.success, key
        evaluation = check_results(run, instance)[BATCH_MATCHES_EXPORT]
        assert evaluation.passed and evaluation.partition == key
    verification = check_results(runs["verification"], instance)
    assert set(verification) == set(VERIFICATION_CHECK_NAMES)
    assert all(e.passed for e in verification.values()), {
        n: e.metadata for n, e in verification.items() if not e.passed}
    rows = latest_check_evaluations(migrated["instance"], migrated["defs"])
    assert rows and all(r.passed for r in rows)


def test_each_batch_result_is_tied_to_its_materialization(migrated: dict[str, Any]) -> None:
    """Every batch partition's latest ``batch_matches_export`` result passed and targets
    the partition's latest materialization: what Dagster's per-partition check status (the
    check's Partitions view, the asset graph) counts as passed rather than missing."""
    instance = migrated["instance"]
    key = dg.AssetCheckKey(BATCHES_ASSET, BATCH_MATCHES_EXPORT)
    infos = instance.event_log_storage.get_asset_check_partition_info([key])
    current = set(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    assert {i.partition_key for i in infos} >= current
    for info in infos:
        if info.partition_key in current:
            assert info.is_current and info.latest_target_materialization_storage_id, info
            assert info.latest_execution_status.value == "SUCCEEDED", info


def test_verification_reports_the_sources_counts_and_digests(migrated: dict[str, Any]) -> None:
    """The verification's counts are SQLite's, and its digests are those of the source."""
    run = migrated["runs"]["verification"]
    metadata = run.asset_materializations_for_node("migration_verification")[0].metadata
    counts = sqlite_counts(migrated["source"])
    assert metadata["sqlite_checkpoints"].value == counts["checkpoints"]
    assert metadata["postgres_checkpoints"].value == counts["checkpoints"]
    assert metadata["sqlite_writes"].value == counts["writes"]
    assert metadata["postgres_writes"].value == counts["writes"]
    # A fresh export of the source (engine only, no Dagster) has the same content digest.
    again = write_export(migrated["source"], migrated["work"] / "again.export",
                         batch_size=BATCH_SIZE)
    assert metadata["export_content_sha256"].value == again.content_sha256
    digests = metadata["batch_digests"].value.records
    assert [row.data["batch"] for row in digests] == partition_keys(again)
    assert all(row.data["equal"] and row.data["export"] == row.data["postgres"]
               for row in digests)


def test_rematerializing_a_loaded_partition_changes_no_rows(migrated: dict[str, Any]) -> None:
    """Loading a batch again inserts nothing, rewrites nothing, and still passes its check."""
    before = table_snapshot(migrated["dsn"])
    key = sorted(migrated["runs"]["batches"])[1]
    run = materialize(migrated["defs"], migrated["instance"], BATCHES_ASSET, partition=key)
    assert run.success
    metadata = run.asset_materializations_for_node("imported_checkpoint_batches")[0].metadata
    assert metadata[ROWS_INSERTED].value == 0
    assert metadata[ROWS_ALREADY_PRESENT].value == sum(
        metadata[f"rows_{table}"].value for table in TABLES)
    assert check_results(run, migrated["instance"])[BATCH_MATCHES_EXPORT].passed
    assert table_snapshot(migrated["dsn"]) == before


def test_exporting_twice_yields_the_same_partitions(migrated: dict[str, Any]) -> None:
    """Partition keys and batch digests are deterministic for the same source and batch
    size; the keys name the export (g<export id>-b00001, ...)."""
    instance = migrated["instance"]
    first = read_manifest(migrated["export"])
    keys = sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    assert materialize(migrated["defs"], instance, EXPORT_ASSET).success
    second = read_manifest(migrated["export"])
    assert sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)) == keys
    assert [(b.key, b.sha256) for b in second.batches] == [(b.key, b.sha256) for b in first.batches]
    export_id = manifest_export_id(first)
    assert keys == [f"g{export_id}-b{n:05d}" for n in range(1, len(first.batches) + 1)]


def test_a_new_batch_size_replaces_stale_partitions(migrated: dict[str, Any]) -> None:
    """Re-exporting with another batch size leaves exactly the new export's partitions,
    under new keys that no load has materialized: "failed and missing" is every batch, and
    the verification's checks are out of date until it runs again."""
    instance = migrated["instance"]
    old_keys = instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
    bigger = definitions(migrated["source"], migrated["work"] / "big.export", batch_size=10_000)
    run = materialize(bigger, instance, EXPORT_ASSET)
    assert run.success
    [new_key] = instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
    assert new_key == partition_keys(read_manifest(migrated["work"] / "big.export"))[0]
    assert new_key not in old_keys
    assert partition_statuses(instance) == {new_key: "MISSING"}
    removed = run.asset_materializations_for_node("checkpoint_export")[0].metadata
    assert sorted(removed["partitions_removed"].value) == sorted(old_keys)
    stale = check_results(run, instance)
    assert set(stale) >= set(VERIFICATION_CHECK_NAMES)
    assert not any(stale[name].passed for name in VERIFICATION_CHECK_NAMES)
    assert all(stale[name].description.startswith(OUT_OF_DATE)
               for name in VERIFICATION_CHECK_NAMES)
    # Put the module's export back for the other tests.
    assert materialize(migrated["defs"], instance, EXPORT_ASSET).success


def test_the_dsn_password_never_reaches_dagster_storage(migrated: dict[str, Any]) -> None:
    """Runs, configs, events and metadata of the whole migration hold no password."""
    instance = migrated["instance"]
    for record in instance.get_run_records():
        assert PASSWORD not in repr(record.dagster_run)
        for entry in instance.all_logs(record.dagster_run.run_id):
            assert PASSWORD not in repr(entry)


# --------------------------------------------------------------------------- staging mode


def test_staging_mode_publishes_verified_batches_in_one_step(
    target_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches land in the staging schema; publish moves them to the target schema only
    once every check has passed; publishing again inserts nothing."""
    source = write_corpus(tmp_path / "support.sqlite", threads=4)
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    with dg.instance_for_test() as instance:
        code = definitions(source, tmp_path / "export.export", batch_size=BATCH_SIZE,
                           schema="checkpoints_live", staging_schema="checkpoints_staging")
        early = materialize(code, instance, EXPORT_ASSET)
        assert early.success
        refused = materialize(code, instance, PUBLISH_ASSET)
        assert not refused.success, "publish must refuse before verification"
        assert not check_results(refused, instance)[PUBLISHED_MATCHES_EXPORT].passed

        result = migrate_in_process(
            source=str(source), export=str(tmp_path / "export.export"),
            target_schema="checkpoints_live", staging_schema="checkpoints_staging",
            batch_size=BATCH_SIZE, readback_threads=None, instance=instance)
        assert result.passed, result.render()
        counts = sqlite_counts(source)
        with psycopg.connect(target_dsn) as conn:
            for schema in ("checkpoints_live", "checkpoints_staging"):
                n = conn.execute(f"SELECT count(*) FROM {schema}.checkpoints").fetchone()[0]
                assert n == counts["checkpoints"], schema
        before = table_snapshot(target_dsn, "checkpoints_live")
        again = materialize(code, instance, PUBLISH_ASSET)
        assert again.success
        metadata = again.asset_materializations_for_node("published_checkpoints")[0].metadata
        assert set(metadata["inserted"].value.values()) == {0}
        assert table_snapshot(target_dsn, "checkpoints_live") == before


def test_warning_checks_are_not_blocking() -> None:
    """Checks that only report a risk never block publishing or fail a run."""
    graph = defs.resolve_asset_graph()
    for name in VERIFICATION_CHECK_NAMES:
        spec = graph.get_check_spec(dg.AssetCheckKey(VERIFICATION_ASSET, name))
        assert spec.blocking is (name not in VERIFICATION_WARNING_CHECKS)
