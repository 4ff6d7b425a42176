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
from checkpoint_assets.engine.export.reader import require_same_source, verify_export
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import ImportSummary, import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import load_chain
from checkpoint_assets.engine.verify.evidence import default_evidence_path
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE, verify_migration
from checkpoint_assets.engine.operations.contract import (
    Progress,
    chain_evidence,
    cipher_for,
    progress_for,
    write_evidence,
)


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


