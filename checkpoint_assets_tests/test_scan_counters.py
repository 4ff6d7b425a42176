"""What a batch costs does not grow with the tables: no query of the per-batch path (load,
conflict pre-check, batch check) and of the verification's per-batch comparisons reads a
whole table once the tables hold more than a few batches.

Proved with PostgreSQL's own activity counters (pg_stat_user_tables: seq_scan and
seq_tup_read against idx_scan), not with timings: a few thousand checkpoints of a real
graph loaded in small batches, as the Dagster batch asset and ``checkpoint-assets import``
load them, on a server whose autovacuum may be off or late (the loader keeps the statistics
current itself).
"""

from __future__ import annotations

import math
import time

import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import load_batch
from checkpoint_assets.engine.load.target import STATISTICS_MIN_ROWS, TABLES, Target
from checkpoint_assets.engine.verify.comparison import compare_batch, compare_batches
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests.corpus_graphs import build_scaled_corpus

THREADS = 260  # about 3,000 checkpoints, 8,000 blob rows and 7,000 writes
BATCH_SIZE = 100  # checkpoints per batch: about 30 batches
Counters = dict[str, dict[str, int]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportManifest:
    """A scaled corpus of a real chat graph, exported in small batches."""
    directory = tmp_path_factory.mktemp("scan-counters")
    build_scaled_corpus(directory / "source.sqlite", threads=THREADS, seed=1)
    return write_export(directory / "source.sqlite", directory / "out.export",
                        batch_size=BATCH_SIZE)


@pytest.fixture
def target(target_dsn: str) -> Target:
    """PostgresSaver's tables in an empty database, with autovacuum off for them (as on a
    server where it is off, or has not caught up with a bulk load)."""
    t = Target(target_dsn)
    t.setup()
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                sql.Identifier(table)))
    return t


def counters(dsn: str, inserted: dict[str, int]) -> Counters:
    """The tables' scan counters, once every loader's statistics have reached the server.

    A backend sends its counters when its session ends, a moment after the client has
    closed it: wait until no other session is connected, the insert counter has reached
    ``inserted`` and two readings agree.
    """
    deadline = time.monotonic() + 30
    previous = None
    while time.monotonic() < deadline:
        with psycopg.connect(dsn, autocommit=True) as conn:
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()[0]
            rows = conn.execute(
                "SELECT relname, n_tup_ins, seq_scan, seq_tup_read, coalesce(idx_scan, 0), "
                "analyze_count FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                (list(TABLES),)).fetchall()
        found = {name: {"n_tup_ins": ins, "seq_scan": seq, "seq_tup_read": seq_read,
                        "idx_scan": idx, "analyze_count": analyzed}
                 for name, ins, seq, seq_read, idx, analyzed in rows}
        if (not others and found == previous
                and all(found[t]["n_tup_ins"] >= inserted.get(t, 0) for t in TABLES)):
            return found
        previous = found
        time.sleep(0.2)
    raise AssertionError(f"the server's counters did not settle: {previous}")


def warm_up_batches(manifest: ExportManifest) -> int:
    """The batches after which every table has held STATISTICS_MIN_ROWS rows, so the next
    loader analyzes it (checkpoints is the smallest table)."""
    loaded = 0
    for count, entry in enumerate(manifest.batches, start=1):
        loaded += entry.checkpoints
        if loaded >= STATISTICS_MIN_ROWS:
            return count + 1
    raise AssertionError("the corpus is too small to show anything")


def delta(before: Counters, after: Counters, name: str) -> dict[str, int]:
    """How much counter ``name`` grew per table."""
    return {t: after[t][name] - before[t][name] for t in TABLES}


def load_all(target: Target, manifest: ExportManifest, inserted: dict[str, int],
             keys: list[str]) -> None:
    """Load and check each batch like the Dagster batch asset: load_batch, compare_batch."""
    for key in keys:
        result = load_batch(target, manifest, key)
        assert compare_batch(target, manifest, key).passed, key
        for table, rows in result.inserted.items():
            inserted[table] = inserted.get(table, 0) + rows


def test_batches_after_the_first_few_never_scan_a_table(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """Once the tables hold a few batches, loading and checking a batch reads rows by key
    only: no sequential scan of checkpoints, checkpoint_blobs or checkpoint_writes."""
    keys = [entry.key for entry in exported.batches]
    warm_up = warm_up_batches(exported)
    assert len(keys) >= 2 * warm_up
    inserted: dict[str, int] = {}
    load_all(target, exported, inserted, keys[:warm_up])
    warm = counters(target_dsn, inserted)
    load_all(target, exported, inserted, keys[warm_up:])
    done = counters(target_dsn, inserted)

    assert delta(warm, done, "seq_scan") == {t: 0 for t in TABLES}
    assert delta(warm, done, "seq_tup_read") == {t: 0 for t in TABLES}
    assert all(n > 0 for n in delta(warm, done, "idx_scan").values())
    # Analyzed each time it doubled, not per batch: the statistics cost stays logarithmic.
    for table in TABLES:
        doublings = math.log2(inserted[table] / STATISTICS_MIN_ROWS)
        assert 1 <= done[table]["analyze_count"] <= math.ceil(doublings) + 1, table


def test_reloading_present_batches_checks_conflicts_by_key(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """Re-running batches that are already loaded (the conflict pre-check against rows that
    are present) reads the present rows by key, not by scanning the tables."""
    keys = [entry.key for entry in exported.batches]
    inserted: dict[str, int] = {}
    load_all(target, exported, inserted, keys)
    before = counters(target_dsn, inserted)
    for key in keys[-5:]:
        result = load_batch(target, exported, key)
        assert sum(result.inserted.values()) == 0
    after = counters(target_dsn, inserted)

    assert delta(before, after, "seq_scan") == {t: 0 for t in TABLES}


def test_verification_scans_each_table_at_most_once(
        exported: ExportManifest, target: Target, target_dsn: str) -> None:
    """The verification compares batch by batch through the primary key; only its one total
    count per table (the count_match check's target_tables) reads a table whole."""
    keys = [entry.key for entry in exported.batches]
    inserted: dict[str, int] = {}
    load_all(target, exported, inserted, keys)
    before = counters(target_dsn, inserted)
    assert all(c.passed for c in compare_batches(exported, target))
    report = verify_migration(exported, target, readback_threads=3, workers=1)
    assert report.passed
    after = counters(target_dsn, inserted)

    assert all(n <= 1 for n in delta(before, after, "seq_scan").values()), \
        delta(before, after, "seq_scan")
