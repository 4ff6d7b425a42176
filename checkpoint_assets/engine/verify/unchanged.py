"""Which threads' rows in PostgreSQL are still exactly those an earlier verification
compared, found in one pass over each table instead of one digest per thread.

A certified verification takes a :class:`RowVersionsMark` before it reads anything, and
each batch it compares (or takes over from a certificate) keeps it: the oldest
transaction still running then (``pg_snapshot_xmin``) and the tables' fingerprint
(target.tables_fingerprint: the database, each table's oid, file and columns). Every row
version written after the mark (an INSERT, or the new version an UPDATE writes, even with
the same values) has a creating transaction (``xmin``) at or after it; a DELETE lowers the
table's rows of that thread. So a thread that has, now, no row version newer than its
comparison's mark and as many rows in each table as that comparison counted has the very
rows it compared: PostgreSQL never changes a stored row in place.

:func:`threads_unchanged_since` reads that for every thread of the three tables in one
snapshot: per table one scan in C (the newest ``age(xmin)`` and the rows of each thread),
no value read or hashed, the three tables at once. It costs the tables' size, not a
digest per thread: 1.7 s at a million checkpoints on this project's 2-core machine (the
per-thread digests it replaces took 26.7 s in the cutover's last verification). The cutover
takes over, in its last verification, every comparison of its earlier ones whose threads
the scan finds unchanged, and compares the others again.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
from psycopg import sql

from checkpoint_assets.engine.load.target import TABLES, Target, tables_fingerprint

# A mark this many transactions old cannot be told apart from its era's wrap-around
# (32-bit transaction ids): then nothing is taken as unchanged.
_MAX_AGE = 2 ** 31 - 1


@dataclass(frozen=True)
class RowVersionsMark:
    """A point in the target's history: row versions written after it are newer.

    ``xmin``: the oldest transaction running at the mark (64-bit, pg_snapshot_xmin);
    ``tables``: the tables' fingerprint then (a table altered, truncated or rewritten since
    has another).
    """

    xmin: int
    tables: str


@dataclass(frozen=True)
class UnchangedScan:
    """What one scan of the target found: the threads whose rows are the ones their
    comparison read, and each whole table's rows (every thread's, this tool's or not)."""

    unchanged: frozenset[str]
    table_rows: dict[str, int]


def mark_now(target: Target) -> RowVersionsMark:
    """The target's mark now (take it before reading what is to be certified)."""
    with target.connect(autocommit=True) as conn:
        xmin = conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0]
        return RowVersionsMark(int(xmin), tables_fingerprint(conn))


def threads_unchanged_since(
        target: Target,
        certified: Mapping[str, tuple[tuple[int, int, int], RowVersionsMark]]) -> UnchangedScan:
    """The threads of ``certified`` (thread -> its rows per table, TABLES order, when it was
    compared, and the mark taken before that comparison read them) whose rows now are the
    ones compared: none newer than their mark, the same number in each table. The three
    tables are scanned at once, each on its own connection, all in one snapshot (exported
    by the first). A thread whose mark is too old to tell, or newer than the scan, or
    whose tables were altered, truncated or rewritten since, is not among them."""
    with ExitStack() as stack:
        conns = [stack.enter_context(target.connect()) for _ in TABLES]
        for conn in conns:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        first = conns[0]
        snapshot = first.execute("SELECT pg_export_snapshot()").fetchone()[0]
        for conn in conns[1:]:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        # age() counts from the transaction counter as each transaction first read it:
        # ages are compared within one connection only (the marks' and the rows').
        marks = {mark for _, mark in certified.values()}
        with ThreadPoolExecutor(max_workers=len(TABLES)) as pool:
            per_table = list(pool.map(_scan_table, conns, TABLES, [marks] * len(TABLES)))
        scan_xmin = first.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0]
        fingerprint = tables_fingerprint(first)
    rows: dict[str, list[int]] = {}
    newer: set[str] = set()
    totals: dict[str, int] = {}
    for position, (table, (found, mark_ages)) in enumerate(zip(TABLES, per_table)):
        totals[table] = sum(count for count, _ in found.values())
        for thread_id, (count, newest_age) in found.items():
            entry = certified.get(thread_id)
            if entry is None:
                continue
            rows.setdefault(thread_id, [0] * len(TABLES))[position] = count
            if newest_age <= mark_ages[entry[1]]:
                newer.add(thread_id)  # a row as new as its comparison's mark, or newer
    comparable = {mark for mark in marks if mark.tables == fingerprint
                  and mark.xmin <= scan_xmin
                  and all(0 <= ages[mark] < _MAX_AGE for _, ages in per_table)}
    unchanged = frozenset(
        tid for tid, (counts, mark) in certified.items()
        if mark in comparable and tid in rows and tid not in newer
        and tuple(rows[tid]) == tuple(counts))
    return UnchangedScan(unchanged, totals)


def _scan_table(conn: psycopg.Connection, table: str, marks: set[RowVersionsMark],
                ) -> tuple[dict[str, tuple[int, int]], dict[RowVersionsMark, int]]:
    """One table in ``conn``'s snapshot: per thread its rows and the age of its newest row
    version; and each mark's age, counted alike."""
    conn.execute("SET LOCAL jit = off")  # compiling costs more than it saves here
    query = sql.SQL("SELECT thread_id, count(*), min(age(xmin)) FROM {} "
                    "GROUP BY thread_id").format(sql.Identifier(table))
    found = {thread_id: (count, age) for thread_id, count, age in conn.execute(query)}
    ages = {mark: conn.execute("SELECT age((%s::bigint %% 4294967296)::text::xid)",
                               (mark.xmin,)).fetchone()[0] for mark in marks}
    return found, ages
