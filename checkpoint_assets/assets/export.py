"""The export file asset: SQLite source -> a self-verifying export file, one partition per batch."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from checkpoint_assets.assets.dagster_metadata import (
    check_metadata,
    error_text,
    failure,
)
from checkpoint_assets.assets.fleet import (
    export_failed_checks,
    export_result,
    exported_keys,
    open_fleet,
)
from checkpoint_assets.assets.imported_batches import EXPORT_ID_METADATA
from checkpoint_assets.assets.staleness import verification_out_of_date
from checkpoint_assets.engine.core.errors import FailureKind, MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.sqlite_source import SourceCounts
from checkpoint_assets.engine.operations import fleet as fleet_ops
from checkpoint_assets.engine.operations import live, migration
from checkpoint_assets.engine.operations.live import SyncGenerationReport
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    BATCH_PARTITIONS_NAME,
    EXPORT_ASSET,
    EXPORT_COUNTS_MATCH_SOURCE,
    EXPORT_FILE_VERIFIES,
    GROUP_NAME,
    OWNERS,
    SQLITE_KIND,
    chain_partition_keys,
    manifest_export_id,
    partition_keys,
    partition_keys_by_batch,
)
from checkpoint_assets.project import initialize_target_pool
from checkpoint_assets.resources import ExportFileResource, SqliteSourceResource


class ExportConfig(dg.Config):
    """A run's choice: a full export (the default) or a sync generation."""

    sync: bool = Field(
        default=False,
        description="Write the next sync generation instead of a full export: only the "
                    "threads that changed since the export or the last sync, as new batch "
                    "partitions (g<export id>-s0001-b00001...) beside the export's.")


@dg.asset(
    key=EXPORT_ASSET,
    group_name=GROUP_NAME,
    kinds={SQLITE_KIND, "file"},
    owners=OWNERS,
    tags=ASSET_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            EXPORT_COUNTS_MATCH_SOURCE, asset=EXPORT_ASSET, blocking=True,
            description="The export holds as many checkpoints, writes and threads as the "
                        "SQLite source."),
        dg.AssetCheckSpec(
            EXPORT_FILE_VERIFIES, asset=EXPORT_ASSET, blocking=True,
            description="Every line, thread and batch of the export file matches the "
                        "digests in its own footer."),
    ],
)
def checkpoint_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    source: SqliteSourceResource,
    export_file: ExportFileResource,
) -> Iterator[Any]:
    """Start here: materialize this first; it creates the batch partitions to load.

    A snapshot of the SqliteSaver database as an export file (msgpack frames, owner-only).
    Until it is materialized, imported_checkpoint_batches has 0 partitions and its
    Materialize dialog can launch nothing. Reads the source read-only in one consistent snapshot, groups whole threads into
    batches of about ``batch_size`` checkpoints, and writes every row with per-thread,
    per-batch and whole-file digests. Each batch becomes one dynamic partition of the
    imported batches asset; keys name the export and the batch's place
    (``g<export id>-b00001``, ...), so the same source and batch size give the same keys. Partitions of an earlier export
    that this one no longer has are removed. With ``sync`` (the ``checkpoint_sync`` job,
    the ``source_changed_sync`` sensor), the materialization is a new generation of the
    export holding only what changed, its digest chained to the previous one.
    """
    if source.fleet:
        if config.sync:
            raise failure("A fleet is synced source by source: run `checkpoint-assets sync "
                          f"--fleet {source.fleet}`.", kind=FailureKind.BAD_INPUT)
        yield from _fleet_export(context, source.fleet, export_file.batch_size)
        return
    path = export_file.resolve_path(source.path)
    if config.sync:
        yield from _sync_generation(context, source, path)
        return
    started = time.perf_counter()
    try:
        manifest = migration.export(migration.ExportRequest(
            source=Path(source.path), export=path, batch_size=export_file.batch_size,
            threads=export_file.threads)).manifest
        counts = source.counts(export_file.threads)
    except MigrationError as exc:
        message = error_text(exc, None)
        for name in (EXPORT_COUNTS_MATCH_SOURCE, EXPORT_FILE_VERIFIES):
            yield dg.AssetCheckResult(
                check_name=name, passed=False,
                metadata=check_metadata(expected="an export of the source", actual=message))
        raise failure(f"Export of {source.path} failed: {message}") from None
    seconds = time.perf_counter() - started

    count_check = _counts_check(manifest, counts)
    file_check = export_file_check(path)
    if not (count_check.passed and file_check.passed):
        yield count_check
        yield file_check
        raise failure(
            f"The export {path} does not match its source or its own digests; no batch "
            "partitions were registered.",
            {"export_path": str(path)}, kind=FailureKind.MISMATCH)

    added, removed = register_partitions(context.instance, manifest)
    initialize_target_pool(context.instance)  # before a backfill starts batch runs at once
    if added or removed:
        yield from verification_out_of_date(
            context.instance, f"the export was re-taken (export {manifest_export_id(manifest)},"
                              f" {len(added)} new batch partitions)")
    context.log.info(f"Exported {manifest.checkpoints} checkpoints in "
                     f"{len(manifest.batches)} batches to {path} ({seconds:.2f} s)")
    yield dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "source": dg.MetadataValue.path(str(source.path)),
            "dagster/row_count": dg.MetadataValue.int(manifest.checkpoints),
            "writes": dg.MetadataValue.int(manifest.writes),
            "threads": dg.MetadataValue.int(manifest.threads),
            "batches": dg.MetadataValue.int(len(manifest.batches)),
            "batch_size": dg.MetadataValue.int(export_file.batch_size),
            EXPORT_ID_METADATA: dg.MetadataValue.text(manifest_export_id(manifest)),
            # MiB as a float: readable in the UI and plotted across materializations.
            "size_mib": dg.MetadataValue.float(round(manifest.size_bytes / 2**20, 3)),
            "content_sha256": dg.MetadataValue.text(manifest.content_sha256),
            "file_sha256": dg.MetadataValue.text(manifest.file_sha256),
            "types": dg.MetadataValue.json(manifest.types),
            "seconds": dg.MetadataValue.float(round(seconds, 3)),
            "partitions_added": dg.MetadataValue.int(len(added)),
            "partitions_removed": dg.MetadataValue.json(removed),
            "batch_table": _batch_table(manifest),
        },
        check_results=[count_check, file_check],
    )


def _fleet_export(context: dg.AssetExecutionContext, fleet_path: str,
                  batch_size: int) -> Iterator[Any]:
    """Export every source of the fleet, register each exported source's batch partitions
    (only those: any other key is removed), and materialize with a table of the sources.
    Colliding thread ids fail the asset before any partition is registered. A source that
    could not be exported fails both checks, naming it; the others' batches are registered
    and can load (they do not wait for a damaged file)."""
    try:
        exported = fleet_ops.export_fleet(open_fleet(fleet_path), batch_size)
    except MigrationError as exc:
        message = error_text(exc, None)
        yield from export_failed_checks(message)
        raise failure(f"Export of the fleet {fleet_path} failed: {message}") from None
    added, removed = register_partition_keys(context.instance, exported_keys(exported))
    initialize_target_pool(context.instance)
    if added or removed:
        yield from verification_out_of_date(
            context.instance, f"the fleet was exported again ({len(added)} new batch "
                              "partitions)")
    files = {e.member.label: export_file_check(e.member.export)
             for e in exported.exports if e.manifest is not None}
    context.log.info(f"Exported {len(exported.exports) - len(exported.failed)} of "
                     f"{len(exported.exports)} sources: {len(added)} new batch partitions")
    yield export_result(exported, files, fleet_path, added, removed)


def _sync_generation(context: dg.AssetExecutionContext, source: SqliteSourceResource,
                     path: Any) -> Iterator[Any]:
    """Write the next sync generation, register its batches as partitions (the export's
    and earlier syncs' stay), and materialize the export asset with what moved."""
    try:
        written = live.write_sync_generation(live.SyncGenerationRequest(
            source=Path(source.path), export=path, aes_key=source.aes_key))
    except MigrationError as exc:
        message = error_text(exc, None)
        for name in (EXPORT_COUNTS_MATCH_SOURCE, EXPORT_FILE_VERIFIES):
            yield dg.AssetCheckResult(
                check_name=name, passed=False,
                metadata=check_metadata(expected="a sync generation of the source",
                                        actual=message))
        raise failure(f"Sync of {source.path} failed: {message}") from None
    found, chain = written.found, written.chain
    count_check = _generation_counts_check(written)
    file_check = export_file_check(found.manifest.path) if found.manifest is not None else \
        dg.AssetCheckResult(check_name=EXPORT_FILE_VERIFIES, passed=True,
                            metadata=check_metadata(expected="no new generation",
                                                    actual="nothing changed"))
    if not (count_check.passed and file_check.passed):
        yield count_check
        yield file_check
        raise failure(f"Sync generation {found.generation} of {path} does not match the "
                      "source or its own digests; no partitions were registered.",
                      {"export_path": str(path)}, kind=FailureKind.MISMATCH)
    keys = [key for (generation, _), key in chain_partition_keys(chain).items()
            if found.manifest is not None and generation == found.generation]
    context.instance.add_dynamic_partitions(BATCH_PARTITIONS_NAME, keys)
    if keys:
        yield from verification_out_of_date(
            context.instance, f"sync generation {found.generation} ({len(keys)} new batch "
                              "partitions)")
    manifest = found.manifest
    for refused in found.refused:
        context.log.warning(f"Thread {refused['thread_id']!r} was not moved (the others "
                            f"were): {refused['problem']} What to do: "
                            f"{refused['what_to_do']} Every later sync reads it again.")
    context.log.info(f"Sync of {source.path}: {len(found.added)} new, {len(found.changed)} "
                     f"changed, {len(found.deleted)} deleted thread(s); "
                     + (f"generation {found.generation}, {len(keys)} batch(es)"
                        if manifest is not None else "nothing moved"))
    yield dg.MaterializeResult(
        metadata={
            "sync_generation": dg.MetadataValue.int(chain.latest.generation),
            "moved": dg.MetadataValue.bool(manifest is not None),
            "path": dg.MetadataValue.path(str(chain.latest.path)),
            "previous_export_sha256": dg.MetadataValue.text(
                str(chain.latest.header.get("previous_export_sha256") or "")),
            "footer_sha256": dg.MetadataValue.text(chain.latest.footer_sha256),
            "threads_added": dg.MetadataValue.int(len(found.added)),
            "threads_changed": dg.MetadataValue.int(len(found.changed)),
            "threads_deleted": dg.MetadataValue.int(len(found.deleted)),
            # Changed threads that cannot be converted: left for a later sync, by key.
            "threads_refused": dg.MetadataValue.json(found.refused[:50]),
            "threads_moved": dg.MetadataValue.json(
                {"added": found.added[:100], "changed": found.changed[:100],
                 "deleted": found.deleted[:100]}),
            "checkpoints_moved": dg.MetadataValue.int(manifest.checkpoints if manifest else 0),
            "writes_moved": dg.MetadataValue.int(manifest.writes if manifest else 0),
            "threads_read": dg.MetadataValue.int(found.threads_read),
            "source_snapshot_at": dg.MetadataValue.text(found.snapshot_at),
            "expected_state_sha256": dg.MetadataValue.text(chain.content_sha256),
            "partitions_added": dg.MetadataValue.int(len(keys)),
            "seconds": dg.MetadataValue.float(round(found.seconds, 3)),
        },
        check_results=[count_check, file_check],
    )


def _generation_counts_check(sync: SyncGenerationReport) -> dg.AssetCheckResult:
    """The rows written for each moved thread equal what SQLite's indexes counted for it
    in the same snapshot (the source state the generation records)."""
    found, chain = sync.found, sync.chain
    if found.manifest is None:
        return dg.AssetCheckResult(
            check_name=EXPORT_COUNTS_MATCH_SOURCE, passed=True,
            metadata=check_metadata(expected="no new generation", actual="nothing changed"))
    state = chain.state
    written = {entry.key: entry for entry in found.manifest.batches}
    differing = [
        {"thread_id": tid, "export": [c, w], "sqlite": [state.threads[tid][0],
                                                        state.threads[tid][3]]}
        for tid, (c, w) in sync.moved_counts.items()
        if [c, w] != [state.threads[tid][0], state.threads[tid][3]]]
    return dg.AssetCheckResult(
        check_name=EXPORT_COUNTS_MATCH_SOURCE, passed=not differing,
        metadata=check_metadata(
            expected="each moved thread's checkpoints and writes as SQLite counted them",
            actual=f"{len(differing)} thread(s) differ" if differing else
            f"{len(found.added) + len(found.changed)} thread(s) in {len(written)} batch(es) "
            "equal", mismatches=differing[:50]))


def _counts_check(manifest: ExportManifest, counts: SourceCounts) -> dg.AssetCheckResult:
    exported = {"checkpoints": manifest.checkpoints, "writes": manifest.writes,
                "threads": manifest.threads}
    in_source = {"checkpoints": counts.checkpoints, "writes": counts.writes,
                 "threads": counts.threads}
    differing = [{"count": name, "export": exported[name], "sqlite": in_source[name]}
                 for name in exported if exported[name] != in_source[name]]
    return dg.AssetCheckResult(
        check_name=EXPORT_COUNTS_MATCH_SOURCE, passed=not differing,
        metadata=check_metadata(
            expected=in_source, actual=exported, mismatches=differing,
            notes=["The source changed while or after it was exported: stop the writer and "
                   "export again."] if differing else []))


def export_file_check(path: Any) -> dg.AssetCheckResult:
    """The export_file_verifies check of the export file at ``path``."""
    try:
        verified = migration.verify_export_file(path)
    except MigrationError as exc:
        return dg.AssetCheckResult(
            check_name=EXPORT_FILE_VERIFIES, passed=False,
            metadata=check_metadata(expected="every digest in the footer matches",
                                    actual=error_text(exc, None),
                                    mismatches=[{"file": str(path)}]))
    return dg.AssetCheckResult(
        check_name=EXPORT_FILE_VERIFIES, passed=True,
        metadata=check_metadata(
            expected=verified.file_sha256, actual=verified.file_sha256,
            batches_verified=len(verified.batches), content_sha256=verified.content_sha256))


def register_partitions(
    instance: dg.DagsterInstance, manifest: ExportManifest,
    partitions_name: str = BATCH_PARTITIONS_NAME,
) -> tuple[list[str], list[str]]:
    """Make the batch partitions (``partitions_name``: the migration's, or the rollback's)
    exactly the export's partition keys; return (added, removed)."""
    return register_partition_keys(instance, partition_keys(manifest), partitions_name)


def register_partition_keys(instance: dg.DagsterInstance, keys: list[str],
                            partitions_name: str = BATCH_PARTITIONS_NAME,
                            ) -> tuple[list[str], list[str]]:
    """Make the partition set ``partitions_name`` exactly ``keys``; return (added,
    removed)."""
    existing = set(instance.get_dynamic_partitions(partitions_name))
    added = [key for key in keys if key not in existing]
    # Idempotent: adding a key that exists is a no-op, so re-exporting is safe.
    instance.add_dynamic_partitions(partitions_name, keys)
    removed = sorted(existing - set(keys))
    for key in removed:
        instance.delete_dynamic_partition(partitions_name, key)
    return added, removed


def _batch_table(manifest: ExportManifest) -> dg.MetadataValue:
    keys = partition_keys_by_batch(manifest)
    rows = [
        dg.TableRecord({"batch": keys[b.key], "threads": b.threads,
                        "checkpoints": b.checkpoints, "writes": b.writes,
                        "sha256": b.sha256[:16]})
        for b in manifest.batches[:200]
    ]
    schema = dg.TableSchema(columns=[
        dg.TableColumn("batch", "string"), dg.TableColumn("threads", "int"),
        dg.TableColumn("checkpoints", "int"), dg.TableColumn("writes", "int"),
        dg.TableColumn("sha256", "string")])
    return dg.MetadataValue.table(rows, schema=schema)
