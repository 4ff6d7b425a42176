"""A private, consistent copy of a SQLite database, taken without writing to the original.

Even a ``mode=ro`` SQLite connection writes to a WAL database's ``-shm`` file (read marks,
wal-index recovery) and creates ``-wal``/``-shm`` when they are missing. To leave the
source and its ``-wal``/``-shm`` byte-identical, the engine reads a private copy:

- rollback-journal databases: copied while holding a SHARED lock through a read-only
  connection (which touches no side file), so no writer can change them mid-copy; a writer
  that holds its lock too long gets a clear "locked" error;
- WAL databases: the main file and the ``-wal`` are copied as they are; SQLite recovers
  the copy to its last complete commit. If a checkpoint rewrote the main file or restarted
  the WAL during the copy (seen in their sizes, mtimes and the WAL salt), the copy is
  taken again.

SQLite keeps the ``-wal`` and ``-shm`` beside the file it really opens: for a source given
through a symlink (or a chain of them) that is the link's target, not ``<given path>-wal``.
:func:`source_files` resolves the path once, and every reader of the side files (this
copy, the quiet detection, the sync sensor) uses its answer. A hard-linked source cannot be
resolved that way: when another name of the same file in its directory has a ``-wal``, the
application writes through that name, and :func:`require_one_name` refuses the source.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.private_files import remove_abandoned

WAL_FORMAT = 2
COPY_ATTEMPTS = 5
SNAPSHOT_PREFIX = "checkpoint-assets-"  # + "<pid>-<random>": a killed process's is found
LOCK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SourceFiles:
    """The files of a SQLite database as SQLite itself finds them.

    ``given``: the path the user passed; ``database``: the real file behind it (every
    symlink resolved); ``wal``, ``shm``: the side files SQLite keeps beside ``database``.
    """

    given: Path
    database: Path
    wal: Path
    shm: Path


def source_files(path: str | Path) -> SourceFiles:
    """The real database file behind ``path`` (symlinks resolved) and its ``-wal`` and
    ``-shm``: the one place that decides which side files belong to a source."""
    given = Path(path)
    database = Path(os.path.realpath(given))
    return SourceFiles(given, database, Path(f"{database}-wal"), Path(f"{database}-shm"))


def require_one_name(files: SourceFiles) -> None:
    """Raise MigrationError when the database file has another name (a hard link) in its
    directory that has a ``-wal`` beside it: the application opened the file by that name,
    so its recent commits are in that ``-wal``, which no reader of ``files`` would see.

    Hard links in other directories cannot be found without searching the filesystem;
    only the database's own directory is searched (and only when the file has more than
    one link).
    """
    try:
        stat = os.stat(files.database)
    except OSError:
        return  # a missing file is reported by whoever opens it
    if stat.st_nlink < 2:
        return
    others = []
    try:
        with os.scandir(files.database.parent) as entries:
            for entry in entries:
                if entry.name == files.database.name or entry.is_symlink():
                    continue
                try:
                    other = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (stat.st_dev, stat.st_ino) \
                        and os.path.exists(f"{entry.path}-wal"):
                    others.append(entry.path)
    except OSError:
        return
    if others:
        raise MigrationError(
            f"Source {files.given} is a hard link of {', '.join(sorted(others))} (the same "
            f"file), and SQLite keeps that name's committed writes in "
            f"{sorted(others)[0]}-wal, which reading {files.database} would miss.",
            f"Pass --source {sorted(others)[0]} (the name the application opens).")


def reads_live(path: str | Path) -> bool:
    """Whether a live read of ``path`` is consistent without a copy: a WAL-mode database
    whose ``-wal`` exists (an application has it open, or left it). One read transaction on
    such a file sees one commit and never blocks a writer. Its cost to the application: while
    the transaction lasts, a checkpoint copies frames only up to the reader's mark and the
    WAL cannot start over, so it grows by what is written meanwhile (the next checkpoint
    after the read catches up). A rollback-journal database is copied instead: a read
    transaction on it holds a SHARED lock that makes every writer wait."""
    files = source_files(path)
    return _journal_mode(files.database) == WAL_FORMAT and files.wal.exists()


def live_uri(path: str | Path) -> str:
    """The read-only SQLite URI of the real file behind ``path`` (for a live read, see
    :func:`reads_live`)."""
    return f"file:{quote(str(source_files(path).database))}?mode=ro"


def _journal_mode(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.read(20)
    return header[18] if len(header) >= 20 else 0


def _wal_state(path: Path) -> tuple:
    """What changes when the main file is checkpointed or the WAL restarts."""
    main = path.stat()
    wal = Path(f"{path}-wal")
    salt = b""
    if wal.exists():
        with wal.open("rb") as handle:
            salt = handle.read(32)[16:24]
    return (main.st_size, main.st_mtime_ns, salt)


@contextmanager
def private_snapshot(path: Path, workdir: str | Path | None = None) -> Iterator[Path]:
    """Yield the path of a private, consistent copy of the database at ``path``.

    The copy lives in a new owner-only temporary directory and is deleted afterwards;
    copies left by processes that were killed are deleted first. ``path`` may be a symlink:
    the real file and its ``-wal`` are copied (:func:`source_files`); a hard link whose
    other name has the ``-wal`` is refused (:func:`require_one_name`).
    """
    files = source_files(path)
    require_one_name(files)
    path = files.database
    directory = Path(workdir or tempfile.gettempdir())
    remove_abandoned(directory, SNAPSHOT_PREFIX)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{SNAPSHOT_PREFIX}{os.getpid()}-", dir=directory))
    except OSError as exc:
        raise _cannot_copy(path, directory, exc) from None
    copy = tmp / "source.sqlite"
    try:
        try:
            if _journal_mode(path) == WAL_FORMAT:
                _copy_wal_database(path, copy)
            else:
                _copy_locked(path, copy)
        except OSError as exc:  # e.g. the temporary directory's filesystem is full
            raise _cannot_copy(path, tmp.parent, exc) from None
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cannot_copy(path: Path, directory: Path, exc: OSError) -> MigrationError:
    return MigrationError(
        f"Cannot copy the source {path} to a private snapshot in {directory}: "
        f"{exc.strerror or exc}.",
        "Check that the source is readable and that the temporary directory has room for "
        "a copy of the database and its -wal file; set TMPDIR to a directory on another "
        "filesystem if not.")


def _copy_wal_database(path: Path, copy: Path) -> None:
    for _ in range(COPY_ATTEMPTS):
        before = _wal_state(path)
        shutil.copyfile(path, copy)
        wal = Path(f"{path}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{copy}-wal")
        if _wal_state(path) == before:
            return
        Path(f"{copy}-wal").unlink(missing_ok=True)
    raise MigrationError(
        f"Source {path} kept being checkpointed while it was copied ({COPY_ATTEMPTS} tries).",
        "Pause the application writing to it for a moment, then run the export again.",
    )


def _copy_locked(path: Path, copy: Path) -> None:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the SHARED lock
        shutil.copyfile(path, copy)
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise MigrationError(
                f"Source {path} is locked by another process ({exc}) and stayed locked for "
                f"{LOCK_TIMEOUT_SECONDS:.0f} s.",
                "Stop or pause the application writing to it, then run the export again.",
            ) from None
        raise MigrationError(f"Cannot read source {path}: {exc}.",
                             "Check the file's permissions and that it is a SQLite database.") \
            from None
    except sqlite3.DatabaseError as exc:
        raise MigrationError(
            f"Source {path} is corrupt or not a SQLite database ({exc}).",
            "Restore the file from a backup or point --source at the right file.",
        ) from None
    finally:
        conn.close()
