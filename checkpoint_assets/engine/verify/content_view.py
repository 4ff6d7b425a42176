"""What a checkpoint *means*, computed the same way from the source and from the target.

A view keeps, per checkpoint, four parts that the verification compares separately:
``parent`` (the parent checkpoint id), ``header`` (ids, timestamps and channel versions),
``channels`` (each channel's value as canonical msgpack bytes, decrypted) and
``metadata`` (canonical JSON of what PostgreSQL can hold). Writes rows are compared as
they are. Source views come straight from the decoded SQLite blobs, not from the
converter's output, so a conversion bug shows up as a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from checkpoint_assets.engine.core import jsontext
from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.codec import (
    is_delta_snapshot,
    pack_opaque,
    primitive_survives_jsonb,
    unpack_opaque,
    valid_utf8,
)
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.core.versions import FirstValues
from checkpoint_assets.engine.load.convert import (
    DecodedCheckpoint,
    checkpoint_metadata,
    decode_thread,
    split_type,
)

CheckpointKey = tuple[str, str, str]
WriteKey = tuple[str, str, str, str, int]


@dataclass(frozen=True)
class CheckpointView:
    """The comparable parts of one checkpoint."""

    parent: str | None
    header: str
    channels: tuple[tuple[str, bytes], ...]
    metadata: str

    def differing_parts(self, other: CheckpointView) -> list[str]:
        """Names of the parts that differ from ``other`` (channels named one by one)."""
        parts = [name for name in ("parent", "header", "metadata")
                 if getattr(self, name) != getattr(other, name)]
        mine, theirs = dict(self.channels), dict(other.channels)
        for channel in sorted(set(mine) | set(theirs)):
            if mine.get(channel) != theirs.get(channel):
                parts.append(f"channel {channel}")
        return parts


@dataclass
class BatchView:
    """Views of every checkpoint and write of a set of threads."""

    checkpoints: dict[CheckpointKey, CheckpointView]
    writes: dict[WriteKey, tuple]
    blob_rows: int = 0
    metadata_changes: list[dict] = field(default_factory=list)
    resume_hazards: list[dict] = field(default_factory=list)
    # Later values of channel versions (versions.py), by (thread_id, ns, checkpoint_id,
    # channel): (version, canonical bytes); in the target, the rows of SUPERSEDED_TABLE.
    superseded: dict[tuple[str, str, str, str], tuple[str, bytes]] = field(
        default_factory=dict)
    # What differs in each (source views only): Superseded.as_dict() of each.
    superseded_findings: list[dict] = field(default_factory=list)

    def digest(self) -> str:
        """One digest over all checkpoints and writes (and superseded values, when there
        are any), in key order: the SHA-256 of one msgpack document
        ``[[[*key, parent, header, channels, metadata], ...], [[*key, *write], ...]]``,
        encoded in one call."""
        checkpoints = [(*key, view.parent, view.header, view.channels, view.metadata)
                       for key, view in sorted(self.checkpoints.items())]
        writes = [(*key, *write) for key, write in sorted(self.writes.items())]
        document: list = [checkpoints, writes]
        if self.superseded:
            document.append([(*key, *value) for key, value in sorted(self.superseded.items())])
        return hashlib.sha256(pack_opaque(document)).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys: equal for equal values whatever their key order."""
    return jsontext.dumps(value, sort_keys=True)


# In canonical JSON text, what may hold a value JSONB cannot keep as it is: a NUL, NaN or
# infinity, or any float (a number token with a fraction or an exponent; -0.0 and 1e20-style
# floats change). A match inside a string is only a false alarm: the exact walk runs.
_MAY_CHANGE = re.compile(r"\\u0000|NaN|Infinity|(?:^|[:,\[])-?\d+(?:\.\d+)?[eE.]")


def stored_metadata_json(metadata: Any) -> tuple[str, list]:
    """(canonical JSON of the metadata as JSONB stores it, the changes that needs).

    The same as ``canonical_json`` of :func:`jsonb_metadata`'s value, without walking the
    value in Python when its canonical text shows nothing JSONB would change (no NUL, no
    NaN/infinity, no float, valid UTF-8): then the value is stored as it is.
    """
    text = canonical_json(metadata)
    if not _MAY_CHANGE.search(text) and valid_utf8(text):
        return text, []
    stored, changes = jsonb_metadata(metadata)
    return canonical_json(stored), changes


def source_view(threads: Iterable[ThreadRows], cipher: Cipher | None = None,
                decoded: Mapping[str, list[DecodedCheckpoint]] | None = None) -> BatchView:
    """The view of source rows, as PostgreSQL should give them back.

    ``decoded`` may map thread ids to their :func:`decode_thread` result, so a caller that
    already decoded the rows (the loader) does not decode them twice.
    """
    view = BatchView({}, {})
    for thread in threads:
        known = decoded.get(thread.thread_id) if decoded is not None else None
        thread_decoded = known if known is not None else decode_thread(thread, cipher)
        # PostgreSQL keeps one value per (namespace, channel, version): the first written
        # is the one every checkpoint naming that version reads (versions.py).
        ledger = FirstValues()
        latest: dict[str, tuple] = {}
        for row, decoded_row in zip(thread.checkpoints, thread_decoded):
            versions = decoded_row.header.get("channel_versions") or {}
            channel_bytes = {}
            for channel, value in decoded_row.values.items():
                plain = decoded_row.packed(channel)
                if channel in versions:
                    inline = not decoded_row.cipher_name and primitive_survives_jsonb(value)
                    version = str(versions[channel])
                    first, found = ledger.see(row.thread_id, row.checkpoint_ns,
                                              row.checkpoint_id, channel, version, value,
                                              decoded_row.family, inline, plain)
                    if found is not None:
                        view.superseded[(row.thread_id, row.checkpoint_ns, row.checkpoint_id,
                                         channel)] = (version, plain)
                        view.superseded_findings.append(found.as_dict())
                    if first is not None:
                        plain = first.packed
                    elif not inline:
                        view.blob_rows += 1
                channel_bytes[channel] = plain
            channels = tuple(sorted(channel_bytes.items()))
            latest[row.checkpoint_ns] = (row, decoded_row.values)
            metadata_text, changes = stored_metadata_json(checkpoint_metadata(row))
            view.metadata_changes.extend(
                {"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
                 "checkpoint_id": row.checkpoint_id, "path": c.path, "reason": c.reason,
                 "original": c.original, "stored": c.stored} for c in changes)
            view.checkpoints[(row.thread_id, row.checkpoint_ns, row.checkpoint_id)] = \
                CheckpointView(row.parent_checkpoint_id, canonical_json(decoded_row.header),
                               channels, metadata_text)
        for row, values in latest.values():
            view.resume_hazards.extend(resume_hazards(row, values))
        for w in thread.writes:
            view.writes[(w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx)] = (
                w.task_path, w.channel, w.type, w.value if w.value is not None else b"")
    return view


def resume_hazards(row: Any, values: dict[str, Any]) -> list[dict]:
    """Channel values of a thread's latest checkpoint that a live PostgresSaver cannot save.

    PostgresSaver.put inlines str/int/float/bool values into JSONB when it writes the
    *next* checkpoint: a NUL character, NaN or infinity makes that put fail, and -0.0 or
    a float like 1e20 comes back changed. The migrated data is intact (those values are
    blobs); the hazard is in continuing the thread on PostgresSaver.
    """
    found = []
    for channel, value in values.items():
        if isinstance(value, (str, float)) and not isinstance(value, bool) \
                and not primitive_survives_jsonb(value):
            found.append({"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns,
                          "checkpoint_id": row.checkpoint_id, "channel": channel,
                          "value": repr(value)[:80]})
    return found


def target_view(
    checkpoints: Iterable[tuple], blobs: Iterable[tuple], writes: Iterable[tuple],
    superseded: Iterable[tuple] = (), cipher: Cipher | None = None,
) -> BatchView:
    """The view of target rows, the way PostgresSaver reads them.

    ``checkpoints`` rows are (thread_id, ns, checkpoint_id, parent, checkpoint, metadata)
    with JSONB already parsed; ``blobs`` rows (thread_id, ns, channel, version, type, blob);
    ``writes`` rows in ``checkpoint_writes`` column order; ``superseded`` rows of this
    project's SUPERSEDED_TABLE (superseded_table.SUPERSEDED_COLUMNS order).

    One normalisation, the legitimate difference LangGraph's layout has: a DeltaChannel
    snapshot blob counts only on checkpoints whose inline value marks it (``True``);
    a sibling sharing the version would otherwise see it too.
    """
    blob_index: dict[tuple[str, str, str, str], tuple[str, bytes | None]] = {}
    for thread_id, ns, channel, version, type_, blob in blobs:
        blob_index[(thread_id, ns, channel, version)] = (type_, None if blob is None
                                                         else bytes(blob))
    view = BatchView({}, {}, blob_rows=len(blob_index))
    for thread_id, ns, cid, parent, document, metadata in checkpoints:
        inline = dict(document.get("channel_values") or {})
        header = {k: v for k, v in document.items() if k != "channel_values"}
        channels: dict[str, bytes] = {ch: pack_opaque(v) for ch, v in inline.items()}
        for channel, version in (header.get("channel_versions") or {}).items():
            found = blob_index.get((thread_id, ns, channel, str(version)))
            if found is None or found[0] == "empty":
                continue
            type_tag, blob = found
            if type_tag == "msgpack":
                # The common case, compared by its stored bytes without decoding it.
                data = blob or b""
                if inline.get(channel) is not True and might_be_delta_snapshot(data) \
                        and is_delta_snapshot(unpack_opaque(data)):
                    continue
                channels[channel] = data
                continue
            value = blob_value(type_tag, blob, cipher)
            if is_delta_snapshot(value) and inline.get(channel) is not True:
                continue
            channels[channel] = blob_canonical_bytes(type_tag, blob, value, cipher)
        view.checkpoints[(thread_id, ns, cid)] = CheckpointView(
            parent, canonical_json(header), tuple(sorted(channels.items())),
            canonical_json(metadata))
    for thread_id, ns, cid, task_id, task_path, idx, channel, type_, blob in writes:
        view.writes[(thread_id, ns, cid, task_id, idx)] = (task_path, channel, type_,
                                                           bytes(blob))
    for thread_id, ns, cid, channel, version, type_, blob, *_ in superseded:
        data = None if blob is None else bytes(blob)
        view.superseded[(thread_id, ns, cid, channel)] = (version, blob_canonical_bytes(
            type_, data, blob_value(type_, data, cipher), cipher))
    return view


# msgpack's ext formats: fixext 1/2/4/8/16 put the type code at byte 1, ext 8/16/32 at 2/3/5.
_EXT_CODE_OFFSET = {0xD4: 1, 0xD5: 1, 0xD6: 1, 0xD7: 1, 0xD8: 1, 0xC7: 2, 0xC8: 3, 0xC9: 5}


def might_be_delta_snapshot(data: bytes) -> bool:
    """Cheap test on raw msgpack: is this a top-level extension with code 7?"""
    offset = _EXT_CODE_OFFSET.get(data[0]) if data else None
    return offset is not None and len(data) > offset and data[offset] == 7


def blob_canonical_bytes(type_tag: str, blob: bytes | None, value: Any,
                         cipher: Cipher | None) -> bytes:
    """The bytes a blob is compared by: a msgpack blob's own (decrypted) bytes, exactly as
    stored, so even a trailing byte the decoder would ignore counts as a difference."""
    base, cipher_name = split_type(type_tag)
    if base != "msgpack":
        return pack_opaque(value)
    data = blob or b""
    if cipher_name is not None and cipher is not None:
        data = cipher.decrypt(cipher_name, data)
    return data


def blob_value(type_tag: str, blob: bytes | None, cipher: Cipher | None) -> Any:
    """Decode a ``checkpoint_blobs`` value at the raw level (objects stay opaque)."""
    base, cipher_name = split_type(type_tag)
    data = blob or b""
    if cipher_name is not None:
        if cipher is None:
            return ("encrypted", type_tag, data)
        data = cipher.decrypt(cipher_name, data)
    if base == "msgpack":
        return unpack_opaque(data)
    if base == "json":
        return json.loads(data)
    if base == "null":
        return None
    if base in ("bytes", "bytearray"):
        return data
    return (base, data)
