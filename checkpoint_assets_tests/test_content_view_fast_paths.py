"""The expected view's fast path gives exactly what the exact route gives.

Under test:
- ``content_view.stored_metadata_json``: for arbitrary JSON metadata (NUL, unpaired
  surrogates, huge integers, NaN/Infinity, -0.0, 1e20-style floats), the canonical text and
  the listed changes equal ``canonical_json(jsonb_metadata(value))`` and its changes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings

from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.verify.content_view import canonical_json, stored_metadata_json
from checkpoint_assets_tests.test_properties import json_values


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
