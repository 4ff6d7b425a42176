"""The engine's front door: one typed request in, one typed report out, per operation.

Operations: :func:`export` (SQLite -> export file), :func:`load` (export file ->
PostgreSQL), :func:`verify` (PostgreSQL vs export vs SQLite, with its evidence report),
:func:`sync` (the next sync generation, applied), :func:`cutover` (catch-up sync, wait for
quiet, final sync, verification, the window and its evidence), and the way back:
:func:`export_postgres`, :func:`restore`, :func:`verify_rollback`, :func:`rollback`;
:func:`export_records` reads an export for people (``show-export``).

Adapters (the CLI, the Dagster assets) import this module and nothing deeper, except
:mod:`checkpoint_assets.engine.core.errors` for the exception types and the modules of the
reports a report here carries when they must name their types: ``SyncReport``
(engine.sync.sync_target), ``VerificationReport`` (engine.verify.reports) and
``ExportManifest`` (engine.export.file_format). Requests carry plain values (paths, a DSN,
the AES key) so an adapter needs no engine type to build one; secrets stay out of
``repr``. Every operation runs without an orchestrator; errors a user can cause raise
MigrationError (or a subclass) with what to do.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.interrupts import EXIT_INTERRUPTED, stop_on_ctrl_c
from checkpoint_assets.engine.core.private_files import (
    write_private_json as _write_private_json,
)
from checkpoint_assets.engine.core.private_files import write_private_text
from checkpoint_assets.engine.core.selection import name_threads, parse_thread_selection
from checkpoint_assets.engine.core.workers import (
    PARALLEL_MIN_BATCHES,
    kill_workers,
    workers_for,
)
from checkpoint_assets.engine.export.debug_dump import iter_records
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import (
    read_manifest,
    require_same_source,
    verify_export,
)
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import ImportSummary, import_export
from checkpoint_assets.engine.load.target import Target, scrub
from checkpoint_assets.engine.rollback.evidence import render_rollback_evidence
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.postgres_source import write_postgres_export
from checkpoint_assets.engine.rollback.sqlite_target import (
    RestoreBatchResult,
    RestoreSummary,
    connect_sqlite_target,
    load_batch_into_sqlite,
    prepare_restore_file,
    restore_export,
)
from checkpoint_assets.engine.rollback.verify_rollback import compare_sqlite_batch
from checkpoint_assets.engine.rollback.verify_rollback import (
    verify_rollback as _verify_rollback,
)
from checkpoint_assets.engine.rollback.way_back import (
    ROLLBACK_EXPORT_SUFFIX,
    RollbackNotVerified,
    default_rollback_export,
    not_verified_error,
)
from checkpoint_assets.engine.rollback.way_back import rollback as _rollback
from checkpoint_assets.engine.sync.export_chain import (
    MASS_DELETION_MIN_THREADS,
    MASS_DELETION_SHARE,
    ExportChain,
    load_chain,
)
from checkpoint_assets.engine.sync.sync_target import (
    SyncReport,
    source_files_state,
    sync_target,
    wait_until_quiet,
    with_live_migration_section,
)
from checkpoint_assets.engine.verify.check_table import (
    SOURCE_MATCHES_EXPORT,
    SQLITE_THREADS_NOT_IN_POSTGRES,
)
from checkpoint_assets.engine.verify.evidence import (
    EVIDENCE_SUFFIX,
    default_evidence_path,
    render_evidence,
)
from checkpoint_assets.engine.verify.evidence import check_status as _check_status
from checkpoint_assets.engine.verify.evidence import every_mismatch as _every_mismatch
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE, verify_migration
from checkpoint_assets.engine.verify.reports import VerificationReport

# A progress reporter: ``progress(label, total)`` is a context manager yielding
# ``advance(n)`` (the CLI's bar; None: no progress shown).
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
Say = Callable[[str], None]

@dataclass(frozen=True)
class Contract:
    """Values the engine fixes and its adapters show or follow: the defaults of flags and
    resources, the names of files beside an export, the exit status of a Ctrl-C."""

    batch_size: int  # checkpoints per batch
    readback_threads: int  # threads read back through both savers by default
    parallel_min_batches: int  # batches from which import and verify use two processes
    mass_deletion_min_threads: int  # a sync losing this many threads ...
    mass_deletion_share: float  # ... and this share of them is refused by default
    evidence_suffix: str  # <export><suffix>: the evidence report beside an export
    rollback_export_suffix: str  # <sqlite file><suffix>: the way back's export
    exit_interrupted: int  # the status a command stopped by Ctrl-C exits with


CONTRACT = Contract(
    batch_size=DEFAULT_BATCH_SIZE, readback_threads=DEFAULT_READBACK_SAMPLE,
    parallel_min_batches=PARALLEL_MIN_BATCHES,
    mass_deletion_min_threads=MASS_DELETION_MIN_THREADS,
    mass_deletion_share=MASS_DELETION_SHARE, evidence_suffix=EVIDENCE_SUFFIX,
    rollback_export_suffix=ROLLBACK_EXPORT_SUFFIX, exit_interrupted=EXIT_INTERRUPTED)


@contextmanager
def stopping_on_ctrl_c(at_once_message: str) -> Iterator[None]:
    """The block stops on Ctrl-C (KeyboardInterrupt, workers stopped with it); a second
    Ctrl-C kills the workers, says ``at_once_message`` and exits at once."""
    with stop_on_ctrl_c(kill_workers, at_once_message):
        yield


def without_secrets(text: str, dsn: str | None) -> str:
    """``text`` without the DSN's password, any ``password=`` setting or URL password."""
    return scrub(text, dsn or "")


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, owner-only (settings files hold a DSN's password)."""
    write_private_text(path, text)

# What the evidence leaves to its reader: where to find more.
EVIDENCE_UNTIMED_HINT = ("`checkpoint-assets migrate` and the `migration_verification` "
                         "asset include the load time of every batch.")
EVIDENCE_MORE_HINT = ("see the JSON report (`checkpoint-assets verify --report FILE.json` "
                      "lists every one)")
FIRST_VERIFICATION_MESSAGE = ("First verification of every thread, before the cutover window "
                              "(writers may still write)...")


def _cipher(aes_key: str | None) -> Cipher | None:
    return Cipher(aes_key.encode()) if aes_key else None


def check_status(check: Any) -> str:
    """PASS, FAIL or WARN: how a report shows one check's outcome."""
    return _check_status(check)


def every_mismatch(report: VerificationReport, name: str) -> list[dict]:
    """Every mismatch of check ``name`` that ``report`` holds, by key."""
    return _every_mismatch(report, name)


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path``, owner-only (reports name threads)."""
    _write_private_json(path, data)


def _progress(progress: Progress | None, label: str,
              total: int) -> AbstractContextManager[Callable[[int], None] | None]:
    return progress(label, total) if progress is not None else nullcontext(None)


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
    with _progress(progress, "export", total) as advance:
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
    with _progress(progress, "import", manifest.checkpoints) as advance:
        summary = import_export(
            manifest, target, cipher=_cipher(request.aes_key),
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
    with _progress(progress, "verify", manifest.checkpoints) as advance:
        report = verify_migration(
            manifest, target, source_path=request.source, cipher=_cipher(request.aes_key),
            readback_threads=request.readback_threads, progress=advance,
            workers=workers_for(manifest, request.workers),
            readback_all_hint=request.readback_all_hint, chain=chain)
    evidence = write_evidence(request.evidence or default_evidence_path(manifest.path),
                              chain_evidence(report, chain, target, None))
    return VerifyReport(report, manifest, target.display, evidence)


def evidence_beside(export_path: Path) -> Path:
    """Where an evidence report goes by default: ``<export>.evidence.md`` beside it."""
    return default_evidence_path(export_path)


def chain_evidence(report: VerificationReport, chain: ExportChain, target: Target,
                   deletions_kept: list[str] | None,
                   cutover: dict[str, str] | None = None) -> str:
    """The evidence report; with a section on the syncs and the selection when there are."""
    markdown = render_evidence(report, manifest=chain.export, target_display=target.display,
                               untimed_hint=EVIDENCE_UNTIMED_HINT,
                               more_hint=EVIDENCE_MORE_HINT)
    return with_live_migration_section(markdown, chain, deletions_kept=deletions_kept,
                                       cutover=cutover)


def write_evidence(path: Path, markdown: str) -> Path:
    """Write an evidence report, owner-only (it names threads and metadata values)."""
    try:
        write_private_text(path, markdown)
    except OSError as exc:
        raise MigrationError(f"Cannot write the evidence report {path}: "
                             f"{exc.strerror or exc}.",
                             "Pass --evidence FILE.md in a writable directory.") from None
    return path


# --- sync ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncRequest:
    """One sync of the SQLite ``source`` into PostgreSQL through the export chain of
    ``export``. ``threads`` (as given, or None) must be the export's own selection.
    ``propagate_deletes``: threads deleted in the source are deleted in the target too."""

    source: Path
    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    threads: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    propagate_deletes: bool = False
    allow_mass_deletion: bool = False
    strict_versions: bool = False
    read_every_thread: bool = False


def sync(request: SyncRequest) -> SyncReport:
    """Write the next sync generation from what changed in the source, and apply it (see
    engine.sync.sync_target.sync_target). A refused thread is in ``found.refused``; a
    conflict raises ConflictError with nothing of that batch written."""
    chain = load_chain(request.export)
    selection = parse_thread_selection(request.threads)
    if selection is not None and selection != chain.selection:
        if chain.selection is None:
            differ = "every thread"
        else:
            extra = [tid for tid in selection if tid not in chain.selection]
            left = [tid for tid in chain.selection if tid not in selection]
            differ = "; ".join(part for part in (
                f"not in it: {name_threads(extra)}" if extra else "",
                f"in it, not given: {name_threads(left)}" if left else "") if part)
        raise MigrationError(
            f"--threads names other threads than the export {chain.export.path} was taken "
            f"for ({differ}).",
            "Sync without --threads (a sync follows its export's selection), or export "
            "and migrate that selection into its own export file (--export).")
    target = Target(request.target_dsn, request.schema)
    return sync_target(request.source, request.export, target,
                       cipher=_cipher(request.aes_key),
                       propagate_deletes=request.propagate_deletes,
                       read_every_thread=request.read_every_thread,
                       allow_mass_deletion=request.allow_mass_deletion,
                       strict_versions=request.strict_versions)


# --- cutover ------------------------------------------------------------------------


@dataclass(frozen=True)
class CutoverRequest:
    """The cutover of ``sync`` (what each of its syncs does): wait until the source has not
    changed for ``quiet_seconds`` (at most ``timeout_seconds``), sync a last time, prove
    the target equal; the evidence report goes to ``evidence`` (default beside the
    export)."""

    sync: SyncRequest
    quiet_seconds: float
    timeout_seconds: float | None = None
    workers: int | None = None
    evidence: Path | None = None


@dataclass(frozen=True)
class CutoverReport:
    """What the cutover proved: the final sync, the verification, the window.

    ``window``: label -> text (the evidence's rows and the CLI's lines); ``timings``: the
    same moments as numbers (UTC ISO times and seconds); ``untouched``: no writer changed
    the source between quiet and proven equal; ``passed``: proven equal and untouched.
    """

    synced: SyncReport
    report: VerificationReport
    target_display: str
    window: dict[str, str]
    timings: dict[str, Any]
    evidence: Path
    untouched: bool
    passed: bool
    window_seconds: float


def cutover(request: CutoverRequest, *, say: Say = print,
            progress: Progress | None = None) -> CutoverReport:
    """Catch-up sync and a certified first verification of every thread (writers may still
    write); then wait for quiet, the final sync, and a second verification that compares
    again only what changed since the first (so the window follows the last changes, not
    the database's size). When the source differs from the synced state while no writer
    touched it (rowids used again), it syncs once more with every thread digested.
    ``say`` gets each progress line. Raises TimedOut when the source was not quiet within
    ``timeout_seconds``."""
    sync_request = request.sync
    source = sync_request.source
    target = Target(sync_request.target_dsn, sync_request.schema)

    def sync_again(read_every_thread: bool = False) -> SyncReport:
        if not read_every_thread:
            return sync(sync_request)
        return sync(replace(sync_request, read_every_thread=True))

    def verify_chain(chain: ExportChain,
                     earlier: VerificationReport | None = None) -> VerificationReport:
        with _progress(progress, "verify", chain.checkpoints) as advance:
            return verify_migration(chain.export, target, source_path=source,
                                    cipher=_cipher(sync_request.aes_key),
                                    readback_threads=None, progress=advance,
                                    workers=workers_for(chain.export, request.workers),
                                    chain=chain, certify=True, earlier=earlier)

    say("Catch-up sync (writers may still write)...")
    say(sync_again().render())
    say(FIRST_VERIFICATION_MESSAGE)
    first = verify_chain(load_chain(sync_request.export))
    wait_started = time.time()
    last_write, quiet_files = wait_until_quiet(source, request.quiet_seconds, say=say,
                                               timeout_seconds=request.timeout_seconds)
    quiet_at = time.time()
    say(f"Source quiet since {clock(last_write)}; final sync...")
    synced = sync_again()
    say(synced.render())
    chain = load_chain(sync_request.export)
    report = verify_chain(chain, earlier=first)
    if not report.checks[SOURCE_MATCHES_EXPORT].passed \
            and source_files_state(source) == quiet_files:
        # The fingerprints missed a change (rowids used again): digest every thread.
        say("The source differs from the synced state; syncing again, every thread "
            "digested...")
        synced = sync_again(read_every_thread=True)
        chain = load_chain(sync_request.export)
        report = verify_chain(chain, earlier=first)
    proven_at = time.time()
    untouched = source_files_state(source) == quiet_files
    passed = report.passed and untouched
    # The window starts at the last write seen (the writers' stop), not when the wait
    # noticed quiet: the application is down from its last write to "proven equal".
    window = {
        "cutover": "PASSED: the target equals the source as of " + synced.found.snapshot_at
        if passed else "FAILED: equality not proven",
        "writers quiet since": f"{clock(last_write)} (the source's last change; quiet "
                               f"for {request.quiet_seconds:g} s by {clock(quiet_at)})",
        "waited for quiet": f"{quiet_at - wait_started:.1f} s (from {clock(wait_started)}, "
                            "after the first verification)",
        "proven equal at": clock(proven_at) if passed else "-",
        "cutover window": f"{proven_at - last_write:.1f} s from the last write seen to "
                          f"proven equal (quiet {quiet_at - last_write:.1f} s + final sync "
                          f"{synced.seconds:.1f} s + verification {report.seconds:.1f} s)",
        "source untouched during the cutover": "yes" if untouched else
        "NO: a writer changed the source; stop every writer and run cutover again",
    }
    timings = {"last_write_at": clock(last_write), "wait_started_at": clock(wait_started),
               "quiet_at": clock(quiet_at), "proven_at": clock(proven_at),
               "wait_seconds": round(quiet_at - wait_started, 3),
               "window_seconds": round(proven_at - last_write, 3),
               "final_sync_seconds": round(synced.seconds, 3),
               "verification_seconds": round(report.seconds, 3)}
    evidence = write_evidence(request.evidence or default_evidence_path(chain.export.path),
                              chain_evidence(report, chain, target, synced.deletions_kept,
                                             window))
    return CutoverReport(synced, report, target.display, window, timings, evidence,
                         untouched, passed, proven_at - last_write)


def clock(seconds: float) -> str:
    """A ``time.time()`` as a UTC ISO 8601 time with milliseconds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


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
                                     cipher=_cipher(request.aes_key),
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
    return RestoreReport(restore_export(manifest, request.to, cipher=_cipher(request.aes_key),
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
    cipher = _cipher(request.aes_key)
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
    report = _verify_rollback(manifest, source, request.to, cipher=_cipher(request.aes_key),
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
                           cipher=_cipher(request.aes_key),
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
