"""The source as an export generation saw it (the S frame), and what identifies it.

A sync compares the source now with the state its last generation recorded
(see :mod:`checkpoint_assets.engine.sync.export_chain`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint_assets.engine.core.codec import pack_opaque
from checkpoint_assets.engine.export.file_format import (
    pack,
    row_sha256,
)
from checkpoint_assets.engine.export.sqlite_source import SourceDatabase


@dataclass
class SourceState:
    """The source as one export generation saw it, per thread, for the next sync.

    ``threads``: thread_id -> ``[checkpoints, max rowid, sum of rowids, writes, max rowid,
    sum of rowids, content sha256, generation]``: the fingerprint read from SQLite's
    indexes (:meth:`SourceDatabase.fingerprints`), the thread digest, and the generation
    whose file holds these rows. ``last_rows``: table -> ``[rowid, thread_id, sha256 of
    the row]`` of each table's last row (when that rowid later holds other content,
    rowids were used again, which fingerprints cannot see: see export_chain).
    ``snapshot_at``: when the source was read (UTC, ISO 8601). ``tables``: table ->
    ``[rows, highest rowid]`` as read in the same snapshot, when every thread's entry
    describes the source as it was (not for a selection of threads, nor when a thread was
    refused and kept its earlier entry): what lets the next sync read only what changed
    (engine/sync/change_detection.py). None: the next sync reads every fingerprint.
    """

    threads: dict[str, list[Any]]
    last_rows: dict[str, list[Any] | None]
    snapshot_at: str
    tables: dict[str, list[int]] | None = None

    FINGERPRINT = slice(0, 6)
    SHA, GENERATION = 6, 7

    def payload(self) -> bytes:
        """The S frame's payload (threads as a map thread_id -> entry)."""
        # A map packed as it is (no list per thread to build): at a million checkpoints
        # the state is ~90K entries, and a sync writes and reads it whole.
        body = {"threads": self.threads, "last_rows": self.last_rows,
                "snapshot_at": self.snapshot_at}
        if self.tables is not None:
            body["tables"] = self.tables
        return pack(body)

    @property
    def checkpoints(self) -> int:
        """Checkpoints of every thread in this state."""
        return sum(entry[0] for entry in self.threads.values())

    @property
    def writes(self) -> int:
        """Writes of every thread in this state."""
        return sum(entry[3] for entry in self.threads.values())

    def digest(self) -> str:
        """The digest of the whole state's content: (thread_id, thread digest) in order,
        as the footer's content_sha256 of a full export of the same rows."""
        content = hashlib.sha256()
        for tid in sorted(self.threads):
            content.update(pack_opaque([tid, self.threads[tid][self.SHA]]))
        return content.hexdigest()


def source_identity(source: SourceDatabase) -> dict[str, Any]:
    """What identifies a SQLite database beyond the path it was given by (the header's
    ``source.identity``, written since issue 21; older headers have none and are read).

    - ``resolved_path``: the real file (symlinks resolved);
    - ``device``, ``inode``: the file itself (``st_dev``, ``st_ino``): another file put at
      the path (a restored backup moved there, an application's fresh database) has others;
    - ``first_rows``: per table, ``[rowid, thread_id, sha256 of the row]`` of its first
      row (lowest rowid), or None for an empty table. This survives a copy of the file:
      the same database, grown, still holds that row unchanged unless its whole thread
      was deleted (SqliteSaver only inserts, deletes whole threads, and replaces a
      pending write, which moves a writes row to the end), while another database holds
      another first row.

    What decides whether a sync may follow the source is the chain's state (every thread's
    row counts, see export_chain.require_not_backwards); this record names what changed.
    """
    stat = os.stat(source.path)
    first_rows: dict[str, list[Any] | None] = {}
    for table in ("checkpoints", "writes"):
        first = source.first_row(table)
        first_rows[table] = None if first is None else [first[0], first[1].thread_id,
                                                        row_sha256(first[1])]
    return {"resolved_path": os.path.realpath(source.path), "device": stat.st_dev,
            "inode": stat.st_ino, "first_rows": first_rows}


def read_source_state(source: SourceDatabase, selection: Sequence[str] | None = None,
                      ) -> SourceState:
    """The fingerprints and last rows of the source now (digests and generations are
    filled in as threads are written or carried over)."""
    fingerprints = source.fingerprints()
    if selection is not None:
        wanted = set(selection)
        fingerprints = {tid: fp for tid, fp in fingerprints.items() if tid in wanted}
    return SourceState({tid: [*fp, None, None] for tid, fp in fingerprints.items()},
                       last_rows(source), dt.datetime.now(dt.UTC).isoformat(),
                       source.table_totals() if selection is None else None)


def last_rows(source: SourceDatabase) -> dict[str, list[Any] | None]:
    """table -> ``[rowid, thread_id, sha256 of the row]`` of its last row (None: empty)."""
    rows: dict[str, list[Any] | None] = {}
    for table in ("checkpoints", "writes"):
        last = source.last_row(table)
        rows[table] = None if last is None else [last[0], last[1].thread_id,
                                                 row_sha256(last[1])]
    return rows
