"""The way back, PostgreSQL -> SQLite (engine.rollback and the `rollback` command).

Under test: every corpus of the suite, migrated forward with this tool and rolled back,
reads back through SqliteSaver exactly as the original does, its paused threads resume
to the same end, and its checkpoints come back byte-identical or with a named reason;
rolled back into the original file, every row already there keeps its bytes. A real
application that kept running on PostgresSaver after the cutover (new turns, resumed
interrupts, new threads) continues on SqliteSaver from exactly where it was. Bad input
is refused with a clear error and nothing is half-written.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import Command
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from checkpoint_assets.cli import main
from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import ConflictError, MigrationError
from checkpoint_assets.engine.core.rows import CheckpointRow
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.rollback import sqlite_target
from checkpoint_assets.engine.rollback.original_rows import ORIGINAL_BYTES
from checkpoint_assets.engine.rollback.reverse_convert import (
    METADATA_FITTED,
    SAME_BYTES,
    difference_reason,
)
from checkpoint_assets.engine.rollback.way_back import rollback
from checkpoint_assets_tests import corpus_graphs as cg

AES_KEY = b"0123456789abcdef0123456789abcdef"
PASSWORD = "pw-never-written"
CHECKPOINT_SQL = ("SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
                  "checkpoint, metadata FROM checkpoints ORDER BY 1, 2, 3")
WRITES_SQL = ("SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, "
              "value FROM writes ORDER BY 1, 2, 3, 4, 5")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cg.CorpusInfo]:
    """Every corpus of the suite, built once for this module."""
    # The scaled corpus with 9 threads has one paused on a refund approval.
    return cg.build_every_corpus(tmp_path_factory.mktemp("rollback-corpora"), AES_KEY, 9)


def migrate(source: Path, dsn: str, work: Path, cipher: Cipher | None) -> None:
    """The forward migration this tool makes: export and import."""
    manifest = write_export(source, work / "forward" / "forward.export", batch_size=20)
    import_export(manifest, Target(dsn), cipher=cipher)


def rows(path: Path, query: str) -> list[tuple]:
    """Every row of a query on a SQLite file."""
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def listed(path: Path, serde: Any) -> list[tuple]:
    """Every checkpoint tuple SqliteSaver lists, in comparable form; metadata as JSONB
    holds it (the migration changes what it cannot hold, e.g. NUL, and reports it)."""
    with cg.open_sqlite_saver(path, serde=serde, read_only=True) as saver:
        return [(t.config, cg.canonical(t.checkpoint),
                 cg.canonical(jsonb_metadata(t.metadata)[0]),
                 t.parent_config, cg.canonical(t.pending_writes))
                for t in sorted(saver.list(None), key=lambda t: (
                    t.config["configurable"]["thread_id"],
                    t.config["configurable"]["checkpoint_ns"],
                    t.config["configurable"]["checkpoint_id"]))]


def resumed(info: cg.CorpusInfo, path: Path, thread_id: str, value: Any, work: Path) -> Any:
    """The final state of a paused thread resumed on a copy of ``path``."""
    copy = work / f"resume-{path.name}"
    shutil.copyfile(path, copy)
    with cg.open_sqlite_saver(copy, serde=info.serde) as saver:
        state = cg.resume_paused_thread(info.graph_factory(saver), thread_id, value)
    copy.unlink()
    return cg.canonical(state)


@pytest.mark.parametrize("name", ["rich", "json", "encrypted", "v3", "legacy", "scaled"])
def test_round_trip_reads_back_and_resumes_like_the_original(
        name: str, corpora: dict[str, cg.CorpusInfo], target_dsn: str, tmp_path: Path,
        record_property: Any) -> None:
    info = corpora[name]
    cipher = Cipher(AES_KEY) if name == "encrypted" else None
    migrate(info.path, target_dsn, tmp_path, cipher)

    back = tmp_path / "back.sqlite"
    result = rollback(target_dsn, back, tmp_path / "back.export", cipher=cipher,
                      readback_threads=None)

    assert result.report.passed, {n: c.mismatches for n, c in result.report.checks.items()}
    assert listed(back, info.serde) == listed(info.path, info.serde)
    for thread_id, value in info.paused_threads.items():
        assert resumed(info, back, thread_id, value, tmp_path) == \
            resumed(info, info.path, thread_id, value, tmp_path), thread_id
    # Pending writes are copied exactly; checkpoints are byte-identical or say why not.
    assert [w[:7] + (w[7] or b"",) for w in rows(info.path, WRITES_SQL)] == \
        rows(back, WRITES_SQL)
    reasons = Counter(difference_reason(CheckpointRow(*a), CheckpointRow(*b), cipher)
                      for a, b in zip(rows(info.path, CHECKPOINT_SQL),
                                      rows(back, CHECKPOINT_SQL), strict=True))
    record_property("byte_identity", dict(reasons))
    print(f"{name}: checkpoints rebuilt {dict(reasons)}")
    assert "different content" not in reasons

    # Given the forward export, every checkpoint whose content is unchanged comes back in
    # its original bytes; only metadata the migration had to change for JSONB stays rebuilt.
    exact = tmp_path / "exact.sqlite"
    again = rollback(target_dsn, exact, tmp_path / "exact.export", cipher=cipher,
                     readback_threads=None,
                     original_export=tmp_path / "forward" / "forward.export")
    assert again.report.passed, {n: c.mismatches for n, c in again.report.checks.items()}
    after = Counter(difference_reason(CheckpointRow(*a), CheckpointRow(*b), cipher)
                    for a, b in zip(rows(info.path, CHECKPOINT_SQL),
                                    rows(exact, CHECKPOINT_SQL), strict=True))
    fitted = reasons.get(METADATA_FITTED, 0)
    assert after == Counter({SAME_BYTES: sum(reasons.values()) - fitted,
                             **({METADATA_FITTED: fitted} if fitted else {})})
    assert again.original_bytes == {ORIGINAL_BYTES: after[SAME_BYTES],
                                    **({METADATA_FITTED: fitted} if fitted else {})}
    print(f"{name}: with the forward export {again.original_bytes}")


def test_rollback_into_the_original_file_keeps_every_original_byte(
        corpora: dict[str, cg.CorpusInfo], target_dsn: str, tmp_path: Path) -> None:
    info = corpora["rich"]
    original = tmp_path / "app.sqlite"
    shutil.copyfile(info.path, original)
    before = rows(original, CHECKPOINT_SQL), rows(original, WRITES_SQL)
    migrate(original, target_dsn, tmp_path, None)

    result = rollback(target_dsn, original, tmp_path / "back.export", readback_threads=None)

    assert result.report.passed
    totals = result.restore.totals()
    assert totals["inserted"] == {"checkpoints": 0, "writes": 0}
    assert totals["already_present"]["checkpoints"] == len(before[0])
    assert (rows(original, CHECKPOINT_SQL), rows(original, WRITES_SQL)) == before


# The chat agent (tool calls, a summary subgraph, refund approvals), plain and encrypted.
@pytest.mark.parametrize("name", ["scaled", "encrypted"])
def test_an_app_that_ran_on_postgres_continues_on_sqlite_where_it_was(
        name: str, corpora: dict[str, cg.CorpusInfo], target_dsn: str,
        tmp_path: Path) -> None:
    info = corpora[name]
    cipher = Cipher(AES_KEY) if name == "encrypted" else None
    app_file = tmp_path / "app.sqlite"
    shutil.copyfile(info.path, app_file)
    migrate(app_file, target_dsn, tmp_path, cipher)
    paused_thread, approval = next(iter(info.paused_threads.items()))
    finished = next(t for t in info.thread_ids if t not in info.paused_threads)
    new_thread = "after-cutover-refund"
    # After the cutover the application runs on PostgresSaver: it resumes an interrupt,
    # adds a turn to a finished conversation and starts a new one, which pauses.
    with psycopg.connect(target_dsn, autocommit=True, row_factory=dict_row) as conn:
        graph = info.graph_factory(PostgresSaver(conn, serde=info.serde))
        graph.invoke(Command(resume=approval), cg.thread_config(paused_thread))
        graph.invoke(cg.chat_input(random.Random(1), 1, False), cg.thread_config(finished))
        graph.invoke(cg.chat_input(random.Random(2), 0, True), cg.thread_config(new_thread))

    result = rollback(target_dsn, app_file, tmp_path / "back.export", cipher=cipher,
                      readback_threads=None)
    assert result.report.passed
    assert result.restore.totals()["inserted"]["checkpoints"] > 0
    if cipher is not None:  # what the application wrote on PostgreSQL came back encrypted
        assert {r[4] for r in rows(app_file, CHECKPOINT_SQL)} == {"msgpack+aes"}

    # Back on SqliteSaver the application is where it was on PostgresSaver, and the same
    # next steps (approve the new refund, another turn) end in the same state on both.
    def where_it_is_and_next_steps(graph: Any) -> list[Any]:
        states = [graph.get_state(cg.thread_config(t)).values
                  for t in (paused_thread, finished, new_thread)]
        states.append(cg.resume_paused_thread(graph, new_thread, "approve"))
        graph.invoke(cg.chat_input(random.Random(3), 2, False), cg.thread_config(finished))
        states.append(graph.get_state(cg.thread_config(finished)).values)
        return cg.canonical(states)

    with cg.open_sqlite_saver(app_file, serde=info.serde) as saver:
        on_sqlite = where_it_is_and_next_steps(info.graph_factory(saver))
    with psycopg.connect(target_dsn, autocommit=True, row_factory=dict_row) as conn:
        on_postgres = where_it_is_and_next_steps(
            info.graph_factory(PostgresSaver(conn, serde=info.serde)))
    assert on_sqlite == on_postgres


def test_one_thread_copied_down_for_debugging(
        corpora: dict[str, cg.CorpusInfo], target_dsn: str, tmp_path: Path) -> None:
    info = corpora["rich"]
    migrate(info.path, target_dsn, tmp_path, None)
    thread_id = next(iter(info.paused_threads))
    out = tmp_path / "debug.sqlite"

    # The test server trusts local users and ignores the password; it must appear nowhere.
    dsn = make_conninfo(target_dsn, password=PASSWORD)

    status = main(["rollback", "--source-dsn", dsn, "--to", str(out), "--threads",
                   thread_id, "--readback-all", "--evidence", str(tmp_path / "ev.md"),
                   "--export", str(tmp_path / "debug.export")])

    assert status == 0
    assert {r[0] for r in rows(out, CHECKPOINT_SQL)} == {thread_id}
    evidence = (tmp_path / "ev.md").read_text()
    assert "Rollback evidence: PASSED" in evidence
    header = read_manifest(tmp_path / "debug.export").header["source"]
    assert header["kind"] == "postgres" and header["threads"] == [thread_id]
    for written in (evidence.encode(), (tmp_path / "debug.export").read_bytes()):
        assert PASSWORD.encode() not in written


# --- bad input: a clear error, nothing half-written -------------------------------------


@pytest.fixture
def migrated(sample_db: Path, target_dsn: str, tmp_path: Path) -> str:
    """The sample database migrated into a fresh PostgreSQL database; its DSN."""
    migrate(sample_db, target_dsn, tmp_path, None)
    return target_dsn


def test_a_target_file_that_is_not_a_sqlite_saver_database_is_left_alone(
        migrated: str, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("not a database")
    other_db = tmp_path / "other.sqlite"
    with sqlite3.connect(other_db) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path in (text_file, other_db):
        before = path.read_bytes()
        with pytest.raises(MigrationError, match="not .*SqliteSaver|not a SQLite"):
            rollback(migrated, path, tmp_path / "x.export")
        assert path.read_bytes() == before


def test_a_conflicting_row_in_the_target_file_is_named_and_nothing_is_overwritten(
        sample_db: Path, migrated: str, tmp_path: Path) -> None:
    with sqlite3.connect(sample_db) as conn:
        key = conn.execute("SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints "
                           "ORDER BY 1, 2, 3 LIMIT 1").fetchone()
        conn.execute("UPDATE checkpoints SET metadata = ? WHERE thread_id = ? AND "
                     "checkpoint_ns = ? AND checkpoint_id = ?", (b'{"edited": 1}', *key))
    before = rows(sample_db, CHECKPOINT_SQL), rows(sample_db, WRITES_SQL)

    with pytest.raises(ConflictError) as raised:
        rollback(migrated, sample_db, tmp_path / "x.export")

    assert {"thread_id": key[0], "checkpoint_ns": key[1], "checkpoint_id": key[2]} in \
        raised.value.keys
    assert (rows(sample_db, CHECKPOINT_SQL), rows(sample_db, WRITES_SQL)) == before


def test_an_unreachable_or_wrong_password_source_names_no_password(
        migrated: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    wrong = migrated.replace("user=postgres", "user=nobody_here password=s3cret-pw")
    for dsn in (wrong, "postgresql://u:s3cret-pw@127.0.0.1:1/db"):
        with pytest.raises(MigrationError, match="source") as raised:
            rollback(dsn, out / "back.sqlite", out / "x.export")
        assert "s3cret-pw" not in str(raised.value)
        assert list(out.iterdir()) == []


def test_an_unknown_postgres_saver_schema_version_is_refused(
        migrated: str, tmp_path: Path) -> None:
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("INSERT INTO checkpoint_migrations (v) VALUES (999)")

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MigrationError, match="schema version 999"):
        rollback(migrated, out / "back.sqlite", out / "x.export")
    assert list(out.iterdir()) == []


def test_threads_that_the_source_does_not_hold_are_named(migrated: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MigrationError, match="no-such-thread"):
        rollback(migrated, out / "debug.sqlite", out / "x.export",
                 threads=["no-such-thread"])
    assert list(out.iterdir()) == []


# --- a named schema, and a verification that finds a difference -------------------------


def test_a_named_schema_rolls_back(sample_db: Path, target_dsn: str, tmp_path: Path) -> None:
    manifest = write_export(sample_db, tmp_path / "forward.export", batch_size=20)
    import_export(manifest, Target(target_dsn, "app_checkpoints"))

    result = rollback(target_dsn, tmp_path / "back.sqlite", tmp_path / "back.export",
                      schema="app_checkpoints", readback_threads=None)

    assert result.report.passed
    assert result.manifest.header["source"]["schema"] == "app_checkpoints"
    assert len(rows(tmp_path / "back.sqlite", CHECKPOINT_SQL)) == manifest.checkpoints


def test_verify_rollback_names_a_thread_written_after_the_export(
        sample_db: Path, migrated: str, tmp_path: Path, capsys: Any) -> None:
    out, export = tmp_path / "back.sqlite", tmp_path / "back.export"
    assert main(["export-postgres", "--source-dsn", migrated, "--export", str(export)]) == 0
    assert main(["restore", "--export", str(export), "--to", str(out)]) == 0
    # The application writes one more checkpoint of a thread after the export was taken.
    with sqlite3.connect(sample_db) as conn:
        thread_id = conn.execute("SELECT min(thread_id) FROM checkpoints").fetchone()[0]
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
                     "parent_checkpoint_id, checkpoint, metadata) SELECT thread_id, "
                     "checkpoint_ns, 'zz-after-export', checkpoint_id, checkpoint, metadata "
                     "FROM checkpoints WHERE thread_id = %s ORDER BY checkpoint_id DESC "
                     "LIMIT 1", (thread_id,))

    status = main(["verify-rollback", "--source-dsn", migrated, "--export", str(export),
                   "--to", str(out), "--evidence", str(tmp_path / "ev.md")])

    assert status == 1
    evidence = (tmp_path / "ev.md").read_text()
    assert "Rollback evidence: FAILED" in evidence and "zz-after-export" in evidence


def test_a_target_file_in_use_by_a_writer_is_reported_as_locked(
        sample_db: Path, migrated: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sqlite_target, "BUSY_TIMEOUT_SECONDS", 0.2)  # not 10 s in a test
    before = rows(sample_db, CHECKPOINT_SQL)
    writer = sqlite3.connect(sample_db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the application holds the write lock
    try:
        with pytest.raises(MigrationError, match="locked"):
            rollback(migrated, sample_db, tmp_path / "x.export")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert rows(sample_db, CHECKPOINT_SQL) == before


# --- threads PostgreSQL deleted after the cutover -----------------------------------------


def thread_ids(path: Path) -> set[str]:
    """The threads a SqliteSaver file holds (a checkpoint or a write)."""
    return {r[0] for r in rows(path, "SELECT thread_id FROM checkpoints UNION "
                                     "SELECT thread_id FROM writes")}


def rows_of_other_threads(path: Path, gone: set[str]) -> tuple[list[tuple], list[tuple]]:
    """Every checkpoint and write row of the file's threads other than ``gone``."""
    return ([r for r in rows(path, CHECKPOINT_SQL) if r[0] not in gone],
            [r for r in rows(path, WRITES_SQL) if r[0] not in gone])


def test_threads_deleted_on_postgres_are_reported_and_removed_only_when_asked(
        sample_db: Path, migrated: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Rollback into the original file after the application on PostgreSQL deleted
    threads (PostgresSaver.delete_thread: an erasure request, issue 21 item 4). Without a
    flag the threads stay in the file and the rollback says so in its output, its JSON and
    its evidence (the warning check sqlite_threads_not_in_postgres; exit 0: every other
    row is right). A rollback of other threads (--threads) neither reports nor removes
    them. With --remove-deleted-threads they are deleted from SqliteSaver's tables in the
    restore's transaction, named as removed (not as mismatches), every other row
    untouched. The removal is refused when PostgreSQL holds no thread at all, and rolled
    back with the batch when the restore meets a conflict."""
    gone = {"support-001", "support-004"}
    with psycopg.connect(migrated, autocommit=True, prepare_threshold=0) as conn:
        for thread_id in sorted(gone):
            PostgresSaver(conn).delete_thread(thread_id)
    assert gone < thread_ids(sample_db)
    others = rows_of_other_threads(sample_db, gone)
    common = ["rollback", "--source-dsn", migrated, "--to", str(sample_db),
              "--export", str(tmp_path / "back.export")]

    kept_report, kept_evidence = tmp_path / "kept.json", tmp_path / "kept.md"
    assert main([*common, "--report", str(kept_report), "--evidence", str(kept_evidence)]) == 0
    out = capsys.readouterr().out
    assert "[WARN] sqlite_threads_not_in_postgres" in out
    assert "WARNING: the SQLite file keeps 2 thread(s) PostgreSQL no longer has" in out
    assert "support-001, support-004" in out and "--remove-deleted-threads" in out
    summary = json.loads(kept_report.read_text())
    assert summary["ok"] is True and summary["removed_threads"] == []
    assert summary["threads_not_in_postgres"] == sorted(gone)
    check = summary["checks"]["sqlite_threads_not_in_postgres"]
    assert check["passed"] is False and check["mismatch_count"] == 2
    evidence = kept_evidence.read_text()
    assert "Warning: sqlite_threads_not_in_postgres (WARN, 2)" in evidence
    assert "support-004" in evidence
    assert gone < thread_ids(sample_db)

    # Only the chosen thread is spoken of: nothing to report, nothing removed.
    assert main([*common, "--threads", "support-003", "--remove-deleted-threads", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert chosen["removed_threads"] == [] and chosen["threads_not_in_postgres"] == []
    assert gone < thread_ids(sample_db)

    # A conflict in the restore's batch (a copy of the file): its transaction rolls back,
    # the removal with it.
    conflicting = Path(shutil.copyfile(sample_db, tmp_path / "conflicting.sqlite"))
    with sqlite3.connect(conflicting) as conn:
        conn.execute("UPDATE writes SET value = ? WHERE thread_id = 'support-000'",
                     (b"edited",))
    with pytest.raises(ConflictError):
        rollback(migrated, conflicting, tmp_path / "x.export", remove_deleted_threads=True)
    assert gone < thread_ids(conflicting)

    removed_report, removed_evidence = tmp_path / "removed.json", tmp_path / "removed.md"
    assert main([*common, "--remove-deleted-threads", "--report", str(removed_report),
                 "--evidence", str(removed_evidence)]) == 0
    out = capsys.readouterr().out
    assert "[PASS] sqlite_threads_not_in_postgres" in out
    assert "Removed 2 thread(s) PostgreSQL no longer has from the SQLite file" in out
    summary = json.loads(removed_report.read_text())
    assert summary["ok"] is True and summary["removed_threads"] == sorted(gone)
    assert summary["threads_not_in_postgres"] == []
    assert summary["restore"]["removed"]["checkpoints"] > 0
    check = summary["checks"]["sqlite_threads_not_in_postgres"]
    assert check["passed"] is True and check["mismatches"] == []
    assert "were removed from the file by this rollback" in check["notes"][0]
    assert "Removed from the file, in the transaction of the restore's last batch" in \
        removed_evidence.read_text()
    assert thread_ids(sample_db).isdisjoint(gone)
    assert rows_of_other_threads(sample_db, gone) == others

    # PostgreSQL holds no thread at all (a wrong or empty database): nothing is removed.
    with psycopg.connect(migrated, autocommit=True, prepare_threshold=0) as conn:
        for (thread_id,) in conn.execute("SELECT DISTINCT thread_id FROM checkpoints"
                                         ).fetchall():
            PostgresSaver(conn).delete_thread(thread_id)
    before = rows(sample_db, CHECKPOINT_SQL), rows(sample_db, WRITES_SQL)
    with pytest.raises(MigrationError, match="holds no thread"):
        rollback(migrated, sample_db, tmp_path / "empty.export", remove_deleted_threads=True)
    assert (rows(sample_db, CHECKPOINT_SQL), rows(sample_db, WRITES_SQL)) == before
