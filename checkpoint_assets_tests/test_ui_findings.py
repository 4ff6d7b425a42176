"""What the Dagster UI shows a new user, as specifications of the definitions (issue 22, 4).

The browser test (test_ui_browser.py) walks these in a real ``dagster dev``; here each is
pinned in-process, fast:

- the first screen says what to click first: the first line of each description (what a
  graph node shows) names the order, and that the batches stay empty until the export;
- an out-of-date verification says what will actually happen (backfill failed and missing
  partitions first while there are any) and keeps its last real mismatches;
- the batch check never runs without its batch's load (the UI's "Execute all" on it is
  disabled), and a batches run without a partition says what to do;
- a partition key no export made ("Add a partition") is refused and removed, and the
  verification stays current;
- the rollback group names its settings, fails clearly without them, and its
  verification follows its batches like the migration's;
- mismatches name batches by partition key, the export file's key beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from checkpoint_assets.assets.dagster_metadata import (
    EXPORT_BATCH_FIELD,
    PARTITION_FIELD,
    with_partition_keys,
)
from checkpoint_assets.assets.imported_batches import (
    NO_PARTITION_HINT,
    STRAY_PARTITION,
    _batch_names,
)
from checkpoint_assets.assets.staleness import (
    BACKFILL_FIRST,
    LAST_RESULT_METADATA,
    OUT_OF_DATE,
    RUNS_BY_ITSELF,
    verification_out_of_date,
)
from checkpoint_assets.definitions import defs, verification_automation
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.verify.check_table import CONTENT_INTEGRITY
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_VERIFICATION_ASSET,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_NAMES,
    partition_keys_by_batch,
)
from checkpoint_assets.settings import ROLLBACK_TO_ENV, TARGET_DSN_ENV
from checkpoint_assets_tests.dagster_support import (
    definitions,
    materialize,
    migrate,
    write_corpus,
)

BATCH_CHECK_KEY = dg.AssetCheckKey(BATCHES_ASSET, BATCH_MATCHES_EXPORT)


def first_line(key: dg.AssetKey) -> str:
    """What the asset graph's node shows of the asset's description."""
    return (defs.resolve_asset_graph().get(key).description or "").split("\n")[0]


# --------------------------------------------------------------------------- first screen

def test_the_graph_nodes_say_what_to_click_first() -> None:
    """The export's node says to start there; the batches' node, which reads "0
    partitions" until then, says to materialize checkpoint_export first; the
    verification's says there is nothing to click."""
    assert first_line(EXPORT_ASSET).startswith("Start here: materialize this first")
    batches = first_line(BATCHES_ASSET)
    assert "0 partitions" in batches and "checkpoint_export is materialized" in batches
    assert "runs by itself" in first_line(VERIFICATION_ASSET)


def test_the_rollback_group_names_its_setting_and_follows_its_batches() -> None:
    """Each rollback asset's description names CHECKPOINT_ASSETS_ROLLBACK_TO; the
    rollback verification has the forward verification's automation condition, evaluated
    by the same sensor."""
    graph = defs.resolve_asset_graph()
    for key in (ROLLBACK_EXPORT_ASSET, RESTORED_BATCHES_ASSET, ROLLBACK_VERIFICATION_ASSET):
        assert ROLLBACK_TO_ENV in (graph.get(key).description or ""), key
    assert ROLLBACK_TO_ENV in first_line(ROLLBACK_EXPORT_ASSET)
    forward = graph.get(VERIFICATION_ASSET).automation_condition
    assert graph.get(ROLLBACK_VERIFICATION_ASSET).automation_condition == forward
    targets = verification_automation.asset_selection.resolve(graph)
    assert {VERIFICATION_ASSET, ROLLBACK_VERIFICATION_ASSET} <= targets


# --------------------------------------------------------------------------- out of date

def test_out_of_date_says_backfill_first_and_keeps_the_last_mismatch() -> None:
    """With a verification whose content check found a mismatch and a batch partition
    never loaded, the out-of-date results say to backfill the failed and missing
    partitions first (not that it runs by itself now), name the missing partition, and
    carry the last result's mismatch and its run; once no partition blocks, they say it
    runs again by itself."""
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(VERIFICATION_ASSET))
    mismatch = {PARTITION_FIELD: "gfeedbeef-b00003", "thread_id": "t-1"}
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=VERIFICATION_ASSET, check_name=CONTENT_INTEGRITY, passed=False,
        metadata={"mismatch_count": dg.MetadataValue.int(1),
                  "mismatch_keys": dg.MetadataValue.json([mismatch])}))
    instance.add_dynamic_partitions(BATCH_PARTITIONS_NAME, ["gfeedbeef-b00001"])

    stale = {e.check_name: e for e in verification_out_of_date(instance, "a batch changed")}
    assert set(stale) == set(VERIFICATION_CHECK_NAMES)
    content = stale[CONTENT_INTEGRITY]
    assert content.description.startswith(OUT_OF_DATE)
    assert BACKFILL_FIRST in content.description and "gfeedbeef-b00001" in content.description
    assert content.metadata["mismatch_count"].value == 1
    assert content.metadata["mismatch_keys"].value == [mismatch]
    assert content.metadata[LAST_RESULT_METADATA].value == "failed"
    assert "mismatches shown are those of its last result (failed" in content.description

    # The out-of-date result is the latest now: the next one still carries the mismatch.
    for evaluation in stale.values():
        instance.report_runless_asset_event(evaluation)
    instance.delete_dynamic_partition(BATCH_PARTITIONS_NAME, "gfeedbeef-b00001")
    again = {e.check_name: e for e in verification_out_of_date(instance, "another change")}
    assert BACKFILL_FIRST not in again[CONTENT_INTEGRITY].description
    assert RUNS_BY_ITSELF in again[CONTENT_INTEGRITY].description
    assert again[CONTENT_INTEGRITY].metadata["mismatch_keys"].value == [mismatch]


# --------------------------------------------------------------------------- metadata

def test_mismatches_name_the_partition_key_and_the_export_batch() -> None:
    """A mismatch of batch-00003 reads partition g60ac7d5d-b00003 (the UI's name), with
    export_batch batch-00003 beside it; other mismatches pass through unchanged."""
    labelled = with_partition_keys(
        [{"batch": "batch-00003", "expected": 1}, {"thread_id": "t"}],
        {"batch-00003": "g60ac7d5d-b00003"})
    assert labelled == [{PARTITION_FIELD: "g60ac7d5d-b00003",
                         EXPORT_BATCH_FIELD: "batch-00003", "expected": 1},
                        {"thread_id": "t"}]
    assert _batch_names("g60ac7d5d-s0002-b00001") == {
        PARTITION_FIELD: "g60ac7d5d-s0002-b00001",
        EXPORT_BATCH_FIELD: "sync-0002-batch-00001"}


# --------------------------------------------------------------------------- against PostgreSQL

@pytest.fixture
def migrated(target_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A migration of a small corpus, every check passed, in an ephemeral instance."""
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    source = write_corpus(tmp_path / "support.sqlite", threads=4)
    export = tmp_path / "support.export"
    code = definitions(source, export, batch_size=20)
    instance = dg.DagsterInstance.ephemeral()
    runs = migrate(code, instance)
    assert runs["verification"].success
    return {"defs": code, "instance": instance, "export": export, "tmp": tmp_path}


def _failure(run: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in run.all_events if e.is_step_failure)
    return event.step_failure_data.user_failure_data.description


def test_the_batch_check_never_runs_without_its_load() -> None:
    """The check cannot be subset from its asset, so the UI's "Execute all" on the
    batches' Checks tab is disabled ("This check cannot execute without materializing the
    asset") instead of launching an unpartitioned run bound to fail; Dagster refuses such a
    selection from code as well."""
    node = defs.resolve_asset_graph().get(BATCHES_ASSET)
    assert node.execution_set_entity_keys == {BATCHES_ASSET, BATCH_CHECK_KEY}
    with pytest.raises(dg.DagsterInvalidSubsetError):
        defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_check_selection={BATCH_CHECK_KEY})


def test_a_batches_run_without_a_partition_says_what_to_do(
        migrated: dict[str, Any]) -> None:
    """A run of the batches without a partition (GraphQL or Python can launch one) fails
    at once with what to do instead, a Dagster Failure, before touching anything."""
    run = materialize(migrated["defs"], migrated["instance"], BATCHES_ASSET)
    assert not run.success
    assert _failure(run) == NO_PARTITION_HINT


def test_a_partition_key_added_by_hand_is_refused_and_removed(
        migrated: dict[str, Any]) -> None:
    """"Add a partition" with batch-00001: its run loads nothing, fails naming the key,
    removes it from the batch partitions, and leaves the verification's checks passed
    (not out of date)."""
    instance, code = migrated["instance"], migrated["defs"]
    instance.add_dynamic_partitions(BATCH_PARTITIONS_NAME, ["batch-00001"])
    run = materialize(code, instance, BATCHES_ASSET, partition="batch-00001")
    assert not run.success
    assert "'batch-00001' " + STRAY_PARTITION in _failure(run)
    assert "batch-00001" not in instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
    assert sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)) == sorted(
        partition_keys_by_batch(read_manifest(migrated["export"])).values())
    for name in VERIFICATION_CHECK_NAMES:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(VERIFICATION_ASSET, name))
        assert record.event.asset_check_evaluation.passed, name


def test_the_rollback_without_its_setting_fails_naming_it(
        migrated: dict[str, Any]) -> None:
    """With CHECKPOINT_ASSETS_ROLLBACK_TO unset, rollback_export fails with a Dagster
    Failure that names the setting, not a Python error from deep inside."""
    run = materialize(migrated["defs"], migrated["instance"], ROLLBACK_EXPORT_ASSET)
    assert not run.success
    assert ROLLBACK_TO_ENV in _failure(run)
