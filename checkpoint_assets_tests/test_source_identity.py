"""The source's identity survives paths: symlinks, hard links, and what each export records.

The application is the rich corpus graph on SqliteSaver, its connection held open like a
live service, so its newest commits are still in the ``-wal`` beside the file SQLite
really opened. ``--source`` given as a chain of symlinks must still read those commits
(the snapshot, the quiet detection and the sync all use the real file's ``-wal``). A hard
link whose other name holds the ``-wal`` is refused, naming both names. Every export
generation records what identifies the database beyond its path.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.writer import SqliteRows, write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import load_chain
from checkpoint_assets.engine.sync.sync_target import source_files_state, sync_target
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests.corpus_graphs import (
    build_rich_graph,
    open_sqlite_saver,
    rich_input,
    thread_config,
)


@pytest.fixture
def real(rich_master: Path, tmp_path: Path) -> Path:
    """The application's database file, in a directory of its own."""
    (tmp_path / "volume").mkdir()
    return Path(shutil.copyfile(rich_master, tmp_path / "volume" / "app.sqlite"))


@contextmanager
def live_application(path: Path) -> Iterator[Any]:
    """The rich graph on SqliteSaver with its connection held open: its commits stay in
    the -wal beside ``path`` until it closes."""
    with open_sqlite_saver(path) as saver:
        yield build_rich_graph(saver)


def checkpoints_in(path: Path) -> int:
    """Checkpoints the database holds, as SQLite (through its -wal) sees them."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]


def test_a_chain_of_symlinks_reads_the_commits_in_the_real_files_wal(
        real: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--source is a symlink to a symlink to the live database: the export, the quiet
    detection, a sync, the verification and `cutover` all see the commits still in the
    real file's -wal; the target ends equal to what the application sees."""
    from checkpoint_assets.cli import main

    (tmp_path / "links").mkdir()
    inner = tmp_path / "links" / "inner.sqlite"
    inner.symlink_to(real)
    link = tmp_path / "current.sqlite"
    link.symlink_to(inner)
    export, target = tmp_path / "app.export", Target(target_dsn)

    with live_application(real) as graph:
        graph.invoke(rich_input("basic"), thread_config("live-before-export"))
        assert Path(f"{real}-wal").stat().st_size > 0, "the new rows are in the -wal"
        assert not Path(f"{link}-wal").exists()
        first = write_export(link, export, batch_size=20)
        import_export(first, target)
        assert first.checkpoints == checkpoints_in(real)

        quiet = source_files_state(link)
        graph.invoke(rich_input("basic"), thread_config("live-after-export"))
        assert source_files_state(link) != quiet, "a commit into the real -wal is seen"

        report = sync_target(link, export, target)
        assert report.found.added == ["live-after-export"]
        chain = load_chain(export)
        assert chain.checkpoints == checkpoints_in(real)
        verified = verify_migration(chain.export, target, source_path=link,
                                    readback_threads=None, workers=1, chain=chain)
        assert verified.passed, {n: c.mismatches[:3] for n, c in verified.checks.items()
                                 if not c.passed}

        graph.invoke(rich_input("approve"), thread_config("live-before-cutover"))
        assert main(["cutover", "--source", str(link), "--export", str(export), "--target",
                     target_dsn, "--quiet-seconds", "0.2", "--workers", "1"]) == 0
        assert "PASSED: the target equals the source" in capsys.readouterr().out
        assert load_chain(export).checkpoints == checkpoints_in(real)


def test_a_hard_link_whose_other_name_has_the_wal_is_refused_by_both_names(
        real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hard link of the live database in the same directory: SQLite keeps the commits
    in the -wal of the name the application opened, so reading the other name is refused
    with both names and what to pass instead; once the application closed (no -wal), the
    other name reads the whole database."""
    from checkpoint_assets.cli import main

    alias = real.with_name("alias.sqlite")
    os.link(real, alias)
    with live_application(real) as graph:
        graph.invoke(rich_input("basic"), thread_config("live-hard-link"))
        assert Path(f"{real}-wal").exists() and not Path(f"{alias}-wal").exists()
        with pytest.raises(MigrationError) as refused:
            write_export(alias, tmp_path / "alias.export")
        assert str(alias) in str(refused.value) and f"{real}-wal" in str(refused.value)
        assert f"--source {real}" in refused.value.hint
        assert not (tmp_path / "alias.export").exists()
        assert main(["export", "--source", str(alias), "--export",
                     str(tmp_path / "cli.export")]) == 3
        assert "is a hard link of" in capsys.readouterr().err
    assert not Path(f"{real}-wal").exists(), "the application's close checkpointed it"
    manifest = write_export(alias, tmp_path / "alias.export")
    assert manifest.checkpoints == checkpoints_in(real)


def test_every_generation_records_what_identifies_the_database(
        real: Path, tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header of the export and of each sync generation records the resolved path,
    (st_dev, st_ino) and the tables' first rows; an export written before that field
    existed (an older writer's header) is still read and synced."""
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    export, target = tmp_path / "app.export", Target(target_dsn)
    older_header = SqliteRows.source_header

    def without_identity(self: SqliteRows) -> dict[str, Any]:
        """The header an older writer wrote: no identity."""
        header = older_header(self)
        del header["identity"]
        return header

    monkeypatch.setattr(SqliteRows, "source_header", without_identity)
    import_export(write_export(link, export, batch_size=20), target)
    monkeypatch.undo()
    assert "identity" not in load_chain(export).export.header["source"]

    with live_application(real) as graph:
        graph.invoke(rich_input("basic"), thread_config("late-basic"))
    sync_target(link, export, target)
    generation = load_chain(export).latest
    assert generation.generation == 1
    identity = generation.header["source"]["identity"]
    stat = os.stat(real)
    assert identity["resolved_path"] == str(real.resolve())
    assert (identity["device"], identity["inode"]) == (stat.st_dev, stat.st_ino)
    with closing(sqlite3.connect(real)) as conn:
        first = conn.execute("SELECT rowid, thread_id FROM checkpoints ORDER BY rowid "
                             "LIMIT 1").fetchone()
    assert identity["first_rows"]["checkpoints"][:2] == [first[0], first[1]]
    assert len(identity["first_rows"]["checkpoints"][2]) == 64  # the row's SHA-256
