"""Read PostgresSaver's tables as SqliteSaver rows: the source of a rollback export.

One REPEATABLE READ, READ ONLY transaction holds the whole export, so every thread is
read from the same committed state while the application may keep writing. The three
tables are streamed through server-side cursors in key order (``COLLATE "C"``: byte order,
which is the order Python compares thread ids in and the export requires) and merged
thread by thread; each thread is rebuilt by :func:`reverse_convert.restore_thread`.
Memory holds one thread at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.core.selection import refuse_missing_threads
from checkpoint_assets.engine.core.versions import SUPERSEDED_TABLE
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import Peekable, write_export_rows
from checkpoint_assets.engine.load import superseded_table
from checkpoint_assets.engine.load.superseded_table import SUPERSEDED_COLUMNS, SUPERSEDED_KEY
from checkpoint_assets.engine.load.target import (
    LATEST_SCHEMA_VERSION,
    MIGRATIONS_TABLE,
    Target,
    redact_dsn,
    scrub,
)
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.reverse_convert import restore_thread

# Rows fetched per round trip from each server-side cursor.
CURSOR_ITERSIZE = 2000
_C = sql.SQL(' COLLATE "C"')
# Per table: the columns read (SqliteSaver row order) and the key they are read in.
_QUERIES = {
    "checkpoints": (("thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id",
                     "checkpoint", "metadata"),
                    ("thread_id", "checkpoint_ns", "checkpoint_id")),
    "checkpoint_blobs": (("thread_id", "checkpoint_ns", "channel", "version", "type", "blob"),
                         ("thread_id", "checkpoint_ns", "channel", "version")),
    "checkpoint_writes": (("thread_id", "checkpoint_ns", "checkpoint_id", "task_id",
                           "task_path", "idx", "channel", "type", "blob"),
                          ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id")),
    SUPERSEDED_TABLE: (tuple(name for name, _ in SUPERSEDED_COLUMNS), SUPERSEDED_KEY),
}


class PostgresRows:
    """The export :class:`~checkpoint_assets.engine.export.writer.RowSource` of PostgresSaver tables, read on ``conn``
    inside its (repeatable read) transaction."""

    def __init__(self, conn: psycopg.Connection, source: Target, schema_version: int,
                 threads: Sequence[str] | None = None, cipher: Cipher | None = None,
                 originals: OriginalRows | None = None) -> None:
        self.conn = conn
        self.originals = originals
        self.source = source
        self.schema_version = schema_version
        self.only = sorted(set(threads)) if threads is not None else None
        self.cipher = cipher

    def source_header(self) -> dict[str, Any]:
        """Where the rows came from: the DSN without its password, schema, threads; with
        an original export of a fleet's source, what that source calls its threads (the
        restore gives them their own ids back)."""
        header = {"kind": "postgres", "dsn": redact_dsn(self.source.dsn),
                  "schema": self.source.schema, "schema_version": self.schema_version,
                  "threads": self.only,
                  "original_export": self.originals.provenance() if self.originals else None}
        names = self.originals.chain.export.thread_names if self.originals else None
        if names is not None and not names.kept:
            header["thread_names"] = names.to_json()
        return header

    def _stream(self, table: str) -> Iterator[tuple]:
        columns, order = _QUERIES[table]
        keys = [sql.Composed([sql.Identifier(c), _C]) for c in order]
        if table == "checkpoint_writes":
            keys.append(sql.Identifier("idx"))  # an integer: no collation
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table),
            sql.SQL(" WHERE thread_id = ANY(%s)") if self.only is not None else sql.SQL(""),
            sql.SQL(", ").join(keys))
        cursor = self.conn.cursor(name=f"rollback_{table}")
        cursor.itersize = CURSOR_ITERSIZE
        try:
            cursor.execute(query, (self.only,) if self.only is not None else None)
            yield from cursor
        finally:
            cursor.close()

    def threads(self) -> Iterator[ThreadRows]:
        """Every thread with checkpoints or writes, in thread_id order, rebuilt as
        SqliteSaver rows (blobs no checkpoint of a thread names are not rows of it); the
        later values of channel versions the migration kept (superseded_table) come back
        into their checkpoints."""
        checkpoints = Peekable(self._stream("checkpoints"))
        blobs = Peekable(self._stream("checkpoint_blobs"))
        writes = Peekable(self._stream("checkpoint_writes"))
        superseded = Peekable(self._stream(SUPERSEDED_TABLE)
                              if superseded_table.table_exists(self.conn) else iter(()))
        held: list[str] = []  # the requested threads found (with --threads)
        while True:
            heads = [row[0] for row in (checkpoints.peek(), writes.peek()) if row is not None]
            if not heads:
                break
            thread = min(heads)
            if self.only is not None:
                held.append(thread)
            for stream in (blobs, superseded):
                for _ in stream.take_while(lambda r: r[0] < thread):
                    pass  # rows of a thread with no checkpoint and no write
            rebuilt = restore_thread(
                thread, list(checkpoints.take_while(lambda r: r[0] == thread)),
                [r[1:] for r in blobs.take_while(lambda r: r[0] == thread)],
                list(writes.take_while(lambda r: r[0] == thread)), self.cipher,
                list(superseded.take_while(lambda r: r[0] == thread)))
            yield self.originals.prefer_original(rebuilt, self.cipher) if self.originals \
                else rebuilt
        refuse_missing_threads(
            self.only or (), held, self.source.display, "No export was written.",
            "Check the thread ids (--threads), the database and the schema (--schema).")


def write_postgres_export(
    dsn: str,
    export_path: str | Path,
    *,
    schema: str | None = None,
    threads: Sequence[str] | None = None,
    cipher: Cipher | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    originals: OriginalRows | None = None,
) -> ExportManifest:
    """Export PostgresSaver's tables (all threads, or ``threads``) as SqliteSaver rows.

    ``originals``: the forward migration's export; a checkpoint whose content is that of
    its original row there is exported in the original's bytes (see :mod:`original_rows`).

    The same export file as :func:`writer.write_export` (its header's source is
    ``postgres``, with the DSN without its password), written under a temporary name and
    renamed when complete. Raises MigrationError when the source cannot be reached, holds
    no PostgresSaver tables or tables of a schema version this tool does not know, or a
    row cannot be rebuilt without loss; the message never holds the password.
    """
    source = Target(dsn, schema, role="source")
    with source.connect() as conn:
        try:
            version = require_known_schema(source, conn)
            conn.commit()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                return write_export_rows(
                    PostgresRows(conn, source, version, threads, cipher, originals),
                    export_path,
                    batch_size=batch_size, progress=progress)
        except psycopg.Error as exc:
            raise MigrationError(
                f"Reading the source {source.display} failed: "
                f"{scrub(str(exc).strip(), dsn)}",
                "Check that the server is up and that this user may read PostgresSaver's "
                "tables (GRANT SELECT), then run the rollback again.") from None


def require_known_schema(source: Target, conn: psycopg.Connection) -> int:
    """The source's PostgresSaver schema version; MigrationError unless it is the one
    this tool's langgraph-checkpoint-postgres writes (whose layout it knows)."""
    version = source.schema_version(conn)
    where = f"schema {source.schema}" if source.schema else "the search_path"
    if version is None:
        raise MigrationError(
            f"The source {source.display} has no PostgresSaver tables in {where} "
            f"(no {MIGRATIONS_TABLE} table).",
            "Point --source-dsn and --schema at the database and schema your PostgresSaver "
            "writes.")
    if version != LATEST_SCHEMA_VERSION:
        newer = version > LATEST_SCHEMA_VERSION
        raise MigrationError(
            f"PostgresSaver's tables in {source.display} are at schema version {version} "
            f"({MIGRATIONS_TABLE}); this tool reads version {LATEST_SCHEMA_VERSION} only. "
            "Nothing was written.",
            "Upgrade langgraph-checkpoint-postgres in this tool's environment to the "
            "version your application runs." if newer else
            "Let the application's PostgresSaver.setup() (or `checkpoint-assets import` "
            "into that database) upgrade the tables first; it only adds indexes and the "
            "task_path column.")
    return version
