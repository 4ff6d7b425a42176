"""The imported batches asset: one dynamic partition per export batch, loaded into PostgreSQL."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from checkpoint_assets.assets.metadata import (
    check_metadata,
    error_text,
    failure,
    preview_silenced,
    scrubbed_traceback,
)
from checkpoint_assets.engine.errors import ConflictError, MigrationError
from checkpoint_assets.engine.export_file import (
    ExportManifest,
    read_manifest,
    require_same_source,
)
from checkpoint_assets.engine.loader import (
    BatchLoadResult,
    TransientLoadError,
    load_batch,
)
from checkpoint_assets.engine.target import TABLES, Target, TargetUnreachableError
from checkpoint_assets.engine.verify import BatchComparison, compare_batch
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCH_MAX_RETRIES,
    BATCHES_ASSET,
    ENGINE_ATTEMPTS,
    ENGINE_BACKOFF_SECONDS,
    EXPORT_ASSET,
    GROUP_NAME,
    POSTGRES_KIND,
    TARGET_POOL,
    batch_partitions,
    batch_retry_policy,
)
from checkpoint_assets.resources import (
    ExportFileResource,
    PostgresTargetResource,
    SqliteSourceResource,
    ensure_tables,
)

CONFLICT_MARKER = "conflicts with rows in"  # in the failure text of a conflicting batch

with preview_silenced():
    # Partitioned check specs are Preview in Dagster 1.13; they give one result per batch.
    BATCH_CHECK = dg.AssetCheckSpec(
        BATCH_MATCHES_EXPORT, asset=BATCHES_ASSET, partitions_def=batch_partitions,
        description="The batch's rows in PostgreSQL (checkpoints, blobs, writes) have the "
                    "export's counts and content digest.")


@dg.asset(
    key=BATCHES_ASSET,
    group_name=GROUP_NAME,
    kinds={POSTGRES_KIND},
    partitions_def=batch_partitions,
    deps=[EXPORT_ASSET],
    pool=TARGET_POOL,
    retry_policy=batch_retry_policy,
    check_specs=[BATCH_CHECK],
)
def imported_checkpoint_batches(
    context: dg.AssetExecutionContext,
    source: SqliteSourceResource,
    export_file: ExportFileResource,
    target: PostgresTargetResource,
) -> Iterator[Any]:
    """One batch of whole threads, loaded into PostgreSQL in a single transaction.

    The export must have been taken from the configured source, and the batch's bytes are
    checked against the export's digests, before anything is written;
    rows already present with the same content are skipped, so re-running a partition is
    safe and changes nothing. A row present with different content (a conflict), a digest
    mismatch after loading, or a database error that outlasts the retries leaves the
    partition FAILED with a failed ``batch_matches_export`` result, so a backfill of
    "failed and missing" partitions picks it up again once the cause is removed.
    Transient database errors are retried by the engine (seconds) and then by Dagster
    (exponential backoff). In staging mode the batch lands in the staging schema.
    """
    key = context.partition_key
    load_target = target.load_target()
    cipher = source.cipher()
    try:
        manifest = read_manifest(export_file.resolve_path(source.path))
        require_same_source(manifest, source.path)
        entry = manifest.batch(key)
        ensure_tables(load_target)
        result = load_batch(load_target, manifest, key, cipher=cipher,
                            attempts=ENGINE_ATTEMPTS, backoff_seconds=ENGINE_BACKOFF_SECONDS)
        comparison = compare_batch(load_target, manifest, key, cipher)
    except ConflictError as exc:
        yield _failed_check(key, load_target, "conflict with rows already in the target", exc,
                            mismatches=exc.keys)
        raise failure(f"Batch {key} {CONFLICT_MARKER} {load_target.display}: "
                      f"{error_text(exc, target.dsn)}",
                      {"conflicting_keys": exc.keys[:50]}) from None
    except MigrationError as exc:  # bad input, or a database error the engine gave up on
        if not _transient(exc):
            yield _failed_check(key, load_target, type(exc).__name__, exc)
            raise failure(f"Batch {key} failed: {error_text(exc, target.dsn)}") from None
        if context.retry_number < BATCH_MAX_RETRIES:
            context.log.warning(f"Batch {key}: {error_text(exc, target.dsn)}; Dagster retries "
                                f"the step ({context.retry_number + 1}/{BATCH_MAX_RETRIES}).")
            raise
        yield _failed_check(key, load_target, "database error after retries", exc)
        raise failure(f"Batch {key} failed: {error_text(exc, target.dsn)}") from None
    except Exception as exc:  # a bug or an unexpected error: not retried either
        yield _failed_check(key, load_target, type(exc).__name__, exc)
        raise failure(f"Batch {key} failed: {error_text(exc, target.dsn)}",
                      {"traceback": scrubbed_traceback(target.dsn)}) from None

    check = _comparison_check(comparison, load_target)
    if not comparison.passed:
        yield check
        raise failure(f"Batch {key} was loaded but PostgreSQL does not match the export "
                      f"({load_target.display}).")
    yield dg.MaterializeResult(metadata=_load_metadata(result, manifest, entry.checkpoints,
                                                       load_target),
                               check_results=[check])


def _transient(exc: MigrationError) -> bool:
    """Worth retrying later: the engine gave up on a transient error, or the server could not
    be reached at all."""
    return isinstance(exc, (TransientLoadError, TargetUnreachableError))


def _load_metadata(result: BatchLoadResult, manifest: ExportManifest, checkpoints: int,
                   load_target: Target) -> dict[str, dg.MetadataValue]:
    rows = result.rows
    total = sum(rows.values())
    # One number per table (rows_checkpoints, ...): the UI plots numeric metadata across
    # partitions, never values inside a JSON entry.
    rows_per_table = {f"rows_{table}": dg.MetadataValue.int(rows[table]) for table in TABLES}
    return {
        "dagster/row_count": dg.MetadataValue.int(total),
        **rows_per_table,
        "rows": dg.MetadataValue.json(rows),
        "inserted": dg.MetadataValue.json(result.inserted),
        "already_present": dg.MetadataValue.json(result.already_present),
        "rows_table": dg.MetadataValue.md(_rows_markdown(result)),
        "threads": dg.MetadataValue.int(result.threads),
        "checkpoints": dg.MetadataValue.int(checkpoints),
        "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
        "rows_per_second": dg.MetadataValue.float(round(total / max(result.seconds, 1e-9), 1)),
        "batch_sha256": dg.MetadataValue.text(result.batch_sha256),
        "export_content_sha256": dg.MetadataValue.text(manifest.content_sha256),
        "attempts": dg.MetadataValue.int(result.attempts),
        "metadata_changes": dg.MetadataValue.int(len(result.metadata_changes)),
        "target": dg.MetadataValue.text(load_target.display),
    }


def _rows_markdown(result: BatchLoadResult) -> str:
    lines = ["| table | rows | inserted | already present |", "|---|---:|---:|---:|"]
    lines += [f"| {t} | {result.rows[t]} | {result.inserted[t]} | {result.already_present[t]} |"
              for t in TABLES]
    return "\n".join(lines)


def _comparison_check(comparison: BatchComparison, load_target: Target) -> dg.AssetCheckResult:
    mismatches = comparison.content_mismatches + comparison.metadata_mismatches
    if comparison.expected_counts != comparison.actual_counts:
        mismatches = [{"problem": "row counts differ", "expected": comparison.expected_counts,
                       "actual": comparison.actual_counts}, *mismatches]
    return dg.AssetCheckResult(
        check_name=BATCH_MATCHES_EXPORT, passed=comparison.passed,
        metadata=check_metadata(
            expected={"counts": comparison.expected_counts,
                      "digest": comparison.expected_digest},
            actual={"counts": comparison.actual_counts, "digest": comparison.actual_digest},
            mismatches=mismatches[:50], mismatch_count=len(mismatches),
            batch=comparison.key, target=load_target.display))


def _failed_check(key: str, load_target: Target, problem: str, exc: BaseException,
                  mismatches: list[dict] | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=BATCH_MATCHES_EXPORT, passed=False,
        metadata=check_metadata(
            expected=f"batch {key} loaded and equal to the export",
            actual=f"{problem}: {error_text(exc, load_target.dsn)}",
            mismatches=(mismatches or [])[:50],
            mismatch_count=len(mismatches) if mismatches else 1,
            batch=key, target=load_target.display))
