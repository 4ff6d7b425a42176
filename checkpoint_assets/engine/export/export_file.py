"""The export file: a versioned, streamable, self-verifying snapshot of SqliteSaver rows.

Format version 2 (documented in README, "The export file"): length-prefixed frames of
msgpack::

    MAGIC                                   the 29-byte signature
    H {header}                              format, version, source, previous export
    B {key}                                 <- a batch starts
    T {thread_id, checkpoints, writes, sha256}   <- a thread: its summary,
    C [[c, thread_id, ns, id, parent, type, checkpoint, metadata], ...]   its checkpoints,
    W [[w, thread_id, ns, id, task_id, task_path, idx, channel, type, value], ...]  writes
    ...                                     <- more threads of this batch
    E {key, threads, checkpoints, writes, sha256}   <- digest of the batch's bytes
    ...                                     <- more batches
    S {threads, last_rows, snapshot_at}     <- optional: the source state (see SourceState)
    F {totals, types, batches, state, content_sha256, file_sha256, footer_sha256}
    footer offset (8 bytes, big-endian) + END

A frame is one ASCII kind byte, the payload's length (8 bytes, big-endian) and the
payload. The rows of a thread's ``C`` and ``W`` frames are msgpack arrays whose element
bytes are exactly the canonical row encoding the thread digest is defined on, so the digest
is independent of the file's encoding and can be recomputed from SQLite (or PostgreSQL).
The footer states every count and digest and the byte range of each batch, so one batch is
verified and loaded without reading the others, and a truncated, reordered, duplicated or
edited file is rejected before any row is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import struct
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import ormsgpack

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE, BatchPlanner, batch_key
from checkpoint_assets.engine.core.codec import pack_opaque
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.private_files import private_file
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.core.selection import (
    MISSING_THREADS_HINT,
    refuse_missing_threads,
)
from checkpoint_assets.engine.export.sqlite_source import SourceDatabase, open_source

FORMAT_NAME = "checkpoint-assets-export"
FORMAT_VERSION = 2
# PNG-style: a non-ASCII first byte, CR LF and ^Z show a file mangled as text in transit.
MAGIC = b"\x89" + FORMAT_NAME.encode("ascii") + b"\r\n\x1a\n"
END = b"\x89end-v2\n"
REEXPORT_HINT = "Export again from the SQLite source (checkpoint-assets export)."

FRAME_HEAD = struct.Struct(">cQ")
TRAILER = struct.Struct(">Q8s")
HEADER, BATCH, THREAD, CHECKPOINTS, WRITES, BATCH_END, STATE, FOOTER = (
    b"H", b"B", b"T", b"C", b"W", b"E", b"S", b"F")
FRAME_KINDS = {HEADER: "header", BATCH: "batch", THREAD: "thread", CHECKPOINTS: "checkpoints",
               WRITES: "writes", BATCH_END: "batch_end", STATE: "state", FOOTER: "footer"}
# A sync generation's files sit beside the full export: <export>.sync-0001, ...
GENERATION_SUFFIX = ".sync-"
# A v1 export (JSON lines) starts with its header line.
_V1_START = b'{"kind":"header"'


@dataclass(frozen=True)
class BatchEntry:
    """One batch as the footer describes it."""

    key: str
    offset: int
    length: int
    threads: int
    checkpoints: int
    writes: int
    sha256: str
    first_thread: str
    last_thread: str

    def to_json(self) -> dict[str, Any]:
        """The footer's form of this entry."""
        return self.__dict__.copy()


@dataclass(frozen=True)
class ExportManifest:
    """What an export file says about itself: header, totals and batches."""

    path: Path
    header: dict[str, Any]
    threads: int
    checkpoints: int
    writes: int
    types: dict[str, int]
    content_sha256: str
    file_sha256: str
    size_bytes: int
    footer_offset: int
    batches: tuple[BatchEntry, ...] = field(default=())
    footer_sha256: str = ""
    state: dict[str, Any] | None = None  # the footer's {offset, length, sha256} of S

    @property
    def generation(self) -> int:
        """0 for a full export, n for the n-th sync (see export_chain)."""
        return int(self.header.get("generation") or 0)

    @property
    def selection(self) -> list[str] | None:
        """The thread ids this export was restricted to (--threads), or None: all."""
        return self.header.get("selection")

    @cached_property
    def last_threads(self) -> list[str]:
        """Each batch's last thread id, in order (batches hold threads in thread_id order,
        so a bisect over this finds the batch of a thread, see export_chain.batch_of)."""
        return [entry.last_thread for entry in self.batches]

    def batch(self, key: str) -> BatchEntry:
        """The batch with this key, or a MigrationError saying it is not in the file."""
        for entry in self.batches:
            if entry.key == key:
                return entry
        raise MigrationError(
            f"Export {self.path} has no batch {key!r} (it has {len(self.batches)} batches).",
            "The export was probably re-taken with a different batch size or source; "
            "re-materialize the export asset and load its current batches.",
        )


def pack(value: Any) -> bytes:
    """msgpack bytes of an export payload (rows, or a header/summary/footer map)."""
    return ormsgpack.packb(value)


def row_digest_bytes(row: CheckpointRow | WriteRow) -> bytes:
    """Canonical bytes of a row, independent of the export's encoding (see ThreadDigest)."""
    return pack_opaque(["c" if isinstance(row, CheckpointRow) else "w", *row])


class ThreadDigest:
    """Digest of one thread's rows, comparable between the export and a live source.

    The SHA-256 of the canonical msgpack bytes of every row (checkpoints, then writes, in
    key order), each row being ``["c"|"w", *columns]``.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, row: CheckpointRow | WriteRow) -> None:
        """Feed one row (in key order)."""
        self._hash.update(row_digest_bytes(row))

    def hexdigest(self) -> str:
        """The thread's digest."""
        return self._hash.hexdigest()


@dataclass
class SourceState:
    """The source as one export generation saw it, per thread, for the next sync.

    ``threads``: thread_id -> ``[checkpoints, max rowid, sum of rowids, writes, max rowid,
    sum of rowids, content sha256, generation]``: the fingerprint read from SQLite's
    indexes (:meth:`SourceDatabase.fingerprints`), the thread digest, and the generation
    whose file holds these rows. ``last_rows``: table -> ``[rowid, thread_id, sha256 of
    the row]`` of each table's last row (when that rowid later holds other content,
    rowids were used again, which fingerprints cannot see: see export_chain).
    ``snapshot_at``: when the source was read (UTC, ISO 8601).
    """

    threads: dict[str, list[Any]]
    last_rows: dict[str, list[Any] | None]
    snapshot_at: str

    FINGERPRINT = slice(0, 6)
    SHA, GENERATION = 6, 7

    def payload(self) -> bytes:
        """The S frame's payload (threads in thread_id order)."""
        return pack({"threads": [[tid, *self.threads[tid]] for tid in sorted(self.threads)],
                     "last_rows": self.last_rows, "snapshot_at": self.snapshot_at})

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


def row_sha256(row: CheckpointRow | WriteRow) -> str:
    """SHA-256 of one row's canonical bytes (a table's last row in SourceState)."""
    return hashlib.sha256(row_digest_bytes(row)).hexdigest()


def array_body(payload: bytes | memoryview) -> tuple[int, int]:
    """(number of elements, offset of the first element) of a msgpack array payload;
    ValueError when the payload does not start with an array header."""
    first = payload[0] if len(payload) else -1
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(payload) >= 3:
        return int.from_bytes(payload[1:3], "big"), 3
    if first == 0xDD and len(payload) >= 5:
        return int.from_bytes(payload[1:5], "big"), 5
    raise ValueError("not a msgpack array")


class _FrameWriter:
    """Writes frames to the file while feeding the file and batch digests."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.offset = 0
        self.file_hash = hashlib.sha256()
        self.batch_hash = hashlib.sha256()

    def raw(self, data: bytes) -> None:
        self.handle.write(data)
        self.file_hash.update(data)
        self.offset += len(data)

    def frame(self, kind: bytes, payload: bytes, in_batch: bool) -> None:
        head = FRAME_HEAD.pack(kind, len(payload))
        for part in (head, payload):
            self.handle.write(part)
            self.file_hash.update(part)
            if in_batch:
                self.batch_hash.update(part)
        self.offset += len(head) + len(payload)


class RowSource(Protocol):
    """Where an export's rows come from: SqliteSaver rows, one thread at a time.

    ``source_header()`` is the header's ``source`` entry (never a password);
    ``threads()`` yields every thread in thread_id order, its rows in key order, all read
    in one consistent snapshot.
    """

    def source_header(self) -> dict[str, Any]:
        """The header's ``source`` entry."""
        ...

    def threads(self) -> Iterator[ThreadRows]:
        """Every thread, in thread_id order."""
        ...


class SqliteRows:
    """The :class:`RowSource` of a SqliteSaver database (inside its snapshot)."""

    def __init__(self, source: SourceDatabase) -> None:
        self.source = source

    def source_header(self) -> dict[str, Any]:
        """The SQLite file's resolved path, whether its writes have task_path, and what
        identifies the database beyond its path (:func:`source_identity`)."""
        return {"kind": "sqlite", "path": str(self.source.path.resolve()),
                "task_path_column": self.source.has_task_path,
                "identity": source_identity(self.source)}

    def threads(self) -> Iterator[ThreadRows]:
        """Every thread of the database, its rows streamed from two ordered scans;
        MigrationError if it changes while read."""
        source = self.source
        checkpoints = Peekable(source.checkpoints())
        writes = Peekable(source.writes())
        for size in source.thread_sizes():
            thread = ThreadRows(
                size.thread_id,
                list(checkpoints.take_while(lambda r: r.thread_id == size.thread_id)),
                list(writes.take_while(lambda r: r.thread_id == size.thread_id)))
            if (len(thread.checkpoints), len(thread.writes)) != (size.checkpoints,
                                                                   size.writes):
                raise MigrationError(
                    f"Source {source.path} changed while it was read (thread "
                    f"{size.thread_id!r}).",
                    "Run the export again; SQLite snapshots should prevent this, so report it.",
                )
            yield thread


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


def write_export(
    source_path: str | Path,
    export_path: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    previous_export_sha256: str | None = None,
    selection: Sequence[str] | None = None,
) -> ExportManifest:
    """Stream a SqliteSaver database into an export file and return its manifest.

    The file is written under a fresh temporary name with owner-only permissions and
    renamed into place only once complete (see :func:`private_file`), so a crash, a full
    disk or a second export of the same file never leaves a half-written file at
    ``export_path``. ``progress``, if given, is called with the number of checkpoints just
    written. ``previous_export_sha256`` (the footer digest of the export this one follows)
    is recorded in the header for exports that chain. ``selection``: export these thread
    ids only (the header names them; an id the source does not hold is refused, naming
    it, before anything is written). The file ends with the source's state
    (:class:`SourceState`) for later syncs; sync generation files written before this
    export are removed, since they follow another export.
    Raises MigrationError when the file cannot be written (read-only or full filesystem,
    no permission), leaving nothing behind.
    """
    export_path = Path(export_path)
    source = open_source(source_path)
    try:
        with source.snapshot():
            state = read_source_state(source, selection)
            if selection is not None:
                refuse_missing_threads(selection, state.threads, str(source.path),
                                       "No export was written.", MISSING_THREADS_HINT)
            threads = (SqliteRows(source).threads() if selection is None else
                       (source.thread_rows(tid) for tid in sorted(state.threads)))
            header = {"previous_export_sha256": previous_export_sha256,
                      "selection": None if selection is None else sorted(set(selection))}
            write_generation(source, export_path, threads, state, header=header,
                             batch_size=batch_size, progress=progress)
    finally:
        source.close()
    for stale in export_path.parent.glob(f"{export_path.name}{GENERATION_SUFFIX}*"):
        stale.unlink(missing_ok=True)
    return read_manifest(export_path)


def write_export_rows(
    rows: RowSource,
    export_path: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    previous_export_sha256: str | None = None,
) -> ExportManifest:
    """Write the threads of any :class:`RowSource` as an export file (see
    :func:`write_export`, whose guarantees it gives, without a source state: such an export
    is not synced) and return its manifest."""
    export_path = Path(export_path)
    header = {"source": rows.source_header(), "previous_export_sha256": previous_export_sha256}
    _write_file(export_path, header, rows.threads(), None, batch_size, progress, 0)
    return read_manifest(export_path)


def read_source_state(source: SourceDatabase, selection: Sequence[str] | None = None,
                      ) -> SourceState:
    """The fingerprints and last rows of the source now (digests and generations are
    filled in as threads are written or carried over)."""
    fingerprints = source.fingerprints()
    if selection is not None:
        wanted = set(selection)
        fingerprints = {tid: fp for tid, fp in fingerprints.items() if tid in wanted}
    last_rows: dict[str, list[Any] | None] = {}
    for table in ("checkpoints", "writes"):
        last = source.last_row(table)
        last_rows[table] = None if last is None else [last[0], last[1].thread_id,
                                                      row_sha256(last[1])]
    return SourceState({tid: [*fp, None, None] for tid, fp in fingerprints.items()},
                       last_rows, dt.datetime.now(dt.UTC).isoformat())


def write_generation(source: SourceDatabase, export_path: Path, threads: Iterator[ThreadRows],
                     state: SourceState, *, header: dict[str, Any], batch_size: int,
                     progress: Any = None, generation: int = 0) -> None:
    """Write one export generation: ``threads`` (whole, in thread_id order) in batches,
    then ``state`` (each written thread's digest and generation recorded in it).

    Generation 0 is a full export (batch keys ``batch-00001``...); a sync's generation n
    names its batches ``sync-000n-batch-00001``... so keys never repeat along a chain.
    """
    header = {"source": SqliteRows(source).source_header(), "previous_export_sha256": None,
              **header, "generation": generation}
    _write_file(export_path, header, threads, state, batch_size, progress, generation)


def _write_file(export_path: Path, header: dict[str, Any], threads: Iterator[ThreadRows],
                state: SourceState | None, batch_size: int, progress: Any,
                generation: int) -> None:
    try:
        with private_file(export_path, buffering=1 << 20) as handle:
            _write_body(handle, batch_size, progress, header, threads, state, generation)
    except OSError as exc:
        raise cannot_write_export(export_path, exc) from None


def cannot_write_export(export_path: Path, exc: OSError) -> MigrationError:
    """The error for an export file the filesystem refused (space, permission, read-only)."""
    reason = exc.strerror or str(exc)
    return MigrationError(
        f"Cannot write the export {export_path}: {reason}. Nothing was left at that path.",
        "Free space on that filesystem, or pass --export FILE (CHECKPOINT_ASSETS_EXPORT) in a "
        "directory you may write to, on a filesystem with room for at least the size of the "
        "SQLite database.")


def _write_body(handle: BinaryIO, batch_size: int, progress: Any, header: dict[str, Any],
                threads: Iterator[ThreadRows], state: SourceState | None,
                generation: int) -> dict[str, Any]:
    writer = _FrameWriter(handle)
    writer.raw(MAGIC)
    writer.frame(HEADER, pack({
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "batch_size": batch_size,
        **header,
    }), in_batch=False)
    planner = BatchPlanner(batch_size)
    key_prefix = f"sync-{generation:04d}-" if generation else ""
    batches: list[BatchEntry] = []
    current: dict[str, Any] | None = None
    totals = {"threads": 0, "checkpoints": 0, "writes": 0}
    types: dict[str, int] = {}
    content_hash = hashlib.sha256()

    for thread in threads:
        index, new_batch = planner.place(len(thread.checkpoints))
        if new_batch:
            if current is not None:
                batches.append(_close_batch(writer, current))
            current = {"key": key_prefix + batch_key(index), "offset": writer.offset,
                       "threads": 0, "checkpoints": 0, "writes": 0,
                       "first_thread": thread.thread_id}
            writer.batch_hash = hashlib.sha256()
            writer.frame(BATCH, pack({"key": current["key"]}), in_batch=True)
        thread_checkpoints = [["c", *row] for row in thread.checkpoints]
        thread_writes = [["w", *row] for row in thread.writes]
        n_checkpoints, n_writes = len(thread_checkpoints), len(thread_writes)
        for row in thread_checkpoints:
            types[row[5] or "null"] = types.get(row[5] or "null", 0) + 1
        checkpoint_payload, write_payload = pack(thread_checkpoints), pack(thread_writes)
        thread_sha = _rows_digest(checkpoint_payload, write_payload).hexdigest()
        if state is not None and thread.thread_id in state.threads:
            state.threads[thread.thread_id][state.SHA:] = [thread_sha, generation]
        writer.frame(THREAD, pack({"thread_id": thread.thread_id, "checkpoints": n_checkpoints,
                                   "writes": n_writes, "sha256": thread_sha}), in_batch=True)
        writer.frame(CHECKPOINTS, checkpoint_payload, in_batch=True)
        writer.frame(WRITES, write_payload, in_batch=True)
        content_hash.update(pack_opaque([thread.thread_id, thread_sha]))
        assert current is not None
        current["threads"] += 1
        current["checkpoints"] += n_checkpoints
        current["writes"] += n_writes
        current["last_thread"] = thread.thread_id
        totals["threads"] += 1
        totals["checkpoints"] += n_checkpoints
        totals["writes"] += n_writes
        if progress is not None:
            progress(n_checkpoints)
    if current is not None:
        batches.append(_close_batch(writer, current))
    footer: dict[str, Any] = {**totals, "types": types,
                              "batches": [b.to_json() for b in batches]}
    if state is not None:
        state_payload = state.payload()
        footer["state"] = {"offset": writer.offset,
                           "length": FRAME_HEAD.size + len(state_payload),
                           "sha256": hashlib.sha256(state_payload).hexdigest()}
        writer.frame(STATE, state_payload, in_batch=False)
    footer.update(content_sha256=content_hash.hexdigest(),
                  file_sha256=writer.file_hash.hexdigest())
    footer["footer_sha256"] = _footer_digest(footer)
    footer_offset = writer.offset
    writer.frame(FOOTER, pack(footer), in_batch=False)
    writer.raw(TRAILER.pack(footer_offset, END))
    return footer


def _rows_digest(*payloads: bytes | memoryview) -> Any:
    """The thread digest of rows frames: their elements' bytes, without the array headers."""
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(memoryview(payload)[array_body(payload)[1]:])
    return digest


def _close_batch(writer: _FrameWriter, current: dict[str, Any]) -> BatchEntry:
    length = writer.offset - current["offset"]
    sha = writer.batch_hash.hexdigest()
    writer.frame(BATCH_END, pack({"key": current["key"], "threads": current["threads"],
                                  "checkpoints": current["checkpoints"],
                                  "writes": current["writes"], "sha256": sha}),
                 in_batch=False)
    return BatchEntry(
        key=current["key"], offset=current["offset"], length=length,
        threads=current["threads"], checkpoints=current["checkpoints"],
        writes=current["writes"], sha256=sha, first_thread=current["first_thread"],
        last_thread=current["last_thread"],
    )


def _footer_digest(footer: dict[str, Any]) -> str:
    body = {k: v for k, v in footer.items() if k != "footer_sha256"}
    return hashlib.sha256(ormsgpack.packb(body, option=ormsgpack.OPT_SORT_KEYS)).hexdigest()


def thread_digests(checkpoints: Iterator[CheckpointRow],
                   writes: Iterator[WriteRow]) -> Iterator[tuple[str, str]]:
    """(thread_id, thread digest) for every thread of rows given in key order, computed as
    the export computes them (one msgpack call per thread and table, not one per row)."""
    pending_checkpoints, pending_writes = Peekable(checkpoints), Peekable(writes)
    while True:
        heads = [row.thread_id for row in (pending_checkpoints.peek(), pending_writes.peek())
                 if row is not None]
        if not heads:
            return
        thread = min(heads)
        rows = [[["c", *row] for row in
                 pending_checkpoints.take_while(lambda r: r.thread_id == thread)],
                [["w", *row] for row in
                 pending_writes.take_while(lambda r: r.thread_id == thread)]]
        yield thread, _rows_digest(pack(rows[0]), pack(rows[1])).hexdigest()


class Peekable:
    """An iterator whose next item can be looked at without consuming it."""

    _END = object()

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self._next = next(iterator, self._END)

    def peek(self) -> Any:
        """The next item, left in place; None at the end."""
        return None if self._next is self._END else self._next

    def take_while(self, predicate: Any) -> Iterator[Any]:
        while self._next is not self._END and predicate(self._next):
            item = self._next
            self._next = next(self._iterator, self._END)
            yield item


# --------------------------------------------------------------------------- reading

CHANGED = "a frame was changed, added, removed or reordered"


def _bad(path: Path, problem: str) -> MigrationError:
    return MigrationError(f"Export {path} is not a valid, complete export file: {problem}.",
                          REEXPORT_HINT)


def _unpack(path: Path, payload: bytes | memoryview, what: str) -> Any:
    try:
        return ormsgpack.unpackb(payload)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError):
        raise _bad(path, f"its {what} is not valid msgpack") from None


def _unpack_map(path: Path, payload: bytes | memoryview, what: str) -> dict[str, Any]:
    value = _unpack(path, payload, what)
    if not isinstance(value, dict):
        raise _bad(path, f"its {what} is not a record")
    return value


def read_frame(path: Path, handle: BinaryIO, end: int) -> tuple[bytes, bytes]:
    """The next frame's (kind, payload) from ``handle``, which must not pass ``end``."""
    head = handle.read(FRAME_HEAD.size)
    if len(head) < FRAME_HEAD.size:
        raise _bad(path, "it ends inside a frame (truncated?)")
    kind, length = FRAME_HEAD.unpack(head)
    if kind not in FRAME_KINDS or handle.tell() + length > end:
        raise _bad(path, f"a frame at byte {handle.tell() - len(head)} is not an export "
                         f"frame ({CHANGED})")
    payload = handle.read(length)
    if len(payload) < length:
        raise _bad(path, "it ends inside a frame (truncated?)")
    return kind, payload


def read_manifest(path: str | Path) -> ExportManifest:
    """Read the header and footer and check the footer's own digest.

    This is cheap (two frames) and catches truncation, a wrong format or version, and an
    edited footer; :func:`verify_export` and :func:`read_batch` check the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise MigrationError(f"Export {path} does not exist.",
                             "Run the export first or pass the right --export path.")
    size = path.stat().st_size
    if size == 0:
        raise _bad(path, "the file is empty")
    with path.open("rb") as handle:
        start = handle.read(len(MAGIC))
        if start.startswith(_V1_START):
            raise MigrationError(
                f"Export {path} has format version 1 (JSON lines); this version of "
                f"checkpoint-assets reads format version {FORMAT_VERSION} only.",
                "Export again with this version of checkpoint-assets (checkpoint-assets "
                "export; in Dagster, re-materialize the checkpoint_export asset); the "
                "import of the new export skips rows already loaded.")
        if start != MAGIC:
            raise _bad(path, f"it does not start with the {FORMAT_NAME} signature")
        kind, payload = read_frame(path, handle, size)
        header = _unpack_map(path, payload, "header") if kind == HEADER else {}
        if kind != HEADER or header.get("format") != FORMAT_NAME:
            raise _bad(path, f"it does not start with a {FORMAT_NAME} header")
        if header.get("version") != FORMAT_VERSION:
            raise MigrationError(
                f"Export {path} has format version {header.get('version')!r}; this tool "
                f"reads version {FORMAT_VERSION}.",
                "Export again with this version of checkpoint-assets, or use the version "
                "that wrote the file.",
            )
        if size < handle.tell() + TRAILER.size:
            raise _bad(path, "it has no footer (the file is truncated or was not completed)")
        handle.seek(size - TRAILER.size)
        footer_offset, end = TRAILER.unpack(handle.read(TRAILER.size))
        if end != END or not len(MAGIC) < footer_offset < size - TRAILER.size:
            raise _bad(path, "it does not end with a complete footer (truncated?)")
        handle.seek(footer_offset)
        try:
            kind, payload = read_frame(path, handle, size - TRAILER.size)
        except MigrationError:
            kind = b""
        if kind != FOOTER or handle.tell() != size - TRAILER.size:
            raise _bad(path, "it has no footer where its trailer says (truncated or edited?)")
    footer = _unpack_map(path, payload, "footer")
    if footer.get("footer_sha256") != _footer_digest(footer):
        raise _bad(path, "the footer does not match its own digest (edited?)")
    return _manifest_from_footer(path, header, footer, size, footer_offset)


def require_same_source(manifest: ExportManifest, source_path: str | Path) -> None:
    """Raise MigrationError unless the export was taken from the SQLite file ``source_path``.

    The export's header records the resolved path of its source. Loading or verifying an
    export of another database against this source would migrate (or compare) the wrong
    checkpoints, so the two must name the same file: the same resolved path, or the same
    file reached through another path (a hard link or bind mount).
    """
    source = Path(source_path).resolve()
    recorded = (manifest.header.get("source") or {}).get("path")
    if recorded is not None and Path(recorded) == source:
        return
    if recorded is not None and source.exists() and Path(recorded).exists() \
            and os.path.samefile(recorded, source):
        return
    taken_from = recorded if recorded is not None else "an unrecorded source"
    raise MigrationError(
        f"Export {manifest.path} was taken from {taken_from}, not from the configured "
        f"source {source}.",
        "Export again from the configured source (checkpoint-assets export; in Dagster, "
        "re-materialize the checkpoint_export asset), or point --source "
        "(CHECKPOINT_ASSETS_SOURCE) at the database the export was taken from.",
    )


def _manifest_from_footer(
    path: Path, header: dict[str, Any], footer: dict[str, Any], size: int, footer_offset: int
) -> ExportManifest:
    try:
        batches = tuple(BatchEntry(**entry) for entry in footer["batches"])
        return ExportManifest(
            path=path, header=header, threads=footer["threads"],
            checkpoints=footer["checkpoints"], writes=footer["writes"],
            types=dict(footer["types"]), content_sha256=footer["content_sha256"],
            file_sha256=footer["file_sha256"], size_bytes=size, footer_offset=footer_offset,
            batches=batches, footer_sha256=footer["footer_sha256"],
            state=footer.get("state"),
        )
    except (KeyError, TypeError) as exc:
        raise _bad(path, f"the footer lacks a field ({exc})") from None


def read_state(manifest: ExportManifest) -> SourceState | None:
    """The source state an export generation recorded, after checking it against the
    footer's digest of it; None for an export written without one (from PostgreSQL, by
    :func:`write_export_rows`, or by a version 2 writer from before the state frame)."""
    entry = manifest.state
    if entry is None:
        return None
    path = manifest.path
    with path.open("rb") as handle:
        handle.seek(entry["offset"])
        kind, payload = read_frame(path, handle, manifest.footer_offset)
    if kind != STATE or hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise _bad(path, f"its source state does not match its digest ({CHANGED})")
    body = _unpack_map(path, payload, "source state")
    return SourceState({row[0]: list(row[1:]) for row in body["threads"]},
                       dict(body["last_rows"]), body["snapshot_at"])


def verify_export(path: str | Path) -> ExportManifest:
    """Check the whole file against its footer: the file digest, every batch's byte range
    and digest, and every thread, batch and total count.

    One pass over the bytes; rows frames are hashed and their rows counted from the array
    header, not decoded (any change to them already breaks the file digest, and
    :func:`read_batch` checks each thread's digest when the batch is loaded). Returns the
    manifest when the file is intact; raises MigrationError naming the first problem.
    """
    manifest = read_manifest(path)
    path = manifest.path
    batches = iter(manifest.batches)
    entry = next(batches, None)
    file_hash = hashlib.sha256()
    batch_hash = hashlib.sha256()
    seen = {"threads": 0, "checkpoints": 0, "writes": 0}
    summary: dict[str, Any] = {}
    due: bytes | None = None  # the rows frame the current thread still owes
    with path.open("rb", buffering=1 << 20) as handle:
        file_hash.update(handle.read(len(MAGIC)))
        while handle.tell() < manifest.footer_offset:
            offset = handle.tell()
            kind, payload = read_frame(path, handle, manifest.footer_offset)
            head = FRAME_HEAD.pack(kind, len(payload))
            file_hash.update(head)
            file_hash.update(payload)
            if entry is not None and entry.offset <= offset < entry.offset + entry.length:
                batch_hash.update(head)
                batch_hash.update(payload)
            if kind in (THREAD, BATCH_END, HEADER, BATCH, STATE) and due is not None:
                raise _bad(path, f"thread {summary.get('thread_id')!r} lacks its rows "
                                 f"({CHANGED})")
            if kind == THREAD:
                summary, due = _unpack_map(path, payload, "thread summary"), CHECKPOINTS
            elif kind in (CHECKPOINTS, WRITES):
                column = "checkpoints" if kind == CHECKPOINTS else "writes"
                if kind != due or summary.get(column) != _row_count(path, payload):
                    raise _bad(path, f"thread {summary.get('thread_id')!r} does not have the "
                                     f"rows its summary states ({CHANGED})")
                seen[column] += summary[column]
                seen["threads"] += kind == WRITES
                due = WRITES if kind == CHECKPOINTS else None
            elif kind == BATCH_END:
                if entry is None or offset != entry.offset + entry.length \
                        or batch_hash.hexdigest() != entry.sha256:
                    raise _bad(path, f"a batch does not match its digest or byte range "
                                     f"({CHANGED})")
                entry = next(batches, None)
                batch_hash = hashlib.sha256()
            elif kind not in (HEADER, BATCH, STATE):
                raise _bad(path, f"a {FRAME_KINDS[kind]} frame is in the middle of the file "
                                 f"({CHANGED})")
    if file_hash.hexdigest() != manifest.file_sha256 or due is not None:
        raise _bad(path, f"its contents do not match the digest in its footer ({CHANGED})")
    if entry is not None:
        raise _bad(path, f"batch {entry.key} named in the footer is missing")
    if (seen["threads"], seen["checkpoints"], seen["writes"]) != (
            manifest.threads, manifest.checkpoints, manifest.writes):
        raise _bad(path, "its rows do not add up to the totals in its footer")
    return manifest


def _row_count(path: Path, payload: bytes | memoryview) -> int:
    try:
        return array_body(payload)[0]
    except ValueError:
        raise _bad(path, f"a rows frame is not a list of rows ({CHANGED})") from None


def read_batch(manifest: ExportManifest, key: str,
               threads: Collection[str] | None = None) -> Iterator[ThreadRows]:
    """Yield the threads of one batch (only ``threads`` of it, if given), after checking
    the batch's digest and structure.

    The batch's bytes are read once and hashed before the first thread is yielded, so a
    damaged batch never reaches the database. Counts, key order and per-thread digests
    (over the rows as they decode, re-encoded canonically) are checked before each thread
    is yielded; the rows of threads not asked for are counted, not decoded.
    """
    entry = manifest.batch(key)
    path = manifest.path
    with path.open("rb") as handle:
        handle.seek(entry.offset)
        data = handle.read(entry.length)
    if len(data) != entry.length or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise _bad(path, f"batch {key} does not match its digest ({CHANGED} in it)")
    yield from _parse_batch(path, entry, memoryview(data), threads)


def _frames_in(path: Path, data: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    position = 0
    while position < len(data):
        if position + FRAME_HEAD.size > len(data):
            raise _bad(path, "a batch ends inside a frame")
        kind, length = FRAME_HEAD.unpack_from(data, position)
        position += FRAME_HEAD.size
        if kind not in FRAME_KINDS or position + length > len(data):
            raise _bad(path, f"a frame in a batch is not an export frame ({CHANGED})")
        yield kind, data[position:position + length]
        position += length


def _parse_batch(path: Path, entry: BatchEntry, data: memoryview,
                 wanted: Collection[str] | None = None) -> Iterator[ThreadRows]:
    frames = _frames_in(path, data)
    kind, payload = next(frames, (b"", memoryview(b"")))
    if kind != BATCH or _unpack_map(path, payload, "batch frame").get("key") != entry.key:
        raise _bad(path, f"batch {entry.key} does not start where the footer says")
    counts = [0, 0, 0]
    previous_thread: str | None = None
    for kind, payload in frames:
        summary = _unpack_map(path, payload, "thread summary") if kind == THREAD else None
        checkpoint_kind, checkpoint_payload = next(frames, (b"", memoryview(b"")))
        write_kind, write_payload = next(frames, (b"", memoryview(b"")))
        if summary is None or (checkpoint_kind, write_kind) != (CHECKPOINTS, WRITES):
            raise _bad(path, f"batch {entry.key}: a thread is not a summary, its checkpoints "
                             "and its writes")
        thread_id = summary.get("thread_id")
        if wanted is not None and thread_id not in wanted:
            if not isinstance(thread_id, str) or (
                    previous_thread is not None and thread_id <= previous_thread):
                raise _bad(path, f"batch {entry.key}: threads out of order")
            counts[0] += 1
            counts[1] += _row_count(path, checkpoint_payload)
            counts[2] += _row_count(path, write_payload)
            previous_thread = thread_id
            continue
        checkpoints = _checkpoint_rows(path, entry.key, checkpoint_payload)
        writes = _write_rows(path, entry.key, write_payload)
        owners = {r.thread_id for r in checkpoints} | {r.thread_id for r in writes}
        if owners - {thread_id} or not isinstance(thread_id, str) or (
                previous_thread is not None and thread_id <= previous_thread):
            raise _bad(path, f"batch {entry.key}: rows of thread {thread_id!r} are mixed "
                             "with another thread or out of order")
        if (_rows_digest(checkpoint_payload, write_payload).hexdigest() != summary.get("sha256")
                or len(checkpoints) != summary.get("checkpoints")
                or len(writes) != summary.get("writes")):
            raise _bad(path, f"thread {thread_id!r} does not match its digest")
        counts[0] += 1
        counts[1] += len(checkpoints)
        counts[2] += len(writes)
        yield ThreadRows(thread_id, checkpoints, writes)
        previous_thread = thread_id
    if counts != [entry.threads, entry.checkpoints, entry.writes]:
        raise _bad(path, f"batch {entry.key} holds {counts[1]} checkpoints and {counts[2]} "
                         f"writes; its footer entry says {entry.checkpoints} and "
                         f"{entry.writes}")


def _canonical_rows(path: Path, key: str, payload: memoryview, tag: str, width: int,
                    what: str) -> list[list[Any]]:
    """The rows of a rows frame, refused unless it is exactly their canonical encoding
    (so the thread digest over its bytes is the digest of the rows as they decode)."""
    rows = _unpack(path, payload, f"{what} frame")
    if not isinstance(rows, list) or any(
            type(r) is not list or len(r) != width or r[0] != tag for r in rows):
        raise _bad(path, f"batch {key}: a {what} frame is not a list of {what} rows")
    # bytes(): comparing a memoryview compares item by item, tens of times slower
    if pack(rows) != bytes(payload):
        raise _bad(path, f"batch {key}: a {what} frame is not in canonical form ({CHANGED})")
    return rows


_BLOB = (bytes, type(None))


def _checkpoint_rows(path: Path, key: str, payload: memoryview) -> list[CheckpointRow]:
    rows = _canonical_rows(path, key, payload, "c", 8, "checkpoint")
    out = [CheckpointRow(*r[1:]) for r in rows]
    for previous, row in zip([None, *out], out):
        if not (type(row.thread_id) is str and type(row.checkpoint_ns) is str
                and type(row.checkpoint_id) is str and isinstance(row.checkpoint, _BLOB)
                and isinstance(row.metadata, _BLOB)
                and isinstance(row.parent_checkpoint_id, (str, type(None)))
                and isinstance(row.type, (str, type(None)))):
            raise _bad(path, f"batch {key}: a checkpoint record is malformed")
        if previous is not None and row[:3] <= previous[:3]:
            raise _bad(path, f"batch {key}: checkpoint rows out of order")
    return out


def _write_rows(path: Path, key: str, payload: memoryview) -> list[WriteRow]:
    rows = _canonical_rows(path, key, payload, "w", 10, "write")
    out = [WriteRow(*r[1:]) for r in rows]
    for previous, row in zip([None, *out], out):
        if not (type(row.thread_id) is str and type(row.checkpoint_ns) is str
                and type(row.checkpoint_id) is str and type(row.task_id) is str
                and type(row.task_path) is str and type(row.idx) is int
                and type(row.channel) is str and isinstance(row.type, (str, type(None)))
                and isinstance(row.value, _BLOB)):
            raise _bad(path, f"batch {key}: a write record is malformed")
        if previous is not None and (row[:4], row.idx) <= (previous[:4], previous.idx):
            raise _bad(path, f"batch {key}: writes rows out of order")
    return out


def export_thread_digests(manifest: ExportManifest) -> Iterator[tuple[str, str, int, int]]:
    """Yield (thread_id, sha256, checkpoints, writes) for every thread in the export.

    Only the small thread summary frames are decoded; rows frames are skipped unread, so
    this is much cheaper than reading the rows. Callers that need the digests to be
    trustworthy verify the file first.
    """
    path = manifest.path
    with path.open("rb") as handle:
        handle.seek(len(MAGIC))
        while handle.tell() < manifest.footer_offset:
            head = handle.read(FRAME_HEAD.size)
            if len(head) < FRAME_HEAD.size:
                raise _bad(path, "it ends inside a frame (truncated?)")
            kind, length = FRAME_HEAD.unpack(head)
            if kind != THREAD:
                handle.seek(length, os.SEEK_CUR)
                continue
            summary = _unpack_map(path, handle.read(length), "thread summary")
            yield (summary["thread_id"], summary["sha256"], summary["checkpoints"],
                   summary["writes"])


def iter_records(path: str | Path, key: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of an export as a JSON-ready dict (blobs as base64), for people.

    The whole file is verified first (:func:`verify_export`); with ``key``, only that batch
    is read, after its own digest is checked. Records come in file order: header, then per
    batch its ``batch`` record, per thread a ``thread`` record followed by its
    ``checkpoint`` and ``write`` records, the ``batch_end``; then the ``footer``.
    """
    manifest = read_manifest(path) if key is not None else verify_export(path)
    yield {"kind": "header", **manifest.header}
    entries = [manifest.batch(key)] if key is not None else list(manifest.batches)
    for entry in entries:
        yield {"kind": "batch", "key": entry.key}
        for thread in read_batch(manifest, entry.key):
            digest = ThreadDigest()
            for row in (*thread.checkpoints, *thread.writes):
                digest.add(row)
            yield {"kind": "thread", "thread_id": thread.thread_id,
                   "checkpoints": len(thread.checkpoints), "writes": len(thread.writes),
                   "sha256": digest.hexdigest()}
            for row in thread.checkpoints:
                yield {"kind": "checkpoint", **_readable(row._asdict())}
            for row in thread.writes:
                yield {"kind": "write", **_readable(row._asdict())}
        yield {"kind": "batch_end", **entry.to_json()}
    if key is None:
        yield {"kind": "footer", "threads": manifest.threads,
               "checkpoints": manifest.checkpoints, "writes": manifest.writes,
               "types": manifest.types, "content_sha256": manifest.content_sha256,
               "file_sha256": manifest.file_sha256, "footer_sha256": manifest.footer_sha256}


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    return {name: base64.b64encode(value).decode("ascii") if isinstance(value, bytes)
            else value for name, value in row.items()}
