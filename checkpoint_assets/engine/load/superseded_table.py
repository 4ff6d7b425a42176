"""This project's table of superseded values in the target (see :mod:`versions`).

It sits beside PostgresSaver's tables in the target schema and is created the first time
a load has a row for it, so a target whose checkpoints never re-encoded a version needs
no privilege beyond PostgresSaver's tables. PostgresSaver never reads it; the verification
compares it with the source and the way back restores the later values from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from checkpoint_assets.engine.core.versions import SUPERSEDED_TABLE

# Columns (with the type COPY sends), in the order the converter builds rows.
SUPERSEDED_COLUMNS = (
    ("thread_id", "text"), ("checkpoint_ns", "text"), ("checkpoint_id", "text"),
    ("channel", "text"), ("version", "text"), ("type", "text"), ("blob", "bytea"),
    ("first_checkpoint_id", "text"), ("difference", "text"),
)
SUPERSEDED_KEY = ("thread_id", "checkpoint_ns", "checkpoint_id", "channel")


def _columns() -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name, _ in SUPERSEDED_COLUMNS)


def table_exists(conn: psycopg.Connection) -> bool:
    """Whether the target schema (the connection's search_path) holds the table."""
    row = conn.execute("SELECT to_regclass(%s)", (SUPERSEDED_TABLE,)).fetchone()
    return row is not None and row[0] is not None


def create_table(conn: psycopg.Connection) -> None:
    """Create the table in the connection's schema if it is not there yet.

    Two batches loading at once may both need it: CREATE TABLE IF NOT EXISTS alone lets
    the second fail on the catalog's unique index, so creators queue on an advisory lock
    (held to the end of the transaction); IF NOT EXISTS then sees the first one's table."""
    if table_exists(conn):
        return
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.' || %s))",
                 (SUPERSEDED_TABLE,))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (thread_id text NOT NULL, checkpoint_ns text NOT NULL "
        "DEFAULT '', checkpoint_id text NOT NULL, channel text NOT NULL, version text NOT "
        "NULL, type text, blob bytea, first_checkpoint_id text NOT NULL, difference text NOT "
        "NULL, PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, channel))").format(
        sql.Identifier(SUPERSEDED_TABLE)))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(SUPERSEDED_TABLE),
        sql.Literal("checkpoint_assets: later values of a channel version that PostgresSaver "
                    "keeps only once (the first); original bytes, by checkpoint and channel")))


def insert_rows(conn: psycopg.Connection, rows: Sequence[tuple]) -> int:
    """Insert rows (SUPERSEDED_COLUMNS order), creating the table first; rows already there
    are left as they are (re-running a load is safe: the same batch gives the same rows,
    and the verification compares them). Returns how many were new."""
    if not rows:
        return 0
    create_table(conn)
    with conn.cursor() as cursor:
        cursor.executemany(sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
            sql.Identifier(SUPERSEDED_TABLE), _columns(),
            sql.SQL(", ").join(sql.Placeholder() * len(SUPERSEDED_COLUMNS))), rows)
        return max(cursor.rowcount, 0)


def replace_threads(conn: psycopg.Connection, threads: Sequence[str],
                    rows: Sequence[tuple]) -> int:
    """Make ``rows`` the table's rows of ``threads`` (a sync brought them to a new
    generation, or deleted them). Returns how many rows were removed."""
    removed = 0
    if table_exists(conn):
        removed = conn.execute(sql.SQL("DELETE FROM {} WHERE thread_id = ANY(%s)").format(
            sql.Identifier(SUPERSEDED_TABLE)), (list(threads),)).rowcount
    insert_rows(conn, rows)
    return removed


def read_rows(conn: psycopg.Connection, threads: Sequence[str]) -> list[tuple]:
    """The table's rows of ``threads`` (SUPERSEDED_COLUMNS order, bytea as bytes); none
    when the table does not exist."""
    if not table_exists(conn):
        return []
    return conn.cursor(binary=True).execute(sql.SQL(
        "SELECT {} FROM {} WHERE thread_id = ANY(%s)").format(
        _columns(), sql.Identifier(SUPERSEDED_TABLE)), (list(threads),)).fetchall()
