"""Verify a rollback: PostgreSQL (the source now) -> export -> SQLite, every step compared.

The forward checks, run the other way:

- ``export_matches_postgres``: every batch of the export, converted the forward way, equals
  what PostgreSQL holds for its threads (:func:`comparison.compare_batch`), so the export means
  exactly what PostgreSQL holds: channel values, versions, parents, metadata, writes.
- ``sqlite_matches_export``: every exported thread in the SQLite file holds the export's
  rows, byte for byte (thread digests), or, where a row was already in the file, the same
  content (the original bytes are kept).
- ``rollback_count_match``: checkpoints and writes, PostgreSQL = export = SQLite.
- ``official_saver_readback``: ``SqliteSaver.list`` equals ``PostgresSaver.list`` field by
  field (:mod:`readback`), for a sample of threads or all of them.
- ``sqlite_threads_not_in_postgres`` (a warning): the SQLite file holds no thread that
  PostgreSQL no longer has (deleted there after the cutover, e.g. an erasure request);
  threads a rollback removed for that reason are named in its notes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.core.workers import workers_for
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import export_thread_digests, read_batch
from checkpoint_assets.engine.export.snapshot import private_snapshot
from checkpoint_assets.engine.export.sqlite_source import open_source, require_sqlite_file
from checkpoint_assets.engine.export.writer import Peekable
from checkpoint_assets.engine.load.target import Target, scrub
from checkpoint_assets.engine.rollback.sqlite_target import (
    in_source_names,
    read_thread,
    threads_postgres_lacks,
)
from checkpoint_assets.engine.verify.check_table import (
    EXPORT_MATCHES_POSTGRES,
    OFFICIAL_READBACK,
    ROLLBACK_COUNT_MATCH,
    SQLITE_MATCHES_EXPORT,
    SQLITE_THREADS_NOT_IN_POSTGRES,
    CheckOutcome,
)
from checkpoint_assets.engine.verify.comparison import compare_batches
from checkpoint_assets.engine.verify.content_view import source_view
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE
from checkpoint_assets.engine.verify.readback import compare_thread_readback, readback_sample
from checkpoint_assets.engine.verify.reports import MAX_LISTED, VerificationReport

COUNTED = ("checkpoints", "checkpoint_writes")


def verify_rollback(
    manifest: ExportManifest,
    source: Target,
    sqlite_path: str | Path,
    *,
    cipher: Cipher | None = None,
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE,
    readback_all_hint: str = "--readback-all",
    removed_threads: Sequence[str] = (),
    remove_hint: str = "--remove-deleted-threads",
) -> VerificationReport:
    """Run every rollback check and return the report; never raises for a mismatch.

    ``readback_threads`` None reads every exported thread back through both savers.
    ``removed_threads``: the threads PostgreSQL no longer has that the restore removed from
    the file (named in the notes; one still there is reported like a kept one).
    ``remove_hint``: how the user asks for that removal (a flag, or a resource field).
    Raises MigrationError when PostgreSQL cannot be read, in the comparison or the
    read-back (the message without password).
    """
    try:
        return _verify_rollback(manifest, source, sqlite_path, cipher, readback_threads,
                                readback_all_hint, removed_threads, remove_hint)
    except psycopg.Error as exc:
        raise MigrationError(
            f"Reading the source {source.display} failed during the verification: "
            f"{scrub(str(exc).strip(), source.dsn)}",
            "Check that the server is up, then run the verification again.") from None


def _verify_rollback(manifest: ExportManifest, source: Target, sqlite_path: str | Path,
                     cipher: Cipher | None, readback_threads: int | None,
                     readback_all_hint: str, removed_threads: Sequence[str],
                     remove_hint: str) -> VerificationReport:
    started = time.perf_counter()
    comparisons = compare_batches(manifest, source, cipher, workers=workers_for(manifest))
    postgres_counts = {t: sum(c.actual_counts[t] for c in comparisons) for t in COUNTED}
    export_counts = {"checkpoints": manifest.checkpoints, "checkpoint_writes": manifest.writes}
    # One private snapshot of the restored file: its comparison with the export and the
    # read-back see the same state, and the file is copied once.
    with private_snapshot(require_sqlite_file(sqlite_path)) as copy:
        sqlite_counts, identical, mismatches = compare_sqlite_with_export(
            sqlite_path, manifest, cipher, snapshot=copy)
        checks: dict[str, CheckOutcome] = {}
        differing = [{"batch": c.key, "expected": {t: c.expected_counts[t] for t in COUNTED},
                      "actual": {t: c.actual_counts[t] for t in COUNTED}}
                     for c in comparisons
                     if any(c.expected_counts[t] != c.actual_counts[t] for t in COUNTED)]
        checks[ROLLBACK_COUNT_MATCH] = CheckOutcome(
            ROLLBACK_COUNT_MATCH,
            passed=not differing and postgres_counts == export_counts == sqlite_counts,
            expected={"postgres": postgres_counts}, actual={"export": export_counts,
                                                            "sqlite": sqlite_counts},
            mismatches=differing[:MAX_LISTED], mismatch_count=len(differing))
        export_mismatches = [m for c in comparisons
                             for m in (*c.content_mismatches, *c.metadata_mismatches)]
        checks[EXPORT_MATCHES_POSTGRES] = CheckOutcome(
            EXPORT_MATCHES_POSTGRES, passed=not export_mismatches,
            expected={c.key: c.actual_digest for c in comparisons},
            actual={c.key: c.expected_digest for c in comparisons},
            mismatches=export_mismatches[:MAX_LISTED], mismatch_count=len(export_mismatches))
        checks[SQLITE_MATCHES_EXPORT] = CheckOutcome(
            SQLITE_MATCHES_EXPORT, passed=not mismatches, expected=manifest.threads,
            actual=manifest.threads - len(mismatches),
            mismatches=mismatches[:MAX_LISTED], mismatch_count=len(mismatches),
            notes=[f"{identical} of {manifest.threads} threads byte for byte; the others hold "
                   "rows that were already in the file with the same content (their original "
                   "bytes kept)."] if identical < manifest.threads - len(mismatches) else [])
        threads = readback_sample(manifest, readback_threads)
        read_mismatches, notes = compare_thread_readback(sqlite_path, source, threads, cipher,
                                                         snapshot=copy,
                                                         names=manifest.thread_names)
        if len(threads) < manifest.threads:
            notes = [*notes, f"A sample of {len(threads)} of {manifest.threads} threads; read "
                             f"back every thread with {readback_all_hint}."]
        checks[OFFICIAL_READBACK] = CheckOutcome(
            OFFICIAL_READBACK, passed=not read_mismatches, expected=len(threads),
            actual=len(threads) - len({m["thread_id"] for m in read_mismatches}),
            mismatches=read_mismatches[:MAX_LISTED], mismatch_count=len(read_mismatches),
            notes=notes)
        checks[SQLITE_THREADS_NOT_IN_POSTGRES] = threads_not_in_postgres_check(
            copy, manifest, removed_threads, remove_hint)
        counts = {"postgres": postgres_counts, "export": export_counts, "sqlite": sqlite_counts}
        return VerificationReport(checks=checks, counts=counts, metadata_changes=[],
                                  seconds=time.perf_counter() - started, batches=comparisons)


def threads_not_in_postgres_check(sqlite_path: str | Path, manifest: ExportManifest,
                                  removed_threads: Sequence[str] = (),
                                  remove_hint: str = "--remove-deleted-threads",
                                  ) -> CheckOutcome:
    """The warning check on threads the SQLite file holds and PostgreSQL no longer has
    (within the export's selection): passed when there is none; each one kept is a
    mismatch with its rows, each one ``removed_threads`` names is a note, not a mismatch.
    ``sqlite_path`` is read, never written (open it on a snapshot)."""
    with closing(sqlite3.connect(f"{Path(sqlite_path).resolve().as_uri()}?mode=ro",
                                 uri=True)) as conn:
        kept = threads_postgres_lacks(conn, manifest)
        mismatches = [{"thread_id": thread_id,
                       "checkpoints": conn.execute(
                           "SELECT count(*) FROM checkpoints WHERE thread_id = ?",
                           (thread_id,)).fetchone()[0],
                       "writes": conn.execute("SELECT count(*) FROM writes WHERE thread_id = ?",
                                              (thread_id,)).fetchone()[0],
                       "problem": "in the SQLite file, not in PostgreSQL (deleted there?)"}
                      for thread_id in kept[:MAX_LISTED]]
    notes = []
    gone = sorted(set(removed_threads) - set(kept))
    if gone:
        notes.append(f"{len(gone)} thread(s) PostgreSQL no longer has were removed from the "
                     f"file by this rollback ({remove_hint}): {', '.join(gone[:MAX_LISTED])}")
    if kept:
        notes.append(f"{len(kept)} thread(s) of the file are not in PostgreSQL (deleted there "
                     "after the cutover, e.g. an erasure request?) and were kept as they are. "
                     f"Roll back again with {remove_hint} to remove them, or keep them on "
                     "purpose.")
    return CheckOutcome(
        SQLITE_THREADS_NOT_IN_POSTGRES, passed=not kept, expected=0, actual=len(kept),
        mismatches=mismatches, mismatch_count=len(kept), notes=notes)


def compare_sqlite_with_export(
    sqlite_path: str | Path, manifest: ExportManifest, cipher: Cipher | None = None,
    snapshot: Path | None = None,
) -> tuple[dict[str, int], int, list[dict]]:
    """(SQLite counts of the exported threads, threads equal byte for byte, mismatches).

    The export's threads (batch by batch) and the SQLite file's (one snapshot) are read
    side by side in thread_id order, one thread in memory at a time. A thread whose rows
    are not the export's bytes is compared by content (the verification's views): rows
    kept from before with the same content pass. ``snapshot``: a private snapshot of
    ``sqlite_path`` the caller took (see source.open_source).
    """
    wanted = {tid for tid, _, _, _ in export_thread_digests(manifest)}
    counts = {"checkpoints": 0, "checkpoint_writes": 0}
    identical = 0
    mismatches: list[dict] = []
    source = open_source(sqlite_path, snapshot=snapshot, names=manifest.thread_names)
    try:
        with source.snapshot():
            present = Peekable(_threads_of(source, wanted))
            for entry in manifest.batches:
                for exported in read_batch(manifest, entry.key):
                    thread_id = exported.thread_id
                    matched = list(present.take_while(lambda r: r.thread_id == thread_id))
                    if not matched:
                        mismatches.append({"thread_id": thread_id,
                                           "problem": "thread missing in SQLite"})
                        continue
                    here = matched[0]
                    counts["checkpoints"] += len(here.checkpoints)
                    counts["checkpoint_writes"] += len(here.writes)
                    if here == exported:
                        identical += 1
                    elif problem := _content_difference(exported, here, cipher):
                        mismatches.append({"thread_id": thread_id, "problem": problem})
    finally:
        source.close()
    return counts, identical, mismatches


def compare_sqlite_batch(sqlite_path: str | Path, manifest: ExportManifest, key: str,
                         cipher: Cipher | None = None) -> list[dict]:
    """The threads of one export batch that the SQLite file does not hold as exported
    (byte for byte, or the same content kept from before), with what differs."""
    mismatches = []
    with closing(sqlite3.connect(f"{Path(sqlite_path).resolve().as_uri()}?mode=ro",
                                 uri=True)) as conn:
        names = manifest.thread_names
        for exported in read_batch(manifest, key):
            own = in_source_names(exported, names)
            present = read_thread(conn, own.thread_id)
            exported = own
            if not present.checkpoints and not present.writes:
                mismatches.append({"thread_id": exported.thread_id,
                                   "problem": "thread missing in SQLite"})
            elif present != exported:
                problem = _content_difference(exported, present, cipher)
                if problem:
                    mismatches.append({"thread_id": exported.thread_id, "problem": problem})
    return mismatches


def _threads_of(source: Any, wanted: set[str]) -> Iterator[ThreadRows]:
    """The SQLite file's threads that the export holds, in thread_id order."""
    checkpoints, writes = Peekable(source.checkpoints()), Peekable(source.writes())
    while True:
        heads = [r.thread_id for r in (checkpoints.peek(), writes.peek()) if r is not None]
        if not heads:
            return
        thread = min(heads)
        rows = ThreadRows(thread, list(checkpoints.take_while(lambda r: r.thread_id == thread)),
                          list(writes.take_while(lambda r: r.thread_id == thread)))
        if thread in wanted:
            yield rows


def _content_difference(exported: ThreadRows, present: ThreadRows,
                        cipher: Cipher | None) -> str:
    """'' when the SQLite thread holds the export's content, else what differs."""
    try:
        want, got = source_view([exported], cipher), source_view([present], cipher)
    except MigrationError as exc:
        return f"cannot be decoded ({exc.problem})"[:200]
    if want.digest() == got.digest():
        return ""
    extra = sorted(set(got.checkpoints) - set(want.checkpoints))
    lacking = sorted(set(want.checkpoints) - set(got.checkpoints))
    if extra or lacking:
        return (f"{len(lacking)} exported checkpoint(s) missing, {len(extra)} not in the "
                "export")
    return "content differs from the export"
