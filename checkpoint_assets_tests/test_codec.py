"""The raw codec: opaque msgpack round trips and what JSONB can hold exactly.

The JSONB rules are checked against a real PostgreSQL, not assumed.
"""

from __future__ import annotations

import math

import ormsgpack
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from checkpoint_assets.engine.core.codec import (
    float_survives_jsonb,
    pack_opaque,
    primitive_survives_jsonb,
    unpack_opaque,
)

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(), st.binary(),
    st.builds(ormsgpack.Ext, st.integers(0, 127), st.binary()),
)
structures = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(), st.integers(-1000, 1000)), children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(structures)
def test_opaque_msgpack_reencodes_byte_exact(value: object) -> None:
    """Any msgpack structure with extension types re-encodes to the bytes it came from."""
    original = ormsgpack.packb(value, option=ormsgpack.OPT_NON_STR_KEYS)
    assert pack_opaque(unpack_opaque(original)) == original


@pytest.mark.parametrize("value", [
    0.5, 1.0, 0.1, 1e-7, 123456.789,          # plain decimals come back as the same float
    1e20, 1.5e300, -2e16,                     # positive exponent: JSONB gives back an int
    -0.0,                                     # JSONB numeric has no negative zero
    float("nan"), float("inf"), -float("inf"),  # not representable at all
])
def test_float_rule_matches_real_jsonb(admin_dsn: str, value: float) -> None:
    """float_survives_jsonb says True exactly when PostgreSQL returns the same float."""
    with psycopg.connect(admin_dsn) as conn:
        try:
            back = conn.execute("SELECT %s::jsonb", (Jsonb([value]),)).fetchone()[0][0]
            same = isinstance(back, float) and back == value and (
                math.copysign(1, back) == math.copysign(1, value))
        except psycopg.DataError:
            same = False
    assert float_survives_jsonb(value) is same


@pytest.mark.parametrize("value,inline", [
    ("plain", True),
    ("with\x00nul", False),     # JSONB text cannot hold U+0000
    ("emoji 😀 עברית 中文", True),
    (2**63, True),              # JSONB numeric holds big ints exactly
    (None, True),
    (True, True),
    (b"bytes", False),          # not a JSON type: must be a blob
    ([1, 2], False),            # containers are blobs, as PostgresSaver does
])
def test_inline_rule(value: object, inline: bool) -> None:
    """Only primitives that JSONB returns unchanged stay inline in the checkpoint."""
    assert primitive_survives_jsonb(value) is inline
