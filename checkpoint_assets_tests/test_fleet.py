"""A fleet of SQLite files into one PostgreSQL (issue 24).

The files are written by real LangGraph graphs: two replicas of the rich graph that reuse
every thread id (``rich-basic``, ``rich-approve``...), a desktop installation of the
support graph, a copied file and a damaged one. The commands are the console's, run as
Dagster runs against a home of their own; what is checked is what the user sees (exit
status, messages, the fleet's evidence) and what PostgresSaver holds and resumes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.fleet.fleet_file import plan_fleet
from checkpoint_assets.engine.fleet.sources import expand_sources, source_labels
from checkpoint_assets.engine.operations.fleet import export_fleet
from checkpoint_assets.partitions import BATCH_PARTITIONS_NAME, fleet_label_of
from checkpoint_assets.run_steps import project_instance
from checkpoint_assets_tests import corpus_graphs as cg
from checkpoint_assets_tests.dagster_support import write_corpus
from checkpoint_assets_tests.test_cli import run
from checkpoint_assets_tests.test_sync_cutover_cli import Application


@pytest.fixture(scope="module")
def second_replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rich graph run again on another machine: the same thread ids, other content."""
    path = tmp_path_factory.mktemp("replica") / "replica-2.sqlite"
    cg.build_rich_corpus(path)
    return path


@pytest.fixture
def fleet_dir(rich_master: Path, second_replica: Path, sample_db_master: Path,
              tmp_path: Path) -> Path:
    """replica-1 and replica-2 (same thread ids, different conversations) and a desktop
    installation of another graph, in one folder, as copies a test may write to."""
    folder = tmp_path / "sources"
    folder.mkdir()
    shutil.copyfile(rich_master, folder / "replica-1.sqlite")
    shutil.copyfile(second_replica, folder / "replica-2.sqlite")
    shutil.copyfile(sample_db_master, folder / "desktop.sqlite")
    return folder


def cli(*args: str, dsn: str) -> tuple[int, str, str]:
    """The console command with the target in the environment: (status, stdout, stderr)."""
    done = run(*args, env={"CHECKPOINT_ASSETS_TARGET_DSN": dsn})
    return done.returncode, done.stdout, done.stderr


def target_threads(dsn: str) -> dict[str, int]:
    """{thread_id: checkpoints} in PostgreSQL (empty when PostgresSaver's tables are not
    there)."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('checkpoints')").fetchone()[0] is None:
            return {}
        return dict(conn.execute(
            "SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())


def sqlite_rows(path: Path) -> dict[str, list[tuple]]:
    """Every row of SqliteSaver's two tables, in key order."""
    with closing(sqlite3.connect(path)) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
                for table in ("checkpoints", "writes")}


@pytest.fixture
def postgres_graph(target_dsn: str) -> Iterator:
    """The rich graph on PostgresSaver over the target (the application after cutover)."""
    with psycopg.connect(target_dsn, autocommit=True, row_factory=dict_row) as conn:
        yield cg.build_rich_graph(PostgresSaver(conn))  # type: ignore[arg-type]


def test_files_that_reuse_thread_ids_are_refused_by_key_naming_the_files_and_nothing_is_written(
        fleet_dir: Path, tmp_path: Path, target_dsn: str) -> None:
    """Two replicas holding ``rich-basic`` with different conversations would be merged
    into one PostgreSQL thread: refused (exit 3) before anything is written, naming the
    thread ids and both files, and saying how to tell them apart."""
    status, out, err = cli("migrate", "--source", str(fleet_dir / "replica-1.sqlite"),
                           "--source", str(fleet_dir / "replica-2.sqlite"),
                           "--export-dir", str(tmp_path / "exports"), dsn=target_dsn)
    assert status == 3, out + err
    assert "'rich-basic' in " in err and "replica-1.sqlite and " in err
    assert "replica-2.sqlite" in err and "--thread-prefix" in err
    assert target_threads(target_dsn) == {}


def test_a_prefix_per_source_migrates_every_conversation_and_a_paused_one_resumes_under_its_new_id(
        fleet_dir: Path, tmp_path: Path, target_dsn: str, postgres_graph, second_replica: Path,
        ) -> None:
    """The whole folder with --thread-prefix "{source}:": each file's threads land under
    its label, every source is verified on its own (read back through both savers) and
    the fleet PASSES; a thread paused on an interrupt in replica-2 resumes on
    PostgresSaver under ``replica-2:rich-approve`` exactly as it does on SqliteSaver."""
    exports = tmp_path / "exports"
    status, out, err = cli("migrate", "--source", str(fleet_dir), "--thread-prefix",
                           "{source}:", "--export-dir", str(exports), "--readback-all",
                           dsn=target_dsn)
    assert status == 0, out + err
    assert "Fleet of 3 source(s)" in out and "replica-2: " in out
    evidence = (exports / "fleet.evidence.md").read_text()
    assert evidence.startswith("# Fleet migration evidence: PASSED")
    for label in ("desktop", "replica-1", "replica-2"):
        assert f"| {label} | " in evidence
    with project_instance() as instance:  # what the UI's partitions page lists
        keys = instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)
    assert [fleet_label_of(key) for key in keys] == sorted(fleet_label_of(k) for k in keys)
    assert {fleet_label_of(key) for key in keys} == {"desktop", "replica-1", "replica-2"}
    held = target_threads(target_dsn)
    assert held["replica-1:rich-basic"] and held["replica-2:rich-basic"]
    assert held["desktop:support-000"]
    assert not any(":" not in thread_id for thread_id in held)

    value = cg.RICH_RESUME_VALUES["approve"]
    on_sqlite = tmp_path / "replica-2-as-it-was.sqlite"
    shutil.copyfile(second_replica, on_sqlite)
    with cg.open_sqlite_saver(on_sqlite) as saver:
        expected = cg.resume_paused_thread(cg.build_rich_graph(saver), "rich-approve", value)
    resumed = cg.resume_paused_thread(postgres_graph, "replica-2:rich-approve", value)
    assert cg.canonical(resumed) == cg.canonical(expected)


def test_a_mapping_file_renames_the_threads_it_names_in_every_table(
        fleet_dir: Path, tmp_path: Path, target_dsn: str) -> None:
    """A mapping file renames replica-2's colliding threads (and only those): checkpoints,
    writes and blobs carry the new ids, parent links hold, the read-back of every thread
    passes; the export header and the fleet file record the mapping."""
    with closing(sqlite3.connect(fleet_dir / "replica-2.sqlite")) as conn:
        ids = [r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")]
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"replica-2": {tid: f"eu-{n}" for n, tid in
                                                 enumerate(sorted(ids))}}))
    exports = tmp_path / "exports"
    status, out, err = cli("migrate", "--source", str(fleet_dir / "replica-1.sqlite"),
                           "--source", str(fleet_dir / "replica-2.sqlite"), "--thread-map",
                           str(mapping), "--export-dir", str(exports), "--readback-all",
                           dsn=target_dsn)
    assert status == 0, out + err
    held = target_threads(target_dsn)
    assert "rich-basic" in held and f"eu-{sorted(ids).index('rich-basic')}" in held
    with psycopg.connect(target_dsn) as conn:
        for table in ("checkpoint_blobs", "checkpoint_writes"):
            found = {r[0] for r in conn.execute(f"SELECT DISTINCT thread_id FROM {table}")}
            assert found <= set(held) and any(t.startswith("eu-") for t in found)
    fleet = json.loads((exports / "fleet.json").read_text())
    assert fleet["members"][1]["thread_names"]["renamed"]["rich-basic"].startswith("eu-")


def test_a_copied_file_is_recognised_and_its_threads_are_stored_once(
        fleet_dir: Path, tmp_path: Path, target_dsn: str) -> None:
    """A copy of replica-1 beside it holds the same thread ids with the same content: no
    collision; each source is verified, the evidence names the copy, and PostgreSQL holds
    each thread once."""
    shutil.copyfile(fleet_dir / "replica-1.sqlite", fleet_dir / "replica-1-backup.sqlite")
    exports = tmp_path / "exports"
    status, out, err = cli("migrate", "--source", str(fleet_dir / "replica-1.sqlite"),
                           "--source", str(fleet_dir / "replica-1-backup.sqlite"),
                           "--export-dir", str(exports), dsn=target_dsn)
    assert status == 0, out + err
    evidence = (exports / "fleet.evidence.md").read_text()
    assert "replica-1-backup (copy of replica-1)" in evidence
    status, out, err = cli("backfill", "--fleet", str(exports / "fleet.json"),
                           "--fleet-source", "replica-3", dsn=target_dsn)
    assert status == 3 and "has no source labelled 'replica-3'" in err
    assert "replica-1, replica-1-backup" in err
    assert target_threads(target_dsn) == dict(
        sqlite3.connect(fleet_dir / "replica-1.sqlite").execute(
            "SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())


def test_a_damaged_file_fails_alone_and_the_healthy_ones_are_migrated_and_proven(
        fleet_dir: Path, tmp_path: Path, target_dsn: str) -> None:
    """One file of the fleet is not a SQLite database: the fleet is FAILED (exit 1) and its
    evidence says which source and why, while the other sources' batches load and each of
    them PASSES; a backfill once the file is repaired completes the fleet."""
    damaged = fleet_dir / "laptop.sqlite"
    damaged.write_bytes(b"this was a checkpoint database before the disk filled up")
    exports = tmp_path / "exports"
    status, out, err = cli("migrate", "--source", str(fleet_dir), "--thread-prefix",
                           "{source}:", "--export-dir", str(exports), dsn=target_dsn)
    assert status == 1, out + err
    evidence = (exports / "fleet.evidence.md").read_text()
    assert evidence.startswith("# Fleet migration evidence: FAILED")
    rows = {line.split(" | ")[0].strip("| "): line for line in evidence.splitlines()
            if line.startswith("| ") and " | " in line}
    assert "| PASSED |" in rows["replica-1"] and "| PASSED |" in rows["desktop"]
    assert "| FAILED |" in rows["laptop"] and "is not a SQLite database" in rows["laptop"]
    assert {t.split(":")[0] for t in target_threads(target_dsn)} == {
        "desktop", "replica-1", "replica-2"}

    write_corpus(damaged.with_name("repaired.sqlite"), threads=3)
    shutil.move(damaged.with_name("repaired.sqlite"), damaged)
    status, out, err = cli("migrate", "--fleet", str(exports / "fleet.json"),
                           dsn=target_dsn)
    assert status == 0, out + err
    assert "laptop:support-000" in target_threads(target_dsn)


def test_sync_follows_the_sources_that_keep_writing_cutover_proves_each_and_one_rolls_back(
        fleet_dir: Path, tmp_path: Path, target_dsn: str) -> None:
    """After the migration two replicas keep writing while `sync --fleet` runs, then stop;
    a second sync moves the rest of what each wrote (under its prefix) and leaves the quiet
    one alone; `cutover --fleet` then proves every source equal, each with its evidence
    beside its export. `rollback --fleet-source replica-2` brings that source's threads
    (those it wrote since too) back into one SQLite file under the ids replica-2 gave
    them, the rows it holds, byte for byte."""
    exports = tmp_path / "exports"
    status, out, err = cli("migrate", "--source", str(fleet_dir), "--thread-prefix",
                           "{source}:", "--export-dir", str(exports), dsn=target_dsn)
    assert status == 0, out + err
    writers = {label: Application(fleet_dir / f"{label}.sqlite", writes=None, pause=0.3)
               for label in ("replica-1", "replica-2")}
    for writer in writers.values():
        writer.start()
        writer.begin.set()
    try:
        status, out, err = cli("sync", "--fleet", str(exports / "fleet.json"),
                               dsn=target_dsn)
        assert status == 0, out + err
    finally:
        for writer in writers.values():
            writer.stop()
    assert all(writer.written for writer in writers.values())
    status, out, err = cli("sync", "--fleet", str(exports / "fleet.json"), dsn=target_dsn)
    assert status == 0, out + err
    assert "Fleet sync: 3 of 3 source(s) done" in out
    assert "[desktop] Nothing changed" in out
    held = target_threads(target_dsn)
    for label, writer in writers.items():
        assert {f"{label}:during-{n}" for n in range(writer.written)} <= set(held)
    assert "during-0" not in held

    status, out, err = cli("cutover", "--fleet", str(exports / "fleet.json"),
                           "--quiet-seconds", "0", dsn=target_dsn)
    assert status == 0, out + err
    assert "Fleet cutover: 3 of 3 source(s) done" in out
    for label in ("desktop", "replica-1", "replica-2"):
        assert (exports / f"{label}.export.evidence.md").read_text().count("PASSED")

    back = tmp_path / "replica-2-back.sqlite"
    status, out, err = cli("rollback", "--fleet", str(exports / "fleet.json"),
                           "--fleet-source", "replica-2", "--to", str(back),
                           "--source-dsn", target_dsn, "--readback-all", dsn=target_dsn)
    assert status == 0, out + err
    restored, original = sqlite_rows(back), sqlite_rows(fleet_dir / "replica-2.sqlite")
    assert restored["writes"] == original["writes"]
    # Every checkpoint under its own id and parent, in its own bytes; but those whose
    # metadata PostgreSQL could not hold (NUL in nested strings) come back rebuilt.
    assert [row[:4] for row in restored["checkpoints"]] == [
        row[:4] for row in original["checkpoints"]]
    rebuilt = [before for after, before in zip(restored["checkpoints"],
                                               original["checkpoints"]) if after != before]
    assert rebuilt and all(b"\\u0000" in before[6] for before in rebuilt)


def test_sources_come_from_lists_globs_and_folders_once_each_with_distinct_labels(
        tmp_path: Path) -> None:
    """@LIST, a glob and a directory name the same files; a file reached twice counts
    once; two files of the same name in different folders get their folder in front; a
    file whose name holds glob characters is that file."""
    for folder in ("pod-a", "pod-b"):
        (tmp_path / folder).mkdir()
        write_corpus(tmp_path / folder / "checkpoints.sqlite", threads=1)
    (tmp_path / "pod-a" / "notes.txt").write_text("not a database")
    listing = tmp_path / "sources.txt"
    listing.write_text("pod-a/checkpoints.sqlite\npod-b/checkpoints.sqlite\n")
    by_list = expand_sources([f"@{listing}"])
    by_glob = expand_sources([str(tmp_path / "pod-*" / "*.sqlite")])
    by_dirs = expand_sources([tmp_path / "pod-a", tmp_path / "pod-b",
                              tmp_path / "pod-a" / "checkpoints.sqlite"])
    assert [p.resolve() for p in by_list] == [p.resolve() for p in by_glob] == [
        p.resolve() for p in by_dirs]
    assert source_labels(by_dirs) == ["pod-a-checkpoints", "pod-b-checkpoints"]
    odd = write_corpus(tmp_path / "pod[1].sqlite", threads=1)  # a file, not a glob
    assert expand_sources([str(odd)]) == [odd]


def test_ways_to_tell_sources_apart_that_would_not_are_refused_before_anything_is_read(
        tmp_path: Path) -> None:
    """A prefix without {source} gives every file the same prefix; a mapping file naming a
    source the fleet does not have is a typo; both at once is ambiguous; a mapping that
    gives two threads of one file the same id would merge them: each is refused by name."""
    for name in ("eu.sqlite", "us.sqlite"):
        write_corpus(tmp_path / name, threads=2)
    sources = [str(tmp_path / "eu.sqlite"), str(tmp_path / "us.sqlite")]
    with pytest.raises(MigrationError, match="does not contain {source}"):
        plan_fleet(sources, tmp_path / "out", thread_prefix="tenant:")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"asia": {"support-000": "a-0"}}))
    with pytest.raises(MigrationError, match="names source\\(s\\) the fleet does not have: "
                                             "'asia' \\(its labels: eu, us\\)"):
        plan_fleet(sources, tmp_path / "out", thread_map=mapping)
    with pytest.raises(MigrationError, match="both given"):
        plan_fleet(sources, tmp_path / "out", thread_prefix="{source}:", thread_map=mapping)
    mapping.write_text(json.dumps({"eu": {"support-000": "support-001"}}))
    exported = export_fleet(plan_fleet(sources, tmp_path / "out", thread_map=mapping),
                            batch_size=100)
    assert "gives two threads of" in exported.exports[0].error
    assert "the same id 'support-001'" in exported.exports[0].error
    assert exported.exports[1].manifest is not None  # the other file is exported
