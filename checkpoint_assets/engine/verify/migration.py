"""Verify a migration: compare the target with the export and the SQLite source.

The per-batch comparisons, counts and the source's drift since the export become the
``Findings`` that every check of :mod:`check_table` judges; the run returns one
:class:`VerificationReport` with every mismatch.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError, MissingTablesError
from checkpoint_assets.engine.core.workers import workers_for
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.snapshot import live_uri, private_snapshot, reads_live
from checkpoint_assets.engine.export.sqlite_source import (
    SourceDatabase,
    open_source,
    require_sqlite_file,
)
from checkpoint_assets.engine.export.writer import thread_digests
from checkpoint_assets.engine.load.target import (
    TABLES,
    Target,
    refresh_statistics_of,
    scrub,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain, as_chain
from checkpoint_assets.engine.verify.certificates import (
    BatchCertificate,
)
from checkpoint_assets.engine.verify.check_table import (
    CHECKS,
    Findings,
)
from checkpoint_assets.engine.verify.comparison import (
    compare_batches,
)
from checkpoint_assets.engine.verify.reports import BatchComparison, VerificationReport
from checkpoint_assets.engine.verify.unchanged import (
    RowVersionsMark,
    UnchangedScan,
    mark_now,
    threads_unchanged_since,
)

DEFAULT_READBACK_SAMPLE = 25


def source_drift(source_path: str | Path, manifest: ExportManifest | ExportChain,
                 ) -> dict[str, list[str]]:
    """Threads whose rows in the SQLite source differ from the export (or from the state
    its sync generations reached) right now; only the chain's selection, if it has one.

    Returns ``{"changed": [...], "added": [...], "removed": [...]}`` (thread ids).
    """
    chain = as_chain(manifest)
    source = open_source(source_path, names=chain.export.thread_names)
    try:
        with source.snapshot():
            return _drift(source, chain)
    finally:
        source.close()


def _drift(source: SourceDatabase, chain: ExportChain,
           only: Collection[str] | None = None) -> dict[str, list[str]]:
    """:func:`source_drift` of an open source (``only``: of these threads alone, each read
    through the primary-key indexes)."""
    exported = {tid: sha for tid, sha, _, _ in chain.thread_digests()
                if only is None or tid in only}
    selection = set(chain.selection) if chain.selection is not None else None
    if only is None:
        digests = thread_digests(source.checkpoints(), source.writes())
    else:
        digests = (next(thread_digests(iter(rows.checkpoints), iter(rows.writes)))
                   for rows in map(source.thread_rows, sorted(only))
                   if rows.checkpoints or rows.writes)
    current = {tid: sha for tid, sha in digests if selection is None or tid in selection}
    return {
        "changed": sorted(t for t in exported if t in current and current[t] != exported[t]),
        "added": sorted(t for t in current if t not in exported),
        "removed": sorted(t for t in exported if t not in current),
    }


def target_table_counts(target: Target) -> dict[str, int]:
    """Total rows in each PostgresSaver table of the target."""
    with target.connect() as conn:
        return {table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(table))).fetchone()[0]
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")}


def verify_migration(
    manifest: ExportManifest,
    target: Target,
    *,
    source_path: str | Path | None = None,
    cipher: Cipher | None = None,
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE,
    progress: Any = None,
    workers: int | None = None,
    readback_all_hint: str = "",
    chain: ExportChain | None = None,
    certify: bool = False,
    earlier: VerificationReport | None = None,
    certificates: Mapping[str, BatchCertificate] | None = None,
    certificates_hint: str = "",
    source_drift_in: Collection[str] | None = None,
    count_target_tables: bool = True,
    unchanged: UnchangedScan | None = None,
    assume_unchanged: bool = False,
) -> VerificationReport:
    """Run every check and return the report. Never raises for a mismatch: reports it.

    ``certify``: every batch is compared together with the digest of each of its threads'
    row versions (the report can then be the ``earlier`` of a later run). ``earlier``: a
    certified report of the same target: a batch whose threads still have the row versions
    they passed with (those a sync did not move to a later generation) is taken over instead of
    compared again, and its threads that were read back equal are not read back again
    (their source rows are the same too: the batch is the same and the source-drift check
    compares every thread). This is how the cutover keeps its window short: the full
    comparison runs first, while writers still write. ``certificates`` (by export batch
    SHA-256, see certificates.py): what the batch checks proved; a batch whose certificate
    still holds is taken over in the same way (the content check says how many were, and
    that this rests on the record that kept the certificates being genuine;
    ``certificates_hint``: what that record is and how the caller compares every batch).

    ``chain``: the export's sync generations (export_chain): the target is then compared
    with the state they reached (each live thread with the generation holding it), and
    the source with that state. Without it, the export ``manifest`` alone is the state.

    ``source_drift_in``: the only threads in which the source can differ from the chain,
    known to the caller (the cutover: an earlier verification digested every thread, and
    since then the syncs' books name every thread written); only those are digested, from
    the live file (snapshot.reads_live) as every thread is otherwise, and the read-back
    reads the same file. None: every thread.

    ``readback_threads`` None reads back every thread through the official savers;
    ``readback_all_hint`` is how the caller asks for that (named in the note of a sample).
    ``workers`` processes compare batches at once (None: as many as an import of this
    export would use, since comparing also spends most of its time in Python).
    ``count_target_tables``: also count the target's whole tables (``counts
    ["target_tables"]``, said beside the export's rows); a fleet counts them once for all
    its sources instead. ``unchanged``: the scan of the target against the marks of
    ``earlier``'s comparisons (:func:`unchanged_since`), when the caller ran it already (the
    cutover, beside its final sync); None: scanned here when ``earlier`` is given.
    ``assume_unchanged``: no scan; every earlier comparison whose threads no sync moved is
    taken over as it is. Such a report proves nothing of those threads in the target: the
    cutover's rounds while writers still write use it, and its last verification scans
    (each comparison keeps the mark it was read at, so the scan finds every change since).
    Raises MigrationError when the target cannot be read: no PostgresSaver tables there,
    or a database error (the message without the DSN's password).
    """
    require_target_tables(target)
    try:
        return _verify_migration(manifest, chain or ExportChain([manifest]), target,
                                 source_path, cipher, readback_threads, progress, workers,
                                 readback_all_hint, certify, earlier, certificates,
                                 certificates_hint, source_drift_in, count_target_tables,
                                 unchanged, assume_unchanged)
    except psycopg.Error as exc:
        raise MigrationError(
            f"Reading the target {target.display} failed during the verification: "
            f"{scrub(str(exc).strip(), target.dsn)}",
            "Check that the server is up and that this user may read PostgresSaver's "
            "tables (GRANT SELECT), then run the verification again.") from None


def require_target_tables(target: Target) -> None:
    """Raise MigrationError unless the target holds every PostgresSaver table to compare."""
    with target.connect(autocommit=True) as conn:
        missing = [row[0] for row in conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
            (list(TABLES),))]
    if missing:
        where = f"schema {target.schema}" if target.schema else "the search_path"
        raise MissingTablesError(
            f"The target {target.display} has no PostgresSaver table {', '.join(missing)} "
            f"in {where}, so there is nothing to verify the export against.",
            "Import the export first, or point the target's DSN and schema at the database "
            "and schema the checkpoints were imported into.")


def _verify_migration(manifest: ExportManifest, chain: ExportChain, target: Target,
                      source_path: str | Path | None, cipher: Cipher | None,
                      readback_threads: int | None, progress: Any,
                      workers: int | None, readback_all_hint: str, certify: bool,
                      earlier: VerificationReport | None,
                      certificates: Mapping[str, BatchCertificate] | None,
                      certificates_hint: str = "",
                      source_drift_in: Collection[str] | None = None,
                      count_target_tables: bool = True,
                      unchanged: UnchangedScan | None = None,
                      assume_unchanged: bool = False) -> VerificationReport:
    started = time.perf_counter()
    refresh_statistics_of(target)  # a target loaded by other means may never have been analyzed
    # Before anything is read: what a later run takes over from this one is measured
    # against this mark (unchanged.py).
    mark = mark_now(target) if certify else None
    # One private snapshot of the source for its counts, its digests and the read-back.
    with ExitStack() as held, ThreadPoolExecutor(max_workers=1) as beside:
        # The SQLite side (counts, per-thread digests) is read while the batches compare.
        source_state = beside.submit(_source_state, source_path, chain, held,
                                     source_drift_in) if source_path is not None else None
        workers = workers_for(manifest) if workers is None else workers
        if not certify or earlier is None:
            scan = None
        elif assume_unchanged:
            scan = UnchangedScan(frozenset(certified_threads(earlier)), {})
        else:
            scan = unchanged or unchanged_since(target, earlier)
        comparisons = compare_batches(manifest, target, cipher, workers=workers,
                                      progress=progress, chain=chain, certify=certify,
                                      earlier=earlier, certificates=certificates,
                                      unchanged=None if scan is None else scan.unchanged,
                                      mark=mark)
        source_copy, sqlite_counts, drift = source_state.result() \
            if source_state is not None \
            else (None, None, {"changed": [], "added": [], "removed": []})
        table_rows = None if not count_target_tables else \
            dict(scan.table_rows) if scan is not None and scan.table_rows \
            else target_table_counts(target)
        return _report(started, manifest, chain, target, cipher, source_path, source_copy,
                       readback_threads, readback_all_hint, comparisons, sqlite_counts, drift,
                       workers, earlier, certificates_hint,
                       None if source_drift_in is None else len(source_drift_in), table_rows)


def certified_threads(earlier: VerificationReport,
                      ) -> dict[str, tuple[tuple[int, int, int], RowVersionsMark]]:
    """Each thread of ``earlier``'s passed comparisons that kept a mark: its rows per table
    as compared, and the mark taken before they were read."""
    return {tid: (counts, comparison.mark) for comparison in earlier.batches
            if comparison.passed and comparison.mark is not None
            for tid, (_, counts) in comparison.certified.items()}


def unchanged_since(target: Target, earlier: VerificationReport) -> UnchangedScan:
    """The scan of the target for the threads ``earlier`` certified: those whose rows are
    still the ones its comparisons read (unchanged.threads_unchanged_since)."""
    return threads_unchanged_since(target, certified_threads(earlier))


def _report(started: float, manifest: ExportManifest, chain: ExportChain, target: Target,
            cipher: Cipher | None, source_path: str | Path | None,
            source_copy: Path | str | None,
            readback_threads: int | None, readback_all_hint: str,
            comparisons: list[BatchComparison], sqlite_counts: dict[str, int] | None,
            drift: dict[str, list[str]], workers: int,
            earlier: VerificationReport | None,
            certificates_hint: str = "",
            source_digested: int | None = None,
            target_tables: dict[str, int] | None = None) -> VerificationReport:
    """Run every check on what was compared and read (``target_tables``: the target's
    whole tables' rows, when counted)."""
    counts = {"export": {"checkpoints": chain.checkpoints,
                         "checkpoint_writes": chain.writes},
              "expected_target": _sum_counts(c.expected_counts for c in comparisons),
              "target": _sum_counts(c.actual_counts for c in comparisons)}
    if target_tables is not None:
        counts["target_tables"] = target_tables
    if sqlite_counts is not None:
        counts["sqlite"] = sqlite_counts
    # Read back equal by the earlier run and taken over from it (not from a certificate,
    # which may be newer than that read-back).
    read_back_before = frozenset(
        tid for c in comparisons if c.reused and not c.certificate_from
        for tid in c.thread_ids if earlier is not None and tid in earlier.read_back_equal)
    findings = Findings(manifest, target, cipher, source_path, readback_threads,
                        readback_all_hint, comparisons, counts, drift, chain, workers,
                        read_back_before, source_copy, certificates_hint=certificates_hint,
                        source_digested=source_digested)
    checks = {spec.name: spec.run(findings) for spec in CHECKS
              if source_path is not None or not spec.needs_source}
    return VerificationReport(
        checks=checks, counts=counts,
        metadata_changes=[m for c in comparisons for m in c.metadata_changes],
        seconds=time.perf_counter() - started, batches=comparisons,
        read_back_equal=frozenset(findings.read_back_equal), drift=drift)


def _source_state(source_path: str | Path, chain: ExportChain, held: ExitStack,
                  only: Collection[str] | None = None,
                  ) -> tuple[Path | str, dict[str, int], dict[str, list[str]]]:
    """One consistent state of the SQLite source: its counts (of the chain's selection, if
    it has one) and its threads that differ from the expected state (``only``: of those
    threads alone; see verify_migration), and where the read-back reads it. A WAL file an
    application has open is read in place in one read transaction (snapshot.reads_live):
    a copy of a large file that a writer keeps checkpointing may never complete. Other
    sources: a private snapshot, kept open in ``held`` for the read-back."""
    require_sqlite_file(source_path)
    copy: Path | str
    if reads_live(source_path):
        copy = live_uri(source_path)
        source = open_source(source_path, live=True, names=chain.export.thread_names)
    else:
        copy = held.enter_context(private_snapshot(Path(source_path)))
        source = open_source(source_path, snapshot=copy, names=chain.export.thread_names)
    try:
        with source.snapshot():
            found = source.counts(chain.selection)
            drift = _drift(source, chain, only)
    finally:
        source.close()
    return copy, {"checkpoints": found.checkpoints, "checkpoint_writes": found.writes}, drift


def _sum_counts(items: Any) -> dict[str, int]:
    total: dict[str, int] = {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}
    for counts in items:
        for k, v in counts.items():
            total[k] += v
    return total
