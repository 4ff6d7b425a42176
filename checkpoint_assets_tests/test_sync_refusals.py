"""What a sync may assume about its source and its target, and what it refuses.

The source must be the database the export chain was taken from, grown: SqliteSaver never
removes rows inside a live thread, so another file at the source's path (an empty
SqliteSaver database of an application started without its volume, an older backup
copied over the live file) is refused by name, before any generation is written or any
row applied, and ``cutover`` (which syncs first) never says PASSED then. Whole-thread
deletions are followed, but losing every thread or most of them needs
``--allow-mass-deletion``.

The target is known by its identity (PostgreSQL's system identifier, the database's and
the schema's oids), not by its name: after the target database is dropped and created
again under the same name, ``sync`` loads the chain again and ``backfill`` loads what is
missing; a generation file written again by hand is applied again.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import load_chain, write_sync
from checkpoint_assets.engine.sync.refusals import (
    MassDeletion,
    SourceWentBackwards,
    is_mass_deletion,
)
from checkpoint_assets.engine.sync.sync_target import sync_target
from checkpoint_assets_tests.corpus_graphs import open_sqlite_saver
from checkpoint_assets_tests.test_sync import (
    delete,
    migrate,
    new_threads,
    resume_and_new_turn,
    run,
    verify,
)

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


@pytest.fixture
def source(rich_master: Path, tmp_path: Path) -> Path:
    """A private copy of the rich corpus the application of a test writes to."""
    return Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))


def target_rows(dsn: str) -> dict[str, set[tuple]]:
    """Every row of PostgresSaver's tables (as text), for before/after comparisons."""
    with psycopg.connect(dsn) as conn:
        return {table: set(conn.execute(sql.SQL("SELECT t::text FROM {} t").format(
            sql.Identifier(table))).fetchall()) for table in TABLES}


def generation_files(export: Path) -> list[str]:
    """The sync generation files beside the export (markers left out)."""
    return sorted(p.name for p in export.parent.glob(f"{export.name}.sync-*")
                  if not p.name.endswith(".applied"))


def empty_database_at(path: Path) -> None:
    """An application started without its volume: a new, empty SqliteSaver database at
    the source's path."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)
    with open_sqlite_saver(path) as saver:
        saver.setup()


def recreate_database(admin_dsn: str, dsn: str) -> None:
    """Drop the target database and create it again, empty, under the same name."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize(("known", "deleted", "needs_flag"), [
    (1, 1, True),     # every thread, however few
    (3, 2, False),    # most threads of a small database: ordinary deletions
    (40, 4, False),   # a few threads of many: ordinary deletions
    (40, 20, False),  # half is not more than half
    (40, 21, True),   # more than half, and at least 10
    (19, 10, True),   # more than half, exactly the floor
    (17, 9, False),   # more than half, below the floor
    (17, 0, False),   # nothing deleted
])
def test_the_mass_deletion_threshold(known: int, deleted: int, needs_flag: bool) -> None:
    """Every thread, or more than half of them and at least 10, needs the flag."""
    assert is_mass_deletion(known, deleted) is needs_flag


def test_an_empty_database_at_the_path_is_refused_even_with_propagate_deletes(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An empty SqliteSaver database where the application's was: `sync
    --propagate-deletes` exits 3 naming the cause, writes no generation and deletes
    nothing; `cutover` does not say PASSED; with --allow-mass-deletion the deletions are
    followed, as asked."""
    from checkpoint_assets.cli import main

    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, new_threads)
    common = ["--source", str(source), "--export", str(export), "--target", target_dsn]
    assert main(["sync", *common]) == 0
    capsys.readouterr()
    before, generations = target_rows(target_dsn), generation_files(export)

    empty_database_at(source)
    assert main(["sync", *common, "--propagate-deletes"]) == 3
    err = capsys.readouterr().err
    assert "This may not be the database you exported" in err
    assert "--allow-mass-deletion" in err
    assert target_rows(target_dsn) == before
    assert generation_files(export) == generations
    with pytest.raises(MassDeletion):
        write_sync(source, export)

    status = main(["cutover", *common, "--propagate-deletes", "--quiet-seconds", "0.2",
                   "--workers", "1"])
    captured = capsys.readouterr()
    assert status == 3 and "PASSED" not in captured.out + captured.err
    assert target_rows(target_dsn) == before

    assert main(["sync", *common, "--propagate-deletes", "--allow-mass-deletion"]) == 0
    with psycopg.connect(target_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0


def test_an_older_backup_copied_over_the_live_file_is_refused(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A backup taken before the application's last turns, copied over the live file:
    threads have fewer checkpoints than the chain says, so even a plain `sync` exits 3
    saying the source went backwards, writes no generation and changes no row; `cutover`
    does not say PASSED."""
    from checkpoint_assets.cli import main

    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    backup = Path(shutil.copyfile(source, tmp_path / "backup.sqlite"))
    run(source, resume_and_new_turn)
    run(source, new_threads)
    common = ["--source", str(source), "--export", str(export), "--target", target_dsn]
    assert main(["sync", *common]) == 0
    capsys.readouterr()
    before, generations = target_rows(target_dsn), generation_files(export)
    inode = os.stat(source).st_ino

    shutil.copyfile(backup, source)  # written over in place: the same inode
    assert os.stat(source).st_ino == inode
    assert main(["sync", *common]) == 3
    err = capsys.readouterr().err
    assert f"Source {source} went backwards" in err
    assert "This is not the database you exported (or it was restored from a backup)" in err
    assert "'rich-basic'" in err and "written over in place" in err
    assert target_rows(target_dsn) == before
    assert generation_files(export) == generations

    status = main(["cutover", *common, "--quiet-seconds", "0.2", "--workers", "1"])
    captured = capsys.readouterr()
    assert status == 3 and "PASSED" not in captured.out + captured.err
    assert target_rows(target_dsn) == before


def test_rows_gone_inside_a_live_thread_are_refused_and_whole_deletions_are_not(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """A thread deleted whole with delete_thread is an ordinary deletion; the newest
    checkpoint of a live thread removed behind SqliteSaver's back (it never does that) is
    a SourceWentBackwards naming the thread, nothing written or applied."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, delete("rich-error"))
    assert sync_target(source, export, target,
                       propagate_deletes=True).found.deleted == ["rich-error"]
    before, generations = target_rows(target_dsn), generation_files(export)

    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("DELETE FROM checkpoints WHERE rowid = (SELECT max(rowid) FROM "
                      "checkpoints WHERE thread_id = 'rich-basic')")
    with pytest.raises(SourceWentBackwards) as refused:
        sync_target(source, export, target, propagate_deletes=True)
    assert "'rich-basic'" in str(refused.value)
    assert generation_files(export) == generations
    assert target_rows(target_dsn) == before


def test_a_dropped_and_recreated_target_is_loaded_again_by_sync(
        source: Path, tmp_path: Path, target_dsn: str, admin_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """After a sync, the target database is dropped and created again under the same
    name: the next `sync` does not say "nothing was moved"; it loads every batch of the
    chain again and the verification passes."""
    from checkpoint_assets.cli import main

    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, resume_and_new_turn)
    run(source, delete("rich-error"))
    common = ["--source", str(source), "--export", str(export), "--target", target_dsn]
    assert main(["sync", *common]) == 0
    capsys.readouterr()

    recreate_database(admin_dsn, target_dsn)
    assert main(["sync", *common]) == 0
    out = capsys.readouterr().out
    assert "nothing was moved" not in out
    assert "every batch the chain holds was loaded again" in out
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items()
                           if not c.passed}
    with psycopg.connect(target_dsn) as conn:  # a thread deleted in the source stays out
        assert not conn.execute("SELECT 1 FROM checkpoints WHERE thread_id = 'rich-error'"
                                ).fetchall()
    assert main(["sync", *common]) == 0
    assert "nothing was moved" in capsys.readouterr().out


def test_a_generation_written_again_by_hand_is_applied_again(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """A sync generation removed by hand and written again (by the sensor's sync run,
    which applies nothing itself) has the same file name but another digest: the next
    sync applies it instead of trusting the old file's marker."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, resume_and_new_turn)
    sync_target(source, export, target)
    generation = load_chain(export).latest.path
    generation.unlink()  # by hand; its .applied marker stays
    run(source, new_threads)
    assert write_sync(source, export).manifest.path == generation

    report = sync_target(source, export, target)
    assert report.reapplied and not report.found.moved
    assert report.total("inserted")["checkpoints"] > 0
    verified = verify(source, export, target)
    assert verified.passed, {n: c.mismatches[:3] for n, c in verified.checks.items()
                             if not c.passed}


def test_backfill_loads_again_what_a_dropped_and_recreated_target_lost(
        source: Path, tmp_path: Path, target_dsn: str, admin_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate` as Dagster runs, then the target database is dropped and created again
    under the same name: every partition is still MATERIALIZED with a passed check in
    Dagster, yet `backfill` loads them again (their loads name another target identity)
    and the verification passes."""
    from checkpoint_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("CHECKPOINT_ASSETS_WORKERS", "1")
    export = tmp_path / "app.export"
    common = ["--source", str(source), "--export", str(export), "--target", target_dsn]
    assert main(["migrate", *common]) == 0
    checkpoints = load_chain(export).checkpoints

    recreate_database(admin_dsn, target_dsn)
    assert main(["backfill", *common]) == 0
    with psycopg.connect(target_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == checkpoints
