"""One value per channel version: PostgresSaver's rule, and what it leaves behind.

PostgresSaver writes a channel's blob once per (thread, namespace, channel, version) and
never rewrites it (a later put at the same version does nothing). SqliteSaver stores every
channel value inside each checkpoint, so when an application re-encodes an unchanged
value (its class moved, a script or notebook could not import it and LangGraph fell back to
a plain mapping, a model gained a field) the later checkpoints hold other bytes at the same
version. The target holds what PostgresSaver would hold had the application written to it
from the start: the FIRST value written at each version. Every later value whose bytes
differ is kept, by checkpoint and channel, in this project's own table
(``SUPERSEDED_TABLE``) and named by the verification.

Both the converter and the verification's expected view walk a thread's checkpoints in
order with one :class:`FirstValues` ledger, so the rule is applied in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ormsgpack

from checkpoint_assets.engine.core.codec import (
    OpaqueExt,
    normalized,
    pack_opaque,
    same_value,
    unpack_opaque,
)

# This project's own table in the target schema (never one of PostgresSaver's): the later
# values of a channel version, with their original bytes.
SUPERSEDED_TABLE = "checkpoint_assets_superseded_values"

# How a later value at a version differs from the first one.
ENCODING = "encoding"  # the same fields and values; only the class (or none) differs
FIELDS_ADDED = "fields added"  # every field of the first equal; the later has more
CONTENT = "content"  # a value itself differs
KINDS = (ENCODING, FIELDS_ADDED, CONTENT)

# LangGraph's object extensions (serde/jsonplus.py): a msgpack list whose first two items
# are the class's module and name and whose third is its data; the data is what LangGraph
# gives back when it cannot import the class.
_OBJECT_CODES = {0: "constructor", 1: "constructor", 2: "constructor", 3: "method",
                 4: "pydantic v1", 5: "pydantic v2"}


@dataclass(frozen=True)
class Superseded:
    """A checkpoint's value of a channel at a version whose first value differs."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    channel: str
    version: str
    first_checkpoint_id: str
    kind: str  # ENCODING, FIELDS_ADDED or CONTENT
    detail: str  # what differs, for people

    def as_dict(self) -> dict[str, str]:
        """The finding as the verification lists it."""
        return {"thread_id": self.thread_id, "checkpoint_ns": self.checkpoint_ns,
                "checkpoint_id": self.checkpoint_id, "channel": self.channel,
                "version": self.version, "first_checkpoint_id": self.first_checkpoint_id,
                "kind": self.kind, "difference": self.detail}


@dataclass
class FirstValue:
    """The first value a thread's checkpoints hold at one (namespace, channel, version)."""

    checkpoint_id: str
    value: Any
    family: str  # msgpack or json (values of two families are never compared)
    inline: bool  # kept inline in the checkpoint JSONB (else a checkpoint_blobs row)
    packed: bytes  # the value as canonical msgpack (codec.pack_opaque)


class FirstValues:
    """The ledger of one thread: the first value of each channel version, in checkpoint
    order, and every later value that differs from it."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str, str], FirstValue] = {}

    def see(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, channel: str,
            version: str, value: Any, family: str, inline: bool, packed: bytes,
            ) -> tuple[FirstValue | None, Superseded | None]:
        """Record ``value`` (``packed``: its codec.pack_opaque bytes) at its version.
        Returns (the earlier first value, or None when this is the first; a
        :class:`Superseded` when this value differs from it).

        Values of two families (json rows before an upgrade, msgpack after) are taken as
        the same value: neither can be decoded into the other without classes.
        """
        key = (checkpoint_ns, channel, version)
        first = self._first.get(key)
        if first is None:
            self._first[key] = FirstValue(checkpoint_id, value, family, inline, packed)
            return None, None
        if first.packed == packed or first.family != family or same_value(first.value,
                                                                            value):
            return first, None
        kind, detail = classify(first.value, value)
        return first, Superseded(thread_id, checkpoint_ns, checkpoint_id, channel, version,
                                 first.checkpoint_id, kind, detail)


def classify(first: Any, later: Any) -> tuple[str, str]:
    """(kind, what differs) of two different values of one version, decoded opaquely.

    ENCODING: with every LangGraph object replaced by its data (what LangGraph returns when
    the class cannot be imported), the two are equal: a class that moved or could not be
    imported. FIELDS_ADDED: every field of the first is in the later with an equal value,
    and the later has more (a model that gained fields with defaults). CONTENT: anything
    else; such a value is never reported as an encoding difference.
    """
    plain_first, plain_later = _plain(first), _plain(later)
    first_classes, later_classes = _classes(first), _classes(later)
    classes = (f"{_names(first_classes)} in the first, {_names(later_classes)} in the later"
               if first_classes != later_classes else "")
    if _packed(plain_first) == _packed(plain_later):
        return ENCODING, "the same fields and values" + (f"; {classes}" if classes else "")
    added: list[str] = []
    if _only_added(plain_first, plain_later, "", added):
        return FIELDS_ADDED, (f"fields added: {', '.join(added[:10])}"
                              f"{', ...' if len(added) > 10 else ''}; every other field "
                              "equal" + (f"; {classes}" if classes else ""))
    return CONTENT, _first_difference(plain_first, plain_later, "") or "the values differ"


def _plain(value: Any) -> Any:
    """``value`` with each LangGraph object replaced by its data, normalised (see
    codec.normalized) so encodings of one value compare equal."""
    if isinstance(value, OpaqueExt):
        payload = _object_payload(value)
        if payload is not None:
            return _plain(payload[2])
        return normalized(value)
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _key(key: Any) -> Any:
    return key if isinstance(key, (str, int, float, bool)) or key is None \
        else _packed(normalized(key))


def _object_payload(value: OpaqueExt) -> list | None:
    """[module, name, data, ...] of a LangGraph object extension, else None."""
    if value.code not in _OBJECT_CODES:
        return None
    try:
        payload = unpack_opaque(value.data)
    except (ormsgpack.MsgpackDecodeError, ValueError):
        return None
    if isinstance(payload, list) and len(payload) >= 3 and all(
            isinstance(p, str) for p in payload[:2]):
        return payload
    return None


def _classes(value: Any) -> list[str]:
    """The classes of LangGraph objects in ``value``, outermost first, each once."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, OpaqueExt):
            payload = _object_payload(item)
            if payload is not None:
                name = f"{payload[0]}.{payload[1]} ({_OBJECT_CODES[item.code]})"
                if name not in found:
                    found.append(name)
                walk(payload[2])
        elif isinstance(item, dict):
            for v in item.values():
                walk(v)
        elif isinstance(item, list):
            for v in item:
                walk(v)

    walk(value)
    return found


def _names(classes: list[str]) -> str:
    if not classes:
        return "plain values (no class)"
    return ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")


def _packed(value: Any) -> bytes:
    return pack_opaque(normalized(value))


def _only_added(first: Any, later: Any, path: str, added: list[str]) -> bool:
    """True when ``later`` is ``first`` with fields (map keys) added, anywhere; the added
    paths are appended to ``added``."""
    if isinstance(first, dict) and isinstance(later, dict):
        if not set(first) <= set(later):
            return False
        for key in later:
            where = f"{path}.{key}" if path else str(key)
            if key not in first:
                added.append(where)
            elif not _only_added(first[key], later[key], where, added):
                return False
        return True
    if isinstance(first, list) and isinstance(later, list):
        return len(first) == len(later) and all(
            _only_added(a, b, f"{path}[{n}]", added) for n, (a, b) in enumerate(zip(first,
                                                                                   later)))
    return _packed(first) == _packed(later)


def _first_difference(first: Any, later: Any, path: str) -> str:
    """Where two plain values first differ, for people (the values cut short)."""
    if isinstance(first, dict) and isinstance(later, dict):
        for key in sorted(set(first) | set(later), key=repr):
            where = f"{path}.{key}" if path else str(key)
            if key not in later:
                return f"field {where} is gone in the later value"
            if key not in first:
                continue
            found = _first_difference(first[key], later[key], where)
            if found:
                return found
        return ""
    if isinstance(first, list) and isinstance(later, list):
        if len(first) != len(later):
            return f"{path or 'the value'} has {len(first)} items in the first, " \
                   f"{len(later)} in the later"
        for n, (a, b) in enumerate(zip(first, later)):
            found = _first_difference(a, b, f"{path}[{n}]")
            if found:
                return found
        return ""
    if _packed(first) == _packed(later):
        return ""
    return f"{path or 'the value'}: {_short(first)} in the first, {_short(later)} in the later"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
