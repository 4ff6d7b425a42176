"""Load an export into a SqliteSaver database: a new file, or one that already exists.

A new file is created with ``SqliteSaver.setup()``'s own schema under a temporary name
beside the final one, filled batch by batch, checked, and only then renamed: the final name
never holds a half-written database. Into an existing SqliteSaver file the forward rules
apply, batch by batch, one SQLite transaction each: a row that is not there is added; a
row already there with the same content is left exactly as it is (its bytes are the
original's); a row with the same key and other content is a ConflictError naming it, and
its batch is rolled back, so nothing is ever overwritten. Threads the existing file holds
and the export does not (PostgreSQL deleted them) are reported, and removed only when
asked (``remove_deleted_threads``), in the transaction of the restore's last batch.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from checkpoint_assets.engine.core.codec import same_value, unpack_opaque
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import ConflictError, MigrationError
from checkpoint_assets.engine.core.private_files import PARTIAL_SUFFIX, remove_abandoned
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.core.thread_names import ThreadNames
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import export_thread_digests, read_batch
from checkpoint_assets.engine.export.sqlite_source import (
    CHECKPOINT_COLUMNS,
    SQLITE_HEADER,
    WRITE_COLUMNS,
)
from checkpoint_assets.engine.rollback.reverse_convert import difference_reason
from checkpoint_assets.engine.verify.content_view import source_view

BUSY_TIMEOUT_SECONDS = 10.0  # how long a batch waits for a writer to let go
EXPECTED = ("a LangGraph SqliteSaver database (tables 'checkpoints' and 'writes' with "
            "task_path, as SqliteSaver.setup() creates them)")
_CHECKPOINT_SQL = ("SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
                   "checkpoint, metadata FROM checkpoints WHERE thread_id = ? "
                   "ORDER BY checkpoint_ns, checkpoint_id")
_WRITE_SQL = ("SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, "
              "channel, type, value FROM writes WHERE thread_id = ? "
              "ORDER BY checkpoint_ns, checkpoint_id, task_id, idx")


@dataclass
class RestoreBatchResult:
    """What loading one batch into SQLite did."""

    key: str
    inserted: dict[str, int] = field(default_factory=lambda: {"checkpoints": 0, "writes": 0})
    already_present: dict[str, int] = field(
        default_factory=lambda: {"checkpoints": 0, "writes": 0})
    # Checkpoints already present with the same content, by why their bytes differ from the
    # rebuilt row (``byte-identical`` when they do not): the original bytes are kept.
    present_bytes: Counter = field(default_factory=Counter)
    # Threads PostgreSQL no longer has, removed in this batch's transaction: their rows
    # per table (see remove_threads_postgres_lacks).
    removed: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class RestoreSummary:
    """What restoring a whole export did, and where."""

    path: Path
    new_file: bool
    batches: list[RestoreBatchResult] = field(default_factory=list)
    # Threads the existing file holds and PostgreSQL does not, left as they were.
    kept_threads: list[str] = field(default_factory=list)

    @property
    def removed_threads(self) -> list[str]:
        """Threads PostgreSQL no longer has that this restore removed from the file."""
        return sorted(t for batch in self.batches for t in batch.removed)

    def totals(self) -> dict[str, Any]:
        """Rows added and already present per table, the reasons of the present ones, and
        the threads PostgreSQL no longer has: removed, or kept in the file."""
        reasons: Counter = Counter()
        for batch in self.batches:
            reasons.update(batch.present_bytes)
        return {
            "inserted": {t: sum(b.inserted[t] for b in self.batches)
                         for t in ("checkpoints", "writes")},
            "already_present": {t: sum(b.already_present[t] for b in self.batches)
                                for t in ("checkpoints", "writes")},
            "present_checkpoint_bytes": dict(reasons),
            "removed_threads": self.removed_threads,
            "removed": {t: sum(r[t] for b in self.batches for r in b.removed.values())
                        for t in ("checkpoints", "writes")},
            "threads_not_in_postgres_kept": list(self.kept_threads),
        }


def restore_export(
    manifest: ExportManifest,
    to_path: str | Path,
    *,
    cipher: Cipher | None = None,
    before_publish: Callable[[Path], None] | None = None,
    on_batch: Callable[[RestoreBatchResult], None] | None = None,
    remove_deleted_threads: bool = False,
) -> RestoreSummary:
    """Load every batch of ``manifest`` into the SqliteSaver file ``to_path``.

    A missing file is built under a temporary name and renamed into place only when every
    batch is in and ``before_publish(temporary_path)`` (the verification, if given)
    returned; on any error, or a ``before_publish`` that raises, nothing is left at
    ``to_path``. An existing file must be a SqliteSaver database (else MigrationError,
    untouched); see the module's rules. ``cipher`` is needed to compare encrypted rows
    already present. Threads an existing file holds that the export does not (PostgreSQL
    no longer has them; within the export's selection) are listed in ``kept_threads``,
    or, with ``remove_deleted_threads``, deleted in the transaction of the last batch (so
    only when every batch is in; see :func:`remove_threads_postgres_lacks`).
    """
    to_path = Path(to_path)
    if to_path.exists():
        summary = RestoreSummary(to_path, new_file=False)
        with connect_sqlite_target(to_path) as conn:
            _load_all(conn, manifest, cipher, summary, on_batch, remove_deleted_threads)
            if not remove_deleted_threads:
                summary.kept_threads = threads_postgres_lacks(conn, manifest)
        return summary
    summary = RestoreSummary(to_path, new_file=True)
    with _temporary_database(to_path) as temp:
        with _connection(temp) as conn:
            saver = SqliteSaver(conn)
            saver.setup()  # the library's own schema, WAL mode included
            _load_all(conn, manifest, cipher, summary, on_batch)
        if before_publish is not None:
            before_publish(temp)
        publish_restored(temp, to_path)
    return summary


WORK_SUFFIX = ".restoring"


def work_path(to_path: str | Path) -> Path:
    """Where batch runs build a new file before it is verified and published: a hidden
    ``.<name>.restoring`` beside ``to_path`` (one name, shared by every batch run)."""
    to_path = Path(to_path)
    return to_path.with_name(f".{to_path.name}{WORK_SUFFIX}")


def prepare_restore_file(to_path: str | Path) -> Path:
    """The file batches load into: ``to_path`` when it exists (checked to be a SqliteSaver
    database, else MigrationError), else its :func:`work_path`, created with
    ``SqliteSaver.setup()``'s schema if needed (safe when several runs do it at once)."""
    to_path = Path(to_path)
    if to_path.exists():
        with connect_sqlite_target(to_path):
            return to_path
    work = work_path(to_path)
    work.parent.mkdir(parents=True, exist_ok=True)
    with _connection(work) as conn:
        SqliteSaver(conn).setup()
    return work


def discard_work_file(to_path: str | Path) -> bool:
    """Remove the unpublished work file of ``to_path`` (a new export starts a new file, so
    no thread of an earlier export is published with it); True if there was one."""
    work = work_path(to_path)
    existed = work.exists()
    for path in (work, Path(f"{work}-wal"), Path(f"{work}-shm")):
        path.unlink(missing_ok=True)
    return existed


def publish_restored(work: Path, to_path: str | Path) -> None:
    """Rename a verified work file to ``to_path`` (MigrationError if that appeared since)."""
    to_path = Path(to_path)
    if to_path.exists():
        raise MigrationError(
            f"{to_path} appeared while the rollback was building it; it was left as it is.",
            "Restore into that file (it is loaded with the same rules), or choose "
            "another file.")
    with _connection(work) as conn:  # fold the -wal into the file before it moves
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(work, to_path)
    for companion in (Path(f"{work}-wal"), Path(f"{work}-shm")):
        companion.unlink(missing_ok=True)


def _load_all(conn: sqlite3.Connection, manifest: ExportManifest, cipher: Cipher | None,
              summary: RestoreSummary,
              on_batch: Callable[[RestoreBatchResult], None] | None,
              remove_deleted: bool = False) -> None:
    if remove_deleted and not manifest.batches:
        _refuse_to_empty(manifest)
    for number, entry in enumerate(manifest.batches, start=1):
        last = number == len(manifest.batches)
        result = load_batch_into_sqlite(conn, manifest, entry.key, cipher,
                                        remove_deleted_threads=remove_deleted and last)
        summary.batches.append(result)
        if on_batch is not None:
            on_batch(result)


def threads_postgres_lacks(conn: sqlite3.Connection, manifest: ExportManifest) -> list[str]:
    """The threads the SQLite file holds (a checkpoint or a write) that the export of
    PostgreSQL does not: PostgreSQL no longer had them at the export's snapshot (deleted
    there, e.g. an erasure request after the cutover). Only threads of the export's
    selection count when it has one (a rollback of some threads speaks of those alone)."""
    names = manifest.thread_names  # the file holds the fleet source's own ids
    exported = {names.in_source(tid) for tid, _, _, _ in export_thread_digests(manifest)}
    held = {tid for (tid,) in conn.execute(
        "SELECT thread_id FROM checkpoints UNION SELECT thread_id FROM writes")}
    # A rollback export names its threads in its source entry (a forward one: selection).
    selection = manifest.selection or (manifest.header.get("source") or {}).get("threads")
    if selection is not None:
        held &= {names.in_source(tid) for tid in selection}
    return sorted(held - exported)


def remove_threads_postgres_lacks(conn: sqlite3.Connection,
                           manifest: ExportManifest) -> dict[str, dict[str, int]]:
    """Delete from SqliteSaver's tables (checkpoints, writes) every thread of
    :func:`threads_postgres_lacks`, inside the caller's transaction; return their rows
    per table. MigrationError, nothing deleted, when the export holds no thread at all
    (an empty or wrong PostgreSQL database must not empty the file)."""
    if not manifest.threads:
        _refuse_to_empty(manifest)
    removed: dict[str, dict[str, int]] = {}
    for thread_id in threads_postgres_lacks(conn, manifest):
        removed[thread_id] = {
            "checkpoints": conn.execute("DELETE FROM checkpoints WHERE thread_id = ?",
                                        (thread_id,)).rowcount,
            "writes": conn.execute("DELETE FROM writes WHERE thread_id = ?",
                                   (thread_id,)).rowcount,
        }
    return removed


def remove_deleted_threads(path: str | Path,
                           manifest: ExportManifest) -> dict[str, dict[str, int]]:
    """Delete from the existing SqliteSaver file ``path``, in one transaction of its own,
    the threads :func:`threads_postgres_lacks` names; their rows per table. For restores
    whose batches load apart (the Dagster partitions); a whole restore does it in its last
    batch's transaction (:func:`restore_export`)."""
    with connect_sqlite_target(Path(path)) as conn, _write_transaction(conn):
        return remove_threads_postgres_lacks(conn, manifest)


def _refuse_to_empty(manifest: ExportManifest) -> None:
    raise MigrationError(
        f"The export {manifest.path} holds no thread: PostgreSQL has none (in this schema "
        "and selection), so removing the threads PostgreSQL no longer has would empty the "
        "SQLite file. Nothing was removed.",
        "Check --source-dsn and --schema; if PostgreSQL is meant to be empty, delete the "
        "threads in the SQLite file yourself.")


@contextmanager
def _temporary_database(final: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``final`` (``.<name>.<pid>-*.partial``), removed with
    its -wal/-shm companions unless it was renamed into place."""
    prefix = f".{final.name}."
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(final.parent, prefix)
        fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=PARTIAL_SUFFIX,
                                    dir=final.parent)
    except OSError as exc:
        raise MigrationError(
            f"Cannot create {final}: {exc.strerror or exc}. Nothing was written.",
            "Pass --to a file in a directory you may write to.") from None
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        for path in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm"),
                     Path(f"{temp}-journal")):
            path.unlink(missing_ok=True)


@contextmanager
def _connection(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                           check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def connect_sqlite_target(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to an existing SqliteSaver file; MigrationError, the file untouched,
    when it is not one."""
    if not path.is_file():
        raise MigrationError(f"{path} is not a file; expected {EXPECTED}.",
                             "Pass --to a new file name or a SqliteSaver database.")
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise MigrationError(
            f"{path} is not a SQLite database; expected {EXPECTED}. It was not changed.",
            "Pass --to a new file name (it is created) or the application's SqliteSaver "
            "database.")
    with _connection(path) as conn:
        try:
            tables = {name: {c[1] for c in conn.execute(f"PRAGMA table_info({name})")}
                      for (name,) in conn.execute(
                          "SELECT name FROM sqlite_master WHERE type = 'table' "
                          "AND name IN ('checkpoints', 'writes')")}
        except sqlite3.DatabaseError as exc:
            raise MigrationError(f"{path} is corrupt or not {EXPECTED} ({exc}).",
                                 "Pass --to a new file name instead.") from None
        absent = [f"{table}.{column}" for table, expected in
                  (("checkpoints", CHECKPOINT_COLUMNS), ("writes", WRITE_COLUMNS | {
                      "task_path"}))
                  for column in sorted(expected - tables.get(table, set()))]
        if absent:
            raise MigrationError(
                f"{path} is a SQLite database but not {EXPECTED}: it lacks "
                f"{', '.join(absent[:6])}. It was not changed.",
                "Pass --to a new file name (it is created), or open the file once with "
                "the application's SqliteSaver (setup() adds the task_path column).")
        yield conn


def load_batch_into_sqlite(conn: sqlite3.Connection, manifest: ExportManifest, key: str,
                           cipher: Cipher | None = None, *,
                           remove_deleted_threads: bool = False) -> RestoreBatchResult:
    """Load one batch in one SQLite transaction (see the module's rules); ConflictError,
    the batch rolled back, when a row with the same key holds other content. With
    ``remove_deleted_threads`` the same transaction also deletes the threads PostgreSQL
    no longer has (:func:`remove_threads_postgres_lacks`; listed in the result's ``removed``)."""
    result = RestoreBatchResult(key)
    names = manifest.thread_names
    with _write_transaction(conn):
        for thread in read_batch(manifest, key):
            _load_thread(conn, in_source_names(thread, names), cipher, result)
        if remove_deleted_threads:
            result.removed = remove_threads_postgres_lacks(conn, manifest)
    return result


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE: the write lock first), committed when the
    block ends, rolled back when it raises; a locked or read-only file is a
    MigrationError saying so (see :func:`_cannot_write`)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        raise _cannot_write(conn, exc) from None


def _cannot_write(conn: sqlite3.Connection, exc: sqlite3.Error) -> MigrationError:
    """The error for a SQLite file that cannot take a batch now (locked, read-only, full)."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    text = str(exc)
    if "locked" in text or "busy" in text:
        return MigrationError(
            f"{path} is locked by another process ({text}) and stayed locked for "
            f"{BUSY_TIMEOUT_SECONDS:.0f} s; this batch was not written.",
            "Stop the application using the file (the rollback is a cutover back), then run "
            "the same command again: batches already restored are recognised.")
    return MigrationError(f"Cannot write {path}: {text}; this batch was not written.",
                          "Check the file's permissions and the free space, then run the "
                          "same command again.")


def in_source_names(thread: ThreadRows, names: ThreadNames) -> ThreadRows:
    """``thread`` with the id its fleet source gave it (``names`` reversed; as it is when
    the ids were kept)."""
    own = names.in_source(thread.thread_id)
    if own == thread.thread_id:
        return thread
    return ThreadRows(own, [row._replace(thread_id=own) for row in thread.checkpoints],
                      [row._replace(thread_id=own) for row in thread.writes])


def read_thread(conn: sqlite3.Connection, thread_id: str) -> ThreadRows:
    """One thread's rows in a SqliteSaver file, in key order (binary collation: the
    export's order)."""
    return ThreadRows(
        thread_id,
        [CheckpointRow._make(r) for r in conn.execute(_CHECKPOINT_SQL, (thread_id,))],
        [WriteRow._make(r) for r in conn.execute(_WRITE_SQL, (thread_id,))])


def _load_thread(conn: sqlite3.Connection, thread: ThreadRows, cipher: Cipher | None,
                 result: RestoreBatchResult) -> None:
    present_rows = read_thread(conn, thread.thread_id)
    existing = {row[:3]: row for row in present_rows.checkpoints}
    existing_writes = {(*row[:4], row.idx): row for row in present_rows.writes}
    conflicts: list[dict] = []
    new_checkpoints = []
    for row in thread.checkpoints:
        present = existing.get(row[:3])
        if present is None:
            new_checkpoints.append(row)
        elif _same_checkpoint(present, row, cipher):
            result.already_present["checkpoints"] += 1
            result.present_bytes[difference_reason(present, row, cipher)] += 1
        else:
            conflicts.append({"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
                              "checkpoint_id": row.checkpoint_id})
    new_writes = []
    for write in thread.writes:
        present_write = existing_writes.get((*write[:4], write.idx))
        if present_write is None:
            new_writes.append(write)
        elif _same_write(present_write, write):
            result.already_present["writes"] += 1
        else:
            conflicts.append({"thread_id": write.thread_id,
                              "checkpoint_ns": write.checkpoint_ns,
                              "checkpoint_id": write.checkpoint_id, "task_id": write.task_id,
                              "idx": write.idx})
    if conflicts:
        raise ConflictError(
            f"The SQLite file already holds {len(conflicts)} row(s) of thread "
            f"{thread.thread_id!r} with the same key and other content (first: "
            f"{conflicts[0]}). Nothing of this batch was written; nothing was overwritten.",
            "Restore into a new file (--to NEW.sqlite), or, if the PostgreSQL rows are the "
            "ones to keep, move the conflicting rows out of the SQLite file first.",
            conflicts)
    conn.executemany("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
                     "parent_checkpoint_id, type, checkpoint, metadata) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", new_checkpoints)
    conn.executemany("INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
                     "task_path, idx, channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     new_writes)
    result.inserted["checkpoints"] += len(new_checkpoints)
    result.inserted["writes"] += len(new_writes)


def _same_checkpoint(present: CheckpointRow, row: CheckpointRow, cipher: Cipher | None) -> bool:
    """Same content: the same bytes, or the same parent, header, channel values and
    metadata as the verification compares them (key order and encryption nonces aside)."""
    if present == row:
        return True
    if present.parent_checkpoint_id != row.parent_checkpoint_id:
        return False
    try:
        views = [source_view([ThreadRows(r.thread_id, [r], [])], cipher).checkpoints[r[:3]]
                 for r in (present, row)]
    except MigrationError:
        return False  # an existing row that does not decode is not the same content
    mine, theirs = views
    if (mine.parent, mine.header, mine.metadata) != (theirs.parent, theirs.header,
                                                     theirs.metadata):
        return False
    left, right = dict(mine.channels), dict(theirs.channels)
    # A set's elements are encoded in iteration order, which differs between processes.
    return left.keys() == right.keys() and all(
        left[c] == right[c] or same_value(unpack_opaque(left[c]), unpack_opaque(right[c]))
        for c in left)


def _same_write(present: WriteRow, write: WriteRow) -> bool:
    """Writes are copied exactly; a NULL value and an empty one are the same."""
    return present._replace(value=present.value or b"") == write._replace(
        value=write.value or b"")
