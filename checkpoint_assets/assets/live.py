"""The live migration as assets (group ``checkpoint_live``): sync, then cutover.

``target_synced`` moves what changed in the source since the export (or the last sync)
into the target: one materialization per sync generation, with the check
``sync_moved_every_changed_thread``. ``checkpoint_cutover`` waits until the writers
stopped, syncs a last time and proves the target equal: its checks are the window, the
writers' quiet and the verification. Both bodies call the engine's operations
(engine/operations/) and turn the typed report into metadata and check results;
``checkpoint-assets sync`` and ``cutover`` run these same assets in-process (runner.py).
"""

from pathlib import Path
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import check_metadata, error_text, failure
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import live as live_operations
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    CUTOVER_ASSET,
    CUTOVER_EVERY_THREAD_PROVEN_EQUAL,
    CUTOVER_WINDOW,
    CUTOVER_WRITERS_QUIET,
    EXPORT_ASSET,
    LIVE_GROUP_NAME,
    OWNERS,
    POSTGRES_KIND,
    SQLITE_KIND,
    SYNC_ASSET,
    SYNC_MOVED_EVERY_CHANGED_THREAD,
    TARGET_POOL,
)
from checkpoint_assets.resources import (
    CallerChannel,
    ExportFileResource,
    LiveMigrationResource,
    PostgresTargetResource,
    SqliteSourceResource,
)


def sync_request(source: SqliteSourceResource, export_file: ExportFileResource,
                 target: PostgresTargetResource,
                 live: LiveMigrationResource) -> live_operations.SyncRequest:
    """The sync the resources describe: the migration's source, export and final target."""
    return live_operations.SyncRequest(
        source=source.path, export=export_file.resolve_path(source.path),
        target_dsn=target.dsn, schema=target.final_schema(), threads=export_file.threads,
        aes_key=source.aes_key, propagate_deletes=live.propagate_deletes,
        allow_mass_deletion=live.allow_mass_deletion,
        strict_versions=target.strict_versions)


def _say(context: dg.AssetExecutionContext, caller: CallerChannel) -> Any:
    """Where the operation's progress lines go: the caller's terminal, else the step log."""
    return caller.say or context.log.info


def _failed(caller: CallerChannel, exc: MigrationError, dsn: str) -> dg.Failure:
    """The step's failure for an error a user can cause: its message, no stack (and the
    error itself for an in-process caller)."""
    caller.failed(exc)
    return failure(error_text(exc, dsn), kind=exc.kind)


@dg.asset(
    key=SYNC_ASSET,
    group_name=LIVE_GROUP_NAME,
    kinds={SQLITE_KIND, POSTGRES_KIND},
    owners=OWNERS,
    tags=ASSET_TAGS,
    pool=TARGET_POOL,
    deps=[EXPORT_ASSET],
    check_specs=[dg.AssetCheckSpec(
        SYNC_MOVED_EVERY_CHANGED_THREAD, asset=SYNC_ASSET,
        description="Every thread that changed in the source since the last sync was moved "
                    "into the target: none was refused (a refused thread is named with "
                    "what to do; every later sync tries it again).")],
)
def target_synced(context: dg.AssetExecutionContext, source: SqliteSourceResource,
                  export_file: ExportFileResource, target: PostgresTargetResource,
                  live: LiveMigrationResource,
                  caller: dg.ResourceParam[CallerChannel]) -> dg.MaterializeResult:
    """The target after one sync: what changed in the source since the export (or the last
    sync) written as the export's next sync generation and applied, each batch in its own
    transaction (a re-run finds it applied and changes nothing).

    Threads deleted in the source are deleted in the target only with
    ``propagate_deletes`` (env CHECKPOINT_ASSETS_PROPAGATE_DELETES=1); otherwise they are
    kept and listed. A conflict (the target holds rows of a changed thread this tool did
    not load) fails the step with its message, nothing of that batch written.
    """
    request = sync_request(source, export_file, target, live)
    try:
        report = live_operations.sync(request)
    except MigrationError as exc:
        raise _failed(caller, exc, request.target_dsn) from None
    caller.done(report)
    found = report.found
    rows = {what: report.total(what) for what in ("inserted", "updated", "deleted")}
    context.log.info(report.render())
    return dg.MaterializeResult(
        metadata={
            "generation": dg.MetadataValue.int(found.generation if found.moved else 0),
            "moved": dg.MetadataValue.bool(found.moved),
            "threads_added": dg.MetadataValue.int(len(found.added)),
            "threads_changed": dg.MetadataValue.int(len(found.changed)),
            "threads_deleted": dg.MetadataValue.int(len(found.deleted)),
            "threads_refused": dg.MetadataValue.int(len(found.refused)),
            "rows_inserted": dg.MetadataValue.int(sum(rows["inserted"].values())),
            "rows_updated": dg.MetadataValue.int(sum(rows["updated"].values())),
            "rows_deleted": dg.MetadataValue.int(sum(rows["deleted"].values())),
            "rows": dg.MetadataValue.json(rows),
            "deletions_kept": dg.MetadataValue.json(report.deletions_kept),
            "propagate_deletes": dg.MetadataValue.bool(request.propagate_deletes),
            "snapshot_at": dg.MetadataValue.text(found.snapshot_at),
            "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
            "summary": dg.MetadataValue.md(f"```\n{report.render()}\n```"),
        },
        check_results=[dg.AssetCheckResult(
            check_name=SYNC_MOVED_EVERY_CHANGED_THREAD, passed=not found.refused,
            metadata=check_metadata(
                expected=len(found.added) + len(found.changed),
                actual=len(found.added) + len(found.changed) - len(found.refused),
                mismatches=[{"thread_id": r["thread_id"], "problem": r["problem"],
                             "what_to_do": r["what_to_do"]} for r in found.refused]))])


@dg.asset(
    key=CUTOVER_ASSET,
    group_name=LIVE_GROUP_NAME,
    kinds={SQLITE_KIND, POSTGRES_KIND},
    owners=OWNERS,
    tags=ASSET_TAGS,
    pool=TARGET_POOL,
    deps=[SYNC_ASSET],
    check_specs=[
        dg.AssetCheckSpec(
            CUTOVER_WINDOW, asset=CUTOVER_ASSET,
            description="The cutover window closed: seconds from the source's last write "
                        "to the target proven equal (the application's downtime), with "
                        "its parts (quiet, final sync, verification)."),
        dg.AssetCheckSpec(
            CUTOVER_WRITERS_QUIET, asset=CUTOVER_ASSET,
            description="No writer touched the source from the moment it was quiet until "
                        "the target was proven equal."),
        dg.AssetCheckSpec(
            CUTOVER_EVERY_THREAD_PROVEN_EQUAL, asset=CUTOVER_ASSET,
            description="The final verification passed: every thread compared (read back "
                        "through both savers) and equal; a failure names the failing "
                        "checks."),
    ],
)
def checkpoint_cutover(context: dg.AssetExecutionContext, source: SqliteSourceResource,
                       export_file: ExportFileResource, target: PostgresTargetResource,
                       live: LiveMigrationResource,
                       caller: dg.ResourceParam[CallerChannel]) -> dg.MaterializeResult:
    """The cutover: a catch-up sync and a first verification while writers may still
    write, then a wait until the source has not changed for ``quiet_seconds`` (stop the
    application's writers now), the final sync and a verification of every thread; its
    evidence report (Markdown) is written beside the export and kept here.

    Materialized whether or not equality was proven: the checks say which. A wait longer
    than ``timeout_seconds`` fails the step before the final sync (nothing proven).
    """
    request = live_operations.CutoverRequest(
        sync=sync_request(source, export_file, target, live),
        quiet_seconds=live.quiet_seconds, timeout_seconds=live.timeout_seconds,
        workers=target.verification_workers or None,
        evidence=Path(live.evidence_path) if live.evidence_path else None)
    try:
        done = live_operations.cutover(request, say=_say(context, caller),
                                  progress=caller.progress)
    except MigrationError as exc:
        raise _failed(caller, exc, request.sync.target_dsn) from None
    caller.done(done)
    failing = [name for name, check in done.report.checks.items() if not check.passed]
    timings = done.timings
    return dg.MaterializeResult(
        metadata={
            "passed": dg.MetadataValue.bool(done.passed),
            "window_seconds": dg.MetadataValue.float(timings["window_seconds"]),
            "wait_seconds": dg.MetadataValue.float(timings["wait_seconds"]),
            "final_sync_seconds": dg.MetadataValue.float(timings["final_sync_seconds"]),
            "verification_seconds": dg.MetadataValue.float(timings["verification_seconds"]),
            "last_write_at": dg.MetadataValue.text(timings["last_write_at"]),
            "proven_at": dg.MetadataValue.text(timings["proven_at"]),
            "snapshot_at": dg.MetadataValue.text(done.synced.found.snapshot_at),
            "propagate_deletes": dg.MetadataValue.bool(request.sync.propagate_deletes),
            "window": dg.MetadataValue.json(done.window),
            "evidence_path": dg.MetadataValue.path(str(done.evidence)),
            "evidence": dg.MetadataValue.md(done.evidence.read_text(encoding="utf-8")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CUTOVER_WINDOW, passed=done.passed,
                metadata=check_metadata(
                    expected="proven equal", actual=done.window["cutover window"],
                    window_seconds=timings["window_seconds"],
                    wait_seconds=timings["wait_seconds"])),
            dg.AssetCheckResult(
                check_name=CUTOVER_WRITERS_QUIET, passed=done.untouched,
                metadata=check_metadata(
                    expected="source untouched",
                    actual=done.window["source untouched during the cutover"],
                    notes=() if done.untouched else (
                        "A writer changed the source during the cutover: stop every "
                        "writer and materialize the cutover again.",))),
            dg.AssetCheckResult(
                check_name=CUTOVER_EVERY_THREAD_PROVEN_EQUAL, passed=done.report.passed,
                metadata=check_metadata(
                    expected="every check passed",
                    actual="every check passed" if not failing
                    else f"failed: {', '.join(failing)}",
                    failing_checks=failing)),
        ])


LIVE_ASSETS = (target_synced, checkpoint_cutover)
