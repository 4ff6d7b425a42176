"""Write an export file: stream threads into batches of frames, then the footer."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE, BatchPlanner, batch_key
from checkpoint_assets.engine.core.codec import pack_opaque
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.private_files import private_file
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.core.selection import (
    MISSING_THREADS_HINT,
    refuse_missing_threads,
)
from checkpoint_assets.engine.core.thread_names import KEPT, ThreadNames
from checkpoint_assets.engine.export.file_format import (
    BATCH,
    BATCH_END,
    CHECKPOINTS,
    END,
    FOOTER,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_HEAD,
    GENERATION_SUFFIX,
    HEADER,
    MAGIC,
    STATE,
    THREAD,
    TRAILER,
    WRITES,
    BatchEntry,
    ExportManifest,
    footer_digest,
    pack,
    rows_digest,
)
from checkpoint_assets.engine.export.reader import (
    read_manifest,
)
from checkpoint_assets.engine.export.source_state import (
    SourceState,
    read_source_state,
    source_identity,
)
from checkpoint_assets.engine.export.sqlite_source import SourceDatabase, open_source


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
        header = {"kind": "sqlite", "path": str(self.source.path.resolve()),
                  "task_path_column": self.source.has_task_path,
                  "identity": source_identity(self.source)}
        if not self.source.names.kept:  # a fleet's source whose threads are renamed
            header["thread_names"] = self.source.names.to_json()
        return header

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


def write_export(
    source_path: str | Path,
    export_path: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    previous_export_sha256: str | None = None,
    selection: Sequence[str] | None = None,
    names: ThreadNames = KEPT,
    fleet_label: str | None = None,
) -> ExportManifest:
    """Stream a SqliteSaver database into an export file and return its manifest.

    The file is written under a fresh temporary name with owner-only permissions and
    renamed into place only once complete (see :func:`private_file`), so a crash, a full
    disk or a second export of the same file never leaves a half-written file at
    ``export_path``. ``progress``, if given, is called with the number of checkpoints just
    written. ``previous_export_sha256`` (the footer digest of the export this one follows)
    is recorded in the header for exports that chain. ``selection``: export these thread
    ids only (the header names them; an id the source does not hold is refused, naming
    it, before anything is written). ``names``: the threads' ids in the target (a fleet's
    prefix or mapping, recorded in the header's ``source``); ``fleet_label``: the source's
    label in its fleet (the header's ``fleet``). The file ends with the source's state
    (:class:`SourceState`) for later syncs; sync generation files written before this
    export are removed, since they follow another export.
    Raises MigrationError when the file cannot be written (read-only or full filesystem,
    no permission), leaving nothing behind.
    """
    export_path = Path(export_path)
    source = open_source(source_path, names=names)
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
            if fleet_label is not None:
                header["fleet"] = {"label": fleet_label}
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
        thread_sha = rows_digest(checkpoint_payload, write_payload).hexdigest()
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
        if state.tables is not None:
            footer["books"] = {"tables": state.tables, "last_rows": state.last_rows}
    footer.update(content_sha256=content_hash.hexdigest(),
                  file_sha256=writer.file_hash.hexdigest())
    footer["footer_sha256"] = footer_digest(footer)
    footer_offset = writer.offset
    writer.frame(FOOTER, pack(footer), in_batch=False)
    writer.raw(TRAILER.pack(footer_offset, END))
    return footer


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
        yield thread, rows_digest(pack(rows[0]), pack(rows[1])).hexdigest()


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
