"""The verification asset: PostgreSQL compared with the export and with the SQLite source."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import (
    check_metadata,
    error_text,
    failure,
    outcome_check_result,
    plain,
    scrubbed_traceback,
    severity,
)
from checkpoint_assets.assets.fleet import (
    fleet_check_results,
    fleet_verification_metadata,
    open_fleet,
)
from checkpoint_assets.assets.imported_batches import BATCH_CHECK, EXPORT_ID_METADATA
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.engine.operations import fleet as fleet_ops
from checkpoint_assets.engine.operations import migration
from checkpoint_assets.engine.operations.contract import failure_kind_of
from checkpoint_assets.engine.verify.check_table import COUNT_MATCH, CheckOutcome
from checkpoint_assets.engine.verify.evidence import BatchTiming
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    BATCHES_ASSET,
    GROUP_NAME,
    OWNERS,
    POSTGRES_KIND,
    SQLITE_KIND,
    TARGET_POOL,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_SPECS,
    batch_certificates,
    manifest_export_id,
    partition_keys,
    partition_keys_by_batch,
)
from checkpoint_assets.resources import (
    ExportFileResource,
    PostgresTargetResource,
    SqliteSourceResource,
)
from checkpoint_assets.settings import (
    READBACK_ALL,
    READBACK_THREADS_ENV,
    VERIFY_EVERY_BATCH_ENV,
)

# The materialization's metadata entry holding the evidence report (Markdown).
EVIDENCE_METADATA = "evidence"

# Blocking: a failed check fails the step, so nothing downstream (publish) runs in that run.
# Warning checks report a risk (severity WARN) and block nothing.
VERIFICATION_CHECKS = [
    dg.AssetCheckSpec(spec.name, asset=VERIFICATION_ASSET, blocking=not spec.warning,
                      description=spec.description)
    for spec in VERIFICATION_CHECK_SPECS
]

# What a batch taken over from its certificate rests on, and how to compare every batch.
CERTIFICATES_HINT = (f"that record is the Dagster instance's; {VERIFY_EVERY_BATCH_ENV}=1, or "
                     "`checkpoint-assets verify`, compares every batch instead")


@dg.asset(
    key=VERIFICATION_ASSET,
    group_name=GROUP_NAME,
    kinds={SQLITE_KIND, POSTGRES_KIND},
    deps=[dg.AssetDep(BATCHES_ASSET, partition_mapping=dg.AllPartitionMapping())],
    pool=TARGET_POOL,
    check_specs=VERIFICATION_CHECKS,
    owners=OWNERS,
    tags=ASSET_TAGS,
    # Runs again by itself once batches were loaded (none missing or in progress), so an
    # old result never stands for the current target; evaluated by the sensor
    # AUTOMATION_SENSOR (running by default, see definitions.py).
    automation_condition=dg.AutomationCondition.eager(),
)
def migration_verification(
    context: dg.AssetExecutionContext,
    source: SqliteSourceResource,
    export_file: ExportFileResource,
    target: PostgresTargetResource,
) -> Iterator[Any]:
    """Step 3, nothing to click: runs by itself once every batch partition is loaded.

    Proof that PostgreSQL holds exactly what the SQLite source holds. Its automation
    condition (sensor verification_follows_batches) runs it once the batches were loaded,
    none failed, missing or in progress; while one is, backfill the failed and missing
    partitions of imported_checkpoint_batches first.

    Compares every batch in PostgreSQL (the staging schema in staging mode) with the export
    (a batch whose own ``batch_matches_export`` certified rows PostgreSQL still holds
    unchanged, the same row versions, is taken over from that check, see
    engine/certificates.py; with
    CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH=1 every batch is compared again), and the export
    with the SQLite source, then reads a sample of threads back through the
    official savers (SqliteSaver.list vs PostgresSaver.list). One asset check per question:
    checkpoint counts (PostgreSQL = export = SQLite), content integrity (channel values,
    parent links, pending writes), metadata integrity (values PostgreSQL cannot hold are
    reported by key), the source still matching the export, and the official read-back.
    Each result names expected, actual and the keys of every mismatch. The ``evidence``
    metadata entry is the whole report as Markdown (counts, checks, per-batch load times,
    mismatches and changed metadata values by key). Once a batch changes, its checks are
    marked out of date until it has run again, which it does by itself under dagster dev.
    """
    schema = target.load_schema()
    if source.fleet:
        yield from _verify_fleet(context, source, target, schema)
        return
    try:
        # The export and the syncs after it (checkpoint-assets sync): the union is compared.
        verified = migration.verify_certified(migration.CertifiedVerifyRequest(
            source=Path(source.path), export=export_file.resolve_path(source.path),
            target_dsn=target.dsn, schema=schema, aes_key=source.aes_key,
            **_options(context, target)))
    except Exception as exc:
        yield from _could_not_run(exc, target, f"Verification against {target.display(schema)}")
    report, manifest = verified.report, verified.manifest
    failed = [name for name, outcome in report.checks.items()
              if not outcome.passed and outcome.blocking]
    context.log.info(f"Verification of {manifest.checkpoints} checkpoints: "
                     + ("all checks passed" if not failed else f"FAILED {failed}"))
    partitions = partition_keys_by_batch(manifest)
    evidence = migration.certified_evidence(
        verified, batches=batch_timings(context.instance, manifest), batch_labels=partitions)
    yield dg.MaterializeResult(
        # The report first: the UI lists metadata in this order.
        metadata={EVIDENCE_METADATA: dg.MetadataValue.md(evidence),
                  **_report_metadata(report, manifest, partitions, verified.target_display)},
        check_results=[_check_result(report.checks[spec.name], report, partitions)
                       for spec in VERIFICATION_CHECK_SPECS],
    )


def _options(context: dg.AssetExecutionContext,
             target: PostgresTargetResource) -> dict[str, Any]:
    """How this code location verifies (one source or a fleet alike): the read-back
    sample, the workers, and the batch certificates the instance recorded (unless every
    batch is to be compared again)."""
    return {"readback_threads": target.readback_sample(),
            "workers": target.verification_workers or None,
            "readback_all_hint": f"{READBACK_THREADS_ENV}={READBACK_ALL}",
            "certificates": None if target.verify_every_batch
            else batch_certificates(context.instance, BATCH_CHECK.key),
            "certificates_hint": CERTIFICATES_HINT}


def _could_not_run(exc: Exception, target: PostgresTargetResource,
                   what: str) -> Iterator[Any]:
    """Every verification check failed with why ``what`` could not run, then the step's
    failure (its traceback without the DSN's password)."""
    message = error_text(exc, target.dsn)
    for spec in VERIFICATION_CHECK_SPECS:
        yield dg.AssetCheckResult(
            check_name=spec.name, passed=False, severity=severity(spec),
            metadata=check_metadata(expected=spec.description,
                                    actual=f"verification could not run: {message}"))
    raise failure(f"{what} could not run: {message}",
                  {"traceback": scrubbed_traceback(target.dsn)},
                  kind=failure_kind_of(exc)) from None


def _verify_fleet(context: dg.AssetExecutionContext, source: SqliteSourceResource,
                  target: PostgresTargetResource, schema: str | None) -> Iterator[Any]:
    """Every source of the fleet verified on its own; the checks pass when they pass for
    every source, and the evidence is the fleet's (a table of every source)."""
    try:
        verified = fleet_ops.verify_fleet(fleet_ops.FleetVerifyRequest(
            fleet=open_fleet(source.fleet or ""), target_dsn=target.dsn, schema=schema,
            aes_key=source.aes_key, **_options(context, target)))
    except Exception as exc:
        yield from _could_not_run(
            exc, target, f"Verification of the fleet against {target.display(schema)}")
    failed = [r.member.label for r in verified.results if not r.passed]
    context.log.info(f"Verification of {len(verified.results)} sources: "
                     + ("all passed" if not failed else f"FAILED for {failed[:20]}"))
    yield dg.MaterializeResult(
        metadata={EVIDENCE_METADATA: dg.MetadataValue.md(verified.evidence),
                  **fleet_verification_metadata(verified)},
        check_results=fleet_check_results(verified))


def _check_result(outcome: CheckOutcome, report: VerificationReport,
                  partitions: dict[str, str]) -> dg.AssetCheckResult:
    """The check's result; a mismatch names its batch by partition key (as the UI does),
    the export file's batch key beside it as ``export_batch``."""
    extra = {"counts": report.counts} if outcome.name == COUNT_MATCH else {}
    return outcome_check_result(outcome, level=severity(outcome.spec),
                                description=outcome.description, partitions=partitions,
                                **extra)


def _report_metadata(report: VerificationReport, manifest: ExportManifest,
                     partitions: dict[str, str], display: str) -> dict[str, dg.MetadataValue]:
    counts = report.counts
    sqlite = counts.get("sqlite", {})
    return {
        "passed": dg.MetadataValue.bool(report.passed),
        "dagster/row_count": dg.MetadataValue.int(counts["target"]["checkpoints"]),
        "sqlite_checkpoints": dg.MetadataValue.int(sqlite.get("checkpoints", -1)),
        "sqlite_writes": dg.MetadataValue.int(sqlite.get("checkpoint_writes", -1)),
        "export_checkpoints": dg.MetadataValue.int(counts["export"]["checkpoints"]),
        "export_writes": dg.MetadataValue.int(counts["export"]["checkpoint_writes"]),
        "postgres_checkpoints": dg.MetadataValue.int(counts["target"]["checkpoints"]),
        "postgres_writes": dg.MetadataValue.int(counts["target"]["checkpoint_writes"]),
        "postgres_blobs": dg.MetadataValue.int(counts["target"]["checkpoint_blobs"]),
        "counts": dg.MetadataValue.json(plain(counts)),
        EXPORT_ID_METADATA: dg.MetadataValue.text(manifest_export_id(manifest)),
        "export_content_sha256": dg.MetadataValue.text(manifest.content_sha256),
        "batch_digests": _digest_table(report, partitions),
        "metadata_changes": dg.MetadataValue.int(len(report.metadata_changes)),
        "metadata_changes_by_key": dg.MetadataValue.json(plain(report.metadata_changes[:50])),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "target": dg.MetadataValue.text(display),
    }


_DIGEST_TABLE_ROWS = 200  # the evidence report and verify --report hold every batch


def _digest_table(report: VerificationReport, partitions: dict[str, str]) -> dg.MetadataValue:
    """Per batch partition: the export's and PostgreSQL's content digest (short), equal?"""
    schema = dg.TableSchema(columns=[
        dg.TableColumn("batch", "string"), dg.TableColumn("export", "string"),
        dg.TableColumn("postgres", "string"), dg.TableColumn("equal", "bool")])
    rows = [dg.TableRecord({"batch": partitions.get(b.key, b.key),
                            "export": b.expected_digest[:16], "postgres": b.actual_digest[:16],
                            "equal": b.expected_digest == b.actual_digest})
            for b in report.batches[:_DIGEST_TABLE_ROWS]]
    return dg.MetadataValue.table(rows, schema=schema)


# Storage ids per query: well below SQLite's bound on query parameters and Dagster's record
# limit, so a few queries cover a thousand partitions.
_IDS_PER_QUERY = 500


def batch_timings(instance: dg.DagsterInstance, manifest: ExportManifest) -> list[BatchTiming]:
    """Load times of the export's batches, from the latest materialization of each of its
    partitions (keyed by partition).

    Two kinds of query, whatever the number of partitions: one for the latest
    materialization id of every partition, then the records themselves by id (in chunks).
    Partition keys name the export, and a load recorded for another export is left out,
    so the table describes this export only.
    """
    keys = set(partition_keys(manifest))
    this_export = manifest_export_id(manifest)
    latest = instance.get_latest_storage_id_by_partition(
        BATCHES_ASSET, dg.DagsterEventType.ASSET_MATERIALIZATION, keys)
    ids = sorted(storage_id for key, storage_id in latest.items() if key in keys)
    timings = []
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=BATCHES_ASSET, storage_ids=chunk),
            limit=len(chunk)).records
        for record in records:
            timing = _timing(record)
            if timing is not None and _metadata_value(
                    record, EXPORT_ID_METADATA) == this_export:
                timings.append(timing)
    return sorted(timings, key=lambda t: t.key)


def _timing(record: dg.EventLogRecord) -> BatchTiming | None:
    """The batch's load time and rows, from its materialization's metadata."""
    rows = {table: _metadata_value(record, f"rows_{table}") for table in TABLES}
    seconds = _metadata_value(record, "seconds")
    if record.partition_key is None or None in rows.values() or seconds is None:
        return None
    return BatchTiming(key=record.partition_key, checkpoints=rows["checkpoints"],
                       writes=rows["checkpoint_writes"], seconds=float(seconds),
                       blobs=rows["checkpoint_blobs"])


def _metadata_value(record: dg.EventLogRecord, name: str) -> Any:
    materialization = record.asset_materialization
    if materialization is None or name not in materialization.metadata:
        return None
    return materialization.metadata[name].value
