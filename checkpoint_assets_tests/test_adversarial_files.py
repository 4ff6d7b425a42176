"""What a hostile file system, a careless operator and damaged source rows can do, and what
the user sees then.

Under test, through the command line run as a real subprocess (and ``migrate``'s Dagster
runs) against real SQLite files written by a LangGraph graph and the real PostgreSQL:

- no file beside the export decides a check: a forged expected-view cache
  (``.<export>.views/``, which earlier versions trusted) cannot make a tampered target pass;
- a symlink planted at the export's temporary name or at ``.<export>.views`` is never
  followed, two writers of one export file do not trip over each other, and what a killed
  process left (a partial export, a private copy of the source) is removed by the next;
- a source row that neither saver can read (a checkpoint blob that is not msgpack or is
  truncated, metadata that is not JSON, a write value that is not msgpack) is refused
  naming its thread, namespace and checkpoint, by ``import``, by ``migrate`` (the batch's
  failed check and the evidence) and never with a traceback; a write PostgresSaver cannot
  read is reported by key by the read-back, not raised;
- an export onto a read-only or full filesystem, and a verification against a target
  without PostgresSaver's tables, end with a message and exit status 3.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.engine.export.reader import read_batch, read_manifest, verify_export
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.engine.verify.comparison import target_rows
from checkpoint_assets.engine.verify.content_view import source_view, target_view
from checkpoint_assets.engine.verify.expected_views import ExpectedBatch
from checkpoint_assets.partitions import BATCH_MATCHES_EXPORT
from checkpoint_assets_tests.tampering import append_a_byte_to_a_blob
from checkpoint_assets_tests.test_cli import run

BATCH_SIZE = 40  # the 12-thread sample spans four batches
STALE_VIEW_VERSION = 2  # the cache file name earlier versions read: <batch sha>-v2.json


def dsn_env(dsn: str, **more: str) -> dict[str, str]:
    """The environment the CLI gets the target from."""
    return {"CHECKPOINT_ASSETS_TARGET_DSN": dsn, **more}


def exported(source: Path, export: Path) -> None:
    """``checkpoint-assets export`` into ``export``, which must succeed."""
    done = run("export", "--source", str(source), "--export", str(export),
               "--batch-size", str(BATCH_SIZE))
    assert done.returncode == 0, done.stderr


def assert_no_traceback(done: subprocess.CompletedProcess) -> None:
    """The user sees a message, not Python's stack."""
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]


def table_counts(dsn: str) -> dict[str, int | None]:
    """Rows per PostgresSaver table (None: no such table)."""
    counts: dict[str, int | None] = {}
    with psycopg.connect(dsn) as conn:
        for table in TABLES:
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
            counts[table] = None if exists is None else conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    return counts


# --------------------------------------------------------------------------- 1. forged cache


def forge_expected_view(export: Path, dsn: str, key: str) -> Path:
    """Write what an attacker who can edit files beside the export (not the export) would:
    the expected view of batch ``key`` with the digest of what the target holds now."""
    manifest = read_manifest(export)
    threads = list(read_batch(manifest, key))
    honest = source_view(threads)
    with psycopg.connect(dsn) as conn:
        actual = target_view(*target_rows(conn, [t.thread_id for t in threads]))
    forged = ExpectedBatch(actual.digest(), {"checkpoints": len(actual.checkpoints),
                                             "checkpoint_blobs": actual.blob_rows,
                                             "checkpoint_writes": len(actual.writes)},
                           [t.thread_id for t in threads], honest.metadata_changes,
                           honest.resume_hazards)
    cache = (export.parent / f".{export.name}.views"
             / f"{manifest.batch(key).sha256}-v{STALE_VIEW_VERSION}.json")
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps(asdict(forged)))
    return cache


def test_a_forged_expected_view_cache_cannot_make_a_tampered_target_pass(
        sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """One byte appended to a msgpack blob in the target (LangGraph's decoder ignores
    trailing bytes, so the official read-back sees nothing) plus the target's digest
    written into the cache file beside the export: verify, with and without
    --readback-all, still FAILS with exit 1 and names every checkpoint reading that blob,
    in the output, the JSON report and the evidence."""
    export = tmp_path / "x.export"
    exported(sample_db, export)
    imported = run("import", "--export", str(export), env=dsn_env(target_dsn))
    assert imported.returncode == 0, imported.stderr
    thread_id, ns, channel, _, readers = append_a_byte_to_a_blob(target_dsn)
    key = next(b.key for b in read_manifest(export).batches
               if b.first_thread <= thread_id <= b.last_thread)
    cache = forge_expected_view(export, target_dsn, key)

    for readback in ([], ["--readback-all"]):
        report = tmp_path / f"verify{len(readback)}.json"
        evidence = tmp_path / f"evidence{len(readback)}.md"
        verified = run("verify", "--source", str(sample_db), "--export", str(export),
                       *readback, "--report", str(report), "--evidence", str(evidence),
                       env=dsn_env(target_dsn))
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert "Verification FAILED" in verified.stdout
        checks = json.loads(report.read_text())["checks"]
        content = checks["content_integrity"]
        assert not content["passed"]
        named = {(m["thread_id"], m["checkpoint_ns"], m["checkpoint_id"])
                 for m in content["mismatches"]}
        assert named == {(thread_id, ns, cid) for cid in readers}
        assert all(m["problem"] == f"differs: channel {channel}"
                   for m in content["mismatches"])
        assert checks["official_saver_readback"]["passed"]  # the decoder does not see it
        assert thread_id in verified.stdout and thread_id in evidence.read_text()
    assert cache.exists()  # still there, and still not believed


# --------------------------------------------------------------------------- 2. symlinks


def test_links_planted_beside_the_export_are_never_followed(
        sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """``.NAME.partial -> victim`` and ``.NAME.views -> a directory``: migrate writes the
    export as a new regular file at NAME, leaves the victim file and directory untouched,
    and passes."""
    work = tmp_path / "work"
    work.mkdir()
    export = work / "x.export"
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    victim_mode = victim.stat().st_mode
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (work / ".x.export.partial").symlink_to(victim)
    (work / ".x.export.views").symlink_to(victim_dir)
    env = dsn_env(target_dsn, DAGSTER_HOME=str(tmp_path / "home"))

    migrated = run("migrate", "--source", str(sample_db), "--export", str(export),
                   "--batch-size", str(BATCH_SIZE), env=env, cwd=work)

    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    assert victim.read_text() == "someone else's file\n"
    assert victim.stat().st_mode == victim_mode
    assert list(victim_dir.iterdir()) == []
    assert export.is_file() and not export.is_symlink()
    assert verify_export(export).checkpoints > 0
    leftovers = {p.name for p in work.iterdir()} - {"x.export", "x.export.evidence.md"}
    assert leftovers == {".x.export.partial", ".x.export.views"}  # the planted links only


def test_two_writers_of_one_export_file_both_finish_and_leave_one_whole_file(
        sample_db: Path, tmp_path: Path) -> None:
    """Two exports of the same file, held mid-write until both are writing (threads, so
    the overlap is certain; the file system sees what two processes would do): neither
    fails, the file left is a complete, verifiable export, and no temporary file stays."""
    export = tmp_path / "exports" / "x.export"
    both_writing = threading.Barrier(2, timeout=60)
    outcomes: list[Any] = []

    def writer() -> None:
        started = False

        def progress(_: int) -> None:
            nonlocal started
            if not started:
                started = True
                both_writing.wait()

        try:
            outcomes.append(write_export(sample_db, export, batch_size=BATCH_SIZE,
                                         progress=progress))
        except BaseException as exc:  # reported by the assertion below
            outcomes.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert [type(o).__name__ for o in outcomes] == ["ExportManifest", "ExportManifest"]
    assert verify_export(export).checkpoints == outcomes[0].checkpoints
    assert [p.name for p in export.parent.iterdir()] == ["x.export"]


def dead_pid() -> int:
    """The pid of a real process that has ended (as one killed with SIGKILL has)."""
    process = subprocess.Popen(["sleep", "30"])
    process.kill()
    process.wait()
    return process.pid


def test_temporaries_of_a_killed_process_are_removed_by_the_next_export(
        sample_db: Path, tmp_path: Path) -> None:
    """A process killed mid-export (SIGKILL runs no clean-up) leaves its partial export and
    its private copy of the source; the next ``export`` removes both, and leaves those of
    a process still running (this test's) and files that only look alike."""
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    dead, alive = dead_pid(), os.getpid()
    left_by_killed = [work / f".x.export.{dead}-k1lled.partial",
                      scratch / f"checkpoint-assets-{dead}-k1lled"]
    left_by_killed[0].write_bytes(b'{"kind":"header"')
    left_by_killed[1].mkdir()
    (left_by_killed[1] / "source.sqlite").write_bytes(b"a copy of the users' data")
    in_use = [work / f".x.export.{alive}-running.partial",
              scratch / f"checkpoint-assets-{alive}-running"]
    in_use[0].write_bytes(b"")
    in_use[1].mkdir()
    look_alike = work / ".x.export.views"
    look_alike.mkdir()

    done = run("export", "--source", str(sample_db), "--export", str(work / "x.export"),
               "--batch-size", str(BATCH_SIZE), env={"TMPDIR": str(scratch)})

    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in left_by_killed)
    assert all(path.exists() for path in in_use) and look_alike.is_dir()
    assert sorted(p.name for p in scratch.iterdir()) == [in_use[1].name]


# --------------------------------------------------------------------------- 6. damaged rows


def first_checkpoint_of(source: Path, thread_id: str) -> tuple[str, str, str]:
    """(thread_id, checkpoint_ns, checkpoint_id) of a checkpoint of ``thread_id`` with
    a writes row, in a subgraph namespace when there is one."""
    with sqlite3.connect(source) as conn:
        return conn.execute(
            "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id FROM checkpoints c JOIN "
            "writes w USING (thread_id, checkpoint_ns, checkpoint_id) WHERE c.thread_id = ? "
            "AND w.type = 'msgpack' ORDER BY c.checkpoint_ns DESC, c.checkpoint_id "
            "LIMIT 1", (thread_id,)).fetchone()


DAMAGES = {
    # a checkpoint blob that is not msgpack at all (msgpack's reserved byte first)
    "blob not msgpack": ("UPDATE checkpoints SET checkpoint = X'c1' || checkpoint",
                         "has a checkpoint blob that is not valid msgpack "
                         "(invalid type Reserved)"),
    # a checkpoint blob cut in half
    "blob truncated": ("UPDATE checkpoints SET checkpoint = substr(checkpoint, 1, "
                       "length(checkpoint) / 2)",
                       "has a checkpoint blob that is not valid msgpack "
                       "(unexpected end of file)"),
    # metadata that is not JSON
    "metadata not JSON": ("UPDATE checkpoints SET metadata = CAST('{oops' AS BLOB)",
                          "has metadata that is not JSON (Expecting property name"),
    # one write value of the checkpoint that is not msgpack
    "write not msgpack": ("UPDATE writes SET value = X'c1' WHERE rowid = (SELECT min(rowid) "
                          "FROM writes WHERE thread_id = :t AND checkpoint_ns = :ns AND "
                          "checkpoint_id = :id AND type = 'msgpack')",
                          "has a value that is not valid msgpack (invalid type Reserved)"),
}


def damage(source: Path, case: str, thread_id: str) -> tuple[str, str, str]:
    """Apply one of DAMAGES to a checkpoint of ``thread_id``; return its key."""
    key = first_checkpoint_of(source, thread_id)
    statement = DAMAGES[case][0]
    if " WHERE " not in statement:
        statement += " WHERE thread_id = :t AND checkpoint_ns = :ns AND checkpoint_id = :id"
    with sqlite3.connect(source) as conn:
        changed = conn.execute(statement, {"t": key[0], "ns": key[1], "id": key[2]}).rowcount
    assert changed == 1
    return key


def assert_names(text: str, key: tuple[str, str, str]) -> None:
    """``text`` names the checkpoint's thread, namespace and id."""
    thread_id, ns, checkpoint_id = key
    assert (f"'thread_id': {thread_id!r}, 'checkpoint_ns': {ns!r}, "
            f"'checkpoint_id': {checkpoint_id!r}") in text, text[-3000:]


@pytest.mark.parametrize("case", list(DAMAGES))
def test_import_refuses_a_damaged_source_row_by_its_key(
        case: str, sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """The export copies the row as it is; import stops with exit 3 before writing, saying
    which checkpoint (and write) cannot be read and what to do; no traceback, no row."""
    key = damage(sample_db, case, "support-003")
    export = tmp_path / "x.export"
    exported(sample_db, export)

    imported = run("import", "--export", str(export), env=dsn_env(target_dsn))

    assert imported.returncode == 3, imported.stdout + imported.stderr
    assert_no_traceback(imported)
    assert DAMAGES[case][1] in imported.stderr
    assert_names(imported.stderr, key)
    assert "SqliteSaver cannot read this row either" in imported.stderr
    assert set(table_counts(target_dsn).values()) <= {0, None}


def test_migrate_fails_each_damaged_batch_naming_its_row_in_checks_and_evidence(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One damaged row of each kind, each in its own batch: migrate fails each one's batch_matches_export with the row's key, and the JSON report
    and the evidence file name every row; nothing is loaded and the verification does not
    run (exit 1)."""
    batches = write_export(sample_db, tmp_path / "plan.export", batch_size=BATCH_SIZE).batches
    assert len(batches) == len(DAMAGES)
    keys = {case: damage(sample_db, case, batch.first_thread)
            for case, batch in zip(DAMAGES, batches)}
    work = tmp_path / "work"
    work.mkdir()
    export, report = work / "x.export", work / "migrate.json"
    env = dsn_env(target_dsn, DAGSTER_HOME=str(tmp_path / "home"))

    migrated = run("migrate", "--source", str(sample_db), "--export", str(export),
                   "--batch-size", str(BATCH_SIZE), "--report", str(report), env=env,
                   cwd=work)

    assert migrated.returncode == 1, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert len(summary["failed_batches"]) == len(DAMAGES)
    errors = "\n".join(r["error"] or "" for r in summary["runs"])
    evidence = (work / "x.export.evidence.md").read_text()
    batch_check = next(c for c in summary["checks"] if c["check"] == "batch_matches_export")
    assert not batch_check["passed"]
    for case, key in keys.items():
        assert DAMAGES[case][1] in errors
        assert_names(errors, key)
        assert_names(evidence, key)
    assert set(table_counts(target_dsn).values()) <= {0, None}  # every batch was damaged
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    actual = failed_batch_checks(summary)
    assert sorted(actual) == sorted(summary["failed_batches"])
    for case, key in keys.items():
        assert DAMAGES[case][1] in "\n".join(actual.values())
        assert_names("\n".join(actual.values()), key)


def failed_batch_checks(summary: dict[str, Any]) -> dict[str, str]:
    """The ``actual`` metadata of every failed batch_matches_export evaluation that the
    migration's runs stored in the Dagster instance ($DAGSTER_HOME), by partition."""
    run_ids = {r["run_id"] for r in summary["runs"] if r["step"] == "batch"}
    found = {}
    with dg.DagsterInstance.get() as instance:
        for run_id in run_ids:
            records = instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
            for record in records:
                evaluation = record.event_log_entry.dagster_event.event_specific_data
                if evaluation.check_name == BATCH_MATCHES_EXPORT and not evaluation.passed:
                    found[evaluation.partition] = evaluation.metadata["actual"].value
    return found


def test_a_write_postgres_saver_cannot_read_is_reported_by_the_read_back(
        sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """A write value in the target replaced by bytes that are not msgpack (after a clean
    import): verify --readback-all fails with exit 1, the read-back names the checkpoint
    PostgresSaver cannot read and the content check names the write; no traceback."""
    export = tmp_path / "x.export"
    exported(sample_db, export)
    assert run("import", "--export", str(export), env=dsn_env(target_dsn)).returncode == 0
    with psycopg.connect(target_dsn) as conn:
        key = conn.execute(
            "UPDATE checkpoint_writes SET blob = '\\xc1'::bytea WHERE ctid = (SELECT ctid "
            "FROM checkpoint_writes WHERE type = 'msgpack' ORDER BY thread_id, checkpoint_id "
            "LIMIT 1) RETURNING thread_id, checkpoint_ns, checkpoint_id, task_id, idx"
        ).fetchone()
    report = tmp_path / "verify.json"

    verified = run("verify", "--source", str(sample_db), "--export", str(export),
                   "--readback-all", "--report", str(report), env=dsn_env(target_dsn))

    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert_no_traceback(verified)
    checks = json.loads(report.read_text())["checks"]
    assert {"thread_id": key[0], "checkpoint_ns": key[1], "checkpoint_id": key[2],
            "problem": "PostgresSaver cannot read it (ValueError: invalid type Reserved)"} \
        in checks["official_saver_readback"]["mismatches"]
    assert {"thread_id": key[0], "checkpoint_ns": key[1], "checkpoint_id": key[2],
            "task_id": key[3], "idx": key[4], "problem": "write differs"} \
        in checks["content_integrity"]["mismatches"]


# --------------------------------------------------------------------------- 8. environment


@contextmanager
def small_filesystem(mountpoint: Path, *, read_only: bool,
                     size: str = "64k") -> Iterator[bool]:
    """Mount a tmpfs of ``size`` (64 KiB) at ``mountpoint`` (read-only if asked) for the
    block; yield whether it is mounted. Needs root with CAP_SYS_ADMIN; otherwise the
    directory stays a plain one. Always unmounted afterwards, so no mount outlives the
    test."""
    mountpoint.mkdir()
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                  str(mountpoint)], capture_output=True).returncode == 0
    except FileNotFoundError:  # no mount command
        mounted = False
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(mountpoint)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@contextmanager
def unwritable_place(place: Path, *, read_only: bool) -> Iterator[None]:
    """``place``: a read-only or a full (64 KiB) filesystem. Without the right to mount
    one, a read-only filesystem is stood in for by a directory the (non-root) user may
    not write to; a full one cannot be faked faithfully (a file size limit would also
    stop the private copy of the source, and root ignores permission bits), so the test
    is skipped, saying why."""
    with small_filesystem(place, read_only=read_only) as mounted:
        if not mounted and (not read_only or os.geteuid() == 0):
            pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
        if not mounted:
            place.chmod(0o500)
        try:
            yield
        finally:
            if not mounted:
                place.chmod(0o700)  # so pytest can remove it


@pytest.mark.parametrize("read_only, where, reasons", [
    # the export's directory is on a read-only filesystem (or, without root, not writable)
    (True, "export", ("Read-only file system", "Permission denied")),
    # the export's directory is on a full filesystem
    (False, "export", ("No space left on device",)),
    # TMPDIR, where the source's private snapshot goes, is on a full filesystem
    (False, "TMPDIR", ("No space left on device",)),
])
def test_export_onto_a_read_only_or_full_filesystem_is_exit_3_and_leaves_nothing(
        sample_db: Path, tmp_path: Path, read_only: bool, where: str,
        reasons: tuple[str, ...]) -> None:
    """The export (or the source's private snapshot) cannot be written: exit 3 with the
    reason and what to do, no traceback, nothing left on that filesystem, no export."""
    place = tmp_path / "fs"
    export = place / "x.export" if where == "export" else tmp_path / "x.export"
    env = {"TMPDIR": str(place)} if where == "TMPDIR" else {}
    with unwritable_place(place, read_only=read_only):
        done = run("export", "--source", str(sample_db), "--export", str(export), env=env)
        left = list(place.iterdir())

    assert done.returncode == 3, done.stdout + done.stderr
    assert_no_traceback(done)
    assert any(reason in done.stderr for reason in reasons), done.stderr
    assert "What to do" in done.stderr
    if where == "export":
        assert f"Cannot write the export {export}" in done.stderr
        assert "Nothing was left at that path" in done.stderr
    else:
        assert f"Cannot copy the source {sample_db} to a private snapshot in {place}" \
            in done.stderr
    assert left == [] and not export.exists()


@pytest.mark.parametrize("schema", [
    # a fresh database: nothing was ever imported
    None,
    # tables exist in public, but the user points at a schema that has none
    "nowhere",
])
def test_verify_against_a_target_without_postgres_saver_tables_is_exit_3(
        sample_db: Path, tmp_path: Path, target_dsn: str, schema: str | None) -> None:
    """verify says the target has no PostgresSaver tables there and what to do; exit 3,
    no traceback, and nothing is created."""
    export = tmp_path / "x.export"
    exported(sample_db, export)
    if schema is not None:
        assert run("import", "--export", str(export), env=dsn_env(target_dsn)).returncode == 0
    before = table_counts(target_dsn)

    verified = run("verify", "--source", str(sample_db), "--export", str(export),
                   *(["--schema", schema] if schema else []), env=dsn_env(target_dsn))

    assert verified.returncode == 3, verified.stdout + verified.stderr
    assert_no_traceback(verified)
    where = f"in schema {schema}" if schema else "in the search_path"
    assert ("has no PostgresSaver table checkpoints, checkpoint_blobs, checkpoint_writes "
            f"{where}") in verified.stderr
    assert "Run checkpoint-assets import (or migrate) first" in verified.stderr
    assert table_counts(target_dsn) == before
