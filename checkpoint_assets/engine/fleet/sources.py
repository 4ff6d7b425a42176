"""Which SQLite files make a fleet, and the label each is known by.

``--source`` is given once per file, or as ``@FILE`` (one path a line), a glob
(``replicas/*.sqlite``) or a directory (every .sqlite, .sqlite3, .db file directly inside
it, and any other file that is a SQLite database). The same file reached twice (two
spellings, a symlink) counts once. A source's label is what the partitions, the evidence
and the per-source prefix call it: its file name without the suffix, and its parent
folders' names in front while two sources would share one (``replica-1-checkpoints``,
``replica-2-checkpoints``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from checkpoint_assets.engine.core.errors import MigrationError

SQLITE_HEADER = b"SQLite format 3\x00"
GLOB_CHARACTERS = set("*?[")
# In a directory: files with these suffixes (a damaged one is then refused by name, not
# skipped) and any other file that starts as a SQLite database does; never -wal or -shm.
DATABASE_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".db3")
# Labels name partitions and prefixes: letters, digits and "-" only.
_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9]+")
MAX_LABEL_LENGTH = 40


def expand_sources(specs: Sequence[str | Path]) -> list[Path]:
    """The SQLite files ``specs`` name, in the order given, each once (by real path).

    A MigrationError names a spec that matches nothing (a missing file, an empty glob or
    directory, an unreadable @FILE); whether each file is a checkpoint database is checked
    when it is read (a damaged file fails alone, see the fleet's plan)."""
    found: list[Path] = []
    seen: set[str] = set()
    for spec in specs:
        for path in _expand_one(str(spec)):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                found.append(path)
    if not found:
        raise MigrationError("No source was given.",
                             "Pass --source FILE once per SQLite file (or @LIST, a glob, "
                             "a directory).")
    return found


def _expand_one(spec: str) -> list[Path]:
    if spec.startswith("@"):
        try:
            lines = Path(spec[1:]).read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise MigrationError(f"Cannot read the source list {spec[1:]}: "
                                 f"{exc.strerror or exc}.",
                                 "Pass --source @FILE with one SQLite path a line.") from None
        base = Path(spec[1:]).parent
        paths = [p if p.is_absolute() else base / p
                 for p in (Path(line.strip()) for line in lines if line.strip())]
        return [path for p in paths for path in _expand_one(str(p))]
    if GLOB_CHARACTERS & set(spec) and not Path(spec).is_file():
        matches = sorted(Path(m) for m in glob.glob(spec) if Path(m).is_file())
        if not matches:
            raise MigrationError(f"--source {spec!r} matches no file.",
                                 "Check the pattern (quote it so the shell does not expand "
                                 "it) and the directory.")
        return matches
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (
            p.suffix.lower() in DATABASE_SUFFIXES or _is_sqlite(p)))
        if not files:
            raise MigrationError(f"The directory {path} holds no SQLite file.",
                                 "Point --source at the folder holding the .sqlite files, "
                                 "or name the files.")
        return files
    return [path]  # read (and refused by name if it is not a checkpoint database) later


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def source_labels(paths: Sequence[Path]) -> list[str]:
    """One label per path, distinct, stable for the same set of files (see the module)."""
    parts = [[_label_part(p) for p in (*reversed(Path(os.path.abspath(path)).parent.parts),)]
             for path in paths]
    stems = [_label_part(path.stem) or "source" for path in paths]
    depth = [0] * len(paths)
    while True:
        labels = ["-".join([*reversed(parts[i][:depth[i]]), stems[i]]).strip("-")[
            -MAX_LABEL_LENGTH:].strip("-") for i in range(len(paths))]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1]
        grown = False
        for i in clashing:
            if depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not clashing:
            return labels
        if not grown:  # the same names all the way up: number them
            return [f"{label}-{n}" if labels.count(label) > 1 else label
                    for n, label in enumerate(labels, start=1)]


def _label_part(name: str) -> str:
    return _NOT_IN_LABEL.sub("-", name).strip("-")
