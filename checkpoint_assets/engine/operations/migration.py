"""The forward migration: :func:`export` (SQLite -> export file), :func:`load` (export
file -> PostgreSQL), :func:`verify` (PostgreSQL vs export vs SQLite, with its evidence),
and :func:`export_records` (an export read for people, ``show-export``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.core.workers import workers_for
from checkpoint_assets.engine.export.debug_dump import iter_records
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import (
    read_manifest,
    require_same_source,
    verify_export,
)
from checkpoint_assets.engine.export.sqlite_source import SourceCounts, open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import BatchLoadResult
from checkpoint_assets.engine.load.loader import load_batch as _load_batch
from checkpoint_assets.engine.load.pipeline import ImportSummary, import_export
from checkpoint_assets.engine.load.publish import PublishResult
from checkpoint_assets.engine.load.publish import publish as _publish
from checkpoint_assets.engine.load.table_setup import ensure_tables
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations.contract import (
    Progress,
    chain_evidence,
    cipher_for,
    progress_for,
    write_evidence,
)
from checkpoint_assets.engine.sync.apply_generation import SyncApplyResult
from checkpoint_assets.engine.sync.export_chain import ExportChain, load_chain
from checkpoint_assets.engine.sync.sync_target import with_live_migration_section
from checkpoint_assets.engine.verify.certificates import BatchCertificate
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.engine.verify.evidence import (
    BatchTiming,
    default_evidence_path,
    render_evidence,
)
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE, verify_migration
from checkpoint_assets.engine.verify.reports import BatchComparison, VerificationReport

# --- export -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRequest:
    """Export the SqliteSaver database ``source`` (or the ``threads`` named: ids separated
    by commas, or @FILE) into the export file ``export``."""

    source: Path
    export: Path
    batch_size: int
    threads: str | None = None


@dataclass(frozen=True)
class ExportReport:
    """The export file written: its manifest (counts, batches, digests)."""

    manifest: ExportManifest


def export(request: ExportRequest, *, progress: Progress | None = None) -> ExportReport:
    """SQLite -> export file (written whole or not at all)."""
    total = 0
    if progress is not None:  # the bar's length; nobody else needs the count
        source = open_source(request.source)
        try:
            total = source.counts().checkpoints
        finally:
            source.close()
    with progress_for(progress, "export", total) as advance:
        manifest = write_export(request.source, request.export,
                                batch_size=request.batch_size, progress=advance,
                                selection=parse_thread_selection(request.threads))
    return ExportReport(manifest)


def export_records(path: Path, batch: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the export at ``path`` (or of one batch) as a JSON-ready dict, for
    people; the whole file is verified first."""
    return iter_records(path, batch)


# --- load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadRequest:
    """Load the export file ``export`` into PostgreSQL (``target_dsn``, ``schema``), batch
    by batch; with ``source``, the export must come from that file (checked before
    anything is written)."""

    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    source: Path | None = None
    aes_key: str | None = field(default=None, repr=False)
    workers: int | None = None


@dataclass(frozen=True)
class LoadReport:
    """What the load did: the export's manifest, rows per table and per batch."""

    manifest: ExportManifest
    summary: ImportSummary
    target_display: str


def load(request: LoadRequest, *, progress: Progress | None = None) -> LoadReport:
    """Export file -> PostgreSQL, each batch in its own transaction (a re-run finds rows
    already present and compares them). A sync generation is refused: sync applies it."""
    manifest = verify_export(request.export)
    if manifest.generation:
        raise MigrationError(
            f"{manifest.path} is sync generation {manifest.generation} of an export: it "
            "holds only what changed and is applied under the sync's rules.",
            "Run checkpoint-assets sync (it applies the newest generation again) and import "
            "only the export itself.")
    if request.source:
        require_same_source(manifest, request.source)
    target = Target(request.target_dsn, request.schema)
    with progress_for(progress, "import", manifest.checkpoints) as advance:
        summary = import_export(
            manifest, target, cipher=cipher_for(request.aes_key),
            workers=workers_for(manifest, request.workers),
            on_batch=None if advance is None else lambda r: advance(
                r.inserted["checkpoints"] + r.already_present["checkpoints"]))
    return LoadReport(manifest, summary, target.display)


# --- verify -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRequest:
    """Verify PostgreSQL against the export (with its sync generations) and the SQLite
    ``source`` it came from; the evidence report goes to ``evidence`` (default beside the
    export). ``readback_threads`` None reads back every thread."""

    source: Path
    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    workers: int | None = None
    readback_all_hint: str = ""
    evidence: Path | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The verification, the export it checked and where its evidence was written."""

    report: VerificationReport
    manifest: ExportManifest
    target_display: str
    evidence: Path

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return self.report.passed


def verify(request: VerifyRequest, *, progress: Progress | None = None) -> VerifyReport:
    """Every check of the migration; never raises for a mismatch (the report says)."""
    manifest = verify_export(request.export)
    require_same_source(manifest, request.source)
    chain = load_chain(request.export)  # with its sync generations, if any
    target = Target(request.target_dsn, request.schema)
    with progress_for(progress, "verify", manifest.checkpoints) as advance:
        report = verify_migration(
            manifest, target, source_path=request.source, cipher=cipher_for(request.aes_key),
            readback_threads=request.readback_threads, progress=advance,
            workers=workers_for(manifest, request.workers),
            readback_all_hint=request.readback_all_hint, chain=chain)
    evidence = write_evidence(request.evidence or default_evidence_path(manifest.path),
                              chain_evidence(report, chain, target, None))
    return VerifyReport(report, manifest, target.display, evidence)


# --- reading an export ----------------------------------------------------------------


def read_export_manifest(path: Path) -> ExportManifest:
    """The manifest of the export file at ``path`` (its header and footer; the batches'
    bytes are checked when they are read)."""
    return read_manifest(path)


def read_export_chain(path: Path) -> ExportChain:
    """The export at ``path`` with its sync generations, if any."""
    return load_chain(path)


def verify_export_file(path: Path) -> ExportManifest:
    """The export file at ``path`` read whole, every digest checked; MigrationError when
    one does not match."""
    return verify_export(path)


def count_source(source: Path, threads: str | None = None) -> SourceCounts:
    """Checkpoints, writes and threads in the SqliteSaver file ``source`` right now (of the
    ``threads`` named: ids separated by commas, or @FILE)."""
    opened = open_source(source)
    try:
        return opened.counts(parse_thread_selection(threads))
    finally:
        opened.close()


# --- one batch at a time (the Dagster layer's steps) -----------------------------------


@dataclass(frozen=True)
class PrepareLoadRequest:
    """Get ready to load batches of the export ``export`` (taken from ``source``) into
    PostgreSQL (``target_dsn``, ``schema``)."""

    source: Path
    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PrepareLoadReport:
    """The export with its sync generations, and the target's identity (server, database
    and schema: which database the batches go into)."""

    chain: ExportChain
    identity: str
    target_display: str


def prepare_load(request: PrepareLoadRequest) -> PrepareLoadReport:
    """Read the export chain, check it was taken from ``source``, create or upgrade
    PostgresSaver's tables unless they are up to date, and check the AES key (before any
    batch is written)."""
    chain = load_chain(request.export)
    require_same_source(chain.export, request.source)
    target = Target(request.target_dsn, request.schema)
    ensure_tables(target)
    identity = target.identity() or ""
    cipher_for(request.aes_key)  # a key of the wrong length fails every batch alike
    return PrepareLoadReport(chain, identity, target.display)


@dataclass(frozen=True)
class BatchLoadRequest:
    """Load batch ``batch`` of ``manifest`` (the export, or a sync generation of ``chain``)
    into PostgreSQL, retrying transient errors ``attempts`` times."""

    chain: ExportChain
    manifest: ExportManifest
    batch: str
    target_dsn: str = field(repr=False)
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    strict_versions: bool = False
    attempts: int = 1
    backoff_seconds: float = 0.0


@dataclass(frozen=True)
class BatchLoadReport:
    """What loading (or applying) one batch did, the batch compared with the export
    afterwards, and that comparison's certificate (None unless it passed and certified
    every thread it compared)."""

    result: BatchLoadResult | SyncApplyResult
    comparison: BatchComparison
    certificate: BatchCertificate | None

    @property
    def refused(self) -> list[Any]:
        """Threads refused by strict versions (the batch's others are loaded)."""
        return self.result.refused if isinstance(self.result, BatchLoadResult) else []


def load_batch(request: BatchLoadRequest) -> BatchLoadReport:
    """One batch of the export into PostgreSQL in its own transaction (rows already there
    with the same content are kept), then compared with the export, certified."""
    target = Target(request.target_dsn, request.schema)
    cipher = cipher_for(request.aes_key)
    result = _load_batch(target, request.manifest, request.batch, cipher=cipher,
                         attempts=request.attempts, backoff_seconds=request.backoff_seconds,
                         strict_versions=request.strict_versions)
    comparison = compare_batch(target, request.manifest, request.batch, cipher, certify=True)
    return BatchLoadReport(result, comparison, comparison.certificate(cipher))


# --- verification and publishing in steps ----------------------------------------------


@dataclass(frozen=True)
class CertifiedVerifyRequest:
    """Verify PostgreSQL against the export (with its sync generations) and ``source``,
    taking over each batch whose certificate (by export batch SHA-256) still holds;
    ``certificates`` None compares every batch. ``readback_threads`` None: every thread."""

    source: Path
    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    workers: int | None = None
    readback_all_hint: str = ""
    certificates: dict[str, BatchCertificate] | None = None
    certificates_hint: str = ""
    count_target_tables: bool = True


@dataclass(frozen=True)
class CertifiedVerifyReport:
    """The verification, the export chain it covered and where."""

    report: VerificationReport
    chain: ExportChain
    target_display: str

    @property
    def manifest(self) -> ExportManifest:
        """The export itself (generation 0)."""
        return self.chain.export


def verify_certified(request: CertifiedVerifyRequest) -> CertifiedVerifyReport:
    """Every check of the migration; never raises for a mismatch (the report says)."""
    chain = load_chain(request.export)  # the union of the export and its syncs is compared
    manifest = chain.export
    target = Target(request.target_dsn, request.schema)
    report = verify_migration(
        manifest, target, source_path=request.source, cipher=cipher_for(request.aes_key),
        readback_threads=request.readback_threads,
        workers=workers_for(manifest, request.workers),
        readback_all_hint=request.readback_all_hint, chain=chain,
        certificates=request.certificates, certificates_hint=request.certificates_hint,
        count_target_tables=request.count_target_tables)
    return CertifiedVerifyReport(report, chain, target.display)


def certified_evidence(verified: CertifiedVerifyReport, batches: list[BatchTiming],
                       batch_labels: dict[str, str]) -> str:
    """The evidence report (Markdown) of a verification, with each batch's load time
    (``batches``) and its batches named by ``batch_labels`` (e.g. partition keys)."""
    return with_live_migration_section(
        render_evidence(verified.report, manifest=verified.manifest,
                        target_display=verified.target_display, batches=batches,
                        batch_labels=batch_labels), verified.chain)


@dataclass(frozen=True)
class PublishRequest:
    """Publish the verified ``staging_schema`` into ``final_schema`` (same database)."""

    export: Path
    target_dsn: str = field(repr=False)
    staging_schema: str | None = None
    final_schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PublishReport:
    """What publishing moved, and every batch of the export compared in the final schema."""

    result: PublishResult
    manifest: ExportManifest
    comparisons: list[BatchComparison]
    staging_display: str
    final_display: str


def publish(request: PublishRequest) -> PublishReport:
    """Every staged checkpoint into the final schema in one transaction (rows already there
    with the same content are kept; other content raises ConflictError, nothing
    published), then each batch compared with the export there."""
    staging = Target(request.target_dsn, request.staging_schema)
    final = Target(request.target_dsn, request.final_schema)
    cipher = cipher_for(request.aes_key)
    manifest = read_manifest(request.export)
    result = _publish(staging, final, cipher)
    comparisons = [compare_batch(final, manifest, b.key, cipher) for b in manifest.batches]
    return PublishReport(result, manifest, comparisons, staging.display, final.display)


def target_display(dsn: str, schema: str | None = None) -> str:
    """How messages name the target (server, database, schema; never the password)."""
    return Target(dsn, schema).display


def target_identity(dsn: str, schema: str | None = None) -> str | None:
    """The target's identity (server, database and schema; None when it has no
    ``checkpoints`` table yet); MigrationError when it cannot be reached."""
    return Target(dsn, schema).identity()
