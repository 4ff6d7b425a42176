"""A source that keeps changing: the application writes to SQLite after the export was taken.

The application here is the sample support agent, a real LangGraph graph on SqliteSaver. It
keeps its connection open while the migration looks at the file, so its new checkpoints are
still in the -wal file (SqliteSaver runs SQLite in WAL mode). The verification must read
them, name exactly the threads that differ from the export, and fail; a fresh export and
import then bring those threads over, add no duplicate and touch no row already migrated.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.check_table import (
    CONTENT_INTEGRITY,
    COUNT_MATCH,
    METADATA_INTEGRITY,
    SOURCE_MATCHES_EXPORT,
)
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets.sample import _build_support_graph

NEW_THREAD = "support-late-arrival"


@contextmanager
def running_application(path: Path) -> Iterator[Any]:
    """The support agent on SqliteSaver, its connection held open like a live service."""
    with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
        yield _build_support_graph(SqliteSaver(conn))


def _paused_thread(graph: Any, path: Path) -> str:
    with closing(sqlite3.connect(str(path))) as conn:
        threads = [r[0] for r in conn.execute(
            "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id")]
    for thread_id in threads:
        if graph.get_state({"configurable": {"thread_id": thread_id}}).next:
            return thread_id
    raise AssertionError("the sample has no thread paused on an interrupt")


def _row_snapshot(dsn: str) -> dict[str, set[tuple]]:
    """Every row of PostgresSaver's tables, for before/after comparisons."""
    queries = {
        "checkpoints": "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                       "checkpoint::text, metadata::text FROM checkpoints",
        "checkpoint_blobs": "SELECT thread_id, checkpoint_ns, channel, version, type, blob "
                            "FROM checkpoint_blobs",
        "checkpoint_writes": "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, "
                             "channel, type, blob FROM checkpoint_writes",
    }
    with psycopg.connect(dsn) as conn:
        return {table: set(conn.execute(query).fetchall()) for table, query in queries.items()}


def test_writes_after_the_export_are_named_by_thread_and_a_fresh_export_brings_them_over(
        sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """Verification fails naming exactly the resumed and the new thread; re-export + import
    completes the migration without a duplicate and without changing a migrated row."""
    target = Target(target_dsn)
    first = write_export(sample_db, tmp_path / "first.export", batch_size=30)
    import_export(first, target)
    migrated = _row_snapshot(target_dsn)

    with running_application(sample_db) as graph:
        paused = _paused_thread(graph, sample_db)
        graph.invoke(Command(resume="approve"), {"configurable": {"thread_id": paused}})
        graph.invoke({"messages": [HumanMessage(content="Where is order A-4242?", id="h-0")],
                      "customer": "Late Customer", "order_id": "A-4242"},
                     {"configurable": {"thread_id": NEW_THREAD}})
        assert Path(f"{sample_db}-wal").stat().st_size > 0, "the new rows are in the WAL"

        stale = verify_migration(first, target, source_path=sample_db)
        drift = stale.checks[SOURCE_MATCHES_EXPORT]
        assert not stale.passed and not drift.passed
        assert sorted(drift.mismatches, key=str) == sorted(
            [{"thread_id": paused, "problem": "changed"},
             {"thread_id": NEW_THREAD, "problem": "added"}], key=str)
        assert not stale.checks[COUNT_MATCH].passed  # SQLite now holds more than the export
        # What was migrated still matches the export it came from.
        assert stale.checks[CONTENT_INTEGRITY].passed and stale.checks[METADATA_INTEGRITY].passed

        second = write_export(sample_db, tmp_path / "second.export", batch_size=30)
        summary = import_export(second, target)
        fresh = verify_migration(second, target, source_path=sample_db, readback_threads=None)

    assert fresh.passed, {n: c.mismatches[:3] for n, c in fresh.checks.items() if not c.passed}
    assert sum(b.inserted["checkpoints"] for b in summary.batches) == \
        second.checkpoints - first.checkpoints
    after = _row_snapshot(target_dsn)
    for table, rows in migrated.items():
        assert rows <= after[table], f"a migrated {table} row changed"
    with sqlite3.connect(sample_db) as conn:
        source_checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    assert len(after["checkpoints"]) == second.checkpoints == source_checkpoints
