"""Fault injection while batches load: a SIGKILLed import process, connections terminated
with pg_terminate_backend, and a PostgreSQL server restarted mid-run.

Under test: ``checkpoint-assets import`` (a real subprocess), ``engine.loader.load_batch``
(its one-transaction-per-batch guarantee and its retries) and the verification afterwards.
Faults are made to land mid-batch deterministically: the test holds a lock the loader needs
(the batch's advisory lock, or a SHARE lock on one table), waits until the loader's
backend is seen waiting for it in ``pg_stat_activity`` (its transaction already holds
rows of the batch), then injects the fault. The restart tests run their own embedded
PostgreSQL (pgserver), never the shared server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.embedded_postgres import ensure_database, start_embedded
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import TransientLoadError, load_batch
from checkpoint_assets.engine.load.loader import batch_lock_id as _lock_id
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets_tests.corpus_graphs import build_scaled_corpus

CLI = [sys.executable, "-m", "checkpoint_assets.cli"]
TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
WAIT_SECONDS = 60


# --------------------------------------------------------------------------- helpers


def _wait_for_backend(admin: psycopg.Connection, dbname: str, query_like: str,
                      wait_event: str | None = None) -> int:
    """The pid of the backend of ``dbname`` whose query matches and that waits on a lock."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND query LIKE %s AND wait_event_type = 'Lock' "
            "AND (%s::text IS NULL OR wait_event = %s)",
            (dbname, query_like, wait_event, wait_event)).fetchone()
        if row:
            return row[0]
        time.sleep(0.01)
    raise AssertionError(f"no backend ran {query_like!r} waiting on a lock in time")


def _wait_until_no_other_backends(admin: psycopg.Connection, dbname: str,
                                  keep: set[int]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        pids = {r[0] for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,))}
        if not pids - keep:
            return
        time.sleep(0.02)
    raise AssertionError("the killed loader's backend did not go away")


def _dbname(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT current_database()").fetchone()[0]


def _batch_state(target: Target, manifest: ExportManifest, key: str) -> str:
    """'complete' (passes comparison) or 'absent' (no row of its threads); else fails."""
    comparison = compare_batch(target, manifest, key)
    if comparison.passed:
        return "complete"
    assert all(v == 0 for v in comparison.actual_counts.values()), (
        f"partial batch {key} in the target: {comparison.actual_counts} of "
        f"{comparison.expected_counts}")
    return "absent"


def _assert_no_duplicates_and_totals(dsn: str, manifest: ExportManifest) -> None:
    with psycopg.connect(dsn) as conn:
        for table, key in (("checkpoints", "thread_id, checkpoint_ns, checkpoint_id"),
                           ("checkpoint_writes",
                            "thread_id, checkpoint_ns, checkpoint_id, task_id, idx"),
                           ("checkpoint_blobs", "thread_id, checkpoint_ns, channel, version")):
            dupes = conn.execute(sql.SQL(
                f"SELECT count(*) FROM (SELECT {key} FROM {{}} GROUP BY {key} "
                "HAVING count(*) > 1) d").format(sql.Identifier(table))).fetchone()[0]
            assert dupes == 0, table
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == \
            manifest.checkpoints
        assert conn.execute("SELECT count(*) FROM checkpoint_writes").fetchone()[0] == \
            manifest.writes


def _assert_verified(manifest: ExportManifest, target: Target, source: Path) -> None:
    report = verify_migration(manifest, target, source_path=source, readback_threads=5)
    assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items() if not c.passed}


def _cli_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
    env["CHECKPOINT_ASSETS_TARGET_DSN"] = dsn
    return env


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """150 real chat-agent threads (about 1700 checkpoints, 3 batches), and their export."""
    root = tmp_path_factory.mktemp("faults")
    source = root / "scaled.sqlite"
    build_scaled_corpus(source, threads=150)
    export = root / "scaled.export"
    write_export(source, export, batch_size=600)
    return source, export


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("batch_index, blocked_table", [
    # killed inside the first batch, its checkpoints already COPYed, blobs not yet
    (0, "checkpoint_blobs"),
    # killed inside the second batch (first committed), checkpoints+blobs COPYed
    (1, "checkpoint_writes"),
])
def test_sigkill_of_import_leaves_no_partial_batch_and_rerun_completes(
        scaled: tuple[Path, Path], target_dsn: str, batch_index: int,
        blocked_table: str) -> None:
    """SIGKILL the import CLI mid-batch: every batch is complete or absent, never partial;
    a second import completes, verification passes, nothing is duplicated."""
    source, export = scaled
    from checkpoint_assets.engine.export.reader import read_manifest

    manifest = read_manifest(export)
    target = Target(target_dsn)
    target.setup()
    dbname = _dbname(target_dsn)
    key = manifest.batches[batch_index].key
    with psycopg.connect(target_dsn, autocommit=True) as gate, \
            psycopg.connect(target_dsn) as table_lock, \
            psycopg.connect(target_dsn, autocommit=True) as watch:
        gate.execute("SELECT pg_advisory_lock(%s)", (_lock_id(None, manifest.batch(key).sha256),))
        proc = subprocess.Popen([*CLI, "import", "--export", str(export)],
                                env=_cli_env(target_dsn), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            # the loader is inside batch `key`'s transaction, waiting for its advisory lock
            _wait_for_backend(watch, dbname, "SELECT pg_advisory_xact_lock%", "advisory")
            table_lock.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                sql.Identifier(blocked_table)))
            gate.execute("SELECT pg_advisory_unlock_all()")
            loader_pid = _wait_for_backend(watch, dbname, f'COPY "{blocked_table}"%')
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=WAIT_SECONDS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        table_lock.rollback()  # the orphaned backend now finds its client gone
        _wait_until_no_other_backends(
            watch, dbname, {gate.info.backend_pid, table_lock.info.backend_pid})
        assert loader_pid not in {r[0] for r in watch.execute(
            "SELECT pid FROM pg_stat_activity")}

    states = [_batch_state(target, manifest, e.key) for e in manifest.batches]
    assert states[batch_index] == "absent"
    assert states[:batch_index] == ["complete"] * batch_index
    assert "complete" not in states[batch_index:]

    rerun = subprocess.run([*CLI, "import", "--export", str(export)], env=_cli_env(target_dsn),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert all(_batch_state(target, manifest, e.key) == "complete" for e in manifest.batches)
    _assert_no_duplicates_and_totals(target_dsn, manifest)
    _assert_verified(manifest, target, source)


# --------------------------------------------------------------------------- pg_terminate_backend


class _TerminateOnce(threading.Thread):
    """Terminates the loader's backend once, when it waits on ``table`` inside its COPY,
    then releases the table lock that held it there."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table = dsn, table
        self.terminated: int | None = None
        self.error: BaseException | None = None
        self.locked = threading.Event()

    def run(self) -> None:
        try:
            dbname = _dbname(self.dsn)
            with psycopg.connect(self.dsn) as lock_conn, \
                    psycopg.connect(self.dsn, autocommit=True) as watch:
                lock_conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    sql.Identifier(self.table)))
                self.locked.set()
                pid = _wait_for_backend(watch, dbname, f'COPY "{self.table}"%')
                assert watch.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
                self.terminated = pid
                lock_conn.rollback()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.locked.set()


@pytest.mark.parametrize("table, attempts", [
    # terminated during the first table's COPY; the retry succeeds
    ("checkpoints", 3),
    # terminated during the blobs COPY (checkpoints already in the transaction); retried
    ("checkpoint_blobs", 3),
    # terminated during the last COPY of the batch; retried
    ("checkpoint_writes", 3),
    # no retry allowed: fails cleanly with TransientLoadError, a re-run completes
    ("checkpoint_writes", 1),
])
def test_terminated_connection_is_retried_or_fails_cleanly(
        sample_db: Path, tmp_path: Path, target_dsn: str, table: str, attempts: int) -> None:
    """pg_terminate_backend on the loader's connection mid-COPY: load_batch retries and
    succeeds, or raises TransientLoadError with nothing written; the target stays
    consistent either way."""
    manifest = write_export(sample_db, tmp_path / "x.export", batch_size=40)
    target = Target(target_dsn)
    target.setup()
    key = manifest.batches[0].key
    killer = _TerminateOnce(target_dsn, table)
    killer.start()
    assert killer.locked.wait(WAIT_SECONDS)
    if attempts == 1:
        with pytest.raises(TransientLoadError) as info:
            load_batch(target, manifest, key, attempts=1, backoff_seconds=0.05)
        assert "Nothing of this batch was written" in str(info.value)
        killer.join(WAIT_SECONDS)
        assert _batch_state(target, manifest, key) == "absent"
        result = load_batch(target, manifest, key)
        assert result.attempts == 1
    else:
        result = load_batch(target, manifest, key, attempts=attempts, backoff_seconds=0.05)
        killer.join(WAIT_SECONDS)
        assert result.attempts == 2
    assert killer.error is None, killer.error
    assert killer.terminated is not None
    assert result.inserted["checkpoints"] == manifest.batch(key).checkpoints
    assert _batch_state(target, manifest, key) == "complete"
    assert all(_batch_state(target, manifest, e.key) == "absent" for e in manifest.batches[1:])


# --------------------------------------------------------------------------- server restart


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A private embedded PostgreSQL (pgserver) that this test may stop and restart."""
    import pgserver

    data_dir = tmp_path / "pg"
    admin = start_embedded(data_dir, keep_running=False)
    server = pgserver.get_server(data_dir.resolve())
    try:
        yield ensure_database(admin, "checkpoints"), server
    finally:
        try:
            pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata,
                            user=server.system_user)
        except subprocess.CalledProcessError:
            pass  # already stopped
        server.cleanup()


def _pg_ctl(server: object, *args: str) -> None:
    import pgserver

    pgserver.pg_ctl(["-w", *args], pgdata=server.pgdata,  # type: ignore[attr-defined]
                    user=server.system_user, timeout=60)  # type: ignore[attr-defined]


def _start_again(server: object, tries: int = 3) -> None:
    """Start the stopped server again; on a loaded machine pg_ctl's first start can fail."""
    for attempt in range(tries):
        try:
            with server._lock:  # type: ignore[attr-defined]
                server.ensure_postgres_running()  # type: ignore[attr-defined]
            return
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)


def test_server_restarts_between_and_during_batches(
        sample_db: Path, tmp_path: Path, own_server: tuple[str, object]) -> None:
    """The embedded server stops between batches (and comes back while load_batch
    retries), then restarts in the middle of a batch's COPY: every load completes
    through retries, a CLI re-run of the whole import completes, verification passes."""
    dsn, server = own_server
    manifest = write_export(sample_db, tmp_path / "x.export", batch_size=40)
    assert len(manifest.batches) >= 3
    target = Target(dsn)
    target.setup()
    first, second, third = (e.key for e in manifest.batches[:3])
    assert load_batch(target, manifest, first).attempts == 1

    # 1. server down between batches; it comes back while the loader backs off
    _pg_ctl(server, "-m", "fast", "stop")
    starter = threading.Timer(1.0, _start_again, args=(server,))
    starter.start()
    result = load_batch(target, manifest, second, attempts=8, backoff_seconds=0.5)
    starter.join()
    assert result.attempts > 1
    assert _batch_state(target, manifest, second) == "complete"

    # 2. fast restart while the third batch is inside its COPY
    dbname = _dbname(dsn)
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["result"] = load_batch(target, manifest, third, attempts=6,
                                           backoff_seconds=0.5)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    lock_conn = psycopg.connect(dsn)
    watch = psycopg.connect(dsn, autocommit=True)
    try:
        lock_conn.execute("LOCK TABLE checkpoint_writes IN SHARE MODE")
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        _wait_for_backend(watch, dbname, 'COPY "checkpoint_writes"%')
        _pg_ctl(server, "-m", "fast", "restart")  # ends every session, the lock's too
    finally:
        lock_conn.close()
        watch.close()
    loader.join(WAIT_SECONDS)
    assert "error" not in outcome, outcome
    assert outcome["result"].attempts > 1  # type: ignore[attr-defined]
    server._postmaster_info = None  # type: ignore[attr-defined]  # new postmaster pid
    _start_again(server)  # records the running postmaster for cleanup

    # 3. the whole import again through the CLI: the rest loads, nothing is duplicated
    rerun = subprocess.run([*CLI, "import", "--export", str(manifest.path)], env=_cli_env(dsn),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    _assert_no_duplicates_and_totals(dsn, manifest)
    _assert_verified(manifest, target, sample_db)
