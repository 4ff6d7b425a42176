"""What changed in the source since the chain's newest generation, at the cost of the change.

A generation records, in the same snapshot as every thread's fingerprint, each table's row
count and highest rowid (``SourceState.tables``) and its last row. SqliteSaver writes in
three ways, and each leaves a trace that costs the change to read, not the database:

- an insert, and the new row of an ``INSERT OR REPLACE``, get a rowid above the recorded
  highest one (SQLite picks max + 1): ``rows_after`` finds their threads in a range scan
  of the table's own b-tree;
- the old row of a replace is gone from a thread that has a new row: that thread is read
  anyway, and its fingerprint now says how many of its old rows are left;
- ``delete_thread`` removes whole threads: the rows gone, counted from the table's total,
  are more than the changed threads explain; then every known thread is probed once in
  the primary-key indexes (one lookup each, inside SQLite) for the ones gone whole.

The books must balance exactly, per table: the rows the recorded total had, minus the old
rows still there, equals the old rows the changed threads lost plus the rows of the
threads gone. The recorded last row must still be there, unchanged, at its rowid (else
rowids were used again, which no count shows). When anything does not balance, or the
previous generation recorded no totals (an older export, a selection of threads, a
refused thread kept at its earlier state), :func:`read_change` returns None and the sync
reads every thread's fingerprint, as it always did; it never guesses.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from checkpoint_assets.engine.export.file_format import row_sha256
from checkpoint_assets.engine.export.source_state import SourceState, last_rows
from checkpoint_assets.engine.export.sqlite_source import SOURCE_TABLES, SourceDatabase

# Where each table's count sits in a fingerprint ([checkpoints, max, sum, writes, max, sum]).
_COUNT_AT = {"checkpoints": 0, "writes": 3}


@dataclass(frozen=True)
class Change:
    """The source now, read at the cost of the change.

    ``state``: every live thread; a thread not in ``suspects`` keeps its previous entry
    (fingerprint, digest, generation), a suspect has its new fingerprint and no digest yet.
    ``suspects``: threads with rows inserted or replaced since. ``deleted``: threads gone
    whole.
    """

    state: SourceState
    suspects: set[str]
    deleted: set[str]


def nothing_changed(source: SourceDatabase, books: dict[str, Any] | None) -> bool:
    """Whether the source holds exactly the rows of the generation that kept ``books``
    (its footer's ``{"tables", "last_rows"}``; call inside ``source.snapshot()``), read
    without the generation's state: every table has the recorded count and highest rowid,
    and the row at that rowid is the recorded one. No row above it, so nothing inserted or
    replaced; the same count, so nothing deleted either."""
    if not books:
        return False
    return (_last_rows_unchanged(source, books["last_rows"])
            and source.table_totals() == books["tables"])


def _last_rows_unchanged(source: SourceDatabase,
                         recorded_rows: dict[str, list[Any] | None]) -> bool:
    """Whether each table's recorded last row is still there, unchanged, at its rowid (else
    it was deleted, or its rowid holds another row: rowids used again)."""
    for table in SOURCE_TABLES:
        recorded = recorded_rows.get(table)
        if recorded is not None:
            now = source.last_row(table, recorded[0])
            if now is None or row_sha256(now[1]) != recorded[2]:
                return False
    return True


def read_change(source: SourceDatabase, previous: SourceState) -> Change | None:
    """What changed since ``previous`` (call inside ``source.snapshot()``), or None when the
    books do not balance or ``previous`` recorded no totals: then read every fingerprint
    (source_state.read_source_state)."""
    if previous.tables is None or not previous.last_rows \
            or not _last_rows_unchanged(source, previous.last_rows):
        return None
    totals = source.table_totals()
    added = {table: source.rows_after(table, previous.tables[table][1])
             for table in SOURCE_TABLES}
    suspects = {tid for rows in added.values() for tid in rows}
    fingerprints = source.fingerprints(suspects)
    unexplained = {}
    for table in SOURCE_TABLES:
        old_rows_now = totals[table][0] - sum(added[table].values())
        lost = previous.tables[table][0] - old_rows_now
        for tid in suspects & previous.threads.keys():
            now = fingerprints.get(tid, [0] * 6)[_COUNT_AT[table]] - added[table].get(tid, 0)
            lost_here = previous.threads[tid][_COUNT_AT[table]] - now
            if lost_here < 0:
                return None  # old rows appeared: not a write SqliteSaver makes
            lost -= lost_here
        if lost < 0:
            return None
        unexplained[table] = lost
    deleted: set[str] = set()
    if any(unexplained.values()):
        deleted = source.missing_threads(previous.threads.keys() - suspects)
        for table in SOURCE_TABLES:
            unexplained[table] -= sum(previous.threads[tid][_COUNT_AT[table]]
                                      for tid in deleted)
        if any(unexplained.values()):
            return None  # rows gone from threads still there: let the full read say whom
    # The unchanged threads' entries are shared with ``previous``: nothing writes to them.
    threads = dict(previous.threads)
    for tid in deleted:
        del threads[tid]
    threads.update({tid: [*fingerprints[tid], None, None] for tid in suspects})
    state = SourceState(threads, last_rows(source), dt.datetime.now(dt.UTC).isoformat(),
                        totals)
    return Change(state, suspects, deleted)
