"""Progress for long steps: a bar on a terminal, plain periodic lines elsewhere (CI, logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

LOG_INTERVAL_SECONDS = 5.0


@contextmanager
def progress(label: str, total: int, unit: str = "checkpoints",
             stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable that reports progress of ``label`` towards ``total``."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=label, unit=f" {unit}", file=stream,
                  dynamic_ncols=True) as bar:
            yield bar.update
        return
    started = last = time.monotonic()
    done = 0

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= LOG_INTERVAL_SECONDS:
            rate = done / max(now - started, 1e-9)
            print(f"{label}: {done}/{total} {unit} ({rate:,.0f}/s)", file=stream, flush=True)
            last = now

    yield advance
    elapsed = time.monotonic() - started
    print(f"{label}: {done}/{total} {unit} done in {elapsed:.1f} s", file=stream, flush=True)
