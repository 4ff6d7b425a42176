"""Convert PostgresSaver rows back into the rows SqliteSaver reads, without application classes.

The inverse of :mod:`convert`: each checkpoint's ``channel_values`` are reassembled the way
``PostgresSaver.list`` reads them (the inline JSONB primitives, then the
``checkpoint_blobs`` row at the version ``channel_versions`` names for every channel,
``empty`` rows skipped) and the whole checkpoint is encoded as one serializer blob again.
Blobs are decoded at the raw level (extension types stay opaque, see :mod:`codec`), so
pydantic models, dataclasses and enums travel as the bytes they were.

- A DeltaChannel snapshot blob counts only on a checkpoint whose inline value marks it
  (``True``): PostgreSQL keys blobs by version, so a sibling sharing the version would
  otherwise gain a snapshot its SqliteSaver original never had.
- A checkpoint with ``v`` < 4 gets back its ``pending_sends``: the ``__pregel_tasks``
  writes of its parent, in (task_path, task_id, idx) order, which is where PostgresSaver
  reads them from.
- A thread whose blobs or writes are encrypted comes back encrypted, checkpoint and all,
  with the same cipher (the key is needed, as forward).
- Metadata becomes the JSON text SqliteSaver writes (``json.dumps``, ``ensure_ascii=False``).
- Writes rows are copied exactly: type, value bytes, task_path.

JSONB keeps no key order, so a rebuilt checkpoint holds the same values as its SQLite
original but, with more than one channel, usually not the same bytes; see
:func:`difference_reason`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import TASKS

from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.codec import (
    OpaqueExt,
    is_delta_snapshot,
    normalized,
    pack_opaque,
    unpack_opaque,
)
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows, WriteRow
from checkpoint_assets.engine.load.convert import REFUSED_TYPES, split_type

# The order LangGraph's Checkpoint keys are written in (create_checkpoint, v<4 too); keys
# it does not know follow in the order JSONB gives them.
CHECKPOINT_KEY_ORDER = ("v", "ts", "id", "channel_values", "channel_versions",
                        "versions_seen", "updated_channels", "pending_sends")
EMPTY_BLOB = "empty"
NO_KEY_HINT = "Set LANGGRAPH_AES_KEY (or --aes-key-env) to the key the application uses."

# Why a rebuilt row is not byte-identical to its SqliteSaver original (difference_reason).
SAME_BYTES = "byte-identical"
KEY_ORDER = "key order (JSONB keeps no key order; sets re-encoded)"
NEW_NONCE = "encrypted again (a fresh nonce each time)"
JSON_TEXT = "json text spacing or key order"
METADATA_FITTED = "metadata changed to fit JSONB by the migration (reported then)"
TYPE_CHANGED = "json row rebuilt as msgpack (no json blob tells its format)"
OTHER_CONTENT = "different content"


def restore_thread(thread_id: str, checkpoints: Sequence[tuple], blobs: Iterable[tuple],
                   writes: Sequence[tuple], cipher: Cipher | None = None,
                   superseded: Iterable[tuple] = ()) -> ThreadRows:
    """The SqliteSaver rows of one thread, rebuilt from its PostgresSaver rows.

    ``checkpoints`` rows are (thread_id, ns, checkpoint_id, parent, checkpoint JSONB,
    metadata JSONB) with JSONB parsed, in key order; ``blobs`` rows (ns, channel, version,
    type, blob); ``writes`` rows in ``checkpoint_writes`` column order (thread_id, ns,
    checkpoint_id, task_id, task_path, idx, channel, type, blob), in key order;
    ``superseded`` rows of this project's SUPERSEDED_TABLE (superseded_table columns): a
    checkpoint whose value of a channel was a later value of its version gets that value
    back, not the version's first. Raises MigrationError naming the checkpoint when a value
    cannot be rebuilt without loss.
    """
    blob_index = {(ns, channel, version): (type_, None if blob is None else bytes(blob))
                  for ns, channel, version, type_, blob in blobs}
    later: dict[tuple[str, str], dict[str, tuple[str, bytes | None]]] = {}
    for _, ns, cid, channel, _version, type_, blob, *_ in superseded:
        later.setdefault((ns, cid), {})[channel] = (type_, None if blob is None
                                                    else bytes(blob))
    write_rows = [WriteRow(tid, ns, cid, task_id, task_path, idx, channel, type_,
                           bytes(blob) if blob is not None else b"")
                  for tid, ns, cid, task_id, task_path, idx, channel, type_, blob in writes]
    encrypted = any(split_type(t)[1] for t, _ in blob_index.values()) or any(
        split_type(w.type)[1] for w in write_rows) or any(
        split_type(t)[1] for values in later.values() for t, _ in values.values())
    if encrypted and cipher is None:
        raise MigrationError(
            f"Thread {thread_id!r} is encrypted (EncryptedSerializer) and no key was given.",
            NO_KEY_HINT)
    sends = _parent_sends(write_rows)
    rows = [restore_checkpoint(row, blob_index, sends, cipher if encrypted else None,
                               later.get((row[1], row[2])))
            for row in checkpoints]
    return ThreadRows(thread_id, rows, write_rows)


def _parent_sends(writes: Sequence[WriteRow]) -> dict[tuple[str, str], list[WriteRow]]:
    """Each checkpoint's ``__pregel_tasks`` writes, in PostgresSaver's order."""
    found: dict[tuple[str, str], list[WriteRow]] = {}
    for write in writes:
        if write.channel == TASKS:
            found.setdefault((write.checkpoint_ns, write.checkpoint_id), []).append(write)
    for rows in found.values():
        rows.sort(key=lambda w: (w.task_path, w.task_id, w.idx))
    return found


def restore_checkpoint(row: tuple, blob_index: dict[tuple[str, str, str], tuple],
                       sends: dict[tuple[str, str], list[WriteRow]],
                       cipher: Cipher | None,
                       later: dict[str, tuple[str, bytes | None]] | None = None,
                       ) -> CheckpointRow:
    """One SqliteSaver checkpoint row from its PostgresSaver row and the thread's blobs
    (``cipher`` given: the thread is encrypted, so is the rebuilt checkpoint); ``later``:
    this checkpoint's own values of channels whose version's first value differs, by
    channel (type, bytes), which it gets back instead."""
    thread_id, ns, checkpoint_id, parent, document, metadata = row
    key = {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}
    if not isinstance(document, dict):
        raise MigrationError(f"Checkpoint {key} is not a LangGraph checkpoint document.",
                             "The PostgreSQL row is damaged; restore it from a backup.")
    inline = dict(document.get("channel_values") or {})
    versions = document.get("channel_versions") or {}
    values: dict[str, Any] = {}
    families: set[str] = set()
    json_channels: dict[str, bool] = {}
    for channel, value in inline.items():
        values[channel] = value
    for channel, version in versions.items():
        found = blob_index.get((ns, channel, str(version)))
        if found is None or found[0] == EMPTY_BLOB:
            continue
        family, value = _blob_value(key, channel, found, cipher)
        if is_delta_snapshot(value) and inline.get(channel) is not True:
            continue  # a snapshot shared by version with a sibling: not this checkpoint's
        families.add(family)
        json_channels[channel] = family == "json"
        values[channel] = value
    for channel, found in (later or {}).items():
        family, values[channel] = _blob_value(key, channel, found, cipher)
        families.add(family)
        json_channels[channel] = family == "json"
    if len(families) > 1:
        # A msgpack checkpoint reading a json blob an older checkpoint wrote (the first
        # blob of a version serves every checkpoint naming it): the json value is revived
        # by LangGraph's own serializer and re-encoded as msgpack, as SqliteSaver had it.
        values = {channel: _json_as_msgpack(key, channel, value)
                  if json_channels.get(channel) else value
                  for channel, value in values.items()}
        families = {"msgpack"}
    family = families.pop() if families else "msgpack"
    checkpoint = _ordered(document, values)
    if checkpoint.get("v", 4) < 4 and parent is not None:
        checkpoint["pending_sends"] = [
            _write_value(key, w, cipher) for w in sends.get((ns, parent), [])]
    elif checkpoint.get("v", 4) < 4:
        checkpoint["pending_sends"] = []
    if family == "json":
        if _holds_ext(checkpoint):
            raise MigrationError(
                f"Checkpoint {key} mixes json blobs with msgpack objects.",
                "Report this with the checkpoint; it is not restored to avoid any loss.")
        payload = json.dumps(checkpoint, ensure_ascii=False).encode("utf-8")
    else:
        payload = pack_opaque(checkpoint)
    type_tag = family
    if cipher is not None:
        type_tag = f"{family}+aes"
        payload = cipher.encrypt("aes", payload)
    return CheckpointRow(thread_id, ns, checkpoint_id, parent, type_tag, payload,
                         sqlite_metadata(metadata))


def _ordered(document: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its keys in LangGraph's order and its channel values."""
    full = {**document, "channel_values": values}
    ordered = {k: full[k] for k in CHECKPOINT_KEY_ORDER if k in full}
    ordered.update((k, v) for k, v in full.items() if k not in ordered)
    return ordered


def sqlite_metadata(metadata: Any) -> bytes:
    """Metadata as SqliteSaver.put writes it: ``json.dumps(..., ensure_ascii=False)``."""
    return json.dumps(metadata if metadata is not None else {},
                      ensure_ascii=False).encode("utf-8", "ignore")


def _blob_value(key: dict, channel: str, found: tuple[str, bytes | None],
                cipher: Cipher | None) -> tuple[str, Any]:
    """(family, raw value) of one ``checkpoint_blobs`` row."""
    type_tag, data = found
    base, cipher_name = split_type(type_tag)
    data = data or b""
    if cipher_name is not None:
        assert cipher is not None  # restore_thread asks for the key first
        data = cipher.decrypt(cipher_name, data, f"channel {channel!r} of checkpoint {key}")
    if base == "msgpack":
        return "msgpack", _decoded(key, channel, unpack_opaque, data)
    if base == "json":
        return "json", _decoded(key, channel, json.loads, data)
    if base == "null":
        return "msgpack", None
    if base in ("bytes", "bytearray"):
        return "msgpack", data
    if base in REFUSED_TYPES:
        raise MigrationError(
            f"Checkpoint {key}: channel {channel!r} is stored with pickle.",
            "Pickled values need the application's classes; they are not restored.")
    raise MigrationError(f"Checkpoint {key}: channel {channel!r} has unknown type {type_tag!r}.",
                         "Only msgpack, json and their encrypted forms are supported.")


def _json_as_msgpack(key: dict, channel: str, value: Any) -> Any:
    """A json blob's value as the raw msgpack structure LangGraph's serializer gives it."""
    serde = JsonPlusSerializer()
    revived = serde.loads_typed(("json", json.dumps(value).encode("utf-8")))
    try:
        type_tag, data = serde.dumps_typed(revived)
    except Exception as exc:  # noqa: BLE001 - any serializer failure means: cannot rebuild
        raise MigrationError(
            f"Checkpoint {key}: channel {channel!r} is a json blob read by a msgpack "
            f"checkpoint, and LangGraph's serializer cannot encode it as msgpack ({exc}).",
            "Report this with the checkpoint; it is not restored to avoid any loss.") from None
    return _blob_value(key, channel, (type_tag, data), None)[1]


def _write_value(key: dict, write: WriteRow, cipher: Cipher | None) -> Any:
    """The raw value of a ``__pregel_tasks`` write (a Send), for v<4 pending_sends."""
    family, value = _blob_value(key, TASKS, (write.type or "null", write.value), cipher)
    return value


def _decoded(key: dict, channel: str, decode: Any, data: bytes) -> Any:
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MigrationError(
            f"Checkpoint {key}: the blob of channel {channel!r} does not decode ({exc}).",
            "PostgresSaver cannot read this row either; restore it from a backup.") from None


def _holds_ext(value: Any) -> bool:
    if isinstance(value, OpaqueExt):
        return True
    if isinstance(value, dict):
        return any(_holds_ext(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_ext(v) for v in value)
    return False


def difference_reason(original: CheckpointRow, rebuilt: CheckpointRow,
                      cipher: Cipher | None = None) -> str:
    """Why ``rebuilt`` is not byte for byte ``original`` (:data:`SAME_BYTES` when it is).

    Equal values in another key order are :data:`KEY_ORDER` (checkpoint or metadata);
    an encrypted row is :data:`NEW_NONCE` when its plaintext is the same or differs only
    by key order; anything else is :data:`OTHER_CONTENT`.
    """
    if original == rebuilt:
        return SAME_BYTES
    if original[:4] != rebuilt[:4]:
        return OTHER_CONTENT
    if original.type != rebuilt.type:
        return TYPE_CHANGED if (original.type, rebuilt.type) == ("json", "msgpack") \
            else OTHER_CONTENT
    base, cipher_name = split_type(original.type)
    left, right = original.checkpoint or b"", rebuilt.checkpoint or b""
    if cipher_name is not None:
        if cipher is None:
            return OTHER_CONTENT
        left = cipher.decrypt(cipher_name, left)
        right = cipher.decrypt(cipher_name, right)
    decode = json.loads if base == "json" else unpack_opaque
    try:
        same_checkpoint = _unordered(decode(left)) == _unordered(decode(right))
        original_metadata = json.loads(original.metadata or b"{}")
        rebuilt_metadata = json.loads(rebuilt.metadata or b"{}")
    except ValueError:
        return OTHER_CONTENT
    if not same_checkpoint:
        return OTHER_CONTENT
    if _unordered(original_metadata) != _unordered(rebuilt_metadata):
        fitted, changes = jsonb_metadata(original_metadata)
        return METADATA_FITTED if changes and _unordered(fitted) == _unordered(
            rebuilt_metadata) else OTHER_CONTENT
    if cipher_name is not None:
        return NEW_NONCE
    if base == "json":
        return JSON_TEXT
    return KEY_ORDER


def _unordered(value: Any) -> bytes:
    """Bytes equal for equal values whatever their key (and set element) order."""
    return pack_opaque(normalized(value))
