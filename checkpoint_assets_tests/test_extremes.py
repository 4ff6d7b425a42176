"""Extreme sizes through the whole migration (export -> import -> verify).

Under test: the export file, the loader and the verification at the edges: an empty
SqliteSaver database, a 20 MB channel value, 10,000 threads of one checkpoint each, and one
thread of 20,000 checkpoints. Every database comes from a real LangGraph graph run on a
real SqliteSaver; the two large counts duplicate those real rows with SQL
``INSERT .. SELECT`` (new thread ids, or new checkpoint ids chained by their parent ids).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TypedDict

import psycopg
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from checkpoint_assets.engine.export.reader import verify_export
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.migration import verify_migration

TWENTY_MB = 20 * 1024 * 1024


class _State(TypedDict, total=False):
    payload: Any
    steps: int


def _run_graph(path: Path, thread_id: str, payload: Any) -> None:
    """One real run of a one-node graph on a SqliteSaver at ``path``."""
    def grow(state: _State) -> dict[str, Any]:
        return {"payload": payload, "steps": state.get("steps", 0) + 1}

    builder = StateGraph(_State)
    builder.add_node("grow", grow)
    builder.add_edge(START, "grow")
    builder.add_edge("grow", END)
    with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
        saver = SqliteSaver(conn)
        saver.setup()
        builder.compile(checkpointer=saver).invoke({"steps": 0},
                                                   {"configurable": {"thread_id": thread_id}})


def _migrate_and_verify(source: Path, tmp_path: Path, dsn: str, *,
                        readback: int | None = None) -> tuple[Any, dict[str, float]]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    manifest = write_export(source, tmp_path / "x.export")
    timings["export"] = time.perf_counter() - started
    verify_export(manifest.path)
    target = Target(dsn)
    started = time.perf_counter()
    summary = import_export(manifest, target)
    timings["import"] = time.perf_counter() - started
    assert sum(b.inserted["checkpoints"] for b in summary.batches) == manifest.checkpoints
    started = time.perf_counter()
    report = verify_migration(manifest, target, source_path=source, readback_threads=readback)
    timings["verify"] = time.perf_counter() - started
    assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items()
                           if not c.passed}
    print(f"{source.name}: {manifest.checkpoints} checkpoints, {manifest.threads} threads, "
          f"{len(manifest.batches)} batches, " + ", ".join(
              f"{k} {v:.2f}s" for k, v in timings.items()))
    return manifest, timings


def _pg_count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_empty_database_migrates_with_zero_rows(tmp_path: Path, target_dsn: str) -> None:
    """SqliteSaver.setup() only: the export holds nothing, import and verify pass, the
    target has PostgresSaver's tables and no rows."""
    source = tmp_path / "empty.sqlite"
    with closing(sqlite3.connect(str(source), check_same_thread=False)) as conn:
        SqliteSaver(conn).setup()
    manifest, _ = _migrate_and_verify(source, tmp_path, target_dsn)
    assert (manifest.threads, manifest.checkpoints, manifest.writes) == (0, 0, 0)
    assert manifest.batches == ()
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        assert _pg_count(target_dsn, table) == 0


@pytest.mark.parametrize("payload", [
    # a 20 MB str channel value (a primitive: stays inline in the checkpoint's JSONB)
    "abcdefghij0123456789" * (TWENTY_MB // 20),
    # a 20 MB bytes channel value (a `bytes` blob row)
    bytes(range(256)) * (TWENTY_MB // 256),
], ids=["str", "bytes"])
def test_twenty_megabyte_channel_value(tmp_path: Path, target_dsn: str, payload: Any) -> None:
    """A real graph whose state holds a 20 MB value migrates and verifies byte for byte."""
    source = tmp_path / "big.sqlite"
    _run_graph(source, "big-value", payload)
    _migrate_and_verify(source, tmp_path, target_dsn)


def _seed_one_checkpoint(path: Path) -> None:
    """A real run, cut down to its latest checkpoint (and that checkpoint's writes)."""
    _run_graph(path, "seed", "hello")
    with closing(sqlite3.connect(str(path))) as conn:
        latest = conn.execute("SELECT max(checkpoint_id) FROM checkpoints").fetchone()[0]
        conn.execute("DELETE FROM checkpoints WHERE checkpoint_id <> ?", (latest,))
        conn.execute("DELETE FROM writes WHERE checkpoint_id <> ?", (latest,))
        conn.execute("UPDATE checkpoints SET parent_checkpoint_id = NULL")
        conn.commit()


def test_ten_thousand_threads(tmp_path: Path, target_dsn: str) -> None:
    """10,000 threads of one real checkpoint each (the seed row copied under new thread
    ids) migrate in batches and verify."""
    source = tmp_path / "many.sqlite"
    _seed_one_checkpoint(source)
    with closing(sqlite3.connect(str(source))) as conn:
        for table in ("checkpoints", "writes"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            rest = ", ".join(c for c in cols if c != "thread_id")
            conn.execute(
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) "
                f"INSERT INTO {table} (thread_id, {rest}) "
                f"SELECT printf('thread-%05d', i), {rest} FROM {table}, n "
                f"WHERE thread_id = 'seed'")
        conn.commit()
        assert conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[0] \
            == 10_000
    manifest, _ = _migrate_and_verify(source, tmp_path, target_dsn)
    assert manifest.threads == 10_000 and manifest.checkpoints == 10_000
    assert len(manifest.batches) == 10
    assert _pg_count(target_dsn, "checkpoints") == 10_000


def test_one_thread_of_twenty_thousand_checkpoints(tmp_path: Path, target_dsn: str) -> None:
    """One thread with 20,000 checkpoints (the real checkpoint copied under new, ordered
    checkpoint ids, each the parent of the next) is one batch of its own and verifies,
    read back through both official savers."""
    source = tmp_path / "long.sqlite"
    _seed_one_checkpoint(source)
    with closing(sqlite3.connect(str(source))) as conn:
        seed_id = conn.execute("SELECT checkpoint_id FROM checkpoints").fetchone()[0]
        prefix = seed_id[:-12]
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
            "parent_checkpoint_id, type, checkpoint, metadata) "
            "SELECT thread_id, checkpoint_ns, ? || printf('%012d', i), "
            "CASE WHEN i = 1 THEN NULL ELSE ? || printf('%012d', i - 1) END, type, "
            "checkpoint, metadata FROM checkpoints, n WHERE checkpoint_id = ?",
            (prefix, prefix, seed_id))
        conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", (seed_id,))
        conn.execute("DELETE FROM writes")
        conn.commit()
    manifest, _ = _migrate_and_verify(source, tmp_path, target_dsn, readback=None)
    assert (manifest.threads, manifest.checkpoints) == (1, 20_000)
    assert len(manifest.batches) == 1
    assert _pg_count(target_dsn, "checkpoints") == 20_000
