"""Raw msgpack and JSON handling that needs none of the application's classes.

LangGraph's serializer stores objects (pydantic models, dataclasses, enums, messages) as
msgpack extension types. Decoding with an ext hook that returns the extension unchanged
keeps those objects opaque, and re-encoding the opaque structure reproduces the original
bytes exactly, so values can be split per channel without importing anything.
"""

from __future__ import annotations

import math
from typing import Any

import ormsgpack

# LangGraph's msgpack extension code for a DeltaChannel snapshot (serde/jsonplus.py).
EXT_DELTA_SNAPSHOT = 7

_OPTIONS = ormsgpack.OPT_NON_STR_KEYS


class OpaqueExt:
    """A msgpack extension value kept as its code and bytes (``ormsgpack.Ext`` hides both)."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueExt) and (self.code, self.data) == (other.code,
                                                                            other.data)

    def __hash__(self) -> int:
        return hash((self.code, self.data))

    def __repr__(self) -> str:
        return f"OpaqueExt({self.code}, {len(self.data)} bytes)"


def _pack_ext(value: Any) -> ormsgpack.Ext:
    if isinstance(value, OpaqueExt):
        return ormsgpack.Ext(value.code, value.data)
    raise TypeError(f"cannot encode {type(value).__name__} as raw msgpack")


def unpack_opaque(data: bytes) -> Any:
    """Decode msgpack bytes, leaving every extension type as an :class:`OpaqueExt`."""
    return ormsgpack.unpackb(data, ext_hook=OpaqueExt, option=_OPTIONS)


def pack_opaque(value: Any) -> bytes:
    """Encode a value produced by :func:`unpack_opaque` back to msgpack bytes."""
    return ormsgpack.packb(value, default=_pack_ext, option=_OPTIONS)


def is_delta_snapshot(value: Any) -> bool:
    """True for a DeltaChannel snapshot (msgpack ext code 7) left opaque."""
    return isinstance(value, OpaqueExt) and value.code == EXT_DELTA_SNAPSHOT


def float_survives_jsonb(value: float) -> bool:
    """True when PostgreSQL JSONB gives back exactly this float.

    JSONB stores numbers as ``numeric``: NaN and infinities are refused, ``-0.0`` comes
    back as ``0.0``, and a float written with a positive exponent (``1e+20``) comes back
    as an integer.
    """
    if not math.isfinite(value):
        return False
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return False
    text = repr(value)
    return "e+" not in text and "E+" not in text


def primitive_survives_jsonb(value: Any) -> bool:
    """True for a value PostgresSaver keeps inline and JSONB returns unchanged.

    PostgresSaver inlines ``None``, ``str``, ``int``, ``float`` and ``bool``; only those
    that JSONB holds exactly may stay inline, the rest must become blobs.
    """
    kind = type(value)
    if kind is str:
        return "\x00" not in value and valid_utf8(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return float_survives_jsonb(value)
    return False


def valid_utf8(text: str) -> bool:
    """True when ``text`` encodes to UTF-8 (no unpaired surrogate, e.g. from ``"\\ud800"``)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate, e.g. from a JSON "\ud800" escape
        return False
    return True


def json_safe_structure(value: Any) -> bool:
    """True when a decoded structure can be stored in JSONB and read back unchanged."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not primitive_survives_jsonb(key):
                return False
            if not json_safe_structure(item):
                return False
        return True
    if kind is list:
        return all(json_safe_structure(item) for item in value)
    return primitive_survives_jsonb(value)


# LangGraph's msgpack code for "call a constructor with one argument" (sets among them).
EXT_CONSTRUCTOR_SINGLE_ARG = 0
_UNORDERED = ({"builtins"}, {"set", "frozenset"})


def normalized(value: Any) -> Any:
    """A form of an opaque value in which encodings of the same value are equal.

    Two checkpoints can encode one value differently: a set's elements come out in
    iteration order, and dicts compare equal whatever their key order. Extension payloads
    are themselves msgpack, so they are decoded and normalised too; no class is imported.
    """
    if isinstance(value, OpaqueExt):
        try:
            payload = normalized(unpack_opaque(value.data))
        except (ormsgpack.MsgpackDecodeError, ValueError):
            return ("ext", value.code, value.data)
        if (value.code == EXT_CONSTRUCTOR_SINGLE_ARG and isinstance(payload, list)
                and len(payload) == 3 and payload[0] in _UNORDERED[0]
                and payload[1] in _UNORDERED[1] and isinstance(payload[2], list)):
            payload = [payload[0], payload[1], sorted(payload[2], key=pack_opaque)]
        return ("ext", value.code, payload)
    if isinstance(value, dict):
        items = [(normalized(k), normalized(v)) for k, v in value.items()]
        return ("map", sorted(items, key=lambda kv: pack_opaque(kv[0])))
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def same_value(a: Any, b: Any) -> bool:
    """True when two opaque values are encodings of the same value (see :func:`normalized`)."""
    return a == b or pack_opaque(normalized(a)) == pack_opaque(normalized(b))
