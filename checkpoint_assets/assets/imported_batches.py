"""The imported batches asset: one dynamic partition per export batch, loaded into PostgreSQL."""

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import (
    EXPORT_BATCH_FIELD,
    PARTITION_FIELD,
    check_metadata,
    error_text,
    failure,
    preview_silenced,
    scrubbed_traceback,
)
from checkpoint_assets.assets.fleet import fleet_chains_for
from checkpoint_assets.assets.staleness import (
    latest_materialization,
    verification_out_of_date,
)
from checkpoint_assets.engine.core.errors import ConflictError, FailureKind, MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.loader import BatchLoadResult
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.engine.operations import live, migration
from checkpoint_assets.engine.operations.contract import failure_kind_of
from checkpoint_assets.engine.operations.migration import BatchLoadReport
from checkpoint_assets.engine.sync.apply_generation import SyncApplyResult
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    BATCH_MATCHES_EXPORT,
    BATCH_MAX_RETRIES,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    BATCHES_PER_RUN,
    CERTIFICATE_METADATA,
    ENGINE_ATTEMPTS,
    ENGINE_BACKOFF_SECONDS,
    EXPORT_ASSET,
    GROUP_NAME,
    OWNERS,
    PARTITION_BATCH_MARK,
    PARTITION_SYNC_MARK,
    POSTGRES_KIND,
    TARGET_POOL,
    batch_partitions,
    batch_retry_policy,
    chain_batch_for,
    chain_partition_keys,
    manifest_export_id,
)
from checkpoint_assets.resources import (
    ExportFileResource,
    PostgresTargetResource,
    SqliteSourceResource,
)

CONFLICT_MARKER = "conflicts with rows in"  # in the failure text of a conflicting batch
# Failure metadata of a run whose batches did not all load: {partition key: why}, and
# {partition key: FailureKind value} (the runner reads the kinds, never the text).
FAILED_BATCHES_METADATA = "failed_batches"
FAILED_BATCH_KINDS_METADATA = "failed_batch_kinds"
# A batch materialization's numbers (plotted by the UI across partitions).
ROWS_INSERTED = "rows_inserted"
ROWS_ALREADY_PRESENT = "rows_already_present"
EXPORT_ID_METADATA = "export_id"  # the export the batch was loaded from
# Which database the batch was loaded into (Target.identity: server, database and schema),
# so that backfill loads again what a dropped and re-created target lost.
TARGET_IDENTITY_METADATA = "target_identity"

with preview_silenced():
    # Partitioned check specs are Preview in Dagster 1.13; they give one result per batch.
    BATCH_CHECK = dg.AssetCheckSpec(
        BATCH_MATCHES_EXPORT, asset=BATCHES_ASSET, partitions_def=batch_partitions,
        description="The batch's rows in PostgreSQL (checkpoints, blobs, writes) have the "
                    "export's counts and content digest. Runs with each batch's load (a "
                    "batch loaded again is compared again; rows already there are kept).")

# The batches asset's description: its first line is what the asset's page and the graph's
# side panel show first (and the node, with the graph's Description facet on), so it says
# what to click first while the node reads "0 partitions".
BATCHES_DESCRIPTION = (
    "Step 2: empty (0 partitions) until checkpoint_export is materialized; then Materialize "
    "-> All partitions -> Launch backfill.\n\n"
    "The export's checkpoints in PostgreSQL, one partition per batch of whole threads, each "
    "loaded in its own transaction. Partitions are created by checkpoint_export only: a key "
    "added by hand (\"Add a partition\") is refused by its run and removed.")
# A run that names no partition (launched by GraphQL or Python; the UI always asks for
# partitions): what to do instead.
NO_PARTITION_HINT = (
    f"{BATCHES_ASSET.to_user_string()} and its check {BATCH_MATCHES_EXPORT} run one batch "
    "partition at a time, and this run names none. To load (and check) batches: open "
    f"{BATCHES_ASSET.to_user_string()} -> Materialize -> choose partitions (\"Failed and "
    "missing\", or All) -> Launch. To compare loaded batches again without loading: "
    "`checkpoint-assets verify`.")
# A partition key no export or sync of the current chain made (e.g. added by hand).
STRAY_PARTITION = "is not a batch of the current export"


@dataclass
class BatchProblem:
    """Why one batch of a run was not loaded (password-free)."""

    key: str
    message: str
    error: BaseException
    kind: FailureKind
    retried: bool = False  # Dagster retries the step for it (transient, retries left)
    metadata: dict[str, Any] = field(default_factory=dict)


@dg.multi_asset(
    name=BATCHES_ASSET.path[-1],
    specs=[dg.AssetSpec(
        BATCHES_ASSET, group_name=GROUP_NAME, kinds={POSTGRES_KIND},
        partitions_def=batch_partitions, deps=[EXPORT_ASSET], owners=OWNERS, tags=ASSET_TAGS,
        description=BATCHES_DESCRIPTION,
        # Every batch yields its own materialization and check result as soon as its
        # transaction commits, so the step yields no asset output; skippable makes that
        # legal.
        skippable=True)],
    check_specs=[BATCH_CHECK],
    # The check never runs without its batch's load: Dagster 1.13's "Execute all" on the
    # Checks tab launches a partitioned check without a partition, and a check that cannot
    # be subset from its asset is offered there disabled ("This check cannot execute
    # without materializing the asset") instead of launching a run bound to fail.
    can_subset=False,
    pool=TARGET_POOL,
    retry_policy=batch_retry_policy,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BATCHES_PER_RUN),
)
def imported_checkpoint_batches(
    context: dg.AssetExecutionContext,
    source: SqliteSourceResource,
    export_file: ExportFileResource,
    target: PostgresTargetResource,
) -> Iterator[Any]:
    """The run's batches (one partition, or a range of up to BATCHES_PER_RUN from a
    backfill), each loaded into PostgreSQL in its own transaction.

    The export must have been taken from the configured source, and each batch's bytes are
    checked against the export's digests, before anything is written;
    rows already present with the same content are skipped, so re-running a partition is
    safe and changes nothing. Each batch that commits and reads back equal to the export is
    recorded at once as a materialization of its partition with a passed
    ``batch_matches_export`` result tied to it. Partition keys name the export
    (``g<export id>-b00001``), so a re-taken export never inherits these. A row present
    with different content (a conflict), a digest mismatch after loading, or a database
    error that outlasts the retries gives that batch a failed result and leaves its
    partition FAILED, while the run's other batches still load; a backfill of "failed and missing" partitions picks it up again
    once the cause is removed. Transient database errors are retried by the engine
    (seconds) and then by Dagster (exponential backoff; batches already loaded by the run
    are not loaded again). A run that changed a batch marks the verification's checks
    out of date. In staging mode the batches land in the staging schema.
    """
    if not (context.has_partition_key or context.has_partition_key_range):
        raise failure(NO_PARTITION_HINT) from None
    schema = target.load_schema()
    into = _Into(target.dsn, schema, target.display(schema), source.aes_key,
                 target.strict_versions)
    keys = _keys_still_to_load(context)
    stray: list[str] = []
    try:
        # The export and its sync generations: a sync's batches are partitions too; the
        # export must come from the source, and PostgresSaver's tables are set up once.
        if source.fleet:  # each key is loaded from the export of the source it names
            chains, known, identity = fleet_chains_for(source.fleet, keys, target.dsn,
                                                       schema, source.aes_key)
        else:
            ready = migration.prepare_load(migration.PrepareLoadRequest(
                source=Path(source.path), export=export_file.resolve_path(source.path),
                target_dsn=target.dsn, schema=schema, aes_key=source.aes_key))
            identity = ready.identity
            chains = dict.fromkeys(keys, ready.chain)
            known = set(chain_partition_keys(ready.chain).values())
        # Only an export of the configured source, into a usable target, says which keys
        # are stray (else every batch fails the same way, below).
        stray = refuse_stray_partitions(context, known, keys)
        keys = [key for key in keys if key not in stray]
    except Exception as exc:  # nothing can load: every batch of the run failed the same way
        problems = []
        for key in keys:
            problems.append((yield from _record_problem(context, key, into, exc)))
    else:
        problems = []
        for key in keys:
            problem = yield from _load_and_record(context, key, chains[key], into, identity)
            if problem is not None:
                problems.append(problem)
    if keys and (len(problems) < len(keys) or any(not p.retried for p in problems)):
        # A batch was loaded or failed for good: the last verification no longer describes
        # the target; its checks say so until the verification has run again.
        failing = {p.key for p in problems}
        yield from verification_out_of_date(
            context.instance, f"batch partition(s) {_span(keys)} changed in run "
                              f"{context.run_id[:8]}",
            loaded=[key for key in keys if key not in failing], failing=failing)
    if BATCH_CHECK.key in context.selected_asset_check_keys:
        # Each batch's result was recorded above as that batch finished; this empty output
        # tells Dagster the step gave its check output (it would log that it did not).
        output = context.assets_def.get_output_name_for_asset_check_key(BATCH_CHECK.key)
        yield dg.Output(None, output_name=output)
    _raise_for(problems + [_stray_problem(key) for key in stray], len(keys) + len(stray))


def refuse_stray_partitions(context: dg.AssetExecutionContext, known: set[str],
                            keys: list[str]) -> list[str]:
    """The run's partition keys not ``known`` (those every generation of the export, or of
    the fleet's exports, made): a key added by hand
    in the UI's "Add a partition", or one an older export left behind). Every such key is
    deleted from the instance's batch partitions at once, the run's and any other, so
    the asset's partitions are again exactly the export's; the run loads nothing for them
    and fails naming them, without marking the verification out of date."""
    registered = context.instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
    removed = sorted(key for key in registered if key not in known)
    for key in removed:
        context.instance.delete_dynamic_partition(BATCH_PARTITIONS_NAME, key)
    if removed:
        context.log.warning(f"Removed batch partition(s) {removed[:20]}: no export or sync "
                            "of the current export made them.")
    return [key for key in keys if key not in known]


def _stray_problem(key: str) -> BatchProblem:
    message = (f"Batch partition {key!r} {STRAY_PARTITION} (its keys are made by "
               f"{EXPORT_ASSET.to_user_string()}: g<export id>-b00001, ...); nothing was "
               "loaded for it and the key was removed. Materialize the partitions the "
               "export made instead (Materialize -> Failed and missing).")
    return BatchProblem(key, message, MigrationError(message), FailureKind.BAD_INPUT)


def _keys_still_to_load(context: dg.AssetExecutionContext) -> list[str]:
    """The run's partition keys, minus those an earlier attempt of this run loaded."""
    keys = list(context.partition_keys)
    if context.retry_number == 0:
        return keys
    loaded = materialized_partitions(context.instance, context.run_id)
    return [key for key in keys if key not in loaded]


def materialized_partitions(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The batch partitions that run ``run_id`` materialized."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {m.partition for m in (r.event_log_entry.asset_materialization for r in records)
            if m is not None and m.asset_key == BATCHES_ASSET and m.partition}


@dataclass(frozen=True)
class _Into:
    """Where a run's batches go: the target's DSN and schema (staging or final), how
    messages name it, the source's AES key, whether strict versions refuse threads."""

    dsn: str = field(repr=False)
    schema: str | None
    display: str
    aes_key: str | None = field(repr=False)
    strict_versions: bool


def _load_and_record(context: dg.AssetExecutionContext, key: str, chain: ExportChain,
                     into: _Into, identity: str) -> Iterator[Any]:
    """Load one batch in its own transaction (a sync's batch: apply it, see
    live.apply_sync_batch), compare it with the export, and yield its materialization
    (naming the target's ``identity``) and check result (stored before the next batch
    starts); return the problem if it did not load."""
    try:
        manifest, batch = chain_batch_for(chain, key)
        request = migration.BatchLoadRequest(
            chain=chain, manifest=manifest, batch=batch, target_dsn=into.dsn,
            schema=into.schema, aes_key=into.aes_key, strict_versions=into.strict_versions,
            attempts=ENGINE_ATTEMPTS, backoff_seconds=ENGINE_BACKOFF_SECONDS)
        # A sync's batch: only its threads no later generation holds are compared.
        loaded = migration.load_batch(request) if manifest.generation == 0 \
            else live.apply_sync_batch(request)
    except Exception as exc:
        return (yield from _record_problem(context, key, into, exc))
    result, comparison = loaded.result, loaded.comparison
    refused = loaded.refused
    if refused:
        # The batch's other threads are loaded; the partition stays failed, naming these.
        found = [r.found.as_dict() for r in refused]
        yield _failed_check(context.instance, key, into,
                            f"{len(refused)} thread(s) refused (--strict-versions)",
                            refused[0], mismatches=found)
        message = (f"Batch {key}: {len(refused)} thread(s) refused by --strict-versions "
                   f"({', '.join(repr(r.found.thread_id) for r in refused[:10])}); the "
                   f"batch's other threads are loaded. {refused[0]}")
        return BatchProblem(key, message, refused[0], FailureKind.BAD_INPUT,
                            metadata={"refused_threads": found[:50]})
    if not comparison.passed:
        yield _comparison_check(context.instance, key, loaded, into)
        message = (f"Batch {key} was loaded but PostgreSQL does not match the export "
                   f"({into.display}).")
        return BatchProblem(key, message, MigrationError(message), FailureKind.MISMATCH)
    metadata = (_load_metadata(result, manifest, into)
                if isinstance(result, BatchLoadResult)
                else _sync_metadata(result, manifest, into))
    metadata[TARGET_IDENTITY_METADATA] = dg.MetadataValue.text(identity)
    yield dg.AssetMaterialization(BATCHES_ASSET, partition=key, metadata=metadata)
    yield _comparison_check(context.instance, key, loaded, into)
    return None


def _record_problem(context: dg.AssetExecutionContext, key: str, into: _Into,
                    exc: BaseException) -> Iterator[Any]:
    """Yield the failed check result for ``key`` (unless Dagster will retry it); return
    the problem."""
    dsn = into.dsn
    text = error_text(exc, dsn)
    instance = context.instance
    kind = failure_kind_of(exc)
    if isinstance(exc, ConflictError):
        yield _failed_check(instance, key, into,
                            "conflict with the target's rows (changed or deleted there)", exc,
                            mismatches=exc.keys)
        return BatchProblem(key, f"Batch {key} {CONFLICT_MARKER} {into.display}: "
                                 f"{text}", exc, kind,
                            metadata={"conflicting_keys": exc.keys[:50]})
    if kind is FailureKind.TRANSIENT:
        if context.retry_number < BATCH_MAX_RETRIES:
            context.log.warning(f"Batch {key}: {text}; Dagster retries the step "
                                f"({context.retry_number + 1}/{BATCH_MAX_RETRIES}).")
            return BatchProblem(key, f"Batch {key} failed: {text}", exc, kind, retried=True)
        yield _failed_check(instance, key, into, "database error after retries", exc)
        return BatchProblem(key, f"Batch {key} failed: {text}", exc, kind)
    yield _failed_check(instance, key, into, type(exc).__name__, exc)
    if kind is not FailureKind.UNEXPECTED:  # bad input, or a database error the engine gave up on
        return BatchProblem(key, f"Batch {key} failed: {text}", exc, kind)
    # A bug or an unexpected error: not retried either; the traceback helps to report it.
    return BatchProblem(key, f"Batch {key} failed: {text}", exc, kind,
                        metadata={"traceback": scrubbed_traceback(dsn)})


def _span(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"


def _raise_for(problems: list[BatchProblem], batches: int) -> None:
    """Fail the step when a batch did not load: retryably if one of them can be retried,
    else with every problem in the description and per batch in ``failed_batches``."""
    if not problems:
        return
    retry = next((p for p in problems if p.retried), None)
    if retry is not None:
        raise retry.error  # the RetryPolicy retries the step; loaded batches are skipped
    failed = {p.key: p.message for p in problems}
    if len(problems) == 1:
        description = problems[0].message
    else:
        description = (f"{len(problems)} of {batches} batches of this run failed:\n"
                       + "\n".join(failed.values()))
    metadata: dict[str, Any] = {FAILED_BATCHES_METADATA: failed,
                                FAILED_BATCH_KINDS_METADATA: {p.key: p.kind.value
                                                              for p in problems}}
    for problem in problems:
        for name, value in problem.metadata.items():
            metadata.setdefault(name, value)
    raise failure(description, metadata, kind=problems[0].kind) from None


def _load_metadata(result: BatchLoadResult, manifest: ExportManifest,
                   into: _Into) -> dict[str, dg.MetadataValue]:
    """What one batch load wrote, each figure once: numbers the UI plots across partitions
    (rows per table, rows inserted and already present, seconds), then the breakdown
    table. No ``dagster/row_count``: Dagster shows the latest partition's count as the
    asset's "Row count", which would read like the total of all batches."""
    rows = result.rows
    total = sum(rows.values())
    # One number per table (rows_checkpoints, ...): the UI plots numeric metadata across
    # partitions, never values inside a JSON entry.
    rows_per_table = {f"rows_{table}": dg.MetadataValue.int(rows[table]) for table in TABLES}
    return {
        **rows_per_table,
        ROWS_INSERTED: dg.MetadataValue.int(sum(result.inserted.values())),
        ROWS_ALREADY_PRESENT: dg.MetadataValue.int(sum(result.already_present.values())),
        "rows_table": dg.MetadataValue.md(_rows_markdown(result)),
        "threads": dg.MetadataValue.int(result.threads),
        "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
        "rows_per_second": dg.MetadataValue.float(round(total / max(result.seconds, 1e-9), 1)),
        "batch_sha256": dg.MetadataValue.text(result.batch_sha256),
        EXPORT_ID_METADATA: dg.MetadataValue.text(manifest_export_id(manifest)),
        "export_content_sha256": dg.MetadataValue.text(manifest.content_sha256),
        "attempts": dg.MetadataValue.int(result.attempts),
        "metadata_changes": dg.MetadataValue.int(len(result.metadata_changes)),
        "target": dg.MetadataValue.text(into.display),
    }


def _sync_metadata(result: SyncApplyResult, manifest: ExportManifest,
                   into: _Into) -> dict[str, dg.MetadataValue]:
    """What applying one sync batch did: rows inserted, updated, deleted, already there."""
    return {
        ROWS_INSERTED: dg.MetadataValue.int(sum(result.inserted.values())),
        "rows_updated": dg.MetadataValue.int(sum(result.updated.values())),
        "rows_deleted": dg.MetadataValue.int(sum(result.deleted.values())),
        ROWS_ALREADY_PRESENT: dg.MetadataValue.int(sum(result.already_present.values())),
        "threads": dg.MetadataValue.int(result.threads),
        "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
        "sync_generation": dg.MetadataValue.int(manifest.generation),
        "batch_sha256": dg.MetadataValue.text(manifest.batch(result.key).sha256),
        "target": dg.MetadataValue.text(into.display),
    }


def _rows_markdown(result: BatchLoadResult) -> str:
    lines = ["| table | rows | inserted | already present |", "|---|---:|---:|---:|"]
    lines += [f"| {t} | {result.rows[t]} | {result.inserted[t]} | {result.already_present[t]} |"
              for t in TABLES]
    return "\n".join(lines)


def _check_evaluation(instance: dg.DagsterInstance, key: str, passed: bool,
                      metadata: dict[str, dg.MetadataValue]) -> dg.AssetCheckEvaluation:
    """``batch_matches_export``'s result for partition ``key``, tied to the partition's
    latest materialization (the one just recorded, or for a failed batch the one still
    current), as Dagster ties the result of a check to what it checked. Without that tie,
    Dagster's per-partition check status counts the result as belonging to no
    materialization (neither passed nor failed)."""
    return dg.AssetCheckEvaluation(
        asset_key=BATCHES_ASSET, check_name=BATCH_MATCHES_EXPORT, passed=passed,
        metadata=metadata, partition=key,
        target_materialization_data=latest_materialization(instance, BATCHES_ASSET, key))


def _comparison_check(instance: dg.DagsterInstance, key: str, loaded: BatchLoadReport,
                      into: _Into) -> dg.AssetCheckEvaluation:
    """The batch check's result; a passed one keeps its certificate (what the verification
    takes over while the batch's rows stay the same, see engine/verify/certificates.py)."""
    comparison = loaded.comparison
    mismatches = comparison.content_mismatches + comparison.metadata_mismatches
    if comparison.expected_counts != comparison.actual_counts:
        mismatches = [{"problem": "row counts differ", "expected": comparison.expected_counts,
                       "actual": comparison.actual_counts}, *mismatches]
    certificate = loaded.certificate
    kept = {CERTIFICATE_METADATA: certificate.to_json()} if certificate is not None else {}
    return _check_evaluation(
        instance, key, comparison.passed, check_metadata(
            expected={"counts": comparison.expected_counts,
                      "digest": comparison.expected_digest},
            actual={"counts": comparison.actual_counts, "digest": comparison.actual_digest},
            mismatches=mismatches[:50], mismatch_count=len(mismatches),
            batch=key, **_batch_names(key), target=into.display, **kept))


def _failed_check(instance: dg.DagsterInstance, key: str, into: _Into, problem: str,
                  exc: BaseException,
                  mismatches: list[dict] | None = None) -> dg.AssetCheckEvaluation:
    return _check_evaluation(
        instance, key, False, check_metadata(
            expected=f"batch {key} loaded and equal to the export",
            actual=f"{problem}: {error_text(exc, into.dsn)}",
            mismatches=(mismatches or [])[:50],
            mismatch_count=len(mismatches) if mismatches else 1,
            batch=key, **_batch_names(key), target=into.display))


def _batch_names(key: str) -> dict[str, str]:
    """The batch as the UI names it (its partition key) and as the export file does."""
    found = _KEY_FORM.search(key)
    if found is None:
        return {PARTITION_FIELD: key}
    generation, place = found.groups()
    return {PARTITION_FIELD: key,
            EXPORT_BATCH_FIELD: f"sync-{generation}-batch-{place}" if generation
            else f"batch-{place}"}


_KEY_FORM = re.compile(rf"(?:{PARTITION_SYNC_MARK}(\d{{4}}))?{PARTITION_BATCH_MARK}(\d{{5}})$")
