"""--threads: the thread ids a migration is restricted to (tenant-by-tenant rollouts)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from checkpoint_assets.engine.core.errors import MigrationError

MAX_NAMED_THREADS = 10  # missing ids named in a message; the count says how many in all
# What to check when a SQLite source lacks a selected thread.
MISSING_THREADS_HINT = ("Check the thread ids (--threads: matched exactly) and the database "
                        "(--source); a thread can be selected once the application has "
                        "written it.")


def parse_thread_selection(value: str | None) -> list[str] | None:
    """Thread ids separated by commas, or ``@FILE`` with one id a line, sorted and without
    repeats; None (or empty): every thread. A UTF-8 byte order mark at the start of the
    file (Windows editors save one) is not part of the first id. A MigrationError when the
    file cannot be read or names no thread."""
    if not value:
        return None
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8-sig")  # -sig: drops a BOM
        except OSError as exc:
            raise MigrationError(f"Cannot read the thread list {value[1:]}: "
                                 f"{exc.strerror or exc}.",
                                 "Pass --threads @FILE with one thread id a line.") from None
        ids = [line.strip() for line in text.splitlines()]
    else:
        ids = [part.strip() for part in value.split(",")]
    selection = sorted({tid for tid in ids if tid})
    if not selection:
        raise MigrationError(f"--threads {value!r} names no thread.",
                             "Pass thread ids separated by commas, or @FILE.")
    return selection


def refuse_missing_threads(requested: Iterable[str], held: Collection[str], source: str,
                           consequence: str, hint: str) -> None:
    """Raise a MigrationError naming the ``requested`` thread ids that ``held`` (the
    threads the source ``source`` holds) lacks: a typo or a wrong database would otherwise
    leave those threads behind while every check passes. ``consequence`` says what was
    not done (e.g. "No export was written."), ``hint`` what to check."""
    missing = sorted(set(requested) - set(held))
    if not missing:
        return
    raise MigrationError(
        f"The source {source} has no checkpoint or write of {len(missing)} requested "
        f"thread(s): {name_threads(missing)}. {consequence}", hint)


def name_threads(thread_ids: Sequence[str]) -> str:
    """The first MAX_NAMED_THREADS ids, quoted (a stray space or BOM shows), and how many
    more there are."""
    shown = ", ".join(repr(tid) for tid in thread_ids[:MAX_NAMED_THREADS])
    more = len(thread_ids) - MAX_NAMED_THREADS
    return f"{shown} and {more} more" if more > 0 else shown
