"""The export file's format: a versioned, streamable, self-verifying snapshot of SqliteSaver rows.

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

This module holds the format's constants, the manifest and the digests; the writer,
the reader, the source state and the debug dump are beside it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import ormsgpack

from checkpoint_assets.engine.core.codec import pack_opaque
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow, WriteRow
from checkpoint_assets.engine.core.thread_names import ThreadNames

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
V1_START = b'{"kind":"header"'


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
    # The state's books ({"tables", "last_rows"}, see SourceState.tables), repeated in the
    # footer so a sync can see that nothing changed without reading the state.
    books: dict[str, Any] | None = None

    @property
    def generation(self) -> int:
        """0 for a full export, n for the n-th sync (see export_chain)."""
        return int(self.header.get("generation") or 0)

    @property
    def selection(self) -> list[str] | None:
        """The thread ids this export was restricted to (--threads), or None: all."""
        return self.header.get("selection")

    @property
    def fleet_label(self) -> str | None:
        """The label of the fleet's source this export was taken from (None: not a
        fleet's); its batch partitions carry it in front."""
        return (self.header.get("fleet") or {}).get("label")

    @property
    def thread_names(self) -> ThreadNames:
        """What the source's threads are called in this export and the target (a fleet's
        prefix or mapping; ids kept otherwise)."""
        return ThreadNames.from_json((self.header.get("source") or {}).get("thread_names"))

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


def rows_digest(*payloads: bytes | memoryview) -> Any:
    """The thread digest of rows frames: their elements' bytes, without the array headers."""
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(memoryview(payload)[array_body(payload)[1]:])
    return digest


def footer_digest(footer: dict[str, Any]) -> str:
    body = {k: v for k, v in footer.items() if k != "footer_sha256"}
    return hashlib.sha256(ormsgpack.packb(body, option=ormsgpack.OPT_SORT_KEYS)).hexdigest()
