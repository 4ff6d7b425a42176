"""Many SQLite files into one PostgreSQL: plan the fleet, export every source, find the
thread ids they share before anything is written, verify each source and the whole.

A fleet's source is migrated exactly as one source is (its own export, batches and
verification), with two differences: its threads may be renamed in the target (a prefix
per source, or a mapping file; recorded in its export header and reversed by the way
back), and its batch partitions carry its label. What a fleet adds is that the sources
are looked at together: colliding thread ids are refused by key naming the files, copies
are recognised, and the fleet passes only when every source passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.private_files import write_private_text
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.sqlite_source import SourceCounts, open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.fleet.collisions import (
    SharedThreads,
    refuse_collisions,
    shared_threads,
)
from checkpoint_assets.engine.fleet.evidence import MemberResult, render_fleet_evidence
from checkpoint_assets.engine.fleet.fleet_file import (
    FLEET_FILE_NAME,
    Fleet,
    FleetMember,
    plan_fleet,
    read_fleet,
    write_fleet,
)
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations import migration
from checkpoint_assets.engine.operations.contract import (
    without_secrets,
    worker_processes,
    workers_by_default,
    write_evidence,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain, load_chain
from checkpoint_assets.engine.verify.certificates import BatchCertificate
from checkpoint_assets.engine.verify.evidence import default_evidence_path
from checkpoint_assets.engine.verify.migration import (
    DEFAULT_READBACK_SAMPLE,
    target_table_counts,
)

FLEET_EVIDENCE_NAME = "fleet.evidence.md"
# From this many sources, exports and verifications run in worker processes.
PARALLEL_MIN_SOURCES = 4
# Every source is read back through both savers, however many there are (a sample of one
# source's size shared between them would leave most sources with none).
MIN_READBACK_PER_SOURCE = 2


# --- the plan -----------------------------------------------------------------------


@dataclass(frozen=True)
class FleetPlanRequest:
    """The SQLite files of a fleet (each a path, @LIST, a glob or a directory), where
    their exports and the fleet file go, and how their threads are told apart (a prefix
    template with ``{source}``, or a mapping file; neither: ids kept)."""

    sources: tuple[str, ...]
    export_dir: Path
    thread_prefix: str | None = None
    thread_map: Path | None = None


def plan(request: FleetPlanRequest) -> Fleet:
    """The fleet (a label, an export and thread names per source), written to
    ``<export_dir>/fleet.json``; nothing is read from the sources yet."""
    fleet = plan_fleet(request.sources, request.export_dir,
                       thread_prefix=request.thread_prefix, thread_map=request.thread_map)
    return write_fleet(fleet, request.export_dir / FLEET_FILE_NAME)


def open_fleet(path: Path) -> Fleet:
    """The fleet written to ``path`` by :func:`plan`."""
    return read_fleet(path)


# --- export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberExport:
    """One source's export (None when it failed: ``error`` says why, without secrets)
    and the source's own counts in the same snapshot (SQLite's indexes, per thread)."""

    member: FleetMember
    manifest: ExportManifest | None = None
    counts: SourceCounts | None = None
    error: str | None = None


@dataclass(frozen=True)
class FleetExportReport:
    """Every source's export, the thread ids the exported ones share, and which sources
    are copies of another."""

    fleet: Fleet
    exports: tuple[MemberExport, ...]
    shared: SharedThreads

    @property
    def failed(self) -> list[MemberExport]:
        """The sources whose export failed."""
        return [e for e in self.exports if e.manifest is None]


def export_fleet(fleet: Fleet, batch_size: int,
                 workers: int | None = None) -> FleetExportReport:
    """Export every source of the fleet (each one consistent snapshot, its threads named
    as the fleet says; ``workers`` sources at once, see :func:`each_member`), then compare
    their threads: a thread id two sources hold with different content raises
    MigrationError naming them and the files (nothing is written to PostgreSQL). A source
    that cannot be exported (not a checkpoint database, damaged, missing) is reported in
    ``exports`` and the others go on."""
    exports = each_member(_export_member, fleet.members, workers, batch_size)
    chains = {e.member.label: load_chain(e.member.export) for e in exports if e.manifest}
    shared = shared_threads(chains)
    refuse_collisions(shared, fleet.paths,
                      "No batch was registered and nothing was written to PostgreSQL.")
    return FleetExportReport(fleet, tuple(exports), shared)


def _export_member(member: FleetMember, batch_size: int) -> MemberExport:
    """One source's export (in a worker process when the fleet has several)."""
    try:
        manifest = write_export(member.source, member.export, batch_size=batch_size,
                                names=member.names, fleet_label=member.label)
    except MigrationError as exc:
        return MemberExport(member, error=str(exc))
    # What SQLite's indexes counted in the export's own snapshot (its source state), not
    # a second copy of every file: the rows streamed must be every row counted.
    state = load_chain(member.export).state
    return MemberExport(member, manifest, SourceCounts(state.checkpoints, state.writes,
                                                       len(state.threads)))


def each_member(work: Callable[..., Any], members: Sequence[FleetMember],
                workers: int | None, *args: Any) -> list[Any]:
    """``work(member, *args)`` for every member, in order: in ``workers`` processes at once
    (None: one per core, at most two) when there are PARALLEL_MIN_SOURCES or more, since a
    worker takes a second to start. ``work`` must catch what a source's own failure
    raises; anything else stops the fleet."""
    workers = workers or workers_by_default()
    if workers <= 1 or len(members) < PARALLEL_MIN_SOURCES:
        return [work(member, *args) for member in members]
    with worker_processes(min(workers, len(members))) as pool:
        return list(pool.map(work, members, *(repeat(arg) for arg in args)))


# --- the batches ----------------------------------------------------------------------


def fleet_chains(fleet: Fleet) -> dict[str, ExportChain]:
    """{label: export chain} of the fleet's sources whose export exists; a source never
    exported is left out."""
    return {m.label: load_chain(m.export) for m in fleet.members if m.export.exists()}


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class FleetVerifyRequest:
    """Verify every source of ``fleet`` against PostgreSQL (``target_dsn``, ``schema``);
    options as for migration.CertifiedVerifyRequest, for each source."""

    fleet: Fleet
    target_dsn: str = field(repr=False)
    schema: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE
    workers: int | None = None
    readback_all_hint: str = ""
    certificates: Mapping[str, BatchCertificate] | None = None
    certificates_hint: str = ""


@dataclass(frozen=True)
class FleetVerifyReport:
    """Each source's verification, the thread ids they share, and the fleet's evidence
    report (Markdown; each source's own report is written beside its export)."""

    results: tuple[MemberResult, ...]
    shared: SharedThreads
    target_display: str
    evidence: str
    evidence_path: Path | None = None

    @property
    def passed(self) -> bool:
        """Every source passed every check."""
        return bool(self.results) and all(r.passed for r in self.results)


def verify_fleet(request: FleetVerifyRequest) -> FleetVerifyReport:
    """Verify each source of the fleet on its own (a source that fails, or cannot be
    verified, is a FAILED row and the others still run), write each source's evidence
    beside its export and the fleet's beside the fleet file."""
    fleet = request.fleet
    target = Target(request.target_dsn, request.schema)
    sample = readback_share(request.readback_threads, len(fleet.members))
    results = each_member(_verify_member, fleet.members, request.workers,
                          replace(request, readback_threads=sample))
    chains = fleet_chains(fleet)
    shared = shared_threads(chains)
    markdown = render_fleet_evidence(results, shared, target.display,
                                     target_table_counts(target), sample)
    path = None
    if fleet.path is not None:
        path = write_evidence(fleet.path.with_name(FLEET_EVIDENCE_NAME), markdown)
    return FleetVerifyReport(tuple(results), shared, target.display, markdown, path)


def _verify_member(member: FleetMember, request: FleetVerifyRequest) -> MemberResult:
    """One source's verification and its evidence beside its export (in a worker process
    when the fleet has several: the source's batches are then compared in that one)."""
    try:
        verified = migration.verify_certified(migration.CertifiedVerifyRequest(
            source=member.source, export=member.export, target_dsn=request.target_dsn,
            schema=request.schema, aes_key=request.aes_key,
            readback_threads=request.readback_threads,
            workers=1 if len(request.fleet.members) >= PARALLEL_MIN_SOURCES
            else request.workers, readback_all_hint=request.readback_all_hint,
            certificates=None if request.certificates is None
            else dict(request.certificates),
            certificates_hint=request.certificates_hint, count_target_tables=False))
    except MigrationError as exc:
        why = _why_never_exported(member) or str(exc)
        return MemberResult(member, None, without_secrets(why, request.target_dsn))
    evidence = write_evidence(default_evidence_path(member.export),
                              migration.certified_evidence(verified, [], {}))
    return MemberResult(member, verified.report, None, str(evidence))


def readback_share(readback_threads: int | None, sources: int) -> int | None:
    """Threads each source reads back through both savers: the sample one source would
    read, shared between the sources, at least MIN_READBACK_PER_SOURCE each (None: every
    thread of every source)."""
    if readback_threads is None:
        return None
    return max(MIN_READBACK_PER_SOURCE, -(-readback_threads // max(sources, 1)))


def _why_never_exported(member: FleetMember) -> str | None:
    """What is wrong with a source that has no export (its file is missing, damaged, not a
    checkpoint database), or None when it has one or could be read."""
    if member.export.exists():
        return None
    try:
        open_source(member.source, names=member.names).close()
    except MigrationError as exc:
        return f"not exported: {exc}"
    return None


# --- the way back, one source at a time -------------------------------------------------

THREAD_LIST_SUFFIX = ".threads"


def source_thread_list(fleet: Fleet, label: str) -> Path:
    """The threads of the fleet's source ``label`` as PostgreSQL calls them, one a line,
    in a private file beside its export: ``--threads @FILE`` of a rollback of that source
    alone (with its export as the original export, the rollback gives the threads their
    own ids back). MigrationError when the source was never exported, or when an id
    cannot be listed a line (a line break, or spaces at either end)."""
    member = fleet.member(label)
    if not member.export.exists():
        raise MigrationError(f"The fleet's source {label!r} has no export ({member.export}).",
                             "Migrate the fleet first (checkpoint-assets migrate).")
    ids = [tid for tid, _, _, _ in load_chain(member.export).thread_digests()]
    unlistable = [tid for tid in ids if tid != tid.strip() or "\n" in tid or "\r" in tid]
    if unlistable:
        raise MigrationError(
            f"{len(unlistable)} thread id(s) of {label!r} cannot be listed one a line "
            f"(first: {unlistable[0]!r}).",
            "Roll those threads back with --threads naming them, and the others with a "
            "list of your own (--threads @FILE).")
    path = member.export.with_name(member.export.name + THREAD_LIST_SUFFIX)
    write_private_text(path, "".join(f"{tid}\n" for tid in ids))
    return path
