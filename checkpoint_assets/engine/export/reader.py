"""Read and check an export file: manifest, footer, batches, state; reject any damage."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ormsgpack

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.export.file_format import (
    BATCH,
    BATCH_END,
    CHECKPOINTS,
    END,
    FOOTER,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_HEAD,
    FRAME_KINDS,
    HEADER,
    MAGIC,
    REEXPORT_HINT,
    STATE,
    THREAD,
    TRAILER,
    V1_START,
    WRITES,
    BatchEntry,
    ExportManifest,
    array_body,
    footer_digest,
    pack,
    rows_digest,
)
from checkpoint_assets.engine.export.source_state import (
    SourceState,
)

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
        if start.startswith(V1_START):
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
    if footer.get("footer_sha256") != footer_digest(footer):
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
            books=footer.get("books"),
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
    tables, threads = body.get("tables"), body["threads"]
    # Since 2026-12-06 a map; before, a list of [thread_id, *entry] in thread_id order.
    return SourceState(threads if isinstance(threads, dict)
                       else {row[0]: row[1:] for row in threads},
                       dict(body["last_rows"]), body["snapshot_at"],
                       None if tables is None else dict(tables))


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
        if (rows_digest(checkpoint_payload, write_payload).hexdigest() != summary.get("sha256")
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
