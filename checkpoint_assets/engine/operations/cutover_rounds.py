"""What the cutover does while it waits for the writers to stop.

A round is a sync and a comparison of what it moved (``verify_since``, which takes the
target's other rows as they were: the last verification's scan checks them all). The
cutover runs rounds (:meth:`WaitingRounds.catch_up`) after its first verification until
one is short, since each round's length follows what the writers wrote during the one
before; then, while it waits, each poll (sync_target.wait_until_quiet) that saw the
source change calls :meth:`WaitingRounds.poll`: one round at a time, at most every
``every_seconds``, on a thread beside the wait, so its polls go on and quiet is seen on
time; a round that failed ends the wait with its error. So the window holds only what
the writers wrote in their last moment.

The scan (verify.unchanged) is not taken early, in a pause of the writers: its snapshot
is PostgreSQL's side of the proof, so it is taken once the source is quiet, beside the
final sync (a change made in PostgreSQL after it would not be seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from checkpoint_assets.engine.sync.export_chain import ExportChain, load_chain
from checkpoint_assets.engine.sync.sync_target import SyncReport
from checkpoint_assets.engine.verify.reports import VerificationReport

VerifySince = Callable[[ExportChain, ExportChain, VerificationReport], VerificationReport]


class WaitingRounds:
    """The rounds of one cutover's wait, from the last comparison (``verified`` of
    ``verified_chain``); after the wait, :attr:`verified` and :attr:`verified_chain` are
    the newest. Use as a context manager (its thread ends with the block: a round still
    running when the wait raised is waited for)."""

    def __init__(self, export_path: str | Path, sync: Callable[[], SyncReport],
                 verify_since: VerifySince, verified_chain: ExportChain,
                 verified: VerificationReport, every_seconds: float) -> None:
        self.export_path, self.sync, self.verify_since = export_path, sync, verify_since
        self.verified_chain, self.verified = verified_chain, verified
        self.every_seconds = every_seconds
        self.rounds: list[SyncReport] = []
        self._beside = ThreadPoolExecutor(max_workers=1)
        self._round: Future | None = None
        self._round_started = 0.0

    def __enter__(self) -> WaitingRounds:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._beside.shutdown(wait=True, cancel_futures=True)

    def poll(self) -> None:
        """After each poll of the wait that saw the source change."""
        if self._round is not None and self._round.done():
            self._round.result()  # a failed round ends the wait with its error
        if (self._round is None or self._round.done()) \
                and time.monotonic() - self._round_started >= self.every_seconds:
            self._round_started = time.monotonic()
            self._round = self._beside.submit(self.catch_up)

    def finish(self) -> None:
        """Once quiet: wait for the round under way (its error, if it failed)."""
        if self._round is not None:
            self._round.result()

    def moved(self, since: int = 0) -> int:
        """Threads the rounds moved (added, changed or deleted), from round ``since`` on."""
        return sum(_moved(r) for r in self.rounds[since:])

    def catch_up(self) -> int:
        """One round now (in the caller's thread): the threads it moved."""
        self.rounds.append(self.sync())
        found = self.rounds[-1].found
        if found.moved:
            chain = found.chain or load_chain(self.export_path)
            self.verified = self.verify_since(self.verified_chain, chain, self.verified)
            self.verified_chain = chain
        return _moved(self.rounds[-1])


def _moved(report: SyncReport) -> int:
    return len(report.found.added) + len(report.found.changed) + len(report.found.deleted)
