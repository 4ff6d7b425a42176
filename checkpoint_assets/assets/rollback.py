"""The way back as assets (group ``checkpoint_rollback``): PostgreSQL -> export -> SQLite.

``rollback_export`` snapshots PostgresSaver's tables into an export file and registers one
``rollback_batches`` partition per batch; ``restored_checkpoint_batches`` loads one batch
into the SQLite file per partition (materialized, backfilled and audited like the
migration's batches); ``rollback_verification`` runs the rollback checks and, for a new
file, publishes it under its final name only when they all passed; into an existing file it
first removes the threads PostgreSQL no longer has when ``remove_deleted_threads`` is set
(else the warning check ``sqlite_threads_not_in_postgres`` names them). The front door does
the work (engine/operations/way_back.py); these assets only wire it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import (
    check_metadata,
    error_text,
    failure,
    outcome_check_result,
    preview_silenced,
    severity,
)
from checkpoint_assets.assets.export import export_file_check, register_partitions
from checkpoint_assets.assets.imported_batches import EXPORT_ID_METADATA
from checkpoint_assets.engine.core.errors import ConflictError, FailureKind, MigrationError
from checkpoint_assets.engine.operations import migration, way_back
from checkpoint_assets.engine.verify.check_table import (
    CHECKS,
    EXPORT_MATCHES_POSTGRES,
    OFFICIAL_READBACK,
    ROLLBACK_CHECKS,
    ROLLBACK_COUNT_MATCH,
    SQLITE_MATCHES_EXPORT,
    SQLITE_THREADS_NOT_IN_POSTGRES,
)
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    EXPORT_FILE_VERIFIES,
    OWNERS,
    POSTGRES_KIND,
    RESTORED_BATCH_MATCHES_EXPORT,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_GROUP_NAME,
    ROLLBACK_PARTITIONS_NAME,
    ROLLBACK_VERIFICATION_ASSET,
    SQLITE_KIND,
    TARGET_POOL,
    batch_key_for,
    manifest_export_id,
    partition_keys_by_batch,
    rollback_partitions,
)
from checkpoint_assets.resources import CallerChannel, PostgresTargetResource, RollbackResource
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    READBACK_ALL,
    READBACK_THREADS_ENV,
    ROLLBACK_EXPORT_ENV,
    ROLLBACK_ORIGINAL_EXPORT_ENV,
    ROLLBACK_REMOVE_DELETED_THREADS_ENV,
    ROLLBACK_THREADS_ENV,
    ROLLBACK_TO_ENV,
)

# How the verification's notes name the settings, for a caller that does not name them
# itself (the CLI names its flags through the CallerChannel).
READBACK_ALL_HINT = "readback_all"
REMOVE_HINT = "remove_deleted_threads"
DAGSTER_HINTS = {READBACK_ALL_HINT: f"{READBACK_THREADS_ENV}={READBACK_ALL}",
                 REMOVE_HINT: f"{ROLLBACK_REMOVE_DELETED_THREADS_ENV}=1"}
# The restored batch's metadata entry naming the threads its transaction removed.
REMOVED_THREADS_METADATA = "removed_threads"


@dataclass(frozen=True)
class RollbackVerified:
    """What rollback_verification hands an in-process caller: the report, and the threads
    PostgreSQL no longer has that this rollback removed from the file."""

    report: VerificationReport
    removed_threads: list[str]

    @property
    def threads_not_in_postgres(self) -> list[str]:
        """The file's threads PostgreSQL no longer has, kept (the warning check's)."""
        kept = self.report.checks.get(SQLITE_THREADS_NOT_IN_POSTGRES)
        return [m["thread_id"] for m in kept.mismatches] if kept else []


# Each rollback check's declaration (the forward check table's, for the read-back).
ROLLBACK_CHECK_SPECS = {spec.name: spec for spec in (*CHECKS, *ROLLBACK_CHECKS)}
ROLLBACK_CHECK_NAMES = (ROLLBACK_COUNT_MATCH, EXPORT_MATCHES_POSTGRES, SQLITE_MATCHES_EXPORT,
                        OFFICIAL_READBACK, SQLITE_THREADS_NOT_IN_POSTGRES)


def require_configured(rollback: RollbackResource) -> None:
    """A step failure naming the setting (no Python stack) when no SQLite file to roll
    back into is configured."""
    try:
        rollback.to()
    except MigrationError as exc:
        raise failure(f"{error_text(exc, None)}\n  {SETTINGS_HINT}") from None


# What the rollback group needs, named in each of its assets' descriptions (the UI's first
# line of each node) and in the failure of a run started without it.
SETTINGS_HINT = (
    f"Needs {ROLLBACK_TO_ENV} (the SqliteSaver file to restore into, new or the "
    "application's) in the environment of dagster dev (or its .env) and a reload of the code "
    f"location; optional: {ROLLBACK_EXPORT_ENV}, {ROLLBACK_THREADS_ENV}, "
    f"{ROLLBACK_ORIGINAL_EXPORT_ENV}, {ROLLBACK_REMOVE_DELETED_THREADS_ENV}, {AES_KEY_ENV}.")


@dg.asset(
    key=ROLLBACK_EXPORT_ASSET,
    group_name=ROLLBACK_GROUP_NAME,
    kinds={POSTGRES_KIND, "file"},
    owners=OWNERS,
    tags=ASSET_TAGS,
    pool=TARGET_POOL,
    check_specs=[dg.AssetCheckSpec(
        EXPORT_FILE_VERIFIES, asset=ROLLBACK_EXPORT_ASSET, blocking=True,
        description="Every frame, thread and batch of the export file matches the digests "
                    "in its own footer.")],
)
def rollback_export(context: dg.AssetExecutionContext, target: PostgresTargetResource,
                    rollback: RollbackResource,
                    caller: dg.ResourceParam[CallerChannel]) -> Iterator[Any]:
    """The way back, step 1 (needs CHECKPOINT_ASSETS_ROLLBACK_TO): PostgreSQL -> export file.

    {settings}

    A snapshot of PostgresSaver's tables as SqliteSaver rows in an export file.
    One REPEATABLE READ transaction for the whole export; each checkpoint rebuilt from its
    JSONB document and blobs without the application's classes. Each batch becomes one
    ``rollback_batches`` partition (keys of an earlier export are removed); a new file's
    unpublished work file from an earlier export is removed, so it holds this export only.
    With the forward migration's export configured, checkpoints unchanged since come back
    in their original bytes (metadata ``original_bytes`` counts them, and why not).
    """
    require_configured(rollback)
    schema = target.final_schema()
    path = rollback.export()
    try:
        done = way_back.export_postgres(way_back.PostgresExportRequest(
            source_dsn=target.dsn, export=path, schema=schema,
            threads=rollback.threads, aes_key=rollback.aes_key,
            batch_size=rollback.batch_size,
            original_export=Path(rollback.original_export) if rollback.original_export
            else None))
    except MigrationError as exc:
        caller.failed(exc)
        message = error_text(exc, target.dsn)
        yield dg.AssetCheckResult(check_name=EXPORT_FILE_VERIFIES, passed=False,
                                  metadata=check_metadata(expected="an export",
                                                          actual=message))
        raise failure(f"Export of {target.display(schema)} failed: {message}") from None
    manifest = done.manifest
    check = export_file_check(path)
    if not check.passed:
        yield check
        raise failure(f"The export {path} does not match its own digests.",
                      kind=FailureKind.MISMATCH)
    added, removed = register_partitions(context.instance, manifest, ROLLBACK_PARTITIONS_NAME)
    if way_back.discard_work_file(rollback.to()):
        context.log.info(f"Removed the unpublished work file of {rollback.to()}: the batches "
                         "of this export are restored into a new one.")
    caller.done(done)
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "source": dg.MetadataValue.text(done.source_display),
            "dagster/row_count": dg.MetadataValue.int(manifest.checkpoints),
            "writes": dg.MetadataValue.int(manifest.writes),
            "threads": dg.MetadataValue.int(manifest.threads),
            "batches": dg.MetadataValue.int(len(manifest.batches)),
            EXPORT_ID_METADATA: dg.MetadataValue.text(manifest_export_id(manifest)),
            "content_sha256": dg.MetadataValue.text(manifest.content_sha256),
            "partitions_added": dg.MetadataValue.int(len(added)),
            "partitions_removed": dg.MetadataValue.json(removed),
            **({"original_bytes": dg.MetadataValue.json(done.original_bytes)}
               if done.original_bytes is not None else {}),
        },
        check_results=[check])


with preview_silenced():
    # Partitioned check specs are Preview in Dagster 1.13; they give one result per batch.
    RESTORED_BATCH_CHECK = dg.AssetCheckSpec(
        RESTORED_BATCH_MATCHES_EXPORT, asset=RESTORED_BATCHES_ASSET, blocking=True,
        partitions_def=rollback_partitions,
        description="The SQLite file holds this batch's threads as exported: byte for byte, "
                    "or rows already there with the same content.")


@dg.asset(
    key=RESTORED_BATCHES_ASSET,
    group_name=ROLLBACK_GROUP_NAME,
    kinds={SQLITE_KIND},
    owners=OWNERS,
    tags=ASSET_TAGS,
    partitions_def=rollback_partitions,
    deps=[ROLLBACK_EXPORT_ASSET],
    check_specs=[RESTORED_BATCH_CHECK],
)
def restored_checkpoint_batches(context: dg.AssetExecutionContext,
                                rollback: RollbackResource,
                                caller: dg.ResourceParam[CallerChannel]) -> Iterator[Any]:
    """The way back, step 2: empty until rollback_export is materialized; then backfill all.

    {settings}

    One export batch restored into the SQLite file, in one SQLite transaction.
    A new file is built under a hidden work name beside the final one (published by
    ``rollback_verification``); an existing SqliteSaver file is added to: rows already
    there with the same content are kept, other content is a conflict naming the key
    (nothing overwritten). Re-materializing a restored batch changes nothing. With
    ``remove_deleted_threads``, the export's last batch removes from an existing file, in
    its own transaction, the threads PostgreSQL no longer has (as a whole restore does).
    """
    require_configured(rollback)
    if not context.has_partition_key:
        raise failure(NO_PARTITION_HINT) from None
    manifest = migration.read_export_manifest(rollback.export())
    key = batch_key_for(manifest, context.partition_key)
    existing = rollback.to().exists()
    last = key == manifest.batches[-1].key
    try:
        done = way_back.restore_batch(way_back.RestoreBatchRequest(
            export=rollback.export(), to=rollback.to(), batch=key, aes_key=rollback.aes_key,
            remove_deleted_threads=rollback.remove_deleted_threads and existing and last))
    except ConflictError as exc:
        caller.failed(exc)
        yield dg.AssetCheckResult(
            check_name=RESTORED_BATCH_MATCHES_EXPORT, passed=False,
            metadata=check_metadata(expected="no row with the same key and other content",
                                    actual=exc.problem, mismatches=exc.keys))
        raise failure(exc.problem, kind=FailureKind.CONFLICT) from None
    except MigrationError as exc:
        caller.failed(exc)
        raise failure(error_text(exc, None), kind=exc.kind) from None
    result, path, mismatches = done.result, done.path, done.mismatches
    check = dg.AssetCheckResult(
        check_name=RESTORED_BATCH_MATCHES_EXPORT, passed=not mismatches,
        metadata=check_metadata(expected=done.threads,
                                actual=done.threads - len(mismatches),
                                mismatches=mismatches))
    if mismatches:
        yield check
        raise failure(f"Batch {context.partition_key} in {path} differs from the export.",
                      kind=FailureKind.MISMATCH)
    caller.done(result)
    yield dg.MaterializeResult(
        metadata={
            "batch": dg.MetadataValue.text(key),
            "file": dg.MetadataValue.path(str(path)),
            "dagster/row_count": dg.MetadataValue.int(done.checkpoints),
            "checkpoints_inserted": dg.MetadataValue.int(result.inserted["checkpoints"]),
            "writes_inserted": dg.MetadataValue.int(result.inserted["writes"]),
            "checkpoints_already_present": dg.MetadataValue.int(
                result.already_present["checkpoints"]),
            "writes_already_present": dg.MetadataValue.int(result.already_present["writes"]),
            "present_checkpoint_bytes": dg.MetadataValue.json(dict(result.present_bytes)),
            REMOVED_THREADS_METADATA: dg.MetadataValue.json(sorted(result.removed)),
        },
        check_results=[check])


@dg.asset(
    key=ROLLBACK_VERIFICATION_ASSET,
    group_name=ROLLBACK_GROUP_NAME,
    kinds={SQLITE_KIND, POSTGRES_KIND},
    owners=OWNERS,
    tags=ASSET_TAGS,
    pool=TARGET_POOL,
    deps=[dg.AssetDep(RESTORED_BATCHES_ASSET, partition_mapping=dg.AllPartitionMapping())],
    # Follows its batches as the migration's verification does (the same sensor).
    automation_condition=dg.AutomationCondition.eager(),
    # Warning checks (the threads PostgreSQL no longer has) report and block nothing.
    check_specs=[dg.AssetCheckSpec(name, asset=ROLLBACK_VERIFICATION_ASSET,
                                   blocking=not ROLLBACK_CHECK_SPECS[name].warning,
                                   description=ROLLBACK_CHECK_SPECS[name].description)
                 for name in ROLLBACK_CHECK_NAMES],
)
def rollback_verification(context: dg.AssetExecutionContext, target: PostgresTargetResource,
                          rollback: RollbackResource,
                          caller: dg.ResourceParam[CallerChannel]) -> Iterator[Any]:
    """The way back, step 3: runs by itself once every restored batch is loaded.

    {settings}

    The rollback checks: export = PostgreSQL, SQLite = export, counts, the official
    savers' read-back, and the file's threads PostgreSQL no longer has (a warning); a new
    file is renamed to its final name only when all passed. Into an existing file with
    ``remove_deleted_threads``, those threads are first deleted in one transaction. Like the
    migration's verification, it runs again by itself (automation condition) once its
    batches were restored, none missing or in progress."""
    require_configured(rollback)
    manifest = migration.read_export_manifest(rollback.export())
    path = rollback.loading_into()
    try:
        removed = set(way_back.remove_threads_postgres_lacks(path, manifest)) \
            if rollback.remove_deleted_threads and path == rollback.to() else set()
    except MigrationError as exc:
        caller.failed(exc)
        raise failure(f"Removing the threads PostgreSQL no longer has from {path} failed: "
                      f"{exc}") from None
    if removed:
        context.log.info(f"Removed {len(removed)} thread(s) PostgreSQL no longer has from "
                         f"{path}: {sorted(removed)[:20]}")
    if rollback.remove_deleted_threads:
        removed |= _removed_by_last_batch(context.instance, manifest)
    hints = {**DAGSTER_HINTS, **caller.flags}
    verified = way_back.verify_restored(way_back.VerifyRestoredRequest(
        source_dsn=target.dsn, manifest=manifest, path=path, to=rollback.to(),
        schema=target.final_schema(), aes_key=rollback.aes_key,
        readback_threads=target.readback_sample(), readback_all_hint=hints[READBACK_ALL_HINT],
        removed_threads=sorted(removed), remove_hint=hints[REMOVE_HINT]))
    report, evidence = verified.report, verified.evidence
    caller.done(RollbackVerified(report, sorted(removed)))
    partitions = partition_keys_by_batch(manifest)
    results = [outcome_check_result(outcome, level=severity(outcome.spec),
                                    partitions=partitions)
               for outcome in report.checks.values()]
    if not report.passed:
        yield from results
        raise failure(f"The rollback into {rollback.to()} failed verification; "
                      + ("the new file was not published." if path != rollback.to() else
                         "see the evidence."), {"evidence": evidence},
                      kind=FailureKind.MISMATCH)
    if path != rollback.to():
        way_back.publish_restored_file(path, rollback.to())
        context.log.info(f"Published the verified SQLite file {rollback.to()}")
    yield dg.MaterializeResult(
        metadata={"file": dg.MetadataValue.path(str(rollback.to())),
                  "published": dg.MetadataValue.bool(path != rollback.to()),
                  REMOVED_THREADS_METADATA: dg.MetadataValue.json(sorted(removed)),
                  "dagster/row_count": dg.MetadataValue.int(manifest.checkpoints),
                  "evidence": dg.MetadataValue.md(evidence)},
        check_results=results)


NO_PARTITION_HINT = (
    f"{RESTORED_BATCHES_ASSET.to_user_string()} runs one rollback batch partition at a "
    "time, and this run names none. Materialize rollback_export first, then open "
    f"{RESTORED_BATCHES_ASSET.to_user_string()} -> Materialize -> All partitions (or one) "
    "-> Launch.")


def _described(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``asset`` with the settings named in its description (see SETTINGS_HINT)."""
    key = asset.key
    description = (asset.descriptions_by_key.get(key) or "").replace(
        "{settings}", SETTINGS_HINT)
    return asset.map_asset_specs(
        lambda spec: spec.replace_attributes(description=description)
        if spec.key == key else spec)


def _removed_by_last_batch(instance: dg.DagsterInstance, manifest: Any) -> set[str]:
    """The threads the restore of this export's last batch removed from the file (its
    latest materialization, when it is newer than the latest rollback export)."""
    if not manifest.batches:
        return set()
    keys = [key for key in instance.get_dynamic_partitions(ROLLBACK_PARTITIONS_NAME)
            if batch_key_for_or_none(manifest, key) == manifest.batches[-1].key]
    exported = instance.get_latest_materialization_event(ROLLBACK_EXPORT_ASSET)
    if not keys or exported is None:
        return set()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RESTORED_BATCHES_ASSET, asset_partitions=keys),
        limit=1).records
    if not records or records[0].timestamp < exported.timestamp \
            or records[0].asset_materialization is None:
        return set()
    value = records[0].asset_materialization.metadata.get(REMOVED_THREADS_METADATA)
    return set(value.value) if value is not None else set()


def batch_key_for_or_none(manifest: Any, partition_key: str) -> str | None:
    """``batch_key_for``, or None for a partition of another export."""
    try:
        return batch_key_for(manifest, partition_key)
    except MigrationError:
        return None


ROLLBACK_ASSETS = tuple(_described(asset) for asset in
                        (rollback_export, restored_checkpoint_batches, rollback_verification))
