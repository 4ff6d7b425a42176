"""What a later verification takes over from an earlier one (the cutover's passes).

A certified verification keeps a mark of the target's history taken before it read
anything; a later one scans each table once and takes over every earlier comparison whose
threads have no row version newer than the mark and as many rows as were compared
(engine/verify/unchanged.py). A row deleted, a row added or changed (even to the same
values), a table rewritten: compared again and caught. Another application's threads in
the same tables change freely without making anything of the migration compare again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import load_chain
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets_tests.test_sync import target_application_writes


@pytest.fixture
def migrated(rich_master: Path, tmp_path: Path, target_dsn: str) -> tuple[Path, Path]:
    """The rich corpus exported in batches of 20 checkpoints and loaded into the target."""
    source = Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))
    export = tmp_path / "app.export"
    import_export(write_export(source, export, batch_size=20), Target(target_dsn))
    return source, export


def verify_after(migrated: tuple[Path, Path], target_dsn: str,
                 earlier: VerificationReport | None = None) -> VerificationReport:
    """A certified verification (as the cutover runs them), after ``earlier``."""
    source, export = migrated
    chain = load_chain(export)
    return verify_migration(chain.export, Target(target_dsn), source_path=source,
                            readback_threads=0, workers=1, chain=chain, certify=True,
                            earlier=earlier)


def compared_again(report: VerificationReport) -> set[str]:
    """Threads of the batches this verification compared instead of taking them over."""
    return {tid for c in report.batches if not c.reused for tid in c.thread_ids}


def sql(target_dsn: str, statement: str, *params: object) -> None:
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def test_only_threads_whose_rows_changed_are_compared_again(
        migrated: tuple[Path, Path], target_dsn: str) -> None:
    first = verify_after(migrated, target_dsn)
    assert first.passed and all(c.mark is not None for c in first.batches)
    assert compared_again(first) == {tid for c in first.batches for tid in c.thread_ids}

    # Another application writes its own thread into the same tables: nothing of the
    # migration is compared again, and the whole tables' rows include its rows.
    target_application_writes(target_dsn)
    second = verify_after(migrated, target_dsn, earlier=first)
    assert second.passed and compared_again(second) == set()
    assert second.counts["target_tables"]["checkpoints"] \
        > second.counts["target"]["checkpoints"]

    # One pending write deleted in a thread: only its batch is compared again, and fails.
    sql(target_dsn, "DELETE FROM checkpoint_writes WHERE ctid = (SELECT ctid FROM "
        "checkpoint_writes WHERE thread_id = 'rich-approve' LIMIT 1)")
    third = verify_after(migrated, target_dsn, earlier=second)
    batch = next(c for c in third.batches if "rich-approve" in c.thread_ids)
    assert not batch.reused and not batch.passed and not third.passed
    assert compared_again(third) == set(batch.thread_ids)

    # Checkpoints written again with the very same values (in a thread of another batch):
    # new row versions, compared again (and equal, so that batch passes).
    other = next(tid for c in third.batches if c is not batch for tid in c.thread_ids)
    sql(target_dsn, "UPDATE checkpoints SET metadata = metadata WHERE thread_id = %s", other)
    fourth = verify_after(migrated, target_dsn, earlier=third)
    rewritten = next(c for c in fourth.batches if other in c.thread_ids)
    assert not rewritten.reused and rewritten.passed
    assert compared_again(fourth) == {*batch.thread_ids, *rewritten.thread_ids}

    # A table rewritten (VACUUM FULL gives it a new file): every batch compared again.
    sql(target_dsn, "VACUUM FULL checkpoint_blobs")
    fifth = verify_after(migrated, target_dsn, earlier=fourth)
    assert compared_again(fifth) == {tid for c in fifth.batches for tid in c.thread_ids}


def test_a_row_added_to_a_thread_taken_over_is_caught(
        migrated: tuple[Path, Path], target_dsn: str) -> None:
    first = verify_after(migrated, target_dsn)
    sql(target_dsn, "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, "
        "task_id, task_path, idx, channel, type, blob) SELECT thread_id, checkpoint_ns, "
        "checkpoint_id, task_id, task_path, idx + 1000, channel, type, blob FROM "
        "checkpoint_writes WHERE thread_id = 'rich-basic' LIMIT 1")
    second = verify_after(migrated, target_dsn, earlier=first)
    batch = next(c for c in second.batches if "rich-basic" in c.thread_ids)
    assert not batch.reused and not batch.passed
    assert any(m["problem"] == "write in target, not in export"
               for m in batch.content_mismatches)
