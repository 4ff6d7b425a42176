"""Live migration: the application keeps writing to SQLite while syncs keep PostgreSQL in step.

The application is the rich corpus graph on SqliteSaver. Between syncs (and during one) it
writes with every pattern SqliteSaver has: new threads, resumed interrupts, new turns,
update_state forks, a node that raises (an error write), writes replaced in place
(INSERT OR REPLACE of a special channel, also as the writes table's last row) and
delete_thread. After the final sync the verification (every thread read
back through both official savers) passes, paused threads resume alike on both backends,
rows the target's own application wrote are untouched, and a change someone else made in
the target is a conflict, never overwritten.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.constants import ERROR
from psycopg.types.json import Jsonb

from checkpoint_assets.engine.core.errors import ConflictError, MigrationError
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import load_chain
from checkpoint_assets.engine.sync.sync_target import sync_target
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests.corpus_graphs import (
    QUOTED_THREAD_ID,
    RICH_RESUME_VALUES,
    build_rich_graph,
    canonical,
    open_sqlite_saver,
    resume_paused_thread,
    rich_input,
    thread_config,
)

TARGET_APP_THREAD = "written-by-postgres-app"


@pytest.fixture
def source(rich_master: Path, tmp_path: Path) -> Path:
    """A private copy of the rich corpus the application of a test writes to."""
    return Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))


def migrate(source: Path, export: Path, target: Target, **selection: Any) -> None:
    """The full copy while the application runs: export, then import."""
    import_export(write_export(source, export, batch_size=20, **selection), target)


def verify(source: Path, export: Path, target: Target) -> Any:
    """The cutover's verification: every live thread read back through both savers."""
    chain = load_chain(export)
    return verify_migration(chain.export, target, source_path=source, readback_threads=None,
                            workers=1, chain=chain)


def run(path: Path, action: Any) -> None:
    """Let the application (the rich graph on SqliteSaver) do ``action(graph, saver)``."""
    with open_sqlite_saver(path) as saver:
        action(build_rich_graph(saver), saver)


def new_threads(graph: Any, saver: Any) -> None:
    graph.invoke(rich_input("basic"), thread_config("late-basic"))
    graph.invoke(rich_input("approve"), thread_config("late-paused"))


def resume_and_new_turn(graph: Any, saver: Any) -> None:
    resume_paused_thread(graph, "rich-approve", RICH_RESUME_VALUES["approve"])
    graph.invoke(rich_input("basic"), thread_config("rich-basic"))


def fork(graph: Any, saver: Any) -> None:
    config = thread_config("rich-branches")
    before_tools = next(s for s in graph.get_state_history(config) if s.next == ("tools",))
    graph.invoke(None, graph.update_state(before_tools.config, {"note": "sync fork"},
                                          as_node="intake"))


def failing_node(graph: Any, saver: Any) -> None:
    with pytest.raises(ValueError):
        graph.invoke(rich_input("error"), thread_config("late-error"))


def error_write(value: str) -> Any:
    """Put (or replace: INSERT OR REPLACE) an __error__ write as the newest row."""
    def action(graph: Any, saver: Any) -> None:
        latest = saver.get_tuple(thread_config("rich-error"))
        saver.put_writes(latest.config, [(ERROR, ValueError(value))], "sync-task")
    return action


def delete(thread_id: str) -> Any:
    def action(graph: Any, saver: Any) -> None:
        saver.delete_thread(thread_id)
    return action


def last_write(path: Path) -> tuple[int, str]:
    """(rowid, task_id) of the writes table's last row."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT rowid, task_id FROM writes ORDER BY rowid DESC LIMIT 1"
                            ).fetchone()


def thread_rows(dsn: str, thread_id: str) -> dict[str, list[tuple]]:
    """Every target row of one thread, per table."""
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(
            f"SELECT * FROM {table} WHERE thread_id = %s ORDER BY 1, 2, 3, 4",  # noqa: S608
            (thread_id,)).fetchall()
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")}


def target_application_writes(dsn: str) -> None:
    """The target's own application (already on PostgresSaver) runs a thread of its own."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        graph = build_rich_graph(PostgresSaver(conn))
        graph.invoke(rich_input("approve"), thread_config(TARGET_APP_THREAD))


def test_syncs_follow_every_write_pattern_and_the_target_ends_equal(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """Syncs between the application's writes move exactly what changed; after the last
    one every thread reads back equal and paused threads resume alike on both backends."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    target_application_writes(target_dsn)
    theirs = thread_rows(target_dsn, TARGET_APP_THREAD)

    for action in (new_threads, resume_and_new_turn, fork, failing_node, error_write("one")):
        run(source, action)
    first = sync_target(source, export, target)
    assert first.found.generation == 1
    assert sorted(first.found.added) == ["late-basic", "late-error", "late-paused"]
    assert sorted(first.found.changed) == ["rich-approve", "rich-basic", "rich-branches",
                                           "rich-error"]
    assert first.total("inserted")["checkpoints"] > 0

    # The newest write is replaced (INSERT OR REPLACE of the same key): SQLite allocates the
    # new row's rowid (max + 1) before deleting the old one, so even the table's last row
    # moves, and the thread's fingerprint changes.
    rowid_before, task = last_write(source)
    run(source, error_write("two"))
    assert last_write(source) == (rowid_before + 1, task)
    replaced = sync_target(source, export, target)
    assert replaced.found.changed == ["rich-error"]
    assert replaced.total("updated")["checkpoint_writes"] == 1

    run(source, delete(QUOTED_THREAD_ID))
    kept = sync_target(source, export, target)
    assert kept.found.deleted == [QUOTED_THREAD_ID]
    assert kept.deletions_kept == [QUOTED_THREAD_ID]
    gone = sync_target(source, export, target, propagate_deletes=True)
    assert not gone.found.moved
    assert gone.total("deleted")["checkpoints"] > 0 and gone.deletions_kept == []

    nothing = sync_target(source, export, target)
    assert not nothing.found.moved and nothing.applied == []
    assert "nothing was moved" in nothing.render()

    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}
    assert thread_rows(target_dsn, TARGET_APP_THREAD) == theirs
    assert thread_rows(target_dsn, QUOTED_THREAD_ID) == {
        "checkpoints": [], "checkpoint_blobs": [], "checkpoint_writes": []}
    assert _resumed_on_sqlite(source, tmp_path, "late-paused") == \
        _resumed_on_postgres(target_dsn, "late-paused")


def _resumed_on_sqlite(source: Path, tmp_path: Path, thread_id: str) -> Any:
    copy = tmp_path / "resume.sqlite"
    with closing(sqlite3.connect(source)) as conn, closing(sqlite3.connect(copy)) as out:
        conn.backup(out)
    with open_sqlite_saver(copy) as saver:
        return canonical(resume_paused_thread(build_rich_graph(saver), thread_id,
                                              RICH_RESUME_VALUES["approve"]))


def _resumed_on_postgres(dsn: str, thread_id: str) -> Any:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        return canonical(resume_paused_thread(build_rich_graph(PostgresSaver(conn)), thread_id,
                                              RICH_RESUME_VALUES["approve"]))


def test_a_thread_deleted_and_written_again_replaces_the_kept_rows(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """A thread deleted in the source (kept in the target) that the application starts
    again under the same id: the next sync replaces the rows this tool loaded for it."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, delete("rich-approve"))
    assert sync_target(source, export, target).deletions_kept == ["rich-approve"]
    run(source, lambda graph, saver: graph.invoke(rich_input("basic"),
                                                  thread_config("rich-approve")))
    again = sync_target(source, export, target)
    assert again.found.added == ["rich-approve"] and again.total("deleted")["checkpoints"]
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}


def test_rowids_used_again_make_the_sync_digest_every_thread(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The newest thread is deleted and another written: SQLite hands out the freed rowids
    again, so the row at the previous generation's last rowid holds other content; the
    sync then digests every thread instead of trusting the fingerprints."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    newest = last_write(source)
    run(source, delete(QUOTED_THREAD_ID))  # the corpus's last thread
    run(source, lambda graph, saver: graph.invoke(rich_input("basic"),
                                                  thread_config("reuses-rowids")))
    assert last_write(source)[0] >= newest[0]
    synced = sync_target(source, export, target)
    assert synced.found.read_every_thread
    assert synced.found.threads_read == len(load_chain(export).state.threads)
    assert synced.found.added == ["reuses-rowids"]
    assert synced.found.deleted == [QUOTED_THREAD_ID] and synced.found.changed == []
    asked = sync_target(source, export, target, read_every_thread=True)
    assert asked.found.read_every_thread and not asked.found.moved
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}


def test_a_target_row_changed_by_someone_else_is_a_conflict_and_stays(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The sync changes a thread whose target row someone else edited: ConflictError by
    key, nothing of the batch written; deleting such a thread is refused the same way."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    loaded = thread_rows(target_dsn, "rich-approve")
    with psycopg.connect(target_dsn) as conn:
        metadata = conn.execute("SELECT checkpoint_ns, checkpoint_id, metadata FROM checkpoints "
                                "WHERE thread_id = 'rich-approve'").fetchall()
        conn.execute("UPDATE checkpoints SET metadata = '{\"edited\": true}' "
                     "WHERE thread_id = 'rich-approve'")
        conn.execute("UPDATE checkpoints SET metadata = '{\"edited\": true}' "
                     f"WHERE thread_id = '{QUOTED_THREAD_ID.replace(chr(39), chr(39) * 2)}'")
    edited = thread_rows(target_dsn, "rich-approve")
    run(source, resume_and_new_turn)
    with pytest.raises(ConflictError) as conflict:
        sync_target(source, export, target)
    assert {k["thread_id"] for k in conflict.value.keys} == {"rich-approve"}
    assert thread_rows(target_dsn, "rich-approve") == edited

    # The owner puts the rows back as this tool loaded them (deleting them instead is a
    # conflict too: see test_a_thread_the_target_application_deleted_is_not_brought_back).
    with psycopg.connect(target_dsn) as conn:
        for ns, checkpoint_id, value in metadata:
            conn.execute("UPDATE checkpoints SET metadata = %s WHERE thread_id = 'rich-approve' "
                         "AND checkpoint_ns = %s AND checkpoint_id = %s",
                         (Jsonb(value), ns, checkpoint_id))
    assert thread_rows(target_dsn, "rich-approve") == loaded
    run(source, delete(QUOTED_THREAD_ID))
    with pytest.raises(ConflictError) as refused:
        sync_target(source, export, target, propagate_deletes=True)
    assert {k["thread_id"] for k in refused.value.keys} == {QUOTED_THREAD_ID}
    assert thread_rows(target_dsn, QUOTED_THREAD_ID)["checkpoints"]
    # The batch that loads rich-approve again committed before the refused deletion.
    assert verify(source, export, target).checks["content_integrity"].passed


def application_on_postgres_deletes(dsn: str, thread_id: str) -> None:
    """The target's application (on PostgresSaver since the cutover) deletes a thread, the
    way an application does (an erasure request, say)."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        PostgresSaver(conn).delete_thread(thread_id)


def test_a_thread_the_target_application_deleted_is_not_brought_back(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Deletions on the target side (issue 21, item 3). Threads are migrated and synced
    (tenant by tenant, say); the application, now on PostgreSQL, deletes one of them
    (PostgresSaver.delete_thread); a straggler still on SQLite writes it once more. The
    rows this tool loaded and the target deleted are a CONFLICT by key ("deleted in the
    target", exit 4 with what to do), and the thread is not re-created, however often the
    sync runs. Not conflicts: a thread new in the source (nothing loaded before), and a
    thread deleted on both sides (--propagate-deletes). A thread deleted by mistake comes
    back only when loaded again on purpose (its own export); the sync then goes on."""
    from checkpoint_assets.cli import main

    export, target = tmp_path / "tenant.export", Target(target_dsn)
    migrate(source, export, target)
    run(source, new_threads)  # new in the source, nothing loaded before: no conflict
    assert "late-basic" in sync_target(source, export, target).found.added

    # Deleted on both sides: the sync has nothing to bring back and nothing to delete.
    application_on_postgres_deletes(target_dsn, "rich-branches")
    run(source, delete("rich-branches"))
    both = sync_target(source, export, target, propagate_deletes=True)
    assert both.found.deleted == ["rich-branches"] and both.deletions_kept == []

    # Deleted on PostgreSQL only, then written again in SQLite by a straggler.
    application_on_postgres_deletes(target_dsn, "rich-basic")
    run(source, lambda graph, saver: graph.invoke(rich_input("basic"),
                                                  thread_config("rich-basic")))
    sync = ["sync", "--source", str(source), "--export", str(export), "--target", target_dsn]
    assert main(sync) == 4
    err = capsys.readouterr().err
    assert "CONFLICT: The target application deleted" in err and "'rich-basic'" in err
    assert "What to do: If that deletion is meant to stand" in err
    assert "delete them there too" in err and "--threads" in err
    empty = {"checkpoints": [], "checkpoint_blobs": [], "checkpoint_writes": []}
    assert thread_rows(target_dsn, "rich-basic") == empty
    with pytest.raises(ConflictError) as again:  # the next sync: the same, nothing written
        sync_target(source, export, target)
    assert {(k["thread_id"], k["conflict"]) for k in again.value.keys} == {
        ("rich-basic", "deleted in the target")}
    assert {k["table"] for k in again.value.keys} == {
        "checkpoints", "checkpoint_blobs", "checkpoint_writes"}
    assert thread_rows(target_dsn, "rich-basic") == empty

    # Deleted by mistake: loaded again on purpose with an export of its own, then synced.
    migrate(source, tmp_path / "rich-basic.export", target, selection=["rich-basic"])
    assert sync_target(source, export, target).reapplied
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}


def test_a_deletion_in_the_target_that_stands_leaves_the_migration_as_the_hint_says(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The other way out of a "deleted in the target" conflict, as its hint says: the
    deletion stands, so the thread is deleted in SQLite too and the tenant's other threads
    are migrated into a new export; that export syncs and verifies, and the thread stays
    deleted in PostgreSQL."""
    export, target = tmp_path / "tenant.export", Target(target_dsn)
    tenant = ["rich-approve", "rich-basic"]
    migrate(source, export, target, selection=tenant)
    application_on_postgres_deletes(target_dsn, "rich-basic")
    run(source, lambda graph, saver: graph.invoke(rich_input("basic"),
                                                  thread_config("rich-basic")))
    with pytest.raises(ConflictError, match="deleted"):
        sync_target(source, export, target)

    run(source, delete("rich-basic"))
    again = tmp_path / "tenant-again.export"
    migrate(source, again, target, selection=["rich-approve"])
    run(source, resume_and_new_turn)
    assert sync_target(source, again, target).found.changed == ["rich-approve"]
    report = verify(source, again, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}
    assert thread_rows(target_dsn, "rich-basic") == {
        "checkpoints": [], "checkpoint_blobs": [], "checkpoint_writes": []}


def test_a_sync_while_the_application_writes_is_caught_up_by_the_next(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """Threads written while a sync reads the source land in that sync or the next one;
    after the next, the target equals the source."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)

    def busy_application() -> None:
        with open_sqlite_saver(source) as saver:
            graph = build_rich_graph(saver)
            for n in range(6):
                graph.invoke(rich_input("approve"), thread_config(f"during-{n}"))

    writer = threading.Thread(target=busy_application)
    writer.start()
    sync_target(source, export, target)
    writer.join()
    sync_target(source, export, target)
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}
    assert {f"during-{n}" for n in range(6)} <= set(load_chain(export).state.threads)


def test_a_selection_migrates_and_syncs_those_threads_only(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """--threads: the export, its syncs and the verification speak of the chosen threads
    (threads written later are not among them: an id the source does not hold yet is
    refused, see test_thread_selection.py)."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    chosen = ["rich-approve", "rich-basic"]
    migrate(source, export, target, selection=chosen)
    run(source, new_threads)
    run(source, resume_and_new_turn)
    synced = sync_target(source, export, target)
    assert synced.found.added == []
    assert sorted(synced.found.changed) == ["rich-approve", "rich-basic"]
    chain = load_chain(export)
    assert sorted(chain.state.threads) == sorted(chosen) and chain.selection == sorted(chosen)
    report = verify(source, export, target)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}
    assert thread_rows(target_dsn, "late-basic")["checkpoints"] == []


def test_cli_sync_and_cutover_of_a_selection(source: Path, tmp_path: Path, target_dsn: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """checkpoint-assets export/import --threads @FILE, sync, cutover: the cutover waits
    for quiet, proves the selection equal, prints its window and says in the evidence
    that only those threads were compared."""
    from checkpoint_assets.cli import main
    from checkpoint_assets.engine.operations.live import FIRST_VERIFICATION_MESSAGE

    export, ids = tmp_path / "app.export", tmp_path / "tenant.txt"
    ids.write_text("rich-approve\nrich-basic\n\nrich-review\n", encoding="utf-8")
    common = ["--source", str(source), "--export", str(export)]
    assert main(["export", *common, "--threads", f"@{ids}"]) == 0
    assert main(["import", "--export", str(export), "--target", target_dsn]) == 0
    run(source, new_threads)
    run(source, resume_and_new_turn)
    assert main(["sync", *common, "--target", target_dsn]) == 0
    assert ("Sync generation 1: 0 new, 2 changed, 0 deleted thread(s) in the source; their"
            in capsys.readouterr().out)
    assert main(["sync", *common, "--target", target_dsn, "--threads", "rich-basic"]) == 3
    assert "--threads names other threads" in capsys.readouterr().err
    assert main(["import", "--export", f"{export}.sync-0001", "--target", target_dsn]) == 3
    assert "is sync generation 1 of an export" in capsys.readouterr().err

    evidence = tmp_path / "cutover.md"
    status = main(["cutover", *common, "--target", target_dsn, "--quiet-seconds", "0.2",
                   "--workers", "1", "--evidence", str(evidence)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Waiting until" in out and "nothing was moved" in out
    assert "cutover window:" in out and "PASSED: the target equals the source as of" in out
    text = evidence.read_text(encoding="utf-8")
    assert "ONLY these 3 thread(s) (--threads)" in text
    assert "equals the source as of" in text
    # With --json, stdout is the summary alone (what it waits for goes to stderr).
    assert main(["cutover", *common, "--target", target_dsn, "--quiet-seconds", "0.2",
                 "--workers", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    assert FIRST_VERIFICATION_MESSAGE in captured.err


def test_migrate_a_selection_as_dagster_runs(source: Path, tmp_path: Path, target_dsn: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint-assets migrate --threads: the export asset exports those threads, its
    count check counts them in the source, the verification passes for them and its
    evidence says that only they were compared."""
    from checkpoint_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("CHECKPOINT_ASSETS_WORKERS", "1")
    export = tmp_path / "tenant.export"
    assert main(["migrate", "--source", str(source), "--export", str(export), "--target",
                 target_dsn, "--readback-all", "--threads", "rich-basic,rich-review"]) == 0
    with psycopg.connect(target_dsn) as conn:
        assert {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")} \
            == {"rich-basic", "rich-review"}
    evidence = Path(f"{export}.evidence.md").read_text(encoding="utf-8")
    assert "ONLY these 2 thread(s) (--threads)" in evidence


def test_encrypted_threads_sync_without_false_conflicts(tmp_path: Path, target_dsn: str) -> None:
    """EncryptedSerializer: every load encrypts blobs again with fresh nonces, so the rows
    this tool loaded are recognised by their plaintext; a resumed thread is updated, a
    re-run applies nothing, and the target verifies equal."""
    from langgraph.types import Command

    from checkpoint_assets.engine.core.crypto import Cipher
    from checkpoint_assets_tests.corpus_graphs import build_encrypted_corpus

    key = b"0123456789abcdef0123456789abcdef"
    corpus = build_encrypted_corpus(tmp_path / "enc.sqlite", key)
    cipher, export, target = Cipher(key), tmp_path / "enc.export", Target(target_dsn)
    import_export(write_export(corpus.path, export, batch_size=20), target, cipher=cipher)
    with open_sqlite_saver(corpus.path, serde=corpus.serde) as saver:
        corpus.graph_factory(saver).invoke(Command(resume="approve"), thread_config("enc-1"))
    synced = sync_target(corpus.path, export, target, cipher=cipher)
    assert synced.found.changed == ["enc-1"] and synced.total("inserted")["checkpoints"]
    Path(f"{export}.sync-0001.applied").unlink()  # as if that sync had stopped midway
    again = sync_target(corpus.path, export, target, cipher=cipher)  # applies it once more
    assert not again.found.moved and again.applied == [] and again.reapplied
    assert not any(n for what in ("inserted", "updated", "deleted")
                   for n in again.total(what).values())
    assert sync_target(corpus.path, export, target, cipher=cipher).reapplied == []
    chain = load_chain(export)
    report = verify_migration(chain.export, target, source_path=corpus.path, cipher=cipher,
                              readback_threads=None, workers=1, chain=chain)
    assert report.passed, {n: c.mismatches for n, c in report.checks.items() if not c.passed}


def test_the_cutover_read_back_in_two_processes_finds_what_one_finds(
        source: Path, tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back of every thread, split over worker processes, reports the same
    mismatches (in thread order) and the same normalisations as one process."""
    from checkpoint_assets.engine.verify import readback

    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    with psycopg.connect(target_dsn) as conn:
        conn.execute("DELETE FROM checkpoint_writes WHERE thread_id IN "
                     "('rich-error', 'rich-fanout')")
    threads = sorted(load_chain(export).state.threads)
    monkeypatch.setattr(readback, "PARALLEL_MIN_THREADS", 1)
    alone = readback.compare_thread_readback(source, target, threads)
    split = readback.compare_thread_readback(source, target, threads, workers=2)
    assert alone[0] and split == alone


def test_an_edited_source_state_is_refused(sample_db: Path, tmp_path: Path) -> None:
    """The S frame (what the next sync compares with) is covered by the footer: one changed
    byte and neither the state nor the file is accepted."""
    from checkpoint_assets.engine.export.reader import read_manifest, read_state, verify_export

    manifest = write_export(sample_db, tmp_path / "x.export")
    assert set(read_state(manifest).threads) == {
        tid for tid, *_ in load_chain(manifest.path).thread_digests()}
    data = bytearray(manifest.path.read_bytes())
    data[manifest.state["offset"] + 20] ^= 1
    edited = tmp_path / "edited.export"
    edited.write_bytes(bytes(data))
    with pytest.raises(MigrationError, match="source state does not match its digest"):
        read_state(read_manifest(edited))
    with pytest.raises(MigrationError, match="do not match the digest in its footer"):
        verify_export(edited)


def test_a_certified_verification_compares_again_only_what_changed_since(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The cutover's short window: a first certified verification (while the application
    still writes) compares every batch and reads back every thread; after a sync the
    second compares again only the threads whose rows changed since (those the sync moved;
    a row someone changed in PostgreSQL, caught and named) and reads back only those."""
    export, target = tmp_path / "app.export", Target(target_dsn)
    migrate(source, export, target)
    chain = load_chain(export)
    first = verify_migration(chain.export, target, source_path=source, readback_threads=None,
                             workers=1, chain=chain, certify=True)
    assert first.passed and not any(c.reused for c in first.batches)
    assert first.read_back_equal == {tid for c in first.batches for tid in c.thread_ids}

    run(source, resume_and_new_turn)
    sync_target(source, export, target)
    chain = load_chain(export)
    second = verify_migration(chain.export, target, source_path=source,
                              readback_threads=None, workers=1, chain=chain, certify=True,
                              earlier=first)
    assert second.passed, {n: c.mismatches[:3] for n, c in second.checks.items()}
    # Only the two threads the sync moved are compared again; the batch they left is taken
    # over for its other threads, whose rows are the same.
    compared = {tid for c in second.batches if not c.reused for tid in c.thread_ids}
    assert compared == {"rich-approve", "rich-basic"}
    left = next(c for c in second.batches if c.reused and c.threads is not None)
    assert not {"rich-approve", "rich-basic"} & set(left.thread_ids)
    assert second.counts["target"] == second.counts["expected_target"]
    assert second.read_back_equal == first.read_back_equal
    assert any("not read back again" in note
               for note in second.checks["official_saver_readback"].notes)

    # Someone changes a row of a thread whose batch was taken over: compared again, caught.
    untouched = next(c for c in second.batches if c.reused)
    thread = untouched.thread_ids[0]
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute("UPDATE checkpoints SET metadata = metadata || '{\"edited\": 1}' "
                     "WHERE thread_id = %s", (thread,))
    third = verify_migration(chain.export, target, source_path=source, readback_threads=None,
                             workers=1, chain=chain, certify=True, earlier=second)
    assert not third.passed
    rechecked = next(c for c in third.batches if thread in c.thread_ids)
    assert not rechecked.reused and not rechecked.passed
    assert thread not in third.read_back_equal
