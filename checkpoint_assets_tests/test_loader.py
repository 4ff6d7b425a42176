"""Loading batches: one transaction each, idempotent, and never overwriting a row."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from checkpoint_assets.engine.core.errors import ConflictError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import load_batch
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.comparison import compare_batch

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def _table_snapshot(dsn: str) -> dict[str, list]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4, 5").fetchall()
                for t in TABLES}


@pytest.fixture
def exported(sample_db: Path, tmp_path: Path) -> ExportManifest:
    """The sample database exported in several batches."""
    return write_export(sample_db, tmp_path / "out.export", batch_size=40)


@pytest.fixture
def target(target_dsn: str) -> Target:
    """An empty database with PostgresSaver's tables."""
    t = Target(target_dsn)
    t.setup()
    return t


def test_each_batch_lands_whole_and_matches_the_export(
        exported: ExportManifest, target: Target) -> None:
    """After loading, every batch's counts and content digest equal the export's."""
    for entry in exported.batches:
        result = load_batch(target, exported, entry.key)
        assert result.inserted["checkpoints"] == entry.checkpoints
        assert result.inserted["checkpoint_writes"] == entry.writes
        assert sum(result.already_present.values()) == 0
    for entry in exported.batches:
        comparison = compare_batch(target, exported, entry.key)
        assert comparison.passed, comparison


def test_rerunning_a_batch_changes_nothing_and_says_so(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """A second load of the same batch inserts nothing and reports every row present."""
    key = exported.batches[0].key
    first = load_batch(target, exported, key)
    before = _table_snapshot(target_dsn)
    second = load_batch(target, exported, key)
    assert _table_snapshot(target_dsn) == before
    assert sum(second.inserted.values()) == 0
    assert second.already_present == first.inserted


def test_a_conflicting_row_fails_the_batch_and_is_left_untouched(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """A same-key, different-content row: ConflictError naming the key; nothing written."""
    entry = exported.batches[1]
    load_batch(target, exported, entry.key)
    with psycopg.connect(target_dsn) as conn:
        thread_id, ns, cid = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
            "ORDER BY checkpoint_id LIMIT 1").fetchone()
        conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s", (thread_id,))
        conn.execute("UPDATE checkpoints SET metadata = '{\"planted\": true}' "
                     "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s",
                     (thread_id, ns, cid))
    before = _table_snapshot(target_dsn)
    with pytest.raises(ConflictError) as excinfo:
        load_batch(target, exported, entry.key)
    assert {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid} in \
        excinfo.value.keys
    assert thread_id in str(excinfo.value)
    assert _table_snapshot(target_dsn) == before  # the deleted writes were not restored either


def test_two_loaders_of_one_batch_cannot_both_write_it(
        exported: ExportManifest, target_dsn: str) -> None:
    """Concurrent loads of one batch: one inserts everything, the other finds it present."""
    target = Target(target_dsn)
    target.setup()
    key = exported.batches[0].key
    results = []
    barrier = threading.Barrier(2)

    def load() -> None:
        barrier.wait()
        results.append(load_batch(target, exported, key))

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    inserted = sorted(sum(r.inserted.values()) for r in results)
    assert inserted[0] == 0 and inserted[1] > 0
    assert compare_batch(target, exported, key).passed


def test_schema_option_puts_tables_in_a_named_schema(
        exported: ExportManifest, target_dsn: str) -> None:
    """With a schema, PostgresSaver's tables (and the data) live there, not in public."""
    target = Target(target_dsn, schema="agent's \"memory\"")
    target.setup()
    load_batch(target, exported, exported.batches[0].key)
    with psycopg.connect(target_dsn) as conn:
        schemas = {r[0] for r in conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'checkpoints'")}
    assert schemas == {"agent's \"memory\""}
    assert compare_batch(target, exported, exported.batches[0].key).passed


def test_loading_in_two_processes_gives_the_same_rows_as_one(
        exported: ExportManifest, target_dsn: str, admin_dsn: str) -> None:
    """import_export with two worker processes: every batch lands and matches the export,
    and the tables hold exactly what a one-process import writes."""
    from checkpoint_assets.embedded_postgres import temporary_database

    parallel = import_export(exported, Target(target_dsn), workers=2)
    assert [b.key for b in parallel.batches] == [e.key for e in exported.batches]
    with temporary_database(admin_dsn, "ca_serial") as serial_dsn:
        import_export(exported, Target(serial_dsn), workers=1)
        assert _table_snapshot(target_dsn) == _table_snapshot(serial_dsn)


def test_a_conflict_in_a_worker_process_arrives_whole(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """A ConflictError raised in a loader process reaches the caller with its keys and
    hint; the other batches still load, the conflicting one writes nothing."""
    entry = exported.batches[-1]
    load_batch(target, exported, entry.key)
    with psycopg.connect(target_dsn) as conn:
        thread_id, ns, cid = conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
            "ORDER BY checkpoint_id LIMIT 1").fetchone()
        conn.execute("UPDATE checkpoints SET metadata = '{\"planted\": true}' "
                     "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s",
                     (thread_id, ns, cid))
    with pytest.raises(ConflictError) as excinfo:
        import_export(exported, target, workers=2)
    assert {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid} in \
        excinfo.value.keys
    assert excinfo.value.hint
    assert compare_batch(target, exported, exported.batches[0].key).passed
