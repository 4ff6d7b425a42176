"""Property-based tests (hypothesis) of what arbitrary input does on a real PostgreSQL.

Under test:
- ``engine.checkpoint_metadata.jsonb_metadata``: for arbitrary JSON metadata (unicode, NUL, unpaired
  surrogates, deep nesting, huge integers, NaN/Infinity written by ``json.dumps`` with
  ``allow_nan``), the "stored" value it returns is exactly what a real PostgreSQL JSONB
  column gives back, and every difference from the original is listed as a change.
- the whole migration (export -> import -> verify) for arbitrary thread ids and
  ``checkpoint_ns`` strings (quotes, backslashes, unicode, long): the rows come from a tiny
  real LangGraph graph run with that thread id on a real SqliteSaver; the namespace is
  then set with a SQLite UPDATE of those real rows.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypedDict

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from psycopg.types.json import Jsonb

from checkpoint_assets.embedded_postgres import temporary_database
from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import TransientLoadError
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.migration import verify_migration

PROPERTY_SETTINGS = settings(deadline=None, max_examples=200,
                             suppress_health_check=[HealthCheck.too_slow])
MIGRATION_SETTINGS = settings(deadline=None, max_examples=40,
                              suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pg(admin_dsn: str) -> Iterator[psycopg.Connection]:
    """One database (and connection) for the module: hypothesis examples share it."""
    with temporary_database(admin_dsn, "ca_prop") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            yield conn


@pytest.fixture(scope="module")
def migration_dsn(admin_dsn: str) -> Iterator[str]:
    """A database with PostgresSaver's tables, emptied before every example."""
    with temporary_database(admin_dsn, "ca_prop") as dsn:
        Target(dsn).setup()
        yield dsn


# --------------------------------------------------------------------------- metadata

# Text with what JSONB cannot hold: NUL, unpaired surrogates; plus quotes, backslashes.
_NASTY = st.sampled_from(["\x00", "\ud800", "\udfff", '"', "\\", "\u2028", "🚀", "é", "\n"])
texts = st.lists(st.one_of(st.text(max_size=8), _NASTY), max_size=4).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(),
    st.integers(min_value=-(10 ** 300), max_value=10 ** 300),  # far beyond int64
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 1e20, 1.5e300, 5e-324, float("nan"), float("-inf")]),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(texts, children, max_size=4)),
    max_leaves=25,
)


def _deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n\x00" if i % 3 == 0 else "n": value}
    return value


def _strict_equal(a: Any, b: Any) -> bool:
    """Equality that tells int from float, -0.0 from 0.0, and never equates NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def _unlisted_differences(original: Any, stored: Any, path: str,
                          listed: set[str]) -> list[str]:
    """Paths where ``stored`` differs from ``original`` without a change naming them."""
    if _strict_equal(original, stored):
        return []
    if path in listed:
        return []
    if isinstance(original, dict) and isinstance(stored, dict):
        missing: list[str] = []
        seen_safe: dict[str, str] = {}
        for key, item in original.items():
            safe = key.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
            if safe != key and f"{path}[key {key!r}]" not in listed:
                missing.append(f"{path}[key {key!r}]")
            if safe in seen_safe and f"{path}.{safe}" not in listed:  # a value dropped
                missing.append(f"{path}.{safe} (keys {seen_safe[safe]!r} and {key!r} merged)")
            seen_safe[safe] = key
            if safe not in stored:
                missing.append(f"{path}.{safe} (gone)")
                continue
            missing += _unlisted_differences(item, stored[safe], f"{path}.{safe}", listed)
        return missing
    if isinstance(original, list) and isinstance(stored, list) and len(original) == len(stored):
        return [m for i, (x, y) in enumerate(zip(original, stored))
                for m in _unlisted_differences(x, y, f"{path}[{i}]", listed)]
    return [path]


@PROPERTY_SETTINGS
@given(value=st.dictionaries(texts, json_values, max_size=5))
# deeply nested, with NUL keys along the way
@example(value={"deep": _deep(150, float("nan"))})
# the largest integer and float JSON text can carry into Python
@example(value={"big": 10 ** 4000, "huge": 1.7976931348623157e308, "tiny": -5e-324})
# a key that only differs from another by a NUL
@example(value={"step": 1, "step\x00": 2})
def test_jsonb_metadata_stored_value_is_what_postgres_returns(
        pg: psycopg.Connection, value: dict[str, Any]) -> None:
    """Round trip through SqliteSaver's JSON text and a real JSONB column: PostgreSQL gives
    back exactly the "stored" value, and every difference from the original is a listed
    change."""
    original = json.loads(json.dumps(value, allow_nan=True))  # what SqliteSaver reads back
    stored, changes = jsonb_metadata(original)
    back = pg.execute("SELECT %s::jsonb", (Jsonb(stored),)).fetchone()[0]
    assert _strict_equal(back, stored), (back, stored)
    listed = {c.path for c in changes}
    assert not _unlisted_differences(original, stored, "$", listed), (original, stored, changes)
    if not changes:
        assert _strict_equal(stored, original)


# --------------------------------------------------------------------------- keys


class _State(TypedDict, total=False):
    text: str
    steps: int


def _step(state: _State) -> dict[str, Any]:
    return {"text": state.get("text", "") + "!", "steps": state.get("steps", 0) + 1}


_GRAPH = StateGraph(_State)
_GRAPH.add_node("step", _step)
_GRAPH.add_edge(START, "step")
_GRAPH.add_edge("step", END)


def _write_source(path: Path, thread_id: str, ns: str) -> None:
    """A SqliteSaver DB with one real run of a tiny graph on ``thread_id``, in ``ns``."""
    with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
        saver = SqliteSaver(conn)
        saver.setup()
        graph = _GRAPH.compile(checkpointer=saver)
        graph.invoke({"text": "hi"}, {"configurable": {"thread_id": thread_id}})
        if ns:
            for table in ("checkpoints", "writes"):
                conn.execute(f"UPDATE {table} SET checkpoint_ns = ?", (ns,))
            conn.commit()


def _migrate(dsn: str, thread_id: str, ns: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="ca-prop-"))
    try:
        source = work / "src.sqlite"
        _write_source(source, thread_id, ns)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
        manifest = write_export(source, work / "x.export")
        assert manifest.threads == 1 and manifest.checkpoints >= 2
        target = Target(dsn)
        import_export(manifest, target)
        report = verify_migration(manifest, target, source_path=source, readback_threads=None)
        assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items()
                               if not c.passed}
        with psycopg.connect(dsn) as conn:
            keys = set(conn.execute("SELECT DISTINCT thread_id, checkpoint_ns FROM checkpoints"))
        assert keys == {(thread_id, ns)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Anything SQLite and PostgreSQL text can hold (no NUL, no lone surrogate).
key_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
key_texts = st.one_of(
    st.text(key_chars, min_size=1, max_size=30),
    st.sampled_from(['"', "'", "\\", "\\\\'\"", "%s", "{}", "$1", "--", "a\nb", "\t"]),
    st.text(key_chars, min_size=200, max_size=400),  # long, still inside btree limits
)


@MIGRATION_SETTINGS
@given(thread_id=key_texts, ns=st.one_of(st.just(""), key_texts))
# quotes, backslashes and a path-like id (the corpus' worst case)
@example(thread_id="ticket \"42\" o'brien \\ C:\\tmp\\x", ns="a|b:c")
# long ASCII id: 2,000 characters (compressible, fits the index)
@example(thread_id="t" * 2000, ns="")
def test_any_thread_id_and_namespace_survive_the_migration(
        migration_dsn: str, thread_id: str, ns: str) -> None:
    """A real graph's rows under arbitrary thread id / checkpoint_ns: export, import and
    verify (every thread read back through both official savers) pass, keys unchanged."""
    _migrate(migration_dsn, thread_id, ns)


@pytest.mark.parametrize("thread_id", [
    # NUL: SQLite holds it, PostgreSQL text cannot
    "bad\x00id",
    # incompressible 3,000 characters of 4-byte UTF-8: over PostgreSQL's btree row limit
    "".join(chr(0x10000 + (i * 7919) % 0xFFFF) for i in range(3000)),
])
def test_thread_ids_postgres_cannot_hold_fail_cleanly(migration_dsn: str, tmp_path: Path,
                                                      thread_id: str) -> None:
    """A thread id PostgreSQL cannot store is refused with a MigrationError, and nothing
    of its batch is written (never a silent loss)."""
    source = tmp_path / "src.sqlite"
    _write_source(source, thread_id, "")
    with psycopg.connect(migration_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
    manifest = write_export(source, tmp_path / "x.export")
    with pytest.raises(MigrationError) as info:
        import_export(manifest, Target(migration_dsn))
    assert not isinstance(info.value, TransientLoadError)  # permanent: not retried
    with psycopg.connect(migration_dsn) as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
