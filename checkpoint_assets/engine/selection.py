"""--threads: the thread ids a migration is restricted to (tenant-by-tenant rollouts)."""

from __future__ import annotations

from pathlib import Path

from checkpoint_assets.engine.errors import MigrationError


def parse_thread_selection(value: str | None) -> list[str] | None:
    """Thread ids separated by commas, or ``@FILE`` with one id a line, sorted and without
    repeats; None (or empty): every thread. A MigrationError when the file cannot be read
    or names no thread."""
    if not value:
        return None
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
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
