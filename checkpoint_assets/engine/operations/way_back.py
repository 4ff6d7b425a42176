"""The way back: :func:`export_postgres` (PostgresSaver -> export file), :func:`restore`
and :func:`restore_batch` (export file -> SqliteSaver file), :func:`verify_rollback` and
:func:`rollback` (export + restore + verify, published only when verified)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_manifest, verify_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations.contract import cipher_for, write_evidence
from checkpoint_assets.engine.rollback.evidence import render_rollback_evidence
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.postgres_source import write_postgres_export
from checkpoint_assets.engine.rollback.sqlite_target import (
    RestoreBatchResult,
    RestoreSummary,
    connect_sqlite_target,
    load_batch_into_sqlite,
    prepare_restore_file,
    publish_restored,
    remove_deleted_threads,
    restore_export,
    work_path,
)
from checkpoint_assets.engine.rollback.sqlite_target import (
    discard_work_file as _discard_work_file,
)
from checkpoint_assets.engine.rollback.verify_rollback import compare_sqlite_batch
from checkpoint_assets.engine.rollback.verify_rollback import (
    verify_rollback as _verify_rollback,
)
from checkpoint_assets.engine.rollback.way_back import (
    RollbackNotVerified,
    default_rollback_export,
    not_verified_error,
)
from checkpoint_assets.engine.rollback.way_back import rollback as _rollback
from checkpoint_assets.engine.verify.check_table import SQLITE_THREADS_NOT_IN_POSTGRES
from checkpoint_assets.engine.verify.evidence import default_evidence_path
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE
from checkpoint_assets.engine.verify.reports import VerificationReport

# --- the way back -------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresExportRequest:
    """Export PostgresSaver's tables (``source_dsn``, ``schema``; or the ``threads``
    named) into the export file ``export``; with ``original_export`` (the forward
    migration's), checkpoints unchanged since come back in their original bytes."""

    source_dsn: str = field(repr=False)
    export: Path
    schema: str | None = None
    threads: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    batch_size: int = DEFAULT_BATCH_SIZE
    original_export: Path | None = None


@dataclass(frozen=True)
class PostgresExportReport:
    """The export written, where from, and per rebuilt checkpoint whether it came back in
    its original bytes (None without an original export)."""

    manifest: ExportManifest
    source_display: str
    original_bytes: dict[str, int] | None


def export_postgres(request: PostgresExportRequest) -> PostgresExportReport:
    """PostgresSaver's tables -> export file (one REPEATABLE READ snapshot)."""
    originals = OriginalRows(request.original_export) if request.original_export else None
    manifest = write_postgres_export(request.source_dsn, request.export,
                                     schema=request.schema,
                                     threads=parse_thread_selection(request.threads),
                                     cipher=cipher_for(request.aes_key),
                                     batch_size=request.batch_size, originals=originals)
    return PostgresExportReport(manifest,
                                Target(request.source_dsn, request.schema).display,
                                dict(originals.counts) if originals is not None else None)


@dataclass(frozen=True)
class RestoreRequest:
    """Restore the export file ``export`` into the SqliteSaver file ``to`` (created, or
    added to); ``remove_deleted_threads``: into an existing file, delete the threads the
    export no longer has."""

    export: Path
    to: Path
    aes_key: str | None = field(default=None, repr=False)
    remove_deleted_threads: bool = False


@dataclass(frozen=True)
class RestoreReport:
    """What the restore did: rows inserted and already present, threads removed or kept."""

    summary: RestoreSummary

    def totals(self) -> dict[str, Any]:
        """Rows per kind and table, and the threads removed."""
        return self.summary.totals()


def restore(request: RestoreRequest) -> RestoreReport:
    """Export file -> SqliteSaver file (no verification against PostgreSQL)."""
    manifest = verify_export(request.export)
    return RestoreReport(restore_export(manifest, request.to, cipher=cipher_for(request.aes_key),
                                        remove_deleted_threads=request.remove_deleted_threads))


@dataclass(frozen=True)
class RestoreBatchRequest:
    """Restore one batch (``batch``: the export file's key, e.g. batch-00001) of the
    export ``export`` into the SqliteSaver file ``to`` (a new file is built under its work
    name until verified). ``remove_deleted_threads``: the same transaction deletes the
    threads PostgreSQL no longer has from an existing file (the restore's last batch)."""

    export: Path
    to: Path
    batch: str
    aes_key: str | None = field(default=None, repr=False)
    remove_deleted_threads: bool = False


@dataclass(frozen=True)
class RestoreBatchReport:
    """What restoring one batch did (rows inserted, already present, threads removed),
    where, and the batch's threads that differ from the export afterwards (none when
    restored right)."""

    result: RestoreBatchResult
    path: Path
    threads: int
    checkpoints: int
    mismatches: list[dict[str, Any]]


def restore_batch(request: RestoreBatchRequest) -> RestoreBatchReport:
    """One batch into the SqliteSaver file in one SQLite transaction, then compared with
    the export. ConflictError (the batch rolled back) when a row with the same key holds
    other content."""
    manifest = read_manifest(request.export)
    cipher = cipher_for(request.aes_key)
    path = prepare_restore_file(request.to)
    with connect_sqlite_target(path) as conn:
        result = load_batch_into_sqlite(
            conn, manifest, request.batch, cipher,
            remove_deleted_threads=request.remove_deleted_threads)
    entry = manifest.batch(request.batch)
    return RestoreBatchReport(result, path, entry.threads, entry.checkpoints,
                              compare_sqlite_batch(path, manifest, request.batch, cipher))


def restore_totals(batches: list[RestoreBatchResult], to: Path, new_file: bool,
                   kept_threads: list[str]) -> dict[str, Any]:
    """The totals of a restore made of ``batches`` (rows per kind and table, threads
    removed), as a whole restore reports them."""
    return RestoreSummary(to, new_file, list(batches), list(kept_threads)).totals()


@dataclass(frozen=True)
class VerifyRollbackRequest:
    """Run the rollback checks of the SqliteSaver file ``to`` against its ``export`` and
    PostgreSQL (``source_dsn``, ``schema``); the evidence goes to ``evidence`` (default
    beside the export). ``readback_threads`` None reads back every thread."""

    source_dsn: str = field(repr=False)
    export: Path
    to: Path
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    evidence: Path | None = None


@dataclass(frozen=True)
class RollbackRequest:
    """The way back: export PostgreSQL (``source_dsn``, ``schema``, ``threads``) to
    ``export`` (default beside ``to``), restore it into the SqliteSaver file ``to`` and
    verify; a new file is published only when verified."""

    source_dsn: str = field(repr=False)
    to: Path
    export: Path | None = None
    schema: str | None = None
    threads: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    batch_size: int = DEFAULT_BATCH_SIZE
    original_export: Path | None = None
    remove_deleted_threads: bool = False
    evidence: Path | None = None


@dataclass(frozen=True)
class RollbackReport:
    """The rollback's verification (or a verify-rollback's), what it checked and where its
    evidence went. ``totals``: the restore's rows (None for verify-rollback or a new file
    that failed); ``not_verified``: why a new file was not published (None otherwise)."""

    report: VerificationReport
    manifest: ExportManifest
    source_display: str
    to: Path
    export: Path
    evidence: Path
    totals: dict[str, Any] | None = None
    original_bytes: dict[str, int] | None = None
    not_verified: str | None = None

    @property
    def passed(self) -> bool:
        """Every rollback check passed."""
        return self.report.passed

    @property
    def threads_not_in_postgres(self) -> list[str]:
        """The file's threads PostgreSQL no longer has (the warning check names them)."""
        kept = self.report.checks.get(SQLITE_THREADS_NOT_IN_POSTGRES)
        return [m["thread_id"] for m in kept.mismatches] if kept else []


def verify_rollback(request: VerifyRollbackRequest) -> RollbackReport:
    """The rollback checks on a restored file; never raises for a mismatch."""
    manifest = verify_export(request.export)
    source = Target(request.source_dsn, request.schema, role="source")
    report = _verify_rollback(manifest, source, request.to, cipher=cipher_for(request.aes_key),
                              readback_threads=request.readback_threads)
    return _rollback_report(report, manifest, source, request.to, request.export,
                            request.evidence, None)


def rollback(request: RollbackRequest) -> RollbackReport:
    """Export + restore + verify; a new file that fails verification is not published
    (``not_verified`` says so), an existing one is added to and verified."""
    export_path = request.export or default_rollback_export(request.to)
    source = Target(request.source_dsn, request.schema, role="source")
    try:
        result = _rollback(request.source_dsn, request.to, export_path,
                           schema=request.schema,
                           threads=parse_thread_selection(request.threads),
                           cipher=cipher_for(request.aes_key),
                           readback_threads=request.readback_threads,
                           batch_size=request.batch_size,
                           original_export=request.original_export,
                           remove_deleted_threads=request.remove_deleted_threads)
    except RollbackNotVerified as exc:
        if exc.report is None:
            raise
        return _rollback_report(exc.report, read_manifest(export_path), source, request.to,
                                export_path, request.evidence, None, not_verified=str(exc))
    return _rollback_report(result.report, result.manifest, source, request.to, export_path,
                            request.evidence, result.restore.totals(), result.original_bytes)


def rollback_report(report: VerificationReport, manifest: ExportManifest, source_dsn: str,
                    schema: str | None, to: Path, export_path: Path, evidence: Path | None,
                    totals: dict[str, Any] | None, original_bytes: dict[str, int] | None,
                    new_file: bool) -> RollbackReport:
    """The report of a rollback whose steps ran apart (the Dagster assets): its evidence
    written as a whole rollback writes it; a new file that failed is ``not_verified``."""
    not_verified = None
    if new_file and not report.passed:
        not_verified = str(not_verified_error(report, to))
        totals = None  # nothing was published: a failed new file reports no restore
    return _rollback_report(report, manifest, Target(source_dsn, schema, role="source"), to,
                            export_path, evidence, totals, original_bytes, not_verified)


def _rollback_report(report: VerificationReport, manifest: ExportManifest, source: Target,
                     to: Path, export_path: Path, evidence: Path | None,
                     totals: dict[str, Any] | None,
                     original_bytes: dict[str, int] | None = None,
                     not_verified: str | None = None) -> RollbackReport:
    """Write the rollback's evidence report; the report of it."""
    written = write_evidence(
        evidence or default_evidence_path(export_path),
        render_rollback_evidence(report, manifest=manifest, source_display=source.display,
                                 sqlite_path=str(to), restore_totals=totals))
    return RollbackReport(report, manifest, source.display, to, export_path, written, totals,
                          original_bytes, not_verified)


# --- the Dagster layer's steps: restored batches, verified and published apart ----------


def rollback_export_beside(to: Path) -> Path:
    """Where a rollback into ``to`` writes its export when none is given."""
    return default_rollback_export(to)


def work_file(to: Path) -> Path:
    """Where batch runs build a new SqliteSaver file ``to`` until it is verified."""
    return work_path(to)


def discard_work_file(to: Path) -> bool:
    """Remove the unpublished work file of ``to`` (a new export starts a new file); True
    if there was one."""
    return _discard_work_file(to)


def publish_restored_file(work: Path, to: Path) -> None:
    """Rename the verified work file to ``to`` (MigrationError if ``to`` appeared since)."""
    publish_restored(work, to)


def remove_threads_postgres_lacks(path: Path, manifest: ExportManifest) -> list[str]:
    """Delete from the existing SqliteSaver file ``path``, in one transaction, the threads
    of the export's selection that PostgreSQL no longer has; the threads removed."""
    return sorted(remove_deleted_threads(path, manifest))


@dataclass(frozen=True)
class VerifyRestoredRequest:
    """Run the rollback checks of the SqliteSaver file ``path`` (the work file of a new
    ``to``, or ``to`` itself) against the export ``manifest`` and PostgreSQL."""

    source_dsn: str = field(repr=False)
    manifest: ExportManifest
    path: Path
    to: Path
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    readback_all_hint: str = ""
    removed_threads: list[str] = field(default_factory=list)
    remove_hint: str = ""


@dataclass(frozen=True)
class VerifyRestoredReport:
    """The rollback checks' report, and its evidence (Markdown, naming ``to``)."""

    report: VerificationReport
    evidence: str
    source_display: str


def verify_restored(request: VerifyRestoredRequest) -> VerifyRestoredReport:
    """The rollback checks on a file restored batch by batch; never raises for a
    mismatch (publishing a new file is the caller's next step, once they passed)."""
    source = Target(request.source_dsn, request.schema, role="source")
    report = _verify_rollback(request.manifest, source, request.path,
                              cipher=cipher_for(request.aes_key),
                              readback_threads=request.readback_threads,
                              readback_all_hint=request.readback_all_hint,
                              removed_threads=request.removed_threads,
                              remove_hint=request.remove_hint)
    evidence = render_rollback_evidence(report, manifest=request.manifest,
                                        source_display=source.display,
                                        sqlite_path=str(request.to))
    return VerifyRestoredReport(report, evidence, source.display)
