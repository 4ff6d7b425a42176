"""A sync reads what changed, not the database, and finds exactly what a full read finds.

The application is the rich corpus graph on SqliteSaver, with its database open (so its
``-wal`` exists, as it does while an application runs). Each of its write patterns is
synced twice from the same chain: once as a sync reads it (the tables' books kept by the
previous generation, engine/sync/change_detection.py) and once digesting every thread.
Both must find the same threads added, changed and deleted, and record the same state;
the first reads the fingerprints of the written threads only.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations.live import written_since
from checkpoint_assets.engine.sync.export_chain import SyncResult, load_chain, write_sync
from checkpoint_assets.engine.sync.refusals import SourceWentBackwards
from checkpoint_assets.engine.sync.sync_target import sync_target
from checkpoint_assets.engine.verify.check_table import SOURCE_MATCHES_EXPORT
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests.corpus_graphs import QUOTED_THREAD_ID, open_sqlite_saver
from checkpoint_assets_tests.test_sync import (
    delete,
    error_write,
    failing_node,
    fork,
    new_threads,
    resume_and_new_turn,
    run,
)


@pytest.fixture
def source(rich_master: Path, tmp_path: Path) -> Path:
    """A private copy of the rich corpus, in WAL mode."""
    path = Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    return path


@contextmanager
def application_running(path: Path) -> Iterator[sqlite3.Connection]:
    """The application's own connection, held open: its ``-wal`` stays beside the file."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT count(*) FROM checkpoints").fetchone()
        yield conn
    finally:
        conn.close()


def both_ways(source: Path, export: Path, full: Path) -> tuple[SyncResult, SyncResult]:
    """Sync ``export``'s chain as a sync does, and ``full``'s (a copy of the same chain)
    digesting every thread; return both results."""
    return write_sync(source, export), write_sync(source, full, read_every_thread=True)


def copy_chain(export: Path, into: Path) -> Path:
    """A copy of the export and its generations in directory ``into``."""
    into.mkdir(exist_ok=True)
    for path in export.parent.glob(f"{export.name}*"):
        shutil.copyfile(path, into / path.name)
    return into / export.name


def same_finding(quick: SyncResult, full: SyncResult) -> None:
    assert (quick.added, quick.changed, quick.deleted) == \
        (full.added, full.changed, full.deleted)


def same_state(export: Path, full: Path) -> None:
    quick_state, full_state = load_chain(export).state, load_chain(full).state
    assert {tid: entry[:7] for tid, entry in quick_state.threads.items()} == \
        {tid: entry[:7] for tid, entry in full_state.threads.items()}
    assert quick_state.tables == full_state.tables
    assert quick_state.last_rows == full_state.last_rows


WRITE_PATTERNS: list[tuple[str, Any, int]] = [
    # (what the application does, the action, threads it writes)
    ("starts new threads (one paused on an interrupt)", new_threads, 2),
    ("resumes an interrupt and adds a turn", resume_and_new_turn, 2),
    ("forks a thread from an earlier checkpoint", fork, 1),
    ("runs a node that raises (an error write)", failing_node, 1),
    ("replaces the newest write (INSERT OR REPLACE)", error_write("again"), 1),
    ("deletes a thread", delete("rich-basic"), 0),
]


@pytest.mark.parametrize(("pattern", "action", "written"), WRITE_PATTERNS,
                         ids=[p[0] for p in WRITE_PATTERNS])
def test_each_write_pattern_is_found_from_the_change_alone(
        source: Path, tmp_path: Path, pattern: str, action: Any, written: int) -> None:
    """Whatever the application writes, the sync finds what a full read finds, reading
    the fingerprints of the threads written and nothing else."""
    export = tmp_path / "quick" / "app.export"
    export.parent.mkdir()
    write_export(source, export, batch_size=20)
    full = copy_chain(export, tmp_path / "full")
    with application_running(source):
        run(source, action)
        quick, every = both_ways(source, export, full)
    same_finding(quick, every)
    assert quick.moved
    assert quick.fingerprints_read == written
    assert every.fingerprints_read == len(load_chain(full).state.threads)
    same_state(export, full)


def test_a_sequence_of_syncs_keeps_the_books_balanced(source: Path, tmp_path: Path) -> None:
    """Sync after sync (each generation keeps the books the next one reads), the chain
    stays what a full read makes of it; a sync with nothing to do reads no fingerprint."""
    export = tmp_path / "quick" / "app.export"
    export.parent.mkdir()
    write_export(source, export, batch_size=20)
    full = copy_chain(export, tmp_path / "full")
    with application_running(source):
        for _, action, _ in WRITE_PATTERNS:
            run(source, action)
            same_finding(*both_ways(source, export, full))
            same_state(export, full)
        nothing = write_sync(source, export)
    assert not nothing.moved and nothing.fingerprints_read == 0


def test_the_newest_rows_deleted_make_the_sync_read_every_fingerprint(
        source: Path, tmp_path: Path) -> None:
    """The newest thread deleted takes the recorded last row with it: rows written after
    could then reuse rowids below the recorded highest one, so the sync does not trust the
    books and reads every fingerprint (and still finds exactly the deletion)."""
    export = tmp_path / "app.export"
    write_export(source, export, batch_size=20)
    with application_running(source):
        run(source, delete(QUOTED_THREAD_ID))  # the corpus's last thread
        synced = write_sync(source, export)
    assert synced.deleted == [QUOTED_THREAD_ID]
    assert synced.fingerprints_read == len(load_chain(export).state.threads)


def test_rows_gone_inside_a_thread_are_not_balanced_away(source: Path, tmp_path: Path) -> None:
    """Rows deleted inside a thread (no SqliteSaver call does that: another database, or
    a restore) are not explained by any change: the sync reads every fingerprint and
    refuses, naming the thread."""
    export = tmp_path / "app.export"
    write_export(source, export, batch_size=20)
    with application_running(source) as app:
        app.execute("DELETE FROM checkpoints WHERE rowid IN (SELECT min(rowid) FROM "
                    "checkpoints WHERE thread_id = 'rich-basic')")
        app.commit()
        with pytest.raises(SourceWentBackwards, match="rich-basic"):
            write_sync(source, export)


def test_a_wal_source_is_synced_in_place_without_room_for_a_copy(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the application has its WAL database open, a sync reads the live file in one
    read transaction: it needs no temporary copy (here the temporary directory does not
    exist) and leaves no file beside the source. A rollback-journal source is still
    copied: a read transaction on it would make the application's writers wait."""
    export = tmp_path / "app.export"
    write_export(source, export, batch_size=20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
    with application_running(source):
        beside = sorted(p.name for p in source.parent.iterdir())
        run(source, new_threads)
        synced = write_sync(source, export)
        assert sorted(synced.added) == ["late-basic", "late-paused"]
        assert sorted(p.name for p in source.parent.iterdir()) == \
            sorted({*beside, f"{export.name}.sync-0001"})
    with closing(sqlite3.connect(source)) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    with open_sqlite_saver(source) as saver:
        saver.delete_thread("late-basic")
    with pytest.raises(MigrationError, match="Cannot copy the source"):
        write_sync(source, export)


def test_the_cutovers_second_verification_digests_only_what_was_written_since_the_first(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """As the cutover does: a certified verification of every thread while the application
    still writes (a thread it wrote after the catch-up sync is found different), then the
    final sync, then the second verification digesting only the threads that the first
    found different or the syncs since moved: it passes and says how many it digested.
    Both verifications read the live file in one read transaction each: there is no room
    for a copy here (a copy of a large file that a writer keeps checkpointing may never
    complete)."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    import_export(write_export(source, export, batch_size=20), target)
    with application_running(source), pytest.MonkeyPatch.context() as patch:
        run(source, new_threads)
        sync_target(source, export, target)  # the catch-up sync
        run(source, resume_and_new_turn)  # written after it: different at the first pass
        patch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
        before = load_chain(export)
        first = verify_migration(before.export, target, source_path=source,
                                 readback_threads=None, workers=1, chain=before,
                                 certify=True)
        assert first.drift["changed"] == ["rich-approve", "rich-basic"]
        run(source, fork)  # written during the first pass
        sync_target(source, export, target)  # the final sync
        now = load_chain(export)
        written = written_since(before, now, first)
        assert written == {"rich-approve", "rich-basic", "rich-branches"}
        second = verify_migration(now.export, target, source_path=source,
                                  readback_threads=None, workers=1, chain=now,
                                  certify=True, earlier=first, source_drift_in=written)
    assert second.passed, {n: c.mismatches for n, c in second.checks.items() if not c.passed}
    notes = second.checks[SOURCE_MATCHES_EXPORT].notes
    assert any("Digested again: the 3 thread(s)" in note for note in notes), notes
