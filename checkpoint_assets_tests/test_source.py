"""The SQLite source reader: never writes, reads WAL rows, and explains bad input.

Bad inputs each get a MigrationError naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export


def _fingerprints(db: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(db.parent.glob(db.name + "*"))}


def test_reading_leaves_database_and_side_files_byte_identical(
        sample_db: Path, tmp_path: Path) -> None:
    """A cold database gains no -wal/-shm and its bytes do not change."""
    before = _fingerprints(sample_db)
    write_export(sample_db, tmp_path / "x.export")
    assert _fingerprints(sample_db) == before


def test_rows_still_in_the_wal_are_read_and_side_files_untouched(
        sample_db: Path, tmp_path: Path) -> None:
    """A live writer's committed rows in -wal are exported; -wal and -shm stay identical."""
    writer = sqlite3.connect(sample_db)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")  # keep the new row in the -wal file
        writer.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, type, "
            "checkpoint, metadata) SELECT 'copied-thread', checkpoint_ns, checkpoint_id, type, "
            "checkpoint, metadata FROM checkpoints LIMIT 1")
        writer.commit()
        assert Path(f"{sample_db}-wal").stat().st_size > 0
        before = _fingerprints(sample_db)
        manifest = write_export(sample_db, tmp_path / "x.export")
        assert _fingerprints(sample_db) == before
        source = open_source(sample_db)
        try:
            assert "copied-thread" in {t.thread_id for t in source.thread_sizes()}
            assert manifest.checkpoints == source.counts().checkpoints
        finally:
            source.close()
    finally:
        writer.close()


def _not_sqlite(path: Path) -> None:
    path.write_text("thread_id,checkpoint\n1,abc\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_checkpoint_tables(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")


def _corrupt(path: Path, sample: Path) -> None:
    data = bytearray(sample.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # smash the schema page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make,words", [
    (_not_sqlite, "not a SQLite database"),        # a CSV named .sqlite
    (_empty, "empty"),                             # zero bytes
    (_no_checkpoint_tables, "no checkpoints or writes table"),  # some other SQLite file
])
def test_bad_source_files_are_explained(tmp_path: Path, make, words: str) -> None:
    """The error names the file and says what a checkpoint database looks like."""
    path = tmp_path / "bad.sqlite"
    make(path)
    with pytest.raises(MigrationError) as excinfo:
        open_source(path)
    assert words in str(excinfo.value)
    assert str(path) in str(excinfo.value)
    assert "SqliteSaver" in str(excinfo.value)


def test_corrupt_database_is_explained(sample_db: Path, tmp_path: Path) -> None:
    """A damaged file is reported as corrupt, not as a Python traceback."""
    path = tmp_path / "corrupt.sqlite"
    _corrupt(path, sample_db)
    with pytest.raises(MigrationError, match="corrupt|not a SQLite"):
        source = open_source(path)
        list(source.checkpoints())


def test_missing_file_is_explained(tmp_path: Path) -> None:
    """A wrong path says so."""
    with pytest.raises(MigrationError, match="does not exist"):
        open_source(tmp_path / "nope.sqlite")


def test_database_locked_by_a_writer_is_explained(sample_db: Path, monkeypatch) -> None:
    """A rollback-journal database held by a writer's exclusive lock: a clear 'locked' error."""
    import checkpoint_assets.engine.export.snapshot as snapshot

    with sqlite3.connect(sample_db) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    monkeypatch.setattr(snapshot, "LOCK_TIMEOUT_SECONDS", 0.2)
    writer = sqlite3.connect(sample_db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(MigrationError, match="locked"):
            open_source(sample_db)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_legacy_database_without_task_path_reads_it_as_empty(
        sample_db: Path, tmp_path: Path) -> None:
    """Saver versions before writes.task_path: every write reads back with task_path ''."""
    with sqlite3.connect(sample_db) as conn:
        conn.execute("ALTER TABLE writes DROP COLUMN task_path")
    source = open_source(sample_db)
    try:
        assert not source.has_task_path
        writes = list(source.writes())
    finally:
        source.close()
    assert writes and all(w.task_path == "" for w in writes)
