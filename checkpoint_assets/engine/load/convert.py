"""Convert SqliteSaver rows into the rows PostgresSaver reads, without application classes.

A SqliteSaver checkpoint keeps every channel value inside one serialized blob. A
PostgresSaver checkpoint keeps primitives inline in the ``checkpoint`` JSONB and every
other value in ``checkpoint_blobs`` at the version ``channel_versions`` names. The split
happens on the raw msgpack structure (see :mod:`checkpoint_assets.engine.core.codec`), so
pydantic models, dataclasses and enums pass through as the bytes they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson
import ormsgpack

from checkpoint_assets.engine.core import jsontext
from checkpoint_assets.engine.core.checkpoint_metadata import (
    MetadataChange,
    jsonb_metadata,
    jsonb_ready_text,
    parse_metadata,
)
from checkpoint_assets.engine.core.codec import (
    is_delta_snapshot,
    json_safe_structure,
    pack_opaque,
    primitive_survives_jsonb,
    unpack_opaque,
)
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.core.versions import (
    CONTENT,
    SUPERSEDED_TABLE,
    FirstValues,
    Superseded,
)

PLAIN_TYPES = ("msgpack", "json")
REFUSED_TYPES = ("pickle",)


@dataclass
class DecodedCheckpoint:
    """A source checkpoint decoded at the raw level.

    ``header`` is everything but the channel values (and v<4 ``pending_sends``), as JSON;
    ``values`` maps each channel to its raw value; ``family`` is ``msgpack`` or ``json``.
    """

    header: dict[str, Any]
    values: dict[str, Any]
    family: str
    cipher_name: str | None
    pending_sends: Any = None
    header_text: str | None = None  # the header as JSON text, written once
    _packed: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def packed(self, channel: str) -> bytes:
        """The channel's value as canonical msgpack bytes, encoded once and shared by the
        converter (blob rows) and the expected view of the batch check."""
        data = self._packed.get(channel)
        if data is None:
            data = self._packed[channel] = pack_opaque(self.values[channel])
        return data


@dataclass
class ConvertedThread:
    """The PostgreSQL rows of one thread, ready for COPY."""

    checkpoints: list[tuple] = field(default_factory=list)
    blobs: list[tuple] = field(default_factory=list)
    writes: list[tuple] = field(default_factory=list)
    metadata_changes: list[tuple[tuple[str, str, str], MetadataChange]] = field(
        default_factory=list)
    # Later values of a channel version (rows of versions.SUPERSEDED_TABLE) and what
    # differs in each.
    superseded: list[tuple] = field(default_factory=list)
    superseded_findings: list[Superseded] = field(default_factory=list)


class VersionConflictError(MigrationError):
    """A thread refused under --strict-versions: one of its channel versions has two values
    whose content differs."""

    def __init__(self, found: Superseded) -> None:
        self.found = found
        super().__init__(
            f"Thread {found.thread_id!r}: channel {found.channel!r} at version "
            f"{found.version} has a different value in checkpoint {found.checkpoint_id} than "
            f"in {found.first_checkpoint_id}, where the version was first written "
            f"({found.detail}); the thread is refused (--strict-versions).",
            "Without --strict-versions the thread is migrated as PostgresSaver would hold "
            "it (the first value of each version) and the later value is kept in "
            f"{SUPERSEDED_TABLE}; or fix the thread in the source and run again.")

    def __reduce__(self) -> tuple:
        """Pickled with its finding (results cross process boundaries)."""
        return (self.__class__, (self.found,))


def checkpoint_key(row: CheckpointRow | WriteRow) -> dict[str, str]:
    """The identifying key of a row, for error messages and reports."""
    return {"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
            "checkpoint_id": row.checkpoint_id}


def split_type(type_tag: str | None) -> tuple[str, str | None]:
    """Split a serializer type tag like ``msgpack+aes`` into (``msgpack``, ``aes``)."""
    tag = type_tag or "null"
    if "+" in tag:
        base, cipher = tag.split("+", 1)
        return base, cipher
    return tag, None


def decode_checkpoint(row: CheckpointRow, cipher: Cipher | None) -> DecodedCheckpoint:
    """Decode a source checkpoint blob into header and raw channel values.

    Raises MigrationError for pickle rows, encrypted rows without a key, and blobs that
    do not re-encode to the exact bytes they came from.
    """
    base, cipher_name = split_type(row.type)
    data = row.checkpoint
    if data is None:
        raise MigrationError(f"Checkpoint {checkpoint_key(row)} has no checkpoint blob.",
                             "The source row is damaged; restore the database from a backup.")
    if cipher_name is not None:
        if cipher is None:
            raise MigrationError(
                f"Checkpoint {checkpoint_key(row)} is encrypted ({row.type}) and no key was "
                "given.",
                "Set LANGGRAPH_AES_KEY (or --aes-key-env) to the key the application uses.")
        data = cipher.decrypt(cipher_name, data, checkpoint_key(row))
    if base == "msgpack":
        raw = _decoded(row, "checkpoint blob", "msgpack", unpack_opaque, data)
        if pack_opaque(raw) != data:
            raise MigrationError(
                f"Checkpoint {checkpoint_key(row)} does not re-encode byte-exactly.",
                "Report this with the row; it is not migrated to avoid any loss.")
    elif base == "json":
        raw = _decoded(row, "checkpoint blob", "JSON", json.loads, data)
    elif base in REFUSED_TYPES:
        raise MigrationError(
            f"Checkpoint {checkpoint_key(row)} is stored with pickle.",
            "Pickled checkpoints need the application's classes; they are not migrated.")
    else:
        raise MigrationError(f"Checkpoint {checkpoint_key(row)} has unknown type {row.type!r}.",
                             "Only msgpack, json and their encrypted forms are supported.")
    if not isinstance(raw, dict) or not isinstance(raw.get("channel_values", {}), dict):
        raise MigrationError(f"Checkpoint {checkpoint_key(row)} is not a LangGraph checkpoint.",
                             "The source row is damaged; restore the database from a backup.")
    header = {k: v for k, v in raw.items() if k not in ("channel_values", "pending_sends")}
    header_text = header_json(header)
    if header_text is None:
        raise MigrationError(
            f"Checkpoint {checkpoint_key(row)} has ids or versions JSONB cannot hold.",
            "Report this with the row; it is not migrated to avoid any loss.")
    return DecodedCheckpoint(header, dict(raw.get("channel_values") or {}), base, cipher_name,
                             raw.get("pending_sends"), header_text)


# What SqliteSaver's serializer says when a damaged row cannot be read back: the same row
# would fail there too, so it is refused by key rather than copied or approximated.
DAMAGED_ROW_HINT = ("SqliteSaver cannot read this row either. Restore it from a backup, or "
                    "delete it (a checkpoint together with its writes) in the source, then "
                    "export again.")


def _decoded(row: CheckpointRow | WriteRow, what: str, format_name: str, decode: Any,
             data: bytes) -> Any:
    """``decode(data)``, or a MigrationError naming the row when ``data`` is damaged."""
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MigrationError(
            f"{_row_name(row)} has a {what} that is not valid {format_name} ({exc}).",
            DAMAGED_ROW_HINT) from None


def _row_name(row: CheckpointRow | WriteRow) -> str:
    if isinstance(row, WriteRow):
        return (f"Write {{'thread_id': {row.thread_id!r}, 'checkpoint_ns': "
                f"{row.checkpoint_ns!r}, 'checkpoint_id': {row.checkpoint_id!r}, "
                f"'task_id': {row.task_id!r}, 'idx': {row.idx}}} (channel {row.channel!r})")
    return f"Checkpoint {checkpoint_key(row)}"


def header_json(header: dict[str, Any]) -> str | None:
    """The header's JSON text (as :mod:`jsontext` writes it) when its ids, timestamps and
    versions fit JSONB unchanged, else None.

    Fast path: msgpack refuses non-str keys and unknown objects without OPT_NON_STR_KEYS,
    and the JSON text shows NUL, NaN and risky floats; only then the exact walk runs.
    """
    try:
        ormsgpack.packb(header)
        text = jsontext.dumps(header)
    except (TypeError, ValueError, ormsgpack.MsgpackEncodeError):
        return None
    if any(p in text for p in ("\\u0000", "e+", "E+", "-0.", "\\ud", "\\uD", "NaN",
                               "Infinity")) \
            or not text.isascii():
        return text if json_safe_structure(header) else None
    return text


def channel_blob(
    value: Any, family: str, cipher_name: str | None, cipher: Cipher | None,
    packed: bytes | None = None,
) -> tuple[str, bytes]:
    """The (type, bytes) of the ``checkpoint_blobs`` row holding one channel value
    (``packed``, if given, is ``pack_opaque(value)``, already computed)."""
    if family == "json":
        base, payload = "json", json.dumps(value, ensure_ascii=False).encode("utf-8")
    elif value is None:
        base, payload = "null", b""
    elif isinstance(value, bytes):
        base, payload = "bytes", value
    else:
        base, payload = "msgpack", packed if packed is not None else pack_opaque(value)
    if cipher_name is None:
        return base, payload
    assert cipher is not None
    return f"{base}+{cipher_name}", cipher.encrypt(cipher_name, payload)


def decode_thread(thread: ThreadRows, cipher: Cipher | None = None) -> list[DecodedCheckpoint]:
    """Decode every checkpoint of a thread, in row order (for callers that need it twice)."""
    return [decode_checkpoint(row, cipher) for row in thread.checkpoints]


def convert_thread(thread: ThreadRows, cipher: Cipher | None = None,
                   decoded: list[DecodedCheckpoint] | None = None,
                   strict_versions: bool = False) -> ConvertedThread:
    """Convert one thread's rows to the PostgresSaver layout.

    A channel version keeps its FIRST value, as PostgresSaver does (see :mod:`versions`):
    a later checkpoint whose value at that version differs reads the first one, and its
    own value goes to ``superseded`` (a row of ``SUPERSEDED_TABLE``, original bytes).
    ``strict_versions``: a value whose content (not only its encoding) differs raises
    VersionConflictError for the thread instead. Raises MigrationError if a row cannot be
    converted losslessly. ``decoded``, if given, is :func:`decode_thread` of this thread.
    """
    out = ConvertedThread()
    ledger = FirstValues()
    if decoded is None:
        decoded = decode_thread(thread, cipher)
    for row, decoded_row in zip(thread.checkpoints, decoded):
        inline: dict[str, Any] = {}
        versions = decoded_row.header.get("channel_versions") or {}
        for channel, value in decoded_row.values.items():
            keep_inline = decoded_row.cipher_name is None and primitive_survives_jsonb(value)
            if channel not in versions:
                if keep_inline:
                    inline[channel] = value
                    continue
                raise MigrationError(
                    f"Checkpoint {checkpoint_key(row)}: channel {channel!r} has a value but no "
                    "version, so PostgresSaver could not find its blob.",
                    "Report this with the row; it is not migrated to avoid any loss.")
            version = str(versions[channel])
            first, superseded = ledger.see(row.thread_id, row.checkpoint_ns, row.checkpoint_id,
                                           channel, version, value, decoded_row.family,
                                           keep_inline, decoded_row.packed(channel))
            if superseded is not None:
                if strict_versions and superseded.kind == CONTENT:
                    raise VersionConflictError(superseded)
                out.superseded_findings.append(superseded)
                type_tag, payload = channel_blob(value, decoded_row.family,
                                                 decoded_row.cipher_name, cipher,
                                                 decoded_row.packed(channel))
                out.superseded.append((row.thread_id, row.checkpoint_ns, row.checkpoint_id,
                                       channel, version, type_tag, payload,
                                       superseded.first_checkpoint_id, superseded.kind))
            if first is not None:
                # This checkpoint reads the version's first value: inline as it was, or
                # the blob its first checkpoint wrote.
                if first.inline:
                    inline[channel] = first.value
                elif is_delta_snapshot(first.value):
                    inline[channel] = True
                continue
            if keep_inline:
                inline[channel] = value
                continue
            if is_delta_snapshot(value):
                inline[channel] = True
            # Only a version's first checkpoint builds (and re-encrypts) the blob.
            type_tag, payload = channel_blob(value, decoded_row.family, decoded_row.cipher_name,
                                             cipher, decoded_row.packed(channel))
            out.blobs.append((row.thread_id, row.checkpoint_ns, channel, version, type_tag,
                              payload))
        metadata_text = jsonb_ready_text(row.metadata)
        if metadata_text is not None and not _is_json(metadata_text):
            metadata_text = None  # checkpoint_metadata names the row if json rejects it too
        if metadata_text is None:
            metadata, changes = jsonb_metadata(checkpoint_metadata(row))
            out.metadata_changes.extend(
                ((row.thread_id, row.checkpoint_ns, row.checkpoint_id), c) for c in changes)
            metadata_text = json.dumps(metadata, ensure_ascii=False)
        out.checkpoints.append((row.thread_id, row.checkpoint_ns, row.checkpoint_id,
                                row.parent_checkpoint_id,
                                JsonText(checkpoint_document(decoded_row.header, inline,
                                                             decoded_row.header_text)),
                                JsonText(metadata_text)))
    out.writes = [convert_write(w, cipher) for w in thread.writes]
    return out


def _is_json(text: str) -> bool:
    """True when orjson parses ``text`` (what it accepts, ``json`` accepts too)."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


class JsonText(str):
    """JSON already serialised: sent to a JSONB column as it is."""


def checkpoint_document(header: dict[str, Any], inline: dict[str, Any],
                        header_text: str | None = None) -> str:
    """The ``checkpoints.checkpoint`` JSONB text: the header plus inline channel values
    (``header_text``, if given, is ``jsontext.dumps(header)``, already written)."""
    text = header_text if header_text is not None else jsontext.dumps(header)
    values = jsontext.dumps(inline)
    if text == "{}":
        return '{"channel_values":' + values + "}"
    return text[:-1] + ',"channel_values":' + values + "}"


def convert_write(row: WriteRow, cipher: Cipher | None = None) -> tuple:
    """A writes row in ``checkpoint_writes`` column order; a NULL value becomes b''.

    The value is copied byte for byte, after checking that LangGraph's serializer can read
    it: a msgpack or JSON value (decrypted first when encrypted and a key is given) that
    does not decode would make both savers fail on its checkpoint, so it is refused by key.
    """
    check_write_value(row, cipher)
    return (row.thread_id, row.checkpoint_ns, row.checkpoint_id, row.task_id, row.task_path,
            row.idx, row.channel, row.type, row.value if row.value is not None else b"")


def check_write_value(row: WriteRow, cipher: Cipher | None = None) -> None:
    """Raise MigrationError naming the write if its value cannot be decoded (see
    :func:`convert_write`); pickle, bytes, null and unknown types are not looked into."""
    base, cipher_name = split_type(row.type)
    if base not in PLAIN_TYPES or row.value is None:
        return
    data = row.value
    if cipher_name is not None:
        if cipher is None:
            return  # nothing to check it with; the encrypted bytes are copied as they are
        data = cipher.decrypt(cipher_name, data, _row_name(row))
    if base == "msgpack":
        _decoded(row, "value", "msgpack", unpack_opaque, data)
    else:
        _decoded(row, "value", "JSON", json.loads, data)


def checkpoint_metadata(row: CheckpointRow) -> Any:
    """The row's metadata parsed as SqliteSaver does; MigrationError naming the checkpoint
    if it is not JSON."""
    try:
        return parse_metadata(row.metadata)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MigrationError(
            f"Checkpoint {checkpoint_key(row)} has metadata that is not JSON ({exc}).",
            DAMAGED_ROW_HINT) from None
