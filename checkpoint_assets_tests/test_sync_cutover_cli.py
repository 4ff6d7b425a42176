"""What sync and cutover tell the user, and what they refuse, on the command line.

Under test (issue 21, items 7 and 8), against a real SqliteSaver file that the rich
LangGraph graph writes and a real PostgreSQL:

- a filesystem that refuses a sync generation's ``.applied`` marker (full, or read-only:
  real tmpfs mounts) ends with a message saying what to do and exit 3, never a traceback;
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from checkpoint_assets.engine.export_file import write_export
from checkpoint_assets.engine.pipeline import import_export
from checkpoint_assets.engine.sync import sync_target
from checkpoint_assets.engine.target import Target
from checkpoint_assets_tests.corpus_graphs import (
    build_rich_corpus,
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


@pytest.fixture(scope="module")
def rich_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rich corpus, written once for this module."""
    path = tmp_path_factory.mktemp("rich") / "rich.sqlite"
    build_rich_corpus(path)
    return path


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
