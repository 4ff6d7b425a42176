"""Verification compares content, not counts, and names every mismatch by key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.check_table import (
    CONTENT_INTEGRITY,
    COUNT_MATCH,
    METADATA_INTEGRITY,
    OFFICIAL_READBACK,
    RESUMABLE_ON_POSTGRES,
    SOURCE_MATCHES_EXPORT,
)
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests import corpus_graphs as cg


@pytest.fixture
def exported(sample_db: Path, tmp_path: Path) -> ExportManifest:
    """The sample database exported."""
    return write_export(sample_db, tmp_path / "x.export", batch_size=30)


def test_the_obvious_aput_approach_is_caught_although_counts_match(
        sample_db: Path, exported: ExportManifest, target_dsn: str) -> None:
    """Re-saving with put(..., new_versions={}) keeps checkpoint counts equal and loses
    every non-inline channel value and every pending write: the content check fails."""
    with PostgresSaver.from_conn_string(target_dsn) as saver:
        saver.setup()
        source = SqliteSaver(sqlite3.connect(sample_db, check_same_thread=False))
        for tuple_ in source.list(None):
            saver.put(tuple_.config, tuple_.checkpoint, tuple_.metadata, {})
    report = verify_migration(exported, Target(target_dsn), source_path=sample_db)
    content = report.checks[CONTENT_INTEGRITY]
    assert report.counts["target"]["checkpoints"] == exported.checkpoints  # counts "match"
    assert not content.passed
    assert any("channel" in m["problem"] for m in content.mismatches)
    assert any(m["problem"] == "write missing in target" for m in content.mismatches)
    assert not report.checks[OFFICIAL_READBACK].passed
    assert not report.passed


def test_a_changed_blob_byte_is_named_by_checkpoint_and_channel(
        sample_db: Path, exported: ExportManifest, target_dsn: str) -> None:
    """One flipped byte in one channel value: content fails and names the channel."""
    target = Target(target_dsn)
    import_export(exported, target)
    with psycopg.connect(target_dsn) as conn:
        thread_id, channel = conn.execute(
            "UPDATE checkpoint_blobs SET blob = blob || '\\x00'::bytea WHERE ctid = "
            "(SELECT ctid FROM checkpoint_blobs WHERE type = 'msgpack' LIMIT 1) "
            "RETURNING thread_id, channel").fetchone()
    report = verify_migration(exported, target, source_path=sample_db)
    content = report.checks[CONTENT_INTEGRITY]
    assert not content.passed
    assert all(m["thread_id"] == thread_id for m in content.mismatches)
    assert any(f"channel {channel}" in m["problem"] for m in content.mismatches)
    assert report.checks[COUNT_MATCH].passed  # counts alone would have passed


def test_changed_metadata_is_named(
        sample_db: Path, exported: ExportManifest, target_dsn: str) -> None:
    """Metadata edited in the target: metadata integrity fails for exactly that row."""
    target = Target(target_dsn)
    import_export(exported, target)
    with psycopg.connect(target_dsn) as conn:
        key = conn.execute(
            "UPDATE checkpoints SET metadata = metadata || '{\"step\": 999}' WHERE ctid = "
            "(SELECT ctid FROM checkpoints LIMIT 1) "
            "RETURNING thread_id, checkpoint_ns, checkpoint_id").fetchone()
    report = verify_migration(exported, target, source_path=sample_db)
    check = report.checks[METADATA_INTEGRITY]
    assert [(m["thread_id"], m["checkpoint_ns"], m["checkpoint_id"])
            for m in check.mismatches] == [key]


def test_source_written_after_the_export_is_reported_by_thread(
        sample_db: Path, exported: ExportManifest, target_dsn: str) -> None:
    """The application kept writing: verification names the new and changed threads."""
    target = Target(target_dsn)
    import_export(exported, target)
    with sqlite3.connect(sample_db) as conn:
        changed = conn.execute("SELECT thread_id FROM checkpoints LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM writes WHERE thread_id = ?", (changed,))
        conn.execute("INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
                     "idx, channel, type, value) VALUES ('late-thread', '', 'c1', 't', 0, "
                     "'x', 'msgpack', x'c0')")
    report = verify_migration(exported, target, source_path=sample_db)
    drift = report.checks[SOURCE_MATCHES_EXPORT]
    assert not drift.passed and not report.passed
    assert {"thread_id": changed, "problem": "changed"} in drift.mismatches
    assert {"thread_id": "late-thread", "problem": "added"} in drift.mismatches


def test_values_postgres_saver_cannot_save_next_are_a_warning(
        tmp_path: Path, target_dsn: str) -> None:
    """A thread whose state holds NUL/NaN strings/floats migrates intact, passes, and is
    flagged: a live PostgresSaver.put would fail on its next checkpoint."""
    corpus = cg.build_rich_corpus(tmp_path / "rich.sqlite")
    manifest = write_export(corpus.path, tmp_path / "x.export")
    target = Target(target_dsn)
    import_export(manifest, target)
    report = verify_migration(manifest, target, source_path=corpus.path)
    warning = report.checks[RESUMABLE_ON_POSTGRES]
    assert report.passed and not warning.passed
    flagged = {(m["thread_id"], m["channel"]) for m in warning.mismatches}
    assert {("rich-basic", "note"), ("rich-basic", "nan_float")} <= flagged
    with psycopg.Connection.connect(target_dsn, autocommit=True, prepare_threshold=0,
                                    row_factory=psycopg.rows.dict_row) as conn:
        graph = corpus.graph_factory(PostgresSaver(conn))  # type: ignore[arg-type]
        config = cg.thread_config("rich-basic")
        with pytest.raises(psycopg.DataError):
            graph.update_state(config, {"approval": "one more step"})
