"""The export file: a versioned, streamable, self-verifying JSON Lines snapshot.

Layout (one JSON object per line, ASCII only, ``\\n`` line ends)::

    {"kind": "header", "format": "checkpoint-assets-export", "version": 1, ...}
    {"kind": "batch", "key": "batch-00001"}            <- a batch starts
    {"kind": "checkpoint", ...}                         <- a thread's checkpoint rows,
    {"kind": "write", ...}                              <- then its writes rows,
    {"kind": "thread_end", "thread_id": ..., "sha256": ...}   <- then its digest
    ...                                                 <- more threads of this batch
    {"kind": "batch_end", "key": ..., "sha256": ...}    <- digest of the batch's bytes
    ...                                                 <- more batches
    {"kind": "footer", "batches": [...], "file_sha256": ..., "footer_sha256": ...}

Binary columns are base64. The footer states every count and digest and the byte range of
each batch, so one batch can be verified and loaded without reading the others, and a
truncated, reordered, duplicated or edited file is rejected before any row is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from checkpoint_assets.engine.batches import DEFAULT_BATCH_SIZE, BatchPlanner, batch_key
from checkpoint_assets.engine.codec import pack_opaque
from checkpoint_assets.engine.errors import MigrationError
from checkpoint_assets.engine.private_files import private_file
from checkpoint_assets.engine.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.source import SourceDatabase, open_source

FORMAT_NAME = "checkpoint-assets-export"
FORMAT_VERSION = 1
REEXPORT_HINT = "Export again from the SQLite source (checkpoint-assets export)."


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
        """The footer's JSON form of this entry."""
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


class _LineWriter:
    """Writes lines to the file while feeding the file, batch and thread digests."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.offset = 0
        self.file_hash = hashlib.sha256()
        self.batch_hash = hashlib.sha256()

    def write(self, obj: dict[str, Any], in_batch: bool) -> None:
        line = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
        self.handle.write(line)
        self.file_hash.update(line)
        if in_batch:
            self.batch_hash.update(line)
        self.offset += len(line)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def checkpoint_record(row: CheckpointRow) -> dict[str, Any]:
    """The export line for one checkpoint row."""
    return {
        "kind": "checkpoint", "thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
        "checkpoint_id": row.checkpoint_id, "parent_checkpoint_id": row.parent_checkpoint_id,
        "type": row.type, "checkpoint": _b64(row.checkpoint), "metadata": _b64(row.metadata),
    }


def write_record(row: WriteRow) -> dict[str, Any]:
    """The export line for one writes row."""
    return {
        "kind": "write", "thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
        "checkpoint_id": row.checkpoint_id, "task_id": row.task_id, "task_path": row.task_path,
        "idx": row.idx, "channel": row.channel, "type": row.type, "value": _b64(row.value),
    }


def row_digest_bytes(row: CheckpointRow | WriteRow) -> bytes:
    """Canonical bytes of a row, independent of the export's text encoding."""
    return pack_opaque(["c" if isinstance(row, CheckpointRow) else "w", *row])


class ThreadDigest:
    """Digest of one thread's rows, comparable between the export and a live source."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, row: CheckpointRow | WriteRow) -> None:
        """Feed one row (in key order)."""
        self._hash.update(row_digest_bytes(row))

    def hexdigest(self) -> str:
        """The thread's digest."""
        return self._hash.hexdigest()


@dataclass(frozen=True)
class ExportSummary:
    """The result of writing an export file."""

    manifest: ExportManifest
    seconds: float


def write_export(
    source_path: str | Path,
    export_path: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
) -> ExportManifest:
    """Stream a SqliteSaver database into an export file and return its manifest.

    The file is written under a fresh temporary name with owner-only permissions and
    renamed into place only once complete (see :func:`private_file`), so a crash, a full
    disk or a second export of the same file never leaves a half-written file at
    ``export_path``. ``progress``, if given, is called with the number of checkpoints just
    written. Raises MigrationError when the file cannot be written (read-only or full
    filesystem, no permission), leaving nothing behind.
    """
    export_path = Path(export_path)
    source = open_source(source_path)
    try:
        with source.snapshot():
            try:
                with private_file(export_path, buffering=1 << 20) as handle:
                    _write_body(source, handle, batch_size, progress)
            except OSError as exc:
                raise cannot_write_export(export_path, exc) from None
    finally:
        source.close()
    return read_manifest(export_path)


def cannot_write_export(export_path: Path, exc: OSError) -> MigrationError:
    """The error for an export file the filesystem refused (space, permission, read-only)."""
    reason = exc.strerror or str(exc)
    return MigrationError(
        f"Cannot write the export {export_path}: {reason}. Nothing was left at that path.",
        "Free space on that filesystem, or pass --export FILE (CHECKPOINT_ASSETS_EXPORT) in a "
        "directory you may write to, on a filesystem with room for at least the size of the "
        "SQLite database.")


def _write_body(
    source: SourceDatabase, handle: BinaryIO, batch_size: int, progress: Any
) -> dict[str, Any]:
    writer = _LineWriter(handle)
    writer.write({
        "kind": "header", "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "source": {"path": str(source.path.resolve()), "task_path_column": source.has_task_path},
        "batch_size": batch_size,
    }, in_batch=False)
    planner = BatchPlanner(batch_size)
    checkpoints = _Peekable(source.checkpoints())
    writes = _Peekable(source.writes())
    batches: list[BatchEntry] = []
    current: dict[str, Any] | None = None
    totals = {"threads": 0, "checkpoints": 0, "writes": 0}
    types: dict[str, int] = {}
    content_hash = hashlib.sha256()

    for size in source.thread_sizes():
        index, new_batch = planner.place(size.checkpoints)
        if new_batch:
            if current is not None:
                batches.append(_close_batch(writer, current))
            current = {"key": batch_key(index), "offset": writer.offset, "threads": 0,
                       "checkpoints": 0, "writes": 0, "first_thread": size.thread_id}
            writer.batch_hash = hashlib.sha256()
            writer.write({"kind": "batch", "key": current["key"]}, in_batch=True)
        digest = ThreadDigest()
        n_checkpoints = n_writes = 0
        for row in checkpoints.take_while(lambda r: r.thread_id == size.thread_id):
            writer.write(checkpoint_record(row), in_batch=True)
            digest.add(row)
            types[row.type or "null"] = types.get(row.type or "null", 0) + 1
            n_checkpoints += 1
        for row in writes.take_while(lambda r: r.thread_id == size.thread_id):
            writer.write(write_record(row), in_batch=True)
            digest.add(row)
            n_writes += 1
        if (n_checkpoints, n_writes) != (size.checkpoints, size.writes):
            raise MigrationError(
                f"Source {source.path} changed while it was read (thread {size.thread_id!r}).",
                "Run the export again; SQLite snapshots should prevent this, so report it.",
            )
        thread_sha = digest.hexdigest()
        writer.write({"kind": "thread_end", "thread_id": size.thread_id,
                      "checkpoints": n_checkpoints, "writes": n_writes, "sha256": thread_sha},
                     in_batch=True)
        content_hash.update(pack_opaque([size.thread_id, thread_sha]))
        assert current is not None
        current["threads"] += 1
        current["checkpoints"] += n_checkpoints
        current["writes"] += n_writes
        current["last_thread"] = size.thread_id
        totals["threads"] += 1
        totals["checkpoints"] += n_checkpoints
        totals["writes"] += n_writes
        if progress is not None:
            progress(n_checkpoints)
    if current is not None:
        batches.append(_close_batch(writer, current))

    footer: dict[str, Any] = {
        "kind": "footer", **totals, "types": types,
        "batches": [b.to_json() for b in batches],
        "content_sha256": content_hash.hexdigest(),
        "file_sha256": writer.file_hash.hexdigest(),
    }
    footer["footer_sha256"] = _footer_digest(footer)
    writer.write(footer, in_batch=False)
    return footer


def _close_batch(writer: _LineWriter, current: dict[str, Any]) -> BatchEntry:
    length = writer.offset - current["offset"]
    sha = writer.batch_hash.hexdigest()
    writer.write({"kind": "batch_end", "key": current["key"], "threads": current["threads"],
                  "checkpoints": current["checkpoints"], "writes": current["writes"],
                  "sha256": sha}, in_batch=False)
    return BatchEntry(
        key=current["key"], offset=current["offset"], length=length,
        threads=current["threads"], checkpoints=current["checkpoints"],
        writes=current["writes"], sha256=sha, first_thread=current["first_thread"],
        last_thread=current["last_thread"],
    )


def _footer_digest(footer: dict[str, Any]) -> str:
    body = {k: v for k, v in footer.items() if k != "footer_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("ascii")).hexdigest()


class _Peekable:
    """An iterator whose next item can be looked at without consuming it."""

    _END = object()

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self._next = next(iterator, self._END)

    def take_while(self, predicate: Any) -> Iterator[Any]:
        while self._next is not self._END and predicate(self._next):
            item = self._next
            self._next = next(self._iterator, self._END)
            yield item


# --------------------------------------------------------------------------- reading


def _bad(path: Path, problem: str, line: int | None = None) -> MigrationError:
    where = f" (line {line})" if line is not None else ""
    return MigrationError(f"Export {path} is not a valid, complete export file{where}: {problem}.",
                          REEXPORT_HINT)


def _parse_line(path: Path, raw: bytes, line_no: int | None) -> dict[str, Any]:
    try:
        # Fast path. orjson refuses what it would read differently from json (NaN
        # literals, lone surrogate escapes, integers beyond 64 bits); json decides those.
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = _parse_line_strictly(path, raw, line_no)
    if not isinstance(obj, dict) or "kind" not in obj:
        raise _bad(path, "a line is not an export record", line_no)
    return obj


def _parse_line_strictly(path: Path, raw: bytes, line_no: int | None) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "it is not UTF-8 text", line_no) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"a line is not valid JSON ({exc.msg})", line_no) from None


def read_manifest(path: str | Path) -> ExportManifest:
    """Read the header and footer and check the footer's own digest.

    This is cheap (two lines) and catches truncation, a wrong format or version, and an
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
        first = handle.readline()
        header = _parse_line(path, first.rstrip(b"\n"), 1)
        if header.get("kind") != "header" or header.get("format") != FORMAT_NAME:
            raise _bad(path, f"it does not start with a {FORMAT_NAME} header", 1)
        if header.get("version") != FORMAT_VERSION:
            raise MigrationError(
                f"Export {path} has format version {header.get('version')!r}; this tool "
                f"reads version {FORMAT_VERSION}.",
                "Export again with this version of checkpoint-assets, or use the version "
                "that wrote the file.",
            )
        last = _last_line(handle, size)
    if not last.endswith(b"\n"):
        raise _bad(path, "it does not end with a complete footer line (truncated?)")
    footer = _parse_line(path, last.rstrip(b"\n"), None)
    if footer.get("kind") != "footer":
        raise _bad(path, "it has no footer (the file is truncated or was not completed)")
    if footer.get("footer_sha256") != _footer_digest(footer):
        raise _bad(path, "the footer does not match its own digest (edited?)")
    return _manifest_from_footer(path, header, footer, size, size - len(last))


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


def _last_line(handle: BinaryIO, size: int) -> bytes:
    chunk = 1 << 16
    end = size
    data = b""
    while end > 0:
        start = max(0, end - chunk)
        handle.seek(start)
        data = handle.read(end - start) + data
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0:
            return data[cut + 1:]
        end = start
    return data


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
            batches=batches,
        )
    except (KeyError, TypeError) as exc:
        raise _bad(path, f"the footer lacks a field ({exc})") from None


def verify_export(path: str | Path) -> ExportManifest:
    """Check the whole file against its footer: the file digest, every batch's byte range
    and digest, and every thread, batch and total count.

    One pass over the bytes; row lines are counted, not decoded (any change to them already
    breaks the file digest, and :func:`read_batch` checks each thread's digest when the
    batch is loaded). Returns the manifest when the file is intact; raises MigrationError
    naming the first problem otherwise.
    """
    manifest = read_manifest(path)
    path = manifest.path
    batches = iter(manifest.batches)
    entry = next(batches, None)
    file_hash = hashlib.sha256()
    batch_hash = hashlib.sha256()
    rows = {"checkpoint": 0, "write": 0}
    seen = {"threads": 0, "checkpoints": 0, "writes": 0}
    offset = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if offset == manifest.footer_offset:
                break
            file_hash.update(raw)
            in_batch = entry is not None and entry.offset <= offset < entry.offset + entry.length
            if in_batch:
                batch_hash.update(raw)
            offset += len(raw)
            kind = _line_kind(raw)
            if kind in rows:
                rows[kind] += 1
            elif kind == "thread_end":
                record = _parse_line(path, raw, line_no)
                if (record.get("checkpoints"), record.get("writes")) != (
                        rows["checkpoint"], rows["write"]):
                    raise _bad(path, f"thread {record.get('thread_id')!r} does not have the "
                                     "rows its summary line states (a line was changed, "
                                     "added, removed or reordered)", line_no)
                seen["threads"] += 1
                seen["checkpoints"] += rows["checkpoint"]
                seen["writes"] += rows["write"]
                rows = {"checkpoint": 0, "write": 0}
            elif kind == "batch_end":
                if entry is None or offset - len(raw) != entry.offset + entry.length \
                        or batch_hash.hexdigest() != entry.sha256:
                    raise _bad(path, "a batch does not match its digest or byte range "
                                     "(a line was changed, added, removed or reordered)",
                               line_no)
                entry = next(batches, None)
                batch_hash = hashlib.sha256()
            elif kind not in ("header", "batch"):
                raise _bad(path, "a line is not an export record", line_no)
    if file_hash.hexdigest() != manifest.file_sha256 or offset != manifest.footer_offset:
        raise _bad(path, "its contents do not match the digest in its footer "
                         "(a line was changed, added, removed or reordered)")
    if entry is not None:
        raise _bad(path, f"batch {entry.key} named in the footer is missing")
    if (seen["threads"], seen["checkpoints"], seen["writes"]) != (
            manifest.threads, manifest.checkpoints, manifest.writes):
        raise _bad(path, "its rows do not add up to the totals in its footer")
    return manifest


def _line_kind(raw: bytes) -> str | None:
    """The ``kind`` of an export line, read from its fixed prefix without parsing it."""
    if not raw.startswith(b'{"kind":"'):
        return None
    end = raw.find(b'"', 9)
    return raw[9:end].decode("ascii", "replace") if end > 0 else None


def read_batch(manifest: ExportManifest, key: str) -> Iterator[ThreadRows]:
    """Yield the threads of one batch, after checking the batch's digest and structure.

    The batch's bytes are hashed before the first thread is yielded, so a damaged batch
    never reaches the database. Counts, key order and per-thread digests are checked as
    the rows are parsed; thread digests are checked before each thread is yielded.
    """
    entry = manifest.batch(key)
    path = manifest.path
    batch_hash = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(entry.offset)
        remaining = entry.length
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 20))
            if not block:
                break
            batch_hash.update(block)
            remaining -= len(block)
    if remaining or batch_hash.hexdigest() != entry.sha256:
        raise _bad(path, f"batch {key} does not match its digest "
                         "(a line in it was changed, added, removed or reordered)")
    yield from _parse_batch(manifest, entry)


def _parse_batch(manifest: ExportManifest, entry: BatchEntry) -> Iterator[ThreadRows]:
    path = manifest.path
    with path.open("rb") as handle:
        handle.seek(entry.offset)
        line = handle.readline()
        first = _parse_line(path, line, None)
        if first.get("kind") != "batch" or first.get("key") != entry.key:
            raise _bad(path, f"batch {entry.key} does not start where the footer says")
        position, end = entry.offset + len(line), entry.offset + entry.length
        counts = [0, 0, 0]
        previous_thread: str | None = None
        checkpoints: list[CheckpointRow] = []
        writes: list[WriteRow] = []
        digest = ThreadDigest()
        while position < end:
            line = handle.readline()
            if not line:
                raise _bad(path, f"batch {entry.key} ends early (the file was truncated)")
            position += len(line)
            record = _parse_line(path, line, None)
            kind = record["kind"]
            if kind == "checkpoint":
                row = _checkpoint_row(path, record)
                if writes or (checkpoints and row[:3] <= checkpoints[-1][:3]):
                    raise _bad(path, f"batch {entry.key}: checkpoint rows out of order")
                checkpoints.append(row)
                digest.add(row)
            elif kind == "write":
                row = _write_row(path, record)
                if writes and (row[:4], row.idx) <= (writes[-1][:4], writes[-1].idx):
                    raise _bad(path, f"batch {entry.key}: writes rows out of order")
                writes.append(row)
                digest.add(row)
            elif kind == "thread_end":
                thread_id = record["thread_id"]
                rows_thread = {r.thread_id for r in checkpoints} | {r.thread_id for r in writes}
                if rows_thread - {thread_id} or (
                        previous_thread is not None and thread_id <= previous_thread):
                    raise _bad(path, f"batch {entry.key}: rows of thread {thread_id!r} are "
                                     "mixed with another thread or out of order")
                if (digest.hexdigest() != record["sha256"]
                        or len(checkpoints) != record["checkpoints"]
                        or len(writes) != record["writes"]):
                    raise _bad(path, f"thread {thread_id!r} does not match its digest")
                counts[0] += 1
                counts[1] += len(checkpoints)
                counts[2] += len(writes)
                yield ThreadRows(thread_id, checkpoints, writes)
                previous_thread = thread_id
                checkpoints, writes, digest = [], [], ThreadDigest()
            else:
                raise _bad(path, f"batch {entry.key}: unexpected {kind!r} record")
        if checkpoints or writes:
            raise _bad(path, f"batch {entry.key} ends inside a thread")
        if counts != [entry.threads, entry.checkpoints, entry.writes]:
            raise _bad(path, f"batch {entry.key} holds {counts[1]} checkpoints and {counts[2]} "
                             f"writes; its footer entry says {entry.checkpoints} and "
                             f"{entry.writes}")


def _checkpoint_row(path: Path, r: dict[str, Any]) -> CheckpointRow:
    try:
        return CheckpointRow(r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"],
                             r["parent_checkpoint_id"], r["type"], _unb64(r["checkpoint"]),
                             _unb64(r["metadata"]))
    except (KeyError, ValueError) as exc:
        raise _bad(path, f"a checkpoint record is malformed ({exc})") from None


def _write_row(path: Path, r: dict[str, Any]) -> WriteRow:
    try:
        return WriteRow(r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"], r["task_id"],
                        r["task_path"], int(r["idx"]), r["channel"], r["type"],
                        _unb64(r["value"]))
    except (KeyError, ValueError) as exc:
        raise _bad(path, f"a write record is malformed ({exc})") from None


def export_thread_digests(manifest: ExportManifest) -> Iterator[tuple[str, str, int, int]]:
    """Yield (thread_id, sha256, checkpoints, writes) for every thread in the export.

    Only the short ``thread_end`` lines are parsed, so this is much cheaper than reading
    the rows. Callers that need the digests to be trustworthy verify the file first.
    """
    marker = b'{"kind":"thread_end"'
    with manifest.path.open("rb") as handle:
        for raw in handle:
            if raw.startswith(marker):
                record = _parse_line(manifest.path, raw, None)
                yield (record["thread_id"], record["sha256"], record["checkpoints"],
                       record["writes"])
