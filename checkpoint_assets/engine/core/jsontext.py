"""JSON text as the standard library writes it, produced by orjson where that is safe.

Encoding checkpoint headers, inline values and metadata is a large share of an import.
orjson is several times faster than ``json`` but differs on a few inputs; every one of them
is sent to ``json`` instead, so the meaning of the text never changes:

- orjson refuses integers beyond 64 bits, non-string keys, lone surrogates, and (with the
  passthrough options) str/int/dict subclasses, dataclasses and datetimes;
- orjson writes NaN and infinities as ``null``, so any text holding ``null`` is written
  again by ``json`` (which keeps them visible as ``NaN``/``Infinity``).

Number formatting may differ between the two (``1e20`` and ``1e+20``); PostgreSQL reads
both as the same number, and equal values always take the same path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_STRICT = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
           | orjson.OPT_PASSTHROUGH_SUBCLASS)
_SORTED = _STRICT | orjson.OPT_SORT_KEYS


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=...)``."""
    try:
        data = orjson.dumps(value, option=_SORTED if sort_keys else _STRICT)
    except (orjson.JSONEncodeError, TypeError):
        data = None
    if data is None or b"null" in data:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          sort_keys=sort_keys)
    return data.decode("utf-8")
