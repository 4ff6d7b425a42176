"""The verification's fast paths give exactly what the exact routes give.

Under test:
- ``content_view.stored_metadata_json``: for arbitrary JSON metadata (NUL, unpaired
  surrogates, huge integers, NaN/Infinity, -0.0, 1e20-style floats), the canonical text and
  the listed changes equal ``canonical_json(jsonb_metadata(value))`` and its changes;
- ``content_view.load_jsonb``: for any JSON text a JSONB column can give back, the value
  equals ``json.loads``'s, integers beyond 64 bits and floats included, told apart by type.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from checkpoint_assets.engine.content_view import canonical_json, load_jsonb, stored_metadata_json
from checkpoint_assets.engine.metadata import jsonb_metadata
from checkpoint_assets_tests.test_properties import _strict_equal, json_values


@settings(max_examples=400, deadline=None)
@given(value=json_values)
# a float at the top level, where no ':' ',' or '[' comes before it
@example(value=-0.0)
# a float with a positive exponent inside a list
@example(value=[1e20])
# text that looks like a float inside a string (a false alarm: the exact route runs)
@example(value={"s": ":1.5"})
def test_stored_metadata_json_equals_the_exact_route(value: Any) -> None:
    """Fast or not, the same stored text and the same changes by path."""
    text, changes = stored_metadata_json(value)
    stored, exact_changes = jsonb_metadata(value)
    assert text == canonical_json(stored)
    assert changes == exact_changes


jsonb_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 40), max_value=10 ** 40),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(value=jsonb_values)
# an integer beyond 64 bits, which orjson would read as a float
@example(value={"n": 10 ** 20})
# a lone surrogate escape, which orjson refuses
@example(value={"s": "\ud800"})
def test_load_jsonb_reads_what_json_reads(value: Any) -> None:
    """The value of any JSON text, with int and float told apart."""
    data = json.dumps(value).encode()
    assert _strict_equal(load_jsonb(data), json.loads(data))
