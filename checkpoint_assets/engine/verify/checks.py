"""Compare the target with the export and with the SQLite source; report every mismatch.

Every check is declared once, in ``CHECKS``: its name (the contract with the Dagster layer
and the CLI), what it proves and cannot, its severity, and the function that judges the
``Findings`` (per-batch comparisons of the target with the export, counts, the source's
drift since the export) and returns its ``CheckOutcome``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from checkpoint_assets.engine.load import superseded_table
from checkpoint_assets.engine.verify.certificates import (
    BatchCertificate,
    digests_now,
    fits,
    key_fingerprint,
    rows_sha256,
)
from checkpoint_assets.engine.verify.content_view import BatchView, source_view, target_view
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_batch
from checkpoint_assets.engine.export.writer import thread_digests
from checkpoint_assets.engine.verify.readback import compare_thread_readback
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.export.snapshot import private_snapshot
from checkpoint_assets.engine.export.sqlite_source import (
    SourceDatabase,
    open_source,
    require_sqlite_file,
)
from checkpoint_assets.engine.load.target import (
    TABLES,
    Target,
    refresh_statistics_of,
    scrub,
    thread_row_versions,
)
from checkpoint_assets.engine.core.versions import CONTENT, SUPERSEDED_TABLE
from checkpoint_assets.engine.core.workers import process_pool, workers_for

COUNT_MATCH = "checkpoint_count_match"
CONTENT_INTEGRITY = "content_integrity"
METADATA_INTEGRITY = "metadata_integrity"
SOURCE_MATCHES_EXPORT = "source_matches_export"
OFFICIAL_READBACK = "official_saver_readback"
RESUMABLE_ON_POSTGRES = "resumable_on_postgres_saver"
REENCODED_AT_SAME_VERSION = "reencoded_at_same_version"
CONTENT_DIFFERS_AT_SAME_VERSION = "content_differs_at_same_version"
MAX_LISTED = 50
DEFAULT_READBACK_SAMPLE = 25


@dataclass
class CheckOutcome:
    """The result of one check, with what a reviewer needs to act on it."""

    name: str
    passed: bool
    expected: Any
    actual: Any
    mismatches: list[dict] = field(default_factory=list)
    mismatch_count: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> CheckSpec:
        """The check's declaration: what it proves and cannot, its severity."""
        return check_spec(self.name)

    @property
    def description(self) -> str:
        """What this check proves."""
        return self.spec.description

    @property
    def cannot_prove(self) -> str:
        """What this check cannot prove ("-": nothing beyond what it states)."""
        return self.spec.cannot_prove

    @property
    def blocking(self) -> bool:
        """A failure fails the verification (else it is a warning: a risk, reported)."""
        return not self.spec.warning


@dataclass
class BatchComparison:
    """Export vs target for one batch."""

    key: str
    expected_counts: dict[str, int]
    actual_counts: dict[str, int]
    expected_digest: str
    actual_digest: str
    content_mismatches: list[dict]
    metadata_mismatches: list[dict]
    metadata_changes: list[dict] = field(default_factory=list)
    resume_hazards: list[dict] = field(default_factory=list)
    # What was compared, and (certified comparisons) per thread the digest of its row
    # versions (target.thread_row_versions) read in the same snapshot, with its rows per
    # table: while a thread's digest stays the same, so does its part of this result.
    batch_sha256: str = ""
    threads: frozenset[str] | None = None
    thread_ids: list[str] = field(default_factory=list)
    certified: dict[str, tuple[str, tuple[int, int, int]]] = field(default_factory=dict)
    reused: bool = False  # taken over from an earlier verification (rows unchanged since)
    # Taken over from this batch's certificate (see certificates.py): where it was kept.
    certificate_from: str = ""
    # Later values of a channel version in the export (versions.Superseded.as_dict()).
    superseded: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Counts, digest and every row equal."""
        return (self.expected_counts == self.actual_counts
                and self.expected_digest == self.actual_digest
                and not self.content_mismatches and not self.metadata_mismatches)

    def certificate(self, cipher: Cipher | None) -> BatchCertificate | None:
        """This comparison's certificate, for a later verification to take over
        (``cipher``: the key it was compared with); None unless it passed and certified
        every thread it compared, and when the certificate would be too large to keep."""
        digest = rows_sha256(self.certified, self.thread_ids) if self.certified else None
        if not self.passed or digest is None or self.superseded:
            return None
        certificate = BatchCertificate(
            batch_sha256=self.batch_sha256, key=key_fingerprint(cipher),
            threads=len(self.thread_ids), rows_sha256=digest,
            expected_counts=dict(self.expected_counts), expected_digest=self.expected_digest,
            metadata_changes=list(self.metadata_changes),
            resume_hazards=list(self.resume_hazards))
        return certificate if fits(certificate) else None


@dataclass
class VerificationReport:
    """Every check of one verification run."""

    checks: dict[str, CheckOutcome]
    counts: dict[str, dict[str, int]]
    metadata_changes: list[dict]
    seconds: float
    batches: list[BatchComparison] = field(default_factory=list)
    # Threads read back equal through both savers (in this run, or in the earlier one a
    # certified run took them over from).
    read_back_equal: frozenset[str] = frozenset()

    @property
    def passed(self) -> bool:
        """True when every check passed (warnings do not count)."""
        return all(c.passed for c in self.checks.values() if c.blocking)


def target_rows(target_conn: Any, threads: Sequence[str]) -> tuple[list, list, list, list]:
    """All target rows of these threads: (checkpoints, blobs, writes, superseded values),
    read in binary (bytea as it is: as hex text it takes twice as long)."""
    q = {
        "checkpoints": "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                       "checkpoint, metadata FROM {} WHERE thread_id = ANY(%s)",
        "checkpoint_blobs": "SELECT thread_id, checkpoint_ns, channel, version, type, blob "
                            "FROM {} WHERE thread_id = ANY(%s)",
        "checkpoint_writes": "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, "
                             "task_path, idx, channel, type, blob FROM {} "
                             "WHERE thread_id = ANY(%s)",
    }
    out = []
    for table, text in q.items():
        query = sql.SQL(text).format(sql.Identifier(table))
        out.append(target_conn.cursor(binary=True).execute(query, (list(threads),))
                   .fetchall())
    return out[0], out[1], out[2], superseded_table.read_rows(target_conn, threads)


@dataclass(frozen=True)
class ExpectedBatch:
    """What the target must hold for one batch: its digest, counts and findings."""

    digest: str
    counts: dict[str, int]
    thread_ids: list[str]
    metadata_changes: list[dict]
    resume_hazards: list[dict]
    superseded: list[dict] = field(default_factory=list)  # versions.Superseded.as_dict()


# Expected views this process computed, by (batch SHA-256, with a key?): the batch check
# right after a load reuses the view the loader computed while converting. Only memory:
# a cache file beside the export could be edited apart from the export, and a forged
# expectation would make a tampered target pass, so every process derives what it
# compares with from the export's digest-verified bytes. Oldest entries go first.
_EXPECTED_IN_PROCESS: OrderedDict[tuple[str, bool, frozenset[str] | None], ExpectedBatch] = \
    OrderedDict()
_EXPECTED_KEPT = 64


# The batches the loader of this process read and decoded last (digest-verified threads and
# their decode_thread results), by the same key: the batch check that follows a load builds
# its expected view from them instead of reading the batch again, and an import that runs
# no check never builds the view. Two at most: a run checks each batch right after its load.
_LOADED_IN_PROCESS: OrderedDict[tuple[str, bool], tuple[list[ThreadRows], Mapping[str, list]]] \
    = OrderedDict()
_LOADED_KEPT = 2


def remember_loaded_batch(manifest: ExportManifest, key: str, cipher: Cipher | None,
                          threads: Sequence[ThreadRows], decoded: Mapping[str, list]) -> None:
    """Keep a batch the loader read (as :func:`read_batch` yielded it) and decoded, for the
    :func:`expected_batch` of its check in this process."""
    _LOADED_IN_PROCESS[(manifest.batch(key).sha256, cipher is not None)] = (list(threads),
                                                                            decoded)
    while len(_LOADED_IN_PROCESS) > _LOADED_KEPT:
        _LOADED_IN_PROCESS.popitem(last=False)


def expected_batch(manifest: ExportManifest, key: str, cipher: Cipher | None = None,
                   threads: frozenset[str] | None = None) -> ExpectedBatch:
    """The expected view summary of one batch, derived from the export's verified bytes.

    ``threads``: only these threads of the batch (the others are held by a later sync
    generation, see export_chain); None: all of them.

    Computed once per process and batch digest (the view depends only on the batch's
    bytes, which :func:`read_batch` checks against that digest, and on whether a key
    decrypts them); a batch this process's loader has just read and decoded (see
    :func:`remember_loaded_batch`) is not read or decoded again.
    """
    loaded_key = (manifest.batch(key).sha256, cipher is not None)
    memo_key = (*loaded_key, threads)
    known = _EXPECTED_IN_PROCESS.get(memo_key)
    if known is not None:
        return known
    rows, decoded = _LOADED_IN_PROCESS.pop(loaded_key, (None, None))
    if rows is None:
        rows = list(read_batch(manifest, key, threads))
    elif threads is not None:
        rows = [t for t in rows if t.thread_id in threads]
    view = source_view(rows, cipher, decoded)
    expected = ExpectedBatch(view.digest(), _view_counts(view), [t.thread_id for t in rows],
                             view.metadata_changes, view.resume_hazards,
                             view.superseded_findings)
    _EXPECTED_IN_PROCESS[memo_key] = expected
    while len(_EXPECTED_IN_PROCESS) > _EXPECTED_KEPT:
        _EXPECTED_IN_PROCESS.popitem(last=False)
    return expected


def compare_batch(
    target: Target, manifest: ExportManifest, key: str, cipher: Cipher | None = None,
    conn: Any = None, threads: frozenset[str] | None = None,
    earlier: BatchComparison | None = None, certify: bool = False,
) -> BatchComparison:
    """Compare one batch of the export (or only ``threads`` of it) with what the target
    holds for its threads.

    The target's rows are always read and digested; the export side comes from
    :func:`expected_batch`. Only when the digests differ is the batch decoded again to
    name every mismatching checkpoint and write. ``certify``: the rows are read in one
    snapshot with the digest of each thread's row versions (:func:`thread_row_versions`);
    ``earlier``, a certified passed comparison of the same export batch, is taken over
    (``reused``) when each of the batch's threads still has the row versions it passed
    with: the same rows, already compared.
    """
    if conn is None:
        with target.connect() as own:
            if certify:
                own.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                own.read_only = True
            return compare_batch(target, manifest, key, cipher, own, threads, earlier,
                                 certify)
    if certify and earlier is not None:
        taken_over = _taken_over(conn, earlier, threads)
        if taken_over is not None:
            return taken_over
    expected = expected_batch(manifest, key, cipher, threads)
    rows = target_rows(conn, expected.thread_ids)
    # Row versions cover PostgresSaver's tables only: a batch with superseded values is
    # never certified, so every verification compares its SUPERSEDED_TABLE rows again.
    certified = thread_row_versions(conn, expected.thread_ids) \
        if certify and not expected.superseded else {}
    actual = target_view(*rows, cipher=cipher)
    actual_digest = actual.digest()
    content: list[dict] = []
    metadata: list[dict] = []
    if actual_digest != expected.digest:
        full = source_view(read_batch(manifest, key, threads), cipher)
        content, metadata = _view_mismatches(full, actual)
    return BatchComparison(
        key=key,
        expected_counts=expected.counts, actual_counts=_view_counts(actual),
        expected_digest=expected.digest, actual_digest=actual_digest,
        content_mismatches=content, metadata_mismatches=metadata,
        metadata_changes=expected.metadata_changes,
        resume_hazards=expected.resume_hazards, superseded=expected.superseded,
        batch_sha256=manifest.batch(key).sha256, threads=threads,
        thread_ids=expected.thread_ids, certified=certified,
    )


def _taken_over(conn: Any, earlier: BatchComparison,
                threads: frozenset[str] | None) -> BatchComparison | None:
    """``earlier`` (a certified pass of the same export batch) for the batch's threads now
    (``threads``: those a later generation did not take away; None: all of them), when
    every one of them still has the rows it passed with; else None (compare again).

    Sound because the export side of a thread is the same (same batch bytes) and its
    target rows are byte for byte those that compared equal (the same row versions as in
    the snapshot the comparison read)."""
    if threads is None and earlier.threads is not None:
        return None  # a batch's live threads only ever shrink; anything else: compare
    now_ids = earlier.thread_ids if threads is None else sorted(threads)
    if not earlier.passed or not earlier.certified or not set(now_ids) <= set(
            earlier.certified):
        return None
    now = thread_row_versions(conn, now_ids)
    if any(now.get(tid) != earlier.certified[tid] for tid in now_ids):
        return None
    if len(now_ids) == len(earlier.thread_ids):
        return replace(earlier, threads=threads, reused=True)
    kept = set(now_ids)
    counts = _row_counts(now, now_ids)
    digest = "taken over: " + hashlib.sha256(
        "".join(now[tid][0] for tid in now_ids).encode()).hexdigest()
    return replace(
        earlier, expected_counts=counts, actual_counts=dict(counts), expected_digest=digest,
        actual_digest=digest, threads=threads, thread_ids=now_ids,
        certified={tid: now[tid] for tid in now_ids}, reused=True,
        metadata_changes=[m for m in earlier.metadata_changes if m["thread_id"] in kept],
        resume_hazards=[h for h in earlier.resume_hazards if h["thread_id"] in kept],
        superseded=[s for s in earlier.superseded if s["thread_id"] in kept])


def _view_counts(view: BatchView) -> dict[str, int]:
    return {"checkpoints": len(view.checkpoints), "checkpoint_blobs": view.blob_rows,
            "checkpoint_writes": len(view.writes)}


def _key_dict(key: tuple) -> dict[str, Any]:
    names = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx")
    return dict(zip(names, key))


def _view_mismatches(expected: BatchView, actual: BatchView) -> tuple[list[dict], list[dict]]:
    content: list[dict] = []
    metadata: list[dict] = []
    for key in sorted(set(expected.checkpoints) | set(actual.checkpoints)):
        want, got = expected.checkpoints.get(key), actual.checkpoints.get(key)
        if want is None:
            content.append({**_key_dict(key), "problem": "checkpoint in target, not in export"})
        elif got is None:
            content.append({**_key_dict(key), "problem": "checkpoint missing in target"})
        else:
            parts = want.differing_parts(got)
            if "metadata" in parts:
                metadata.append({**_key_dict(key), "problem": "metadata differs",
                                 "expected": want.metadata[:500], "actual": got.metadata[:500]})
            rest = [p for p in parts if p != "metadata"]
            if rest:
                content.append({**_key_dict(key), "problem": "differs: " + ", ".join(rest)})
    for key in sorted(set(expected.writes) | set(actual.writes)):
        want_w, got_w = expected.writes.get(key), actual.writes.get(key)
        if want_w != got_w:
            problem = ("write missing in target" if got_w is None else
                       "write in target, not in export" if want_w is None else
                       "write differs")
            content.append({**_key_dict(key), "problem": problem})
    for key in sorted(set(expected.superseded) | set(actual.superseded)):
        want_s, got_s = expected.superseded.get(key), actual.superseded.get(key)
        if want_s != got_s:
            problem = (f"superseded value missing in {SUPERSEDED_TABLE}" if got_s is None
                       else f"{SUPERSEDED_TABLE} row not in the export" if want_s is None
                       else f"superseded value differs in {SUPERSEDED_TABLE}")
            content.append({**_key_dict(key[:3]), "channel": key[3], "problem": problem})
    return content, metadata


def source_drift(source_path: str | Path, manifest: ExportManifest | ExportChain,
                 ) -> dict[str, list[str]]:
    """Threads whose rows in the SQLite source differ from the export (or from the state
    its sync generations reached) right now; only the chain's selection, if it has one.

    Returns ``{"changed": [...], "added": [...], "removed": [...]}`` (thread ids).
    """
    source = open_source(source_path)
    try:
        with source.snapshot():
            return _drift(source, _as_chain(manifest))
    finally:
        source.close()


def _drift(source: SourceDatabase, chain: ExportChain) -> dict[str, list[str]]:
    """:func:`source_drift` of an open source."""
    exported = {tid: sha for tid, sha, _, _ in chain.thread_digests()}
    selection = set(chain.selection) if chain.selection is not None else None
    current = {tid: sha for tid, sha in thread_digests(source.checkpoints(), source.writes())
               if selection is None or tid in selection}
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


def readback_sample(manifest: ExportManifest | ExportChain, size: int | None) -> list[str]:
    """Threads to read back through the official savers: all (size None) or a fixed sample."""
    chain = _as_chain(manifest)
    threads = [tid for tid, _, _, _ in chain.thread_digests()]
    if size is None or size >= len(threads):
        return threads
    return sorted(random.Random(chain.content_sha256).sample(threads, size))


def _as_chain(expected: ExportManifest | ExportChain) -> ExportChain:
    return expected if isinstance(expected, ExportChain) else ExportChain([expected])


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

    ``readback_threads`` None reads back every thread through the official savers;
    ``readback_all_hint`` is how the caller asks for that (named in the note of a sample).
    ``workers`` processes compare batches at once (None: as many as an import of this
    export would use, since comparing also spends most of its time in Python).
    Raises MigrationError when the target cannot be read: no PostgresSaver tables there,
    or a database error (the message without the DSN's password).
    """
    require_target_tables(target)
    try:
        return _verify_migration(manifest, chain or ExportChain([manifest]), target,
                                 source_path, cipher, readback_threads, progress, workers,
                                 readback_all_hint, certify, earlier, certificates,
                                 certificates_hint)
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


class MissingTablesError(MigrationError):
    """The target has no PostgresSaver tables to verify against."""


def _verify_migration(manifest: ExportManifest, chain: ExportChain, target: Target,
                      source_path: str | Path | None, cipher: Cipher | None,
                      readback_threads: int | None, progress: Any,
                      workers: int | None, readback_all_hint: str, certify: bool,
                      earlier: VerificationReport | None,
                      certificates: Mapping[str, BatchCertificate] | None,
                      certificates_hint: str = "") -> VerificationReport:
    started = time.perf_counter()
    refresh_statistics_of(target)  # a target loaded by other means may never have been analyzed
    # One private snapshot of the source for its counts, its digests and the read-back.
    with ExitStack() as held, ThreadPoolExecutor(max_workers=1) as beside:
        # The SQLite side (counts, per-thread digests) is read while the batches compare.
        source_state = beside.submit(_source_state, source_path, chain, held) \
            if source_path is not None else None
        workers = workers_for(manifest) if workers is None else workers
        comparisons = compare_batches(manifest, target, cipher, workers=workers,
                                      progress=progress, chain=chain, certify=certify,
                                      earlier=earlier, certificates=certificates)
        source_copy, sqlite_counts, drift = source_state.result() \
            if source_state is not None \
            else (None, None, {"changed": [], "added": [], "removed": []})
        return _report(started, manifest, chain, target, cipher, source_path, source_copy,
                       readback_threads, readback_all_hint, comparisons, sqlite_counts, drift,
                       workers, earlier, certificates_hint)


def _report(started: float, manifest: ExportManifest, chain: ExportChain, target: Target,
            cipher: Cipher | None, source_path: str | Path | None, source_copy: Path | None,
            readback_threads: int | None, readback_all_hint: str,
            comparisons: list[BatchComparison], sqlite_counts: dict[str, int] | None,
            drift: dict[str, list[str]], workers: int,
            earlier: VerificationReport | None,
            certificates_hint: str = "") -> VerificationReport:
    """Run every check on what was compared and read."""
    counts = {"export": {"checkpoints": chain.checkpoints,
                         "checkpoint_writes": chain.writes},
              "expected_target": _sum_counts(c.expected_counts for c in comparisons),
              "target": _sum_counts(c.actual_counts for c in comparisons),
              "target_tables": target_table_counts(target)}
    if sqlite_counts is not None:
        counts["sqlite"] = sqlite_counts
    # Read back equal by the earlier run and taken over from it (not from a certificate,
    # which may be newer than that read-back).
    read_back_before = frozenset(
        tid for c in comparisons if c.reused and not c.certificate_from
        for tid in c.thread_ids if earlier is not None and tid in earlier.read_back_equal)
    findings = Findings(manifest, target, cipher, source_path, readback_threads,
                        readback_all_hint, comparisons, counts, drift, chain, workers,
                        read_back_before, source_copy, certificates_hint=certificates_hint)
    checks = {spec.name: spec.run(findings) for spec in CHECKS
              if source_path is not None or not spec.needs_source}
    return VerificationReport(
        checks=checks, counts=counts,
        metadata_changes=[m for c in comparisons for m in c.metadata_changes],
        seconds=time.perf_counter() - started, batches=comparisons,
        read_back_equal=frozenset(findings.read_back_equal))


@dataclass(frozen=True)
class Findings:
    """What the checks judge: the per-batch comparisons, the counts, the source's drift."""

    manifest: ExportManifest
    target: Target
    cipher: Cipher | None
    source_path: str | Path | None
    readback_threads: int | None
    readback_all_hint: str  # how the caller reads back every thread
    comparisons: list[BatchComparison]
    counts: dict[str, dict[str, int]]
    drift: dict[str, list[str]]
    chain: ExportChain  # the expected state: the export and its sync generations
    workers: int = 1  # processes the read-back may use
    # Threads an earlier certified run read back equal, their rows unchanged since.
    read_back_before: frozenset[str] = frozenset()
    source_copy: Path | None = None  # the verification's private snapshot of the source
    # What the certificates' record is and how the caller compares every batch instead.
    certificates_hint: str = ""
    read_back_equal: set[str] = field(default_factory=set)  # filled by the read-back check


def check_count_match(f: Findings) -> CheckOutcome:
    """Counts per batch and in total: PostgreSQL = export, and SQLite = export."""
    counts = f.counts
    count_mismatches = [
        {"batch": c.key, "expected": c.expected_counts, "actual": c.actual_counts}
        for c in f.comparisons if c.expected_counts != c.actual_counts]
    sqlite_ok = f.source_path is None or (
        counts["sqlite"]["checkpoints"] == f.chain.checkpoints
        and counts["sqlite"]["checkpoint_writes"] == f.chain.writes)
    return CheckOutcome(
        COUNT_MATCH, passed=(not count_mismatches
                             and counts["expected_target"] == counts["target"] and sqlite_ok),
        expected={"export": counts["export"], "target": counts["expected_target"]},
        actual={"target": counts["target"],
                **({"sqlite": counts["sqlite"]} if f.source_path else {})},
        mismatches=count_mismatches[:MAX_LISTED], mismatch_count=len(count_mismatches),
        notes=[] if sqlite_ok else ["SQLite counts differ from the export: the source changed "
                                    "after the export was taken."])


def check_content_integrity(f: Findings) -> CheckOutcome:
    """Per batch, the target's content digest equals the export's; mismatches by key."""
    content = [m for c in f.comparisons for m in c.content_mismatches]
    return CheckOutcome(
        CONTENT_INTEGRITY, passed=not content,
        expected={c.key: c.expected_digest for c in f.comparisons},
        actual={c.key: c.actual_digest for c in f.comparisons},
        mismatches=content[:MAX_LISTED], mismatch_count=len(content),
        notes=_taken_over_notes(f))


def _taken_over_notes(f: Findings) -> list[str]:
    """What the content and metadata checks say of batches taken over from certificates
    (see certificates.py): how many, from which runs' batch checks, why, and what that
    rests on (the record that kept the certificates being genuine)."""
    comparisons = f.comparisons
    certified = [c for c in comparisons if c.certificate_from]
    if not certified:
        return []
    compared = len(comparisons) - len(certified)
    runs = sorted({c.certificate_from for c in certified})
    return [f"{len(certified)} of {len(comparisons)} batches were compared row by row by "
            f"their own batch check when they were loaded ({', '.join(runs[:10])}"
            f"{', ...' if len(runs) > 10 else ''}), and PostgreSQL still holds the very row "
            "versions that check compared, under the same table definitions (a changed row "
            "is a new version): not compared again"
            + (f"; the other {compared} were compared now." if compared else ".")
            + " Taking a batch over rests on the record of its check's result being genuine"
            + (f" ({f.certificates_hint})" if f.certificates_hint else "") + "."]


def check_metadata_integrity(f: Findings) -> CheckOutcome:
    """Every checkpoint's metadata equals the source's (in the form JSONB holds)."""
    metadata = [m for c in f.comparisons for m in c.metadata_mismatches]
    changes = sum(len(c.metadata_changes) for c in f.comparisons)
    return CheckOutcome(
        METADATA_INTEGRITY, passed=not metadata,
        expected=f.chain.checkpoints,
        actual=f.chain.checkpoints - len(metadata),
        mismatches=metadata[:MAX_LISTED], mismatch_count=len(metadata),
        notes=([f"{changes} metadata value(s) PostgreSQL cannot hold were changed; "
                "see metadata_changes."] if changes else [])
        + _taken_over_notes(f))


def check_source_matches_export(f: Findings) -> CheckOutcome:
    """The SQLite source's threads, digested now, equal the export's."""
    drift = f.drift
    drifted = drift["changed"] + drift["added"] + drift["removed"]
    return CheckOutcome(
        SOURCE_MATCHES_EXPORT, passed=not drifted,
        expected=f.chain.content_sha256, actual="unchanged" if not drifted else drift,
        mismatches=[{"thread_id": t, "problem": kind} for kind, ts in drift.items()
                    for t in ts][:MAX_LISTED],
        mismatch_count=len(drifted),
        notes=["Export again and import to bring these threads over."] if drifted else [])


def check_official_readback(f: Findings) -> CheckOutcome:
    """SqliteSaver.list equals PostgresSaver.list for the sampled (or every) thread."""
    assert f.source_path is not None
    threads = readback_sample(f.chain, f.readback_threads)
    again = [tid for tid in threads if tid not in f.read_back_before]
    read_mismatches, notes = compare_thread_readback(f.source_path, f.target, again,
                                                     f.cipher, workers=f.workers,
                                                     snapshot=f.source_copy)
    f.read_back_equal.update(set(threads) - {m["thread_id"] for m in read_mismatches})
    if len(again) < len(threads):
        notes = [*notes, f"{len(threads) - len(again)} thread(s) were read back equal "
                         "before the final sync and their rows are the same since on both "
                         "sides (same row versions in PostgreSQL, same source digest): "
                         "not read back again."]
    if len(threads) < f.chain.threads:
        how = f" with {f.readback_all_hint}" if f.readback_all_hint else ""
        notes = [*notes, f"A sample of {len(threads)} of {f.chain.threads} threads; "
                         f"read back every thread{how}."]
    return CheckOutcome(
        OFFICIAL_READBACK, passed=not read_mismatches,
        # Threads read back equal: expected all of the sample, actual those that were.
        expected=len(threads),
        actual=len(threads) - len({m["thread_id"] for m in read_mismatches}),
        mismatches=read_mismatches[:MAX_LISTED], mismatch_count=len(read_mismatches),
        notes=notes)


def check_resumable_on_postgres(f: Findings) -> CheckOutcome:
    """No thread's latest state holds a value a live PostgresSaver cannot save again."""
    hazards = [h for c in f.comparisons for h in c.resume_hazards]
    return CheckOutcome(
        RESUMABLE_ON_POSTGRES, passed=not hazards, expected=0, actual=len(hazards),
        mismatches=hazards[:MAX_LISTED], mismatch_count=len(hazards),
        notes=["Before switching these threads to PostgresSaver, have the application "
               "replace such values (e.g. strip NUL from strings), or keep them inside a "
               "dict/list channel (stored as a blob)."] if hazards else [])


def check_reencoded_at_same_version(f: Findings) -> CheckOutcome:
    """Checkpoints whose value of a channel is another encoding of the value first written
    at the same version (or that value with fields added): listed, never silent."""
    return _superseded_outcome(REENCODED_AT_SAME_VERSION, f,
                               [s for c in f.comparisons for s in c.superseded
                                if s["kind"] != CONTENT])


def check_content_differs_at_same_version(f: Findings) -> CheckOutcome:
    """Checkpoints whose value of a channel differs in content from the value first
    written at the same version."""
    return _superseded_outcome(CONTENT_DIFFERS_AT_SAME_VERSION, f,
                               [s for c in f.comparisons for s in c.superseded
                                if s["kind"] == CONTENT])


def _superseded_outcome(name: str, f: Findings, found: list[dict]) -> CheckOutcome:
    where = f"{f.target.schema}.{SUPERSEDED_TABLE}" if f.target.schema else SUPERSEDED_TABLE
    notes = [] if not found else [
        f"PostgreSQL holds the first value of each channel version, as PostgresSaver would "
        f"had the application written to it from the start; each later value listed here "
        f"is kept with its original bytes in {where} (content_integrity compares them) and "
        "`checkpoint-assets rollback` gives those checkpoints back as they were."]
    if found and name == CONTENT_DIFFERS_AT_SAME_VERSION:
        notes.append("The application would read the first value for these checkpoints. "
                     "Look at each thread; --strict-versions (or "
                     "CHECKPOINT_ASSETS_STRICT_VERSIONS=1) refuses such threads instead.")
    return CheckOutcome(name, passed=not found, expected=0, actual=len(found),
                        mismatches=found[:MAX_LISTED], mismatch_count=len(found), notes=notes)


@dataclass(frozen=True)
class CheckSpec:
    """One check of the verification, declared once: the engine runs it, the Dagster layer
    declares it as an asset check, the evidence report describes it."""

    name: str
    description: str  # what it proves
    cannot_prove: str  # what it cannot ("-": nothing beyond what it states)
    run: Callable[[Findings], CheckOutcome]
    warning: bool = False  # severity WARN: reports a risk, never fails the migration
    needs_source: bool = False  # runs only when the SQLite source is at hand
    # Every mismatch the report holds (the outcome keeps the first MAX_LISTED); None: the
    # outcome's own list.
    every_mismatch: Callable[[VerificationReport], list[dict]] | None = None


# The checks, in the order they run and are reported. Their names are the contract with the
# Dagster layer and the CLI; their texts are the README's "What each check proves (and what
# it cannot)".
CHECKS = (
    CheckSpec(
        COUNT_MATCH,
        "Checkpoints, writes and blob rows: PostgreSQL = export = SQLite, in total and per "
        "thread.",
        "Content: equal counts can hide changed values (content_integrity compares them).",
        check_count_match,
        every_mismatch=lambda r: [
            {"batch": b.key, "expected": b.expected_counts, "actual": b.actual_counts}
            for b in r.batches if b.expected_counts != b.actual_counts]),
    CheckSpec(
        CONTENT_INTEGRITY,
        "Every checkpoint's channel values, versions and parent link, and every pending "
        "write, equal the source's byte for byte.",
        "The behaviour of your application code on the migrated state; in a batch taken "
        "over from its batch check, damage below PostgreSQL (storage corruption, files "
        "edited directly) after that check.",
        check_content_integrity,
        every_mismatch=lambda r: [m for b in r.batches for m in b.content_mismatches]),
    CheckSpec(
        METADATA_INTEGRITY,
        "Every checkpoint's metadata equals the source's; values PostgreSQL cannot hold are "
        "listed by key.",
        "-",
        check_metadata_integrity,
        every_mismatch=lambda r: [m for b in r.batches for m in b.metadata_mismatches]),
    CheckSpec(
        SOURCE_MATCHES_EXPORT,
        "The SQLite source still holds exactly what was exported (no writer changed it "
        "since).",
        "Writes to SQLite after the check ran.",
        check_source_matches_export, needs_source=True,
        every_mismatch=lambda r: _drifted_threads(r.checks[SOURCE_MATCHES_EXPORT])),
    CheckSpec(
        OFFICIAL_READBACK,
        "SqliteSaver.list equals PostgresSaver.list field by field for the checked threads.",
        "Classes your application would need to deserialize that are not importable where "
        "the check runs; threads outside the sample (unless every thread was read back).",
        check_official_readback, needs_source=True),
    CheckSpec(
        RESUMABLE_ON_POSTGRES,
        "No thread's latest state holds a str/float that a live PostgresSaver cannot save "
        "on its next put (NUL, NaN, inf; -0.0 and 1e20-style floats change). A warning: "
        "the migrated data is intact either way.",
        "-",
        check_resumable_on_postgres, warning=True,
        every_mismatch=lambda r: [h for b in r.batches for h in b.resume_hazards]),
    CheckSpec(
        REENCODED_AT_SAME_VERSION,
        "Every checkpoint whose channel value was re-encoded at an unchanged version (the "
        "same fields and values with another class or none, as when a class moved or an "
        "entry point could not import it; or a model that gained fields) is listed by key, "
        "channel and version; PostgreSQL reads the version's first value, as PostgresSaver "
        "would, and the later bytes are kept. A warning: nothing is lost.",
        "Whether your application's current classes read the first value the way they "
        "read the later one (defaults of added fields).",
        check_reencoded_at_same_version, warning=True,
        every_mismatch=lambda r: [s for b in r.batches for s in b.superseded
                                  if s["kind"] != CONTENT]),
    CheckSpec(
        CONTENT_DIFFERS_AT_SAME_VERSION,
        "No channel version holds two values whose content differs; each one that does is "
        "listed by key, channel and version with what differs (PostgreSQL reads the first, "
        "the later is kept).",
        "-",
        check_content_differs_at_same_version,
        every_mismatch=lambda r: [s for b in r.batches for s in b.superseded
                                  if s["kind"] == CONTENT]),
)
CHECK_SPECS = {spec.name: spec for spec in CHECKS}
CHECK_NAMES = tuple(CHECK_SPECS)
# Checks of other verifications (the rollback's), so their outcomes know their spec too.
_OTHER_CHECK_SPECS: dict[str, CheckSpec] = {}


def check_spec(name: str) -> CheckSpec:
    """The declaration of the check ``name``: the migration's or another verification's."""
    return CHECK_SPECS.get(name) or _OTHER_CHECK_SPECS[name]


def register_check_specs(specs: Sequence[CheckSpec]) -> None:
    """Declare the checks of another verification (not run by :func:`verify_migration`)."""
    _OTHER_CHECK_SPECS.update((spec.name, spec) for spec in specs)


def _drifted_threads(outcome: CheckOutcome) -> list[dict]:
    """Every thread the source-drift check found, by kind (its ``actual`` lists them all)."""
    if not isinstance(outcome.actual, dict):
        return list(outcome.mismatches)
    return [{"thread_id": thread, "problem": kind}
            for kind, threads in outcome.actual.items() for thread in threads]


def compare_batches(manifest: ExportManifest, target: Target, cipher: Cipher | None = None,
                    *, workers: int = 1, progress: Any = None,
                    chain: ExportChain | None = None, certify: bool = False,
                    earlier: VerificationReport | None = None,
                    certificates: Mapping[str, BatchCertificate] | None = None,
                    ) -> list[BatchComparison]:
    """:func:`compare_batch` for every batch of the export (with ``chain``: every batch of
    its generations, each for the threads it still holds), in export order, in
    ``workers`` processes; ``progress(checkpoints)`` after each batch. ``certify`` and
    ``earlier``: see :func:`verify_migration`. ``certificates`` (by batch SHA-256): a
    batch whose certificate still holds is taken over (:func:`take_over_certified`), the
    others are compared."""
    chain = chain or ExportChain([manifest])
    items = chain.live_batches()
    taken = take_over_certified(target, chain, items, certificates, cipher, workers) \
        if certificates else {}
    rest = [item for place, item in enumerate(items) if place not in taken]
    known = {c.batch_sha256: c for c in (earlier.batches if earlier else ())}
    arguments = (
        [m for m, _, _ in rest], [k for _, k, _ in rest], repeat(cipher), repeat(None),
        [t for _, _, t in rest],
        [known.get(m.batch(k).sha256) for m, k, _ in rest], repeat(certify))
    if workers <= 1 or len(rest) <= 1:
        compared = map(compare_batch, repeat(target), *arguments)
        return [_progressed(taken[place] if place in taken else next(compared), progress)
                for place in range(len(items))]
    with process_pool(min(workers, len(rest))) as pool:
        compared = pool.map(compare_batch, repeat(target), *arguments)
        return [_progressed(taken[place] if place in taken else next(compared), progress)
                for place in range(len(items))]


def take_over_certified(target: Target, chain: ExportChain,
                        items: Sequence[tuple[ExportManifest, str, frozenset[str] | None]],
                        certificates: Mapping[str, BatchCertificate], cipher: Cipher | None,
                        connections: int = 2) -> dict[int, BatchComparison]:
    """The comparisons of the ``items`` (``chain.live_batches()``) whose certificate still
    holds, by position: the same export batch, compared with the same key (or none), the
    same threads, and their row versions now the certified ones (read on ``connections``
    connections at once, for every candidate)."""
    candidates = []
    for place, (manifest, key, threads) in enumerate(items):
        sha = manifest.batch(key).sha256
        certificate = certificates.get(sha)
        if certificate is None or certificate.key != key_fingerprint(cipher):
            continue
        ids = sorted(threads) if threads is not None else chain.batch_threads(manifest, key)
        if len(ids) == certificate.threads:
            candidates.append((place, key, sha, threads, ids, certificate))
    now = digests_now(target, [tid for c in candidates for tid in c[4]], connections)
    taken = {}
    for place, key, sha, threads, ids, certificate in candidates:
        if rows_sha256(now, ids) != certificate.rows_sha256:
            continue  # something changed (or another batch): compared again
        counts = _row_counts(now, ids)
        taken[place] = BatchComparison(
            key=key, expected_counts=dict(certificate.expected_counts), actual_counts=counts,
            expected_digest=certificate.expected_digest,
            actual_digest=certificate.expected_digest, content_mismatches=[],
            metadata_mismatches=[], metadata_changes=list(certificate.metadata_changes),
            resume_hazards=list(certificate.resume_hazards), batch_sha256=sha,
            threads=threads, thread_ids=ids, certified={tid: now[tid] for tid in ids},
            reused=True, certificate_from=certificate.recorded_by or "its certificate")
    return taken


def _row_counts(digests: Mapping[str, tuple[str, tuple[int, int, int]]],
                thread_ids: Sequence[str]) -> dict[str, int]:
    """Rows per table of ``thread_ids``, from their row-version digests."""
    return dict(zip(TABLES, (sum(digests[tid][1][i] for tid in thread_ids)
                             for i in range(len(TABLES)))))


def _progressed(comparison: BatchComparison, progress: Any) -> BatchComparison:
    if progress is not None:  # the checkpoints compared: the batch's, or its live threads'
        progress(comparison.expected_counts["checkpoints"])
    return comparison


def _source_state(source_path: str | Path, chain: ExportChain, held: ExitStack,
                  ) -> tuple[Path, dict[str, int], dict[str, list[str]]]:
    """A private snapshot of the SQLite source (kept open in ``held``, for the read-back
    to read the same state), its counts (of the chain's selection, if it has one), and its
    threads that differ from the expected state."""
    copy = held.enter_context(private_snapshot(require_sqlite_file(source_path)))
    source = open_source(source_path, snapshot=copy)
    try:
        with source.snapshot():
            found = source.counts(chain.selection)
            drift = _drift(source, chain)
    finally:
        source.close()
    return copy, {"checkpoints": found.checkpoints, "checkpoint_writes": found.writes}, drift


def _sum_counts(items: Any) -> dict[str, int]:
    total: dict[str, int] = {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}
    for counts in items:
        for k, v in counts.items():
            total[k] += v
    return total

