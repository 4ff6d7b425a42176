"""Checkpoint metadata: from SqliteSaver's JSON text to what PostgreSQL JSONB can hold.

SqliteSaver stores metadata as JSON text and reads it back with ``json.loads``.
PostgresSaver stores JSONB, which cannot hold the NUL character, NaN or infinities, and
turns ``-0.0`` and floats with a positive exponent into other numbers. Such values are
changed to the nearest value JSONB holds, and every change is recorded by its path so
it is reported, never silent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from checkpoint_assets.engine.core.codec import float_survives_jsonb


@dataclass(frozen=True)
class MetadataChange:
    """One metadata value PostgreSQL cannot hold as it was, and what is stored instead."""

    path: str
    reason: str
    original: str
    stored: str


# Byte patterns after which metadata JSON text needs a closer look: a NUL or an unpaired
# surrogate escape, NaN/Infinity, a negative zero, or a float with a positive exponent.
_SUSPECT = (b"\\u0000", b"\\ud", b"\\uD", b"NaN", b"Infinity", b"-0.", b"-0e", b"-0E",
            b"e+", b"E+")


def jsonb_ready_text(raw: bytes | None) -> str | None:
    """The metadata text itself when PostgreSQL JSONB will hold it unchanged, else None.

    A fast path: clean text (no pattern of ``_SUSPECT``) goes to PostgreSQL as it is,
    which parses it into JSONB. Anything suspect takes the exact route of
    :func:`jsonb_metadata` (possibly a false alarm, never a miss).
    """
    if raw is None:
        return "{}"
    if any(pattern in raw for pattern in _SUSPECT):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# First bytes that make json.loads(bytes) detect another encoding than plain UTF-8: a BOM
# (EF, FE, FF) or a NUL byte of UTF-16/32 text.
_ENCODING_MARKERS = (b"\xef", b"\xfe", b"\xff", b"\x00")


def parse_metadata(raw: bytes | None) -> Any:
    """Parse SqliteSaver's metadata bytes the way ``SqliteSaver.list`` does."""
    if raw is None:
        return {}
    if raw[:1] not in _ENCODING_MARKERS and raw[1:2] != b"\x00":
        # What json.loads(bytes) does for UTF-8 without its slow encoding detection.
        return json.loads(raw.decode("utf-8", "surrogatepass"))
    return json.loads(raw)


def jsonb_metadata(value: Any) -> tuple[Any, list[MetadataChange]]:
    """Return the value JSONB will store for ``value`` and the changes that required."""
    changes: list[MetadataChange] = []
    stored = _sanitize(value, "$", changes)
    return stored, changes


def _sanitize(value: Any, path: str, changes: list[MetadataChange]) -> Any:
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            safe_key = _sanitize_text(key, f"{path}[key {key!r}]", changes)
            safe_item = _sanitize(item, f"{path}.{safe_key}", changes)
            if safe_key in result:  # e.g. "a" and "a\x00": one value has to go
                changes.append(MetadataChange(
                    f"{path}.{safe_key}", "two keys are equal once repaired; the value of "
                    f"the first ({result[safe_key]!r}) was dropped",
                    repr(result[safe_key]), repr(safe_item)))
            result[safe_key] = safe_item
        return result
    if isinstance(value, list):
        return [_sanitize(item, f"{path}[{i}]", changes) for i, item in enumerate(value)]
    if isinstance(value, str):
        return _sanitize_text(value, path, changes)
    if isinstance(value, float) and not float_survives_jsonb(value):
        stored = _jsonb_number(value)
        changes.append(MetadataChange(path, _float_reason(value), repr(value), repr(stored)))
        return stored
    return value


def _sanitize_text(text: str, path: str, changes: list[MetadataChange]) -> str:
    stored = text
    reasons = []
    if "\x00" in stored:
        # The same repair PostgresSaver.put applies to top-level metadata strings.
        stored = stored.replace("\x00", "")
        reasons.append("NUL character removed (JSONB cannot hold \\u0000)")
    try:
        stored.encode("utf-8")
    except UnicodeEncodeError:
        stored = stored.encode("utf-8", "replace").decode("utf-8")
        reasons.append("unpaired surrogate replaced (not valid UTF-8)")
    if reasons:
        changes.append(MetadataChange(path, "; ".join(reasons), repr(text), repr(stored)))
    return stored


def _jsonb_number(value: float) -> Any:
    """The number JSONB gives back for a float it cannot hold exactly."""
    if math.isnan(value) or math.isinf(value):
        return None
    if value == 0.0:
        return 0.0
    return int(Decimal(repr(value)))


def _float_reason(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "NaN/Infinity stored as null (JSONB has no such number)"
    if value == 0.0:
        return "negative zero stored as 0.0 (JSONB numeric has no sign for zero)"
    return "float with a positive exponent reads back from JSONB as an integer"
