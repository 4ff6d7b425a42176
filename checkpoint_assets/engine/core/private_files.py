"""Files that hold users' data (exports, reports) are created readable by the owner only,
under a temporary name no one else can plant, and renamed into place when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

PARTIAL_SUFFIX = ".partial"


@contextmanager
def private_file(path: Path, buffering: int = -1) -> Iterator[BinaryIO]:
    """Yield a new owner-only file that becomes ``path`` when the block ends without error.

    The temporary file beside ``path`` gets a fresh random name, created exclusively
    (``mkstemp``: O_CREAT|O_EXCL, mode 0600), so a symlink planted at any name is never
    followed and two processes writing ``path`` at once never share a temporary file. The
    rename replaces ``path`` itself, even when it is a symlink, never a file it points to;
    the later writer wins. On any error the temporary file is removed and ``path`` is left
    as it was. The directory is created 0700 if missing. OSError is the caller's to explain.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_abandoned(path.parent, prefix)
    fd, temp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=PARTIAL_SUFFIX,
                                dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (see :func:`private_file`)."""
    with private_file(path) as handle:
        handle.write(text.encode("utf-8"))


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, mode 0600."""
    write_private_text(path, json.dumps(data, indent=2, default=str))


def remove_abandoned(directory: Path, prefix: str) -> list[Path]:
    """Remove this user's temporaries ``<prefix><pid>-...`` in ``directory`` whose process
    no longer exists; return what was removed.

    A process killed with SIGKILL (or SIGTERM, which runs no ``finally``) cannot clean up
    its temporary export or source snapshot; the next process that writes there does. A
    pid reused by a live process keeps its entry until that process has ended; entries of
    other users and links are never touched.
    """
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = _owner_pid(entry.name, prefix)
        if pid is None or _process_exists(pid):
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if info.st_uid != os.getuid() or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _owner_pid(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    pid, dash, _ = name[len(prefix):].partition("-")
    return int(pid) if dash and pid.isdigit() else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
