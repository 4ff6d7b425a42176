"""Read a LangGraph SqliteSaver database: never written, one consistent snapshot, streamed.

The engine reads a private copy of the database taken by :mod:`snapshot` (the original
and its ``-wal``/``-shm`` stay byte-identical). Committed rows still in the ``-wal`` file
are part of that copy. A sync of a WAL-mode source reads the live file instead
(``open_source(..., live=True)``): one read transaction is as consistent as the copy and
costs what the sync reads, not the size of the file (SQLite updates the ``-shm``'s read
marks meanwhile; see snapshot.reads_live for what it costs the application). Rows are
streamed in primary-key order; memory does not grow with the size of the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.core.thread_names import KEPT, ThreadNames
from checkpoint_assets.engine.export.snapshot import (
    live_uri,
    private_snapshot,
    reads_live,
    require_one_name,
    source_files,
)

SQLITE_HEADER = b"SQLite format 3\x00"
CHECKPOINT_COLUMNS = {
    "thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id",
    "type", "checkpoint", "metadata",
}
WRITE_COLUMNS = {
    "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "value",
}
EXPECTED = (
    "a LangGraph SqliteSaver database (tables 'checkpoints' and 'writes', "
    "as created by SqliteSaver.setup())"
)
BUSY_TIMEOUT_SECONDS = 10.0
SOURCE_TABLES = ("checkpoints", "writes")


@dataclass(frozen=True)
class SourceCounts:
    """Row counts of a source database."""

    checkpoints: int
    writes: int
    threads: int


@dataclass(frozen=True)
class ThreadSize:
    """How many rows one thread has in each table."""

    thread_id: str
    checkpoints: int
    writes: int


class SourceDatabase:
    """A SqliteSaver database opened read-only. Use :func:`open_source`.

    Every thread id it returns or is given is the target's (``names``, see
    thread_names.py: kept unless a fleet's sources are told apart by prefix or mapping)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, has_task_path: bool,
                 resources: ExitStack, names: ThreadNames = KEPT) -> None:
        self.path = path
        self._conn = conn
        self.has_task_path = has_task_path
        self._resources = resources
        self._totals: dict[str, list[int]] | None = None
        self.names = names

    def close(self) -> None:
        """Close the connection and delete the private copy (the original is never written)."""
        self._resources.close()

    @contextmanager
    def snapshot(self) -> Iterator[SourceDatabase]:
        """Hold one read transaction: every read inside sees the same committed state."""
        self._execute("BEGIN")
        try:
            yield self
        finally:
            self._totals = None
            self._conn.execute("ROLLBACK")

    def counts(self, selection: Sequence[str] | None = None) -> SourceCounts:
        """Count checkpoints, writes and distinct threads (of ``selection`` only, if given:
        from the fingerprints, see :meth:`fingerprints`)."""
        if selection is not None:
            wanted = set(selection)
            selected = [fp for tid, fp in self.fingerprints().items() if tid in wanted]
            return SourceCounts(sum(fp[0] for fp in selected), sum(fp[3] for fp in selected),
                                len(selected))
        checkpoints = self._execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        writes = self._execute("SELECT count(*) FROM writes").fetchone()[0]
        threads = self._execute(
            "SELECT count(*) FROM (SELECT thread_id FROM checkpoints "
            "UNION SELECT thread_id FROM writes)"
        ).fetchone()[0]
        return SourceCounts(checkpoints, writes, threads)

    def thread_sizes(self) -> Iterator[ThreadSize]:
        """Every thread (with checkpoints or only writes), in thread_id order."""
        cursor = self._execute(
            "SELECT thread_id, sum(c), sum(w) FROM ("
            " SELECT thread_id, count(*) AS c, 0 AS w FROM checkpoints GROUP BY thread_id"
            " UNION ALL"
            " SELECT thread_id, 0, count(*) FROM writes GROUP BY thread_id"
            ") GROUP BY thread_id ORDER BY thread_id"
        )
        sizes = (ThreadSize(self._named(thread_id), checkpoints, writes)
                 for thread_id, checkpoints, writes in cursor)
        if self.names.keeps_order:
            yield from sizes
            return
        ordered = sorted(sizes, key=lambda size: size.thread_id)
        for before, after in zip(ordered, ordered[1:]):
            if before.thread_id == after.thread_id:
                raise MigrationError(
                    f"The thread mapping gives two threads of {self.path} the same id "
                    f"{after.thread_id!r} (one renamed to an id the file already has, or two "
                    "renamed to one).",
                    "Give every thread of a source its own new id in the mapping file.")
        yield from ordered

    def checkpoints(self, thread_id: str | None = None) -> Iterator[CheckpointRow]:
        """All checkpoint rows (or one thread's) in primary-key order."""
        yield from self._rows("checkpoints", thread_id)

    def writes(self, thread_id: str | None = None) -> Iterator[WriteRow]:
        """All writes rows (or one thread's) in primary-key order (``task_path`` '' where the
        column is absent)."""
        yield from self._rows("writes", thread_id)

    def _rows(self, table: str, thread_id: str | None) -> Iterator[Any]:
        if thread_id is None and not self.names.keeps_order:
            # Renamed ids sort differently: one thread at a time, in the target's order.
            for size in self.thread_sizes():
                yield from self._rows(table, size.thread_id)
            return
        if thread_id is not None:
            source_id = self.names.to_source(thread_id)
            if source_id is None:
                return  # no thread of this source is called that in the target
        where, params = _one_thread(None if thread_id is None else source_id)
        if table == "checkpoints":
            select, order, make = _CHECKPOINT_SELECT, _CHECKPOINT_ORDER, _checkpoint_row
        else:
            select, order, make = self._write_select(), _WRITE_ORDER, _write_row
        rows = map(make, self._execute(f"SELECT {select} FROM {table} {where}ORDER BY {order}",
                                       params))
        yield from rows if self.names.kept else (
            row._replace(thread_id=self.names.to_target(row.thread_id)) for row in rows)

    def thread_rows(self, thread_id: str) -> ThreadRows:
        """One thread's rows, read through the primary-key indexes (not the whole table)."""
        return ThreadRows(thread_id, list(self.checkpoints(thread_id)),
                          list(self.writes(thread_id)))

    def table_totals(self) -> dict[str, list[int]]:
        """{table: [rows, highest rowid (0 when empty)]} for both tables: the counts walk the
        smallest index, the highest rowid is one lookup. Read once per :meth:`snapshot`."""
        if self._totals is None:
            # Two statements: a bare count(*) counts each page's cells without decoding a
            # row (SQLite's count optimisation); with max(rowid) beside it, SQLite decodes
            # every index entry (about 3x slower at 1M checkpoints).
            self._totals = {table: [
                self._execute(f"SELECT count(*) FROM {table}").fetchone()[0],
                self._execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]]
                for table in SOURCE_TABLES}
        return {table: list(totals) for table, totals in self._totals.items()}

    def rows_after(self, table: str, rowid: int) -> dict[str, int]:
        """{thread_id: rows} of the rows above ``rowid`` in ``table`` (rows inserted or
        replaced since the table's highest rowid was ``rowid``): a range of the table's
        own b-tree, as long as the change."""
        if table not in SOURCE_TABLES:
            raise ValueError(f"not a SqliteSaver table: {table!r}")
        # NOT INDEXED: grouped by thread_id, SQLite would walk the whole primary-key index.
        counts: dict[str, int] = {}
        for (tid,) in self._execute(
                f"SELECT thread_id FROM {table} NOT INDEXED WHERE rowid > ?", (rowid,)):
            named = self._named(tid)
            counts[named] = counts.get(named, 0) + 1
        return counts

    def missing_threads(self, thread_ids: Collection[str]) -> set[str]:
        """The threads of ``thread_ids`` with no row in either table (deleted whole): one
        probe of each primary-key index per thread, inside SQLite."""
        if not thread_ids:
            return set()
        if not self.names.kept:
            by_source = {self.names.to_source(tid): tid for tid in thread_ids}
            unnamed = {tid for source_id, tid in by_source.items() if source_id is None}
            found = self._unnamed().missing_threads(
                [source_id for source_id in by_source if source_id is not None])
            return unnamed | {by_source[source_id] for source_id in found}
        self._execute("CREATE TEMP TABLE IF NOT EXISTS checkpoint_assets_probe "
                      "(thread_id TEXT PRIMARY KEY)")
        try:
            self._conn.executemany("INSERT INTO temp.checkpoint_assets_probe VALUES (?)",
                                   ((tid,) for tid in thread_ids))
            return {_text(tid) for (tid,) in self._execute(
                "SELECT p.thread_id FROM temp.checkpoint_assets_probe p"
                " WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = p.thread_id)"
                " AND NOT EXISTS (SELECT 1 FROM writes w WHERE w.thread_id = p.thread_id)")}
        finally:
            self._execute("DROP TABLE temp.checkpoint_assets_probe")

    def fingerprints(self, thread_ids: Collection[str] | None = None) -> dict[str, list[int]]:
        """Every thread's fingerprint (or only those of ``thread_ids``, each read through
        the indexes: as long as those threads): ``[checkpoints, max rowid, sum of rowids,
        writes, max rowid, sum of rowids]``.

        Read from the primary-key indexes alone (each index entry carries its rowid), never
        from the rows' blobs. A new, deleted or replaced row changes its thread's
        fingerprint (``INSERT OR REPLACE`` gives the new row max + 1, even for the table's
        last row); only a rowid used again after the highest rowids were deleted can keep
        it, which :meth:`last_row` lets a sync notice (see export_chain).
        """
        out: dict[str, list[int]] = {}
        for position, table in ((0, "checkpoints"), (3, "writes")):
            if thread_ids is None:
                found = self._execute(
                    f"SELECT thread_id, count(*), max(rowid), sum(rowid) FROM {table} "
                    "GROUP BY thread_id")
            else:
                source_ids = (self.names.to_source(tid) for tid in sorted(thread_ids))
                found = (self._execute(
                    f"SELECT thread_id, count(*), max(rowid), sum(rowid) FROM {table} "
                    "WHERE thread_id = ? GROUP BY thread_id", (tid,)).fetchone()
                    for tid in source_ids if tid is not None)
            for record in found:
                if record is None:
                    continue
                thread_id, count, highest, total = record
                entry = out.setdefault(self._named(thread_id), [0] * 6)
                entry[position:position + 3] = [count, highest, total]
        return out

    def last_row(self, table: str, rowid: int | None = None,
                 ) -> tuple[int, CheckpointRow | WriteRow] | None:
        """(rowid, row) of the table's last row (highest rowid), or of the row ``rowid``;
        None when there is no such row."""
        return self._end_row(table, "DESC", rowid)

    def first_row(self, table: str) -> tuple[int, CheckpointRow | WriteRow] | None:
        """(rowid, row) of the table's first row (lowest rowid), or None when it is empty:
        the oldest row still there, part of what identifies the database (see
        source_state.source_identity)."""
        return self._end_row(table, "ASC")

    def _end_row(self, table: str, order: str, rowid: int | None = None,
                 ) -> tuple[int, CheckpointRow | WriteRow] | None:
        if table not in SOURCE_TABLES or order not in ("ASC", "DESC"):
            raise ValueError(f"not a SqliteSaver table or order: {table!r} {order!r}")
        select = _CHECKPOINT_SELECT if table == "checkpoints" else self._write_select()
        where, params = ("WHERE rowid = ?", (rowid,)) if rowid is not None else ("", ())
        record = self._execute(f"SELECT rowid, {select} FROM {table} {where} "
                               f"ORDER BY rowid {order} LIMIT 1", params).fetchone()
        if record is None:
            return None
        make = _checkpoint_row if table == "checkpoints" else _write_row
        row = make(record[1:])
        return record[0], row._replace(thread_id=self.names.to_target(row.thread_id))

    def _named(self, thread_id: bytes | str | int) -> str:
        """The target's id of a thread id as SQLite returned it."""
        return self.names.to_target(_text(thread_id))

    def _unnamed(self) -> SourceDatabase:
        """The same connection with the source's own ids (for probes keyed by them)."""
        return SourceDatabase(self.path, self._conn, self.has_task_path, ExitStack())

    def _write_select(self) -> str:
        task_path = "task_path" if self.has_task_path else "''"
        return (f"thread_id, checkpoint_ns, checkpoint_id, task_id, {task_path}, idx, "
                "channel, type, value")

    def _execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise _explain(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise MigrationError(
                f"Source {self.path} is corrupt or not {EXPECTED}: {exc}.",
                "Check that the path points at the application's checkpoint database; "
                "restore it from a backup if it is damaged.",
            ) from None


_CHECKPOINT_SELECT = ("thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
                      "checkpoint, metadata")
_CHECKPOINT_ORDER = "thread_id, checkpoint_ns, checkpoint_id"
_WRITE_ORDER = "thread_id, checkpoint_ns, checkpoint_id, task_id, idx"


def _one_thread(thread_id: str | None) -> tuple[str, tuple]:
    return ("", ()) if thread_id is None else ("WHERE thread_id = ? ", (thread_id,))


def _checkpoint_row(record: tuple) -> CheckpointRow:
    tid, ns, cid, parent, typ, blob, meta = record
    return CheckpointRow(_text(tid), _text(ns), _text(cid), _opt_text(parent), _opt_text(typ),
                         _opt_bytes(blob), _opt_bytes(meta))


def _write_row(record: tuple) -> WriteRow:
    tid, ns, cid, task_id, path, idx, channel, typ, value = record
    return WriteRow(_text(tid), _text(ns), _text(cid), _text(task_id), _text(path), idx,
                    _text(channel), _opt_text(typ), _opt_bytes(value))


def open_source(path: str | Path, snapshot: Path | str | None = None, *,
                live: bool = False, names: ThreadNames = KEPT) -> SourceDatabase:
    """Open a SqliteSaver database read-only and check that it has the expected schema.

    Reads a private snapshot of the file (snapshot.py): a new one, or ``snapshot``, one the
    caller took of ``path`` and keeps for other readers of the same state. ``live``: read a
    WAL-mode file in place when that is consistent (snapshot.reads_live); hold
    :meth:`SourceDatabase.snapshot` around reads that must agree. ``names``: what the
    threads are called in the target (every id in and out of the database is the target's).
    Raises MigrationError naming the file when it is missing, empty, not SQLite, corrupt,
    locked, or lacks the checkpoint tables.
    """
    path = require_sqlite_file(path)
    resources = ExitStack()
    try:
        if live and snapshot is None and reads_live(path):
            require_one_name(source_files(path))
            target = live_uri(path)
        else:
            target = str(snapshot or resources.enter_context(private_snapshot(path)))
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False, uri=target.startswith("file:"))
        resources.callback(conn.close)
        conn.text_factory = bytes
        has_task_path = _check_schema(path, conn)
    except BaseException:
        resources.close()
        raise
    return SourceDatabase(path, conn, has_task_path, resources, names)


def require_sqlite_file(path: str | Path) -> Path:
    """``path``, after checking that it is a SQLite file; else a MigrationError saying
    what it is instead (missing, not a file, empty, not SQLite)."""
    path = Path(path)
    if not path.exists():
        raise MigrationError(
            f"Source {path} does not exist.", "Pass the path of the SqliteSaver database file."
        )
    if not path.is_file():
        raise MigrationError(f"Source {path} is not a file.", f"Pass {EXPECTED}.")
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        raise MigrationError(f"Source {path} is empty (0 bytes); expected {EXPECTED}.",
                             "Point --source at the database your application writes.")
    if header != SQLITE_HEADER:
        raise MigrationError(
            f"Source {path} is not a SQLite database; expected {EXPECTED}.",
            "Point --source at the database your application writes.",
        )
    return path


def _check_schema(path: Path, conn: sqlite3.Connection) -> bool:
    try:
        tables = {
            _text(name): {_text(col[1]) for col in conn.execute(
                f"PRAGMA table_info({_text(name)})").fetchall()}
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('checkpoints', 'writes')").fetchall()
        }
    except sqlite3.OperationalError as exc:
        raise _explain(path, exc) from None
    except sqlite3.DatabaseError as exc:
        raise MigrationError(
            f"Source {path} is corrupt or not a SQLite database ({exc}); expected {EXPECTED}.",
            "Restore the file from a backup or point --source at the right file.",
        ) from None
    missing = [t for t in ("checkpoints", "writes") if t not in tables]
    if missing:
        raise MigrationError(
            f"Source {path} is a SQLite database but has no {' or '.join(missing)} table; "
            f"expected {EXPECTED}.",
            "Point --source at the database your SqliteSaver writes (the file passed to "
            "SqliteSaver.from_conn_string or sqlite3.connect).",
        )
    for table, expected in (("checkpoints", CHECKPOINT_COLUMNS), ("writes", WRITE_COLUMNS)):
        absent = expected - tables[table]
        if absent:
            raise MigrationError(
                f"Source {path}: table '{table}' lacks columns {sorted(absent)}; "
                f"expected {EXPECTED}.",
                "This is not a SqliteSaver schema this tool knows; open an issue with the "
                "output of `sqlite3 FILE .schema`.",
            )
    return "task_path" in tables["writes"]


def _explain(path: Path, exc: sqlite3.OperationalError) -> MigrationError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return MigrationError(
            f"Source {path} is locked by another process ({text}) and stayed locked for "
            f"{BUSY_TIMEOUT_SECONDS:.0f} s.",
            "Stop or pause the application writing to it, then run the export again.",
        )
    return MigrationError(f"Cannot read source {path}: {text}.",
                          "Check the file's permissions and that it is a SqliteSaver database.")


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _opt_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)


def _opt_bytes(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    return value
