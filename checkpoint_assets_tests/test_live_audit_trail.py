"""Every operation in the audit trail: `checkpoint-assets sync`, `cutover` (and `rollback`)
started from the command line run as Dagster asset runs in-process against $DAGSTER_HOME's
instance, so their runs, materializations and check results are there for the UI.

Under test: the CLI's sync, cutover and rollback leave runs tagged ``front_end=cli`` with
materializations of ``target_synced`` / ``checkpoint_cutover`` / the
``checkpoint_rollback`` group and their check results
(read back with DagsterInstance.get_runs, get_latest_materialization_event and
get_latest_asset_check_evaluation_record); deletions propagate from the settings'
variable as from the flag; a conflict keeps its exit status and message and leaves a
failed run; ``checkpoint-assets checks`` lists the new checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import USER_TAG

from checkpoint_assets.assets.rollback import ROLLBACK_CHECK_NAMES
from checkpoint_assets.cli import main
from checkpoint_assets.partitions import (
    CUTOVER_ASSET,
    CUTOVER_CHECK_NAMES,
    FRONT_END_TAG,
    RESTORED_BATCH_MATCHES_EXPORT,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_PARTITIONS_NAME,
    ROLLBACK_VERIFICATION_ASSET,
    SYNC_ASSET,
    SYNC_MOVED_EVERY_CHANGED_THREAD,
)
from checkpoint_assets.resources import build_resources
from checkpoint_assets.settings import PROPAGATE_DELETES_ENV
from checkpoint_assets_tests.corpus_graphs import (
    build_rich_graph,
    open_sqlite_saver,
    rich_input,
    thread_config,
)


@pytest.fixture
def source(rich_master: Path, tmp_path: Path) -> Path:
    """A private copy of the rich corpus, the application's SqliteSaver file."""
    return Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))


@pytest.fixture
def migrated(source: Path, tmp_path: Path, target_dsn: str) -> list[str]:
    """The corpus exported and imported by the CLI; the flags every live command takes."""
    export = tmp_path / "app.export"
    assert main(["export", "--source", str(source), "--export", str(export)]) == 0
    assert main(["import", "--export", str(export), "--target", target_dsn]) == 0
    return ["--source", str(source), "--export", str(export), "--target", target_dsn]


def write(source: Path, thread_id: str) -> None:
    """The application starts a new thread."""
    with open_sqlite_saver(source) as saver:
        build_rich_graph(saver).invoke(rich_input("basic"), thread_config(thread_id))


def delete(source: Path, thread_id: str) -> None:
    """The application deletes a thread."""
    with open_sqlite_saver(source) as saver:
        saver.delete_thread(thread_id)


def metadata(instance: dg.DagsterInstance, asset: dg.AssetKey) -> dict[str, object]:
    """The latest materialization's metadata of ``asset``, as plain values."""
    event = instance.get_latest_materialization_event(asset)
    assert event is not None and event.asset_materialization is not None, asset
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def check_passed(instance: dg.DagsterInstance, asset: dg.AssetKey, name: str) -> bool:
    """Whether the latest evaluation of check ``name`` on ``asset`` passed."""
    record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(asset, name))
    assert record is not None and record.event is not None, name
    evaluation = record.event.asset_check_evaluation
    assert evaluation is not None, name
    return evaluation.passed


def test_a_cli_sync_and_cutover_are_asset_runs_with_their_checks_in_the_instance(
        source: Path, migrated: list[str], target_dsn: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    write(source, "late-basic")
    assert main(["sync", *migrated]) == 0
    assert "Sync generation 1: 1 new, 0 changed, 0 deleted" in capsys.readouterr().out

    # Deletions propagate from the setting's variable as from --propagate-deletes.
    delete(source, "rich-basic")
    monkeypatch.setenv(PROPAGATE_DELETES_ENV, "1")
    assert build_resources()["live"].propagate_deletes is True  # the Dagster resource too
    assert main(["sync", *migrated, "--json"]) == 0
    synced = json.loads(capsys.readouterr().out)
    assert synced["deleted"] == ["rich-basic"] and synced["deletions_kept"] == []
    monkeypatch.delenv(PROPAGATE_DELETES_ENV)

    assert main(["cutover", *migrated, "--quiet-seconds", "0", "--workers", "1"]) == 0
    out = capsys.readouterr().out  # the cutover's progress still reaches the terminal
    assert "Waiting until" in out and "cutover window:" in out and "PASSED" in out

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={FRONT_END_TAG: "cli"}))
        assert sorted(run.tags[USER_TAG] for run in runs) == [
            "checkpoint-assets cutover", "checkpoint-assets sync", "checkpoint-assets sync"]
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)

        sync = metadata(instance, SYNC_ASSET)
        assert sync["generation"] == 2 and sync["threads_deleted"] == 1
        assert sync["rows_deleted"] > 0 and sync["propagate_deletes"] is True
        assert sync["threads_refused"] == 0
        assert check_passed(instance, SYNC_ASSET, SYNC_MOVED_EVERY_CHANGED_THREAD)

        cutover = metadata(instance, CUTOVER_ASSET)
        assert cutover["passed"] is True and cutover["window_seconds"] >= 0
        assert "## Live migration" in str(cutover["evidence"])
        assert all(check_passed(instance, CUTOVER_ASSET, name) for name in CUTOVER_CHECK_NAMES)

    # `checkpoint-assets checks` lists them once they ran.
    main(["checks", "--json"])
    rows = {(row["asset"], row["check"]): row for row in json.loads(capsys.readouterr().out)}
    assert rows[("target_synced", SYNC_MOVED_EVERY_CHANGED_THREAD)]["passed"] is True
    assert all(rows[("checkpoint_cutover", name)]["passed"] is True
               for name in CUTOVER_CHECK_NAMES)


def test_a_conflict_keeps_its_exit_status_and_message_and_leaves_a_failed_run(
        source: Path, migrated: list[str], target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with psycopg.connect(target_dsn) as conn:  # someone else edits a migrated thread
        conn.execute("UPDATE checkpoints SET metadata = '{\"edited\": true}' "
                     "WHERE thread_id = 'rich-basic'")
    write(source, "rich-basic")  # ... which the application then writes again
    assert main(["sync", *migrated]) == 4
    err = capsys.readouterr().err
    assert err.startswith("CONFLICT: ") and "Traceback" not in err

    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.status == dg.DagsterRunStatus.FAILURE and run.tags[FRONT_END_TAG] == "cli"
        failure = next(event for event in instance.all_logs(run.run_id)
                       if event.dagster_event is not None and event.dagster_event.is_step_failure)
        message = failure.dagster_event.step_failure_data.user_failure_data.description
        assert message.startswith(err.removeprefix("CONFLICT: ").split("\n")[0])


def test_a_cli_rollback_runs_the_rollback_assets_with_their_checks_in_the_instance(
        migrated: list[str], target_dsn: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    back = tmp_path / "back.sqlite"
    assert main(["rollback", "--source-dsn", target_dsn, "--to", str(back),
                 "--batch-size", "20"]) == 0
    out = capsys.readouterr().out  # the same output as ever
    assert out.startswith("Rollback verification PASSED") and "Restore: {" in out
    assert "Evidence report (Markdown): " in out and back.exists()

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={FRONT_END_TAG: "cli"}))
        batches = instance.get_dynamic_partitions(ROLLBACK_PARTITIONS_NAME)
        assert len(batches) >= 2 and len(runs) == len(batches) + 2  # export, batches, proof
        assert all(run.status == dg.DagsterRunStatus.SUCCESS
                   and run.tags[USER_TAG] == "checkpoint-assets rollback" for run in runs)
        assert metadata(instance, ROLLBACK_EXPORT_ASSET)["batches"] == len(batches)
        assert metadata(instance, ROLLBACK_VERIFICATION_ASSET)["published"] is True
        assert all(check_passed(instance, ROLLBACK_VERIFICATION_ASSET, name)
                   for name in ROLLBACK_CHECK_NAMES)
        assert check_passed(instance, RESTORED_BATCHES_ASSET, RESTORED_BATCH_MATCHES_EXPORT)
