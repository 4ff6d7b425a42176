"""What sync and cutover tell the user, and what they refuse, on the command line.

Under test (issue 21, items 7 and 8), against a real SqliteSaver file that the rich
LangGraph graph writes and a real PostgreSQL:

- a filesystem that refuses a sync generation's ``.applied`` marker (full, or read-only:
  real tmpfs mounts) ends with a message saying what to do and exit 3, never a traceback;
- ``cutover --quiet-seconds`` and ``--timeout`` refuse NaN, infinity and negative values
  (0 is allowed: writers known to be stopped); ``--timeout`` ends a wait that writers
  never let finish with exit 5; the wait says when the source starts being written, not
  at every poll that sees a write;
- sync says in its own output what it assumes (rowid fingerprints: an UPDATE in place is
  not seen), and verify, which compares content, catches such an UPDATE;
- the cutover window starts at the last write the cutover saw, not when it noticed quiet,
  and the wait is a figure of its own, alike in the text, the JSON and the evidence.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from checkpoint_assets.cli import main
from checkpoint_assets.cli.exit_status import EXIT_MISMATCH, EXIT_OK, EXIT_TIMED_OUT, EXIT_USAGE
from checkpoint_assets.cli.parser import build_parser
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations.live import CutoverRequest, SyncRequest, cutover
from checkpoint_assets.engine.sync.sync_target import SYNC_ASSUMES, sync_target, wait_until_quiet
from checkpoint_assets_tests.corpus_graphs import (
    build_rich_graph,
    open_sqlite_saver,
    rich_input,
    thread_config,
)
from checkpoint_assets_tests.test_adversarial_files import (
    assert_no_traceback,
    dsn_env,
    small_filesystem,
)
from checkpoint_assets_tests.test_cli import run


@pytest.fixture
def source(rich_master: Path, tmp_path: Path) -> Path:
    """A private copy of the rich corpus that the application of a test writes to."""
    return Path(shutil.copyfile(rich_master, tmp_path / "app.sqlite"))


def migrate(source: Path, export: Path, target: Target) -> None:
    """The full copy: export, then import."""
    import_export(write_export(source, export, batch_size=20), target)


def application_writes(source: Path, *thread_ids: str) -> None:
    """The application (the rich graph on SqliteSaver) runs one new thread per id."""
    with open_sqlite_saver(source) as saver:
        graph = build_rich_graph(saver)
        for thread_id in thread_ids:
            graph.invoke(rich_input("basic"), thread_config(thread_id))


class Application(threading.Thread):
    """The application writing while a cutover waits: ``writes`` new threads (None: until
    ``stop()``), ``pause`` seconds apart, once ``begin`` is set. ``last_started`` is the
    ``time.time()`` just before its last write began."""

    def __init__(self, source: Path, writes: int | None, pause: float) -> None:
        super().__init__(daemon=True)
        self.source, self.writes, self.pause = source, writes, pause
        self.begin, self.done = threading.Event(), threading.Event()
        self.written, self.last_started = 0, 0.0

    def run(self) -> None:
        self.begin.wait()
        with open_sqlite_saver(self.source) as saver:
            graph = build_rich_graph(saver)
            while not self.done.is_set() and self.written != self.writes:
                self.last_started = time.time()
                graph.invoke(rich_input("basic"), thread_config(f"during-{self.written}"))
                self.written += 1
                time.sleep(self.pause)

    def stop(self) -> None:
        """Stop writing and wait until the last write is done."""
        self.done.set()
        self.join()


def cli(*args: str, dsn: str) -> subprocess.CompletedProcess:
    """The console command, the target given through the environment."""
    return run(*args, env=dsn_env(dsn))


# --------------------------------------------------------------------------- item 7: faults


@contextmanager
def refusing(place: Path, fault: str) -> Iterator[None]:
    """The mounted filesystem at ``place`` refuses new data for the block: ``full`` (a
    file takes every free byte) or ``read-only`` (remounted so)."""
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(place)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(place)], check=True)
        return
    filler = place / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


@pytest.mark.parametrize("fault, reason", [
    # the export's filesystem is full
    ("full", "No space left on device"),
    # the export's filesystem is read-only (remounted so)
    ("read-only", "Read-only file system"),
])
def test_a_filesystem_that_refuses_the_applied_marker_is_exit_3_with_what_to_do(
        source: Path, tmp_path: Path, target_dsn: str, fault: str, reason: str) -> None:
    """A sync that applied a generation and then cannot record so beside it (the
    ``.applied`` marker) says what failed and what to do, with exit 3 (bad input or
    environment), not a traceback and exit 1 (mismatch). With room again, the next sync
    applies the generation again, changing nothing, and records it."""
    place = tmp_path / "fs"
    with small_filesystem(place, read_only=False, size="32m") as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
        export, target = place / "app.export", Target(target_dsn)
        migrate(source, export, target)
        application_writes(source, "late-a", "late-b")
        sync_target(source, export, target)  # generation 1, applied and recorded
        marker = Path(f"{export}.sync-0001.applied")
        marker.unlink()  # as a sync killed between its last batch and the record leaves it
        sync = ("sync", "--source", str(source), "--export", str(export))

        with refusing(place, fault):
            done = cli(*sync, dsn=target_dsn)

        assert done.returncode == 3, done.stdout + done.stderr
        assert_no_traceback(done)
        assert (f"ERROR: Cannot record that sync generation 1 was applied to the target: "
                f"writing {marker} failed: {reason}.") in done.stderr
        assert "What to do: Free space on that filesystem" in done.stderr
        assert not marker.exists()
        again = cli(*sync, dsn=target_dsn)
        assert again.returncode == 0, again.stderr
        assert "nothing was moved" in again.stdout and marker.is_file()


# ------------------------------------------------------------- item 7: the cutover's wait


@pytest.mark.parametrize("flag, value", [
    ("--quiet-seconds", "nan"),  # waited for ever
    ("--quiet-seconds", "inf"),
    ("--quiet-seconds", "-1"),  # skipped the wait
    ("--timeout", "nan"),
    ("--timeout", "-0.5"),
])
def test_cutover_refuses_seconds_that_are_not_a_finite_number_0_or_more(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses the value with a message (exit 2) before anything runs."""
    with pytest.raises(SystemExit) as stopped:
        main(["cutover", "--source", "app.sqlite", "--target", "postgresql://", flag, value])

    assert stopped.value.code == EXIT_USAGE
    assert (f"argument {flag}: {value!r} is not a finite number of seconds, 0 or more"
            in capsys.readouterr().err)


def test_quiet_seconds_0_means_no_wait_for_writers_known_to_be_stopped() -> None:
    """0 is allowed (the writers are known to be stopped); no --timeout: no limit."""
    args = build_parser().parse_args(["cutover", "--source", "app.sqlite",
                                      "--quiet-seconds", "0"])
    assert args.quiet_seconds == 0.0 and args.timeout is None


def test_the_wait_says_when_the_source_starts_being_written_not_at_every_poll(
        source: Path) -> None:
    """Six writes a fifth of a second apart, each seen by its own poll: one line says that
    the source is being written (the wait's own line before it); the wait returns the
    time of the last write it saw."""
    application = Application(source, writes=6, pause=0.2)
    application.start()
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        application.begin.set()  # the application writes once the wait has begun

    last_write, _ = wait_until_quiet(source, 3.0, say=say, poll_seconds=0.05)
    application.join()

    assert application.written == 6 and last_write >= application.last_started
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"Waiting until {source} has not changed for 3 s")
    assert "the source is being written; waiting until it has not changed for 3 s" \
        in lines[1]


def test_cutover_timeout_ends_a_wait_that_writers_never_let_finish_with_exit_5(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The application keeps writing: after --timeout the cutover stops before its final
    sync with exit 5 and says why and what to do; no evidence report claims anything."""
    export, evidence = tmp_path / "app.export", tmp_path / "cutover.md"
    migrate(source, export, Target(target_dsn))
    application = Application(source, writes=None, pause=0.05)
    application.start()
    application.begin.set()
    try:
        status = main(["cutover", "--source", str(source), "--export", str(export),
                       "--target", target_dsn, "--quiet-seconds", "5", "--timeout", "1",
                       "--workers", "1", "--evidence", str(evidence)])
    finally:
        application.stop()

    captured = capsys.readouterr()
    assert status == EXIT_TIMED_OUT, captured.out + captured.err
    assert (f"TIMED OUT: The source {source} was not quiet for 5 s within --timeout 1 s"
            in captured.err)
    assert "What to do: Stop every writer of the source" in captured.err
    assert "Waiting until" in captured.out and not evidence.exists()


# ------------------------------------------------------------ item 7: what a sync assumes


def test_sync_says_what_it_assumes_and_verify_catches_what_it_cannot_see(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint's metadata changed in SQLite by an UPDATE in place (its rowid kept;
    SqliteSaver never does this, a hand-made fix might; not the table's last row, which
    each generation records): sync finds nothing to move and says, in the same output,
    that it finds changes by rowid fingerprints; verify compares content and fails
    (exit 1) naming the thread."""
    export = tmp_path / "app.export"
    migrate(source, export, Target(target_dsn))
    with sqlite3.connect(source) as conn:
        thread_id, rowid = conn.execute(
            "SELECT thread_id, min(rowid) FROM checkpoints").fetchone()  # not the last row
        conn.execute("UPDATE checkpoints SET metadata = ? WHERE rowid = ?",
                     (json.dumps({"edited": "in place"}).encode(), rowid))
    common = ["--source", str(source), "--export", str(export), "--target", target_dsn]

    assert main(["sync", *common]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Nothing changed in the source" in out and SYNC_ASSUMES in out
    assert "rowid fingerprints" in SYNC_ASSUMES and "verify and cutover" in SYNC_ASSUMES

    assert main(["verify", *common, "--workers", "1", "--json"]) == EXIT_MISMATCH
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert not checks["source_matches_export"]["passed"]
    assert thread_id in json.dumps(checks["source_matches_export"])


# ------------------------------------------------------------- item 8: the cutover window


def test_the_cutover_window_starts_at_the_last_write_and_the_wait_is_its_own_figure(
        source: Path, tmp_path: Path, target_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The writers stop first, then the cutover runs: its window is measured from their
    last write to "proven equal" (so it holds the whole quiet period and more), not from
    when the wait noticed quiet; how long it waited is printed apart. The JSON keeps its
    ``window`` entries and adds ``timings``; the evidence report has the same rows."""
    export, evidence = tmp_path / "app.export", tmp_path / "cutover.md"
    migrate(source, export, Target(target_dsn))
    application_writes(source, "last-before-the-cutover")  # then the writers stop

    status = main(["cutover", "--source", str(source), "--export", str(export),
                   "--target", target_dsn, "--quiet-seconds", "1", "--workers", "1",
                   "--evidence", str(evidence), "--json"])

    report = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK and report["ok"], report
    window, timings = report["window"], report["timings"]
    at = {name: datetime.fromisoformat(timings[f"{name}_at"]).timestamp()
          for name in ("last_write", "wait_started", "quiet", "proven")}
    assert at["last_write"] <= at["wait_started"] <= at["quiet"] <= at["proven"]
    assert timings["window_seconds"] == pytest.approx(at["proven"] - at["last_write"],
                                                      abs=0.002)
    assert timings["wait_seconds"] == pytest.approx(at["quiet"] - at["wait_started"],
                                                    abs=0.002)
    assert at["quiet"] - at["last_write"] >= 1.0  # the quiet period is inside the window
    assert window["cutover window"].startswith(
        f"{timings['window_seconds']:.1f} s from the last write seen to proven equal (quiet ")
    assert window["waited for quiet"].startswith(f"{timings['wait_seconds']:.1f} s (from ")
    assert set(window) >= {"cutover", "writers quiet since", "proven equal at",
                           "cutover window", "source untouched during the cutover"}
    text = evidence.read_text(encoding="utf-8")
    assert "**waited for quiet**" in text and "**cutover window**" in text


def test_writes_during_the_wait_are_moved_and_compared_before_the_window(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The application writes while the cutover waits: at most every second the cutover
    syncs and compares what moved, so the window's final sync is left with (nearly)
    nothing; every thread written ends in PostgreSQL, proven."""
    export = tmp_path / "app.export"
    migrate(source, export, Target(target_dsn))
    application = Application(source, writes=6, pause=0.5)
    application.start()
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        if text.startswith("Waiting until"):
            application.begin.set()

    done = cutover(CutoverRequest(sync=SyncRequest(source, export, target_dsn),
                                  quiet_seconds=2.0, workers=1), say=say)
    application.join()

    assert application.written == 6 and done.passed, done.window
    rounds = next(line for line in lines if line.startswith("Caught up with the writers"))
    assert "moved and compared" in rounds
    assert len(done.synced.found.added) < 6  # the others were moved while waiting
    proven = {tid for c in done.report.batches for tid in c.thread_ids}
    assert {f"during-{n}" for n in range(6)} <= proven
    assert done.window["caught up while waiting"].endswith("while the writers still wrote")


def test_a_target_row_changed_during_the_wait_is_found_by_the_last_scan(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """Someone changes, in PostgreSQL, a thread the cutover compared before it began to
    wait, while the writers still write: the rounds compare only what they moved, and
    the last verification's scan finds that thread's rows are not the ones compared,
    compares its batch again and names it; the cutover is not PASSED."""
    export = tmp_path / "app.export"
    migrate(source, export, Target(target_dsn))
    application = Application(source, writes=3, pause=0.3)
    application.start()

    def say(text: str) -> None:
        if text.startswith("Waiting until"):
            with psycopg.connect(target_dsn, autocommit=True) as conn:
                conn.execute("UPDATE checkpoints SET metadata = metadata || "
                             "'{\"edited\": 1}' WHERE thread_id = 'rich-basic'")
            application.begin.set()

    done = cutover(CutoverRequest(sync=SyncRequest(source, export, target_dsn),
                                  quiet_seconds=2.0, workers=1), say=say)
    application.join()

    assert application.written == 3 and not done.passed
    batch = next(c for c in done.report.batches if "rich-basic" in c.thread_ids)
    assert not batch.reused and not batch.passed
    assert any(m.get("thread_id") == "rich-basic"
               for m in batch.content_mismatches + batch.metadata_mismatches)


def test_a_target_change_after_the_writers_stopped_is_found_by_the_scan_at_quiet(
        source: Path, tmp_path: Path, target_dsn: str) -> None:
    """The writers pause, then write a new turn of a thread migrated long before, which a
    round moves and compares; then they stop, and someone changes that thread in
    PostgreSQL while the cutover waits for quiet. The scan is taken once the source is
    quiet (never early, in a pause of the writers): it finds the change after the round's
    comparison, and the thread is compared again and named."""
    export = tmp_path / "app.export"
    migrate(source, export, Target(target_dsn))
    begin = threading.Event()

    def count(conn: psycopg.Connection) -> int:
        return conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = "
                            "'rich-basic'").fetchone()[0]

    def writers() -> None:
        begin.wait()
        application_writes(source, "during-0")  # a round
        time.sleep(1.2)  # a pause
        application_writes(source, "rich-basic")  # a new turn: a round

    def change_rich_basic_after_its_round() -> None:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            migrated = count(conn)
            begin.wait()
            while count(conn) == migrated:  # until its round's sync moved the new turn
                time.sleep(0.05)
            time.sleep(0.8)  # the round compares it meanwhile
            conn.execute("UPDATE checkpoints SET metadata = metadata || "
                         "'{\"edited\": 1}' WHERE thread_id = 'rich-basic'")

    threads = [threading.Thread(target=writers),
               threading.Thread(target=change_rich_basic_after_its_round)]
    for thread in threads:
        thread.start()

    def say(text: str) -> None:
        if text.startswith("Waiting until"):
            begin.set()

    done = cutover(CutoverRequest(sync=SyncRequest(source, export, target_dsn),
                                  quiet_seconds=2.0, workers=1), say=say)
    for thread in threads:
        thread.join()

    assert not done.passed
    batch = next(c for c in done.report.batches if "rich-basic" in c.thread_ids)
    assert not batch.reused and not batch.passed
