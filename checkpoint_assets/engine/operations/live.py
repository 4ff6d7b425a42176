"""The live migration: :func:`sync` (the next sync generation, applied) and
:func:`cutover` (catch-up sync, wait for quiet, final sync, verification, the window and
its evidence)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.selection import name_threads, parse_thread_selection
from checkpoint_assets.engine.core.workers import workers_for
from checkpoint_assets.engine.export.reader import export_thread_digests
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.operations.contract import (
    Progress,
    Say,
    chain_evidence,
    cipher_for,
    clock,
    progress_for,
    write_evidence,
)
from checkpoint_assets.engine.operations.cutover_rounds import WaitingRounds
from checkpoint_assets.engine.operations.migration import BatchLoadReport, BatchLoadRequest
from checkpoint_assets.engine.sync.apply_generation import (
    apply_sync_batch as _apply_sync_batch,
)
from checkpoint_assets.engine.sync.export_chain import (
    ExportChain,
    SyncResult,
    load_chain,
    write_sync,
)
from checkpoint_assets.engine.sync.sync_target import (
    SyncReport,
    sync_target,
    wait_until_quiet,
)
from checkpoint_assets.engine.sync.sync_target import (
    source_files_state as _source_files_state,
)
from checkpoint_assets.engine.verify.check_table import SOURCE_MATCHES_EXPORT
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.engine.verify.evidence import default_evidence_path
from checkpoint_assets.engine.verify.migration import unchanged_since, verify_migration
from checkpoint_assets.engine.verify.unchanged import UnchangedScan

if TYPE_CHECKING:  # annotations only: the verification's report type
    from checkpoint_assets.engine.verify.reports import VerificationReport

FIRST_VERIFICATION_MESSAGE = ("First verification of every thread, before the cutover window "
                              "(writers may still write)...")
# While waiting for quiet, the cutover syncs and compares at most this often (only when
# the source was written).
CATCH_UP_EVERY_SECONDS = 1.0
CATCH_UP_AGAIN_MESSAGE = ("Catching up with what changed during the first, round after round "
                          "until a round is short (writers may still write)...")
# Before the wait, rounds go on until one takes at most this long (or half the quiet
# period, when that is longer) or moves nothing, at most this many, and only while each
# takes at most SHRINKING times the one before (measured at 1M under a steady writer:
# 70, 65, 57, 55, 64, 79, 114, 172 s; at 100K: 7.0, 1.4, 0.7 s).
SHORT_ROUND_SECONDS = 1.0
MAX_ROUNDS_BEFORE_WAIT = 8
SHRINKING = 0.75


# --- sync ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncRequest:
    """One sync of the SQLite ``source`` into PostgreSQL through the export chain of
    ``export``. ``threads`` (as given, or None) must be the export's own selection.
    ``propagate_deletes``: threads deleted in the source are deleted in the target too."""

    source: Path
    export: Path
    target_dsn: str = field(repr=False)
    schema: str | None = None
    threads: str | None = None
    aes_key: str | None = field(default=None, repr=False)
    propagate_deletes: bool = False
    allow_mass_deletion: bool = False
    strict_versions: bool = False
    read_every_thread: bool = False


def sync(request: SyncRequest) -> SyncReport:
    """Write the next sync generation from what changed in the source, and apply it (see
    engine.sync.sync_target.sync_target). A refused thread is in ``found.refused``; a
    conflict raises ConflictError with nothing of that batch written."""
    chain = load_chain(request.export)
    selection = parse_thread_selection(request.threads)
    if selection is not None and selection != chain.selection:
        if chain.selection is None:
            differ = "every thread"
        else:
            extra = [tid for tid in selection if tid not in chain.selection]
            left = [tid for tid in chain.selection if tid not in selection]
            differ = "; ".join(part for part in (
                f"not in it: {name_threads(extra)}" if extra else "",
                f"in it, not given: {name_threads(left)}" if left else "") if part)
        raise MigrationError(
            f"--threads names other threads than the export {chain.export.path} was taken "
            f"for ({differ}).",
            "Sync without --threads (a sync follows its export's selection), or export "
            "and migrate that selection into its own export file (--export).")
    target = Target(request.target_dsn, request.schema)
    return sync_target(request.source, request.export, target,
                       cipher=cipher_for(request.aes_key),
                       propagate_deletes=request.propagate_deletes,
                       read_every_thread=request.read_every_thread,
                       allow_mass_deletion=request.allow_mass_deletion,
                       strict_versions=request.strict_versions)


# --- cutover ------------------------------------------------------------------------


@dataclass(frozen=True)
class CutoverRequest:
    """The cutover of ``sync`` (what each of its syncs does): wait until the source has not
    changed for ``quiet_seconds`` (at most ``timeout_seconds``), sync a last time, prove
    the target equal; the evidence report goes to ``evidence`` (default beside the
    export). ``digest_every_thread``: the second verification digests every thread of
    the source, not only those written since the first (see :func:`written_since`)."""

    sync: SyncRequest
    quiet_seconds: float
    timeout_seconds: float | None = None
    workers: int | None = None
    evidence: Path | None = None
    digest_every_thread: bool = False


@dataclass(frozen=True)
class CutoverReport:
    """What the cutover proved: the final sync, the verification, the window.

    ``window``: label -> text (the evidence's rows and the CLI's lines); ``timings``: the
    same moments as numbers (UTC ISO times and seconds); ``untouched``: no writer changed
    the source between quiet and proven equal; ``passed``: proven equal and untouched.
    """

    synced: SyncReport
    report: VerificationReport
    target_display: str
    window: dict[str, str]
    timings: dict[str, Any]
    evidence: Path
    untouched: bool
    passed: bool
    window_seconds: float


def cutover(request: CutoverRequest, *, say: Say = print,
            progress: Progress | None = None) -> CutoverReport:
    """Catch-up sync and a certified first verification of every thread (writers may still
    write), then rounds of a sync and a comparison of what it moved (these take the
    target's other rows as they were) until a round is short: the first grows with the
    database, and so does what the writers write meanwhile (cutover_rounds); then wait
    for quiet, with a round at most every CATCH_UP_EVERY_SECONDS while the writers still
    write; then the final sync and a last verification that
    compares again only what changed since, on both sides: the source's threads written
    since the last comparison (the syncs' books), and the target's threads whose rows are
    not the ones their comparison read (one scan of each table against each comparison's
    mark, run beside the final sync; see engine/verify/unchanged.py). So the window
    follows the writers' last changes, not the database's size, but for that scan, which
    is in C and costs the tables' size. When the
    source differs from the synced state while no writer touched it (rowids used again),
    it syncs once more with every thread digested. ``say`` gets each progress line.
    Raises TimedOut when the source was not quiet within ``timeout_seconds``."""
    sync_request = request.sync
    source = sync_request.source
    target = Target(sync_request.target_dsn, sync_request.schema)

    def sync_again(read_every_thread: bool = False) -> SyncReport:
        if not read_every_thread:
            return sync(sync_request)
        return sync(replace(sync_request, read_every_thread=True))

    def verify_chain(chain: ExportChain, earlier: VerificationReport | None = None,
                     drift_in: set[str] | None = None, scan: UnchangedScan | None = None,
                     provisional: bool = False) -> VerificationReport:
        with progress_for(progress, "verify", chain.checkpoints) as advance:
            return verify_migration(chain.export, target, source_path=source,
                                    cipher=cipher_for(sync_request.aes_key),
                                    readback_threads=None, progress=advance,
                                    workers=workers_for(chain.export, request.workers),
                                    chain=chain, certify=True, earlier=earlier,
                                    source_drift_in=drift_in, unchanged=scan,
                                    assume_unchanged=provisional,
                                    count_target_tables=not provisional)

    def verify_since(verified_chain: ExportChain, chain: ExportChain,
                     verified: VerificationReport, scan: UnchangedScan | None = None,
                     provisional: bool = False) -> VerificationReport:
        """``chain`` verified again after ``verified`` (of ``verified_chain``): only what
        changed since, on both sides (every source thread with --digest-every-thread).
        ``provisional``: the target's other threads are taken as they were (no scan; the
        last verification scans for every change since each comparison)."""
        return verify_chain(chain, earlier=verified,
                            drift_in=None if request.digest_every_thread
                            else written_since(verified_chain, chain, verified), scan=scan,
                            provisional=provisional)

    say("Catch-up sync (writers may still write)...")
    say(sync_again().render())
    say(FIRST_VERIFICATION_MESSAGE)
    verified_chain = load_chain(sync_request.export)
    verified = verify_chain(verified_chain)
    # What the writers wrote during that full pass (it grows with the database) is synced
    # and compared now, while they still write, round after round until a round is short,
    # and again while the cutover waits: the window carries only their last moment.
    say(CATCH_UP_AGAIN_MESSAGE)
    short_round = max(SHORT_ROUND_SECONDS, request.quiet_seconds / 2)
    with WaitingRounds(sync_request.export, sync_again,
                       lambda before, now, earlier: verify_since(before, now, earlier,
                                                                 provisional=True),
                       verified_chain, verified,
                       every_seconds=CATCH_UP_EVERY_SECONDS) as waiting:
        previous = float("inf")
        for number in range(1, MAX_ROUNDS_BEFORE_WAIT + 1):
            started = time.monotonic()
            moved = waiting.catch_up()
            seconds = time.monotonic() - started
            say(f"  round {number}: {moved} thread(s) moved and compared in {seconds:.1f} s")
            # Rounds that do not shrink (the writers write faster than a round moves and
            # proves it) only let the threads grow: wait instead.
            if not moved or seconds <= short_round or seconds > previous * SHRINKING:
                break
            previous = seconds
        before_wait = len(waiting.rounds)
        wait_started = time.time()
        last_write, quiet_files = wait_until_quiet(source, request.quiet_seconds, say=say,
                                                   timeout_seconds=request.timeout_seconds,
                                                   on_change=waiting.poll)
        waiting.finish()
    quiet_at = time.time()
    verified, verified_chain = waiting.verified, waiting.verified_chain
    while_waiting = len(waiting.rounds) - before_wait
    if while_waiting:
        say(f"Caught up with the writers {while_waiting} time(s) while waiting "
            f"({waiting.moved(before_wait)} thread(s) moved and compared).")
    say(f"Source quiet since {clock(last_write)}; final sync...")
    # Which of PostgreSQL's rows are still those compared: one scan of each table (in C,
    # the tables' size), its snapshot taken now, beside the final sync.
    with ThreadPoolExecutor(max_workers=1) as beside:
        scanning = beside.submit(unchanged_since, target, verified)
        synced = sync_again()
        scan = scanning.result()
    say(synced.render())
    chain = load_chain(sync_request.export)
    # A sync that wrote again rows of earlier generations (it completed an interrupted
    # one) touched threads the scan may have seen before it: the verification scans anew.
    report = verify_since(verified_chain, chain, verified,
                          scan=None if synced.reapplied or synced.reloaded else scan)
    if not report.checks[SOURCE_MATCHES_EXPORT].passed \
            and source_files_state(source) == quiet_files:
        # The fingerprints missed a change (rowids used again): digest every thread.
        say("The source differs from the synced state; syncing again, every thread "
            "digested...")
        synced = sync_again(read_every_thread=True)
        chain = load_chain(sync_request.export)
        report = verify_chain(chain, earlier=verified)
    proven_at = time.time()
    untouched = source_files_state(source) == quiet_files
    passed = report.passed and untouched
    # The window starts at the last write seen (the writers' stop), not when the wait
    # noticed quiet: the application is down from its last write to "proven equal".
    window = {
        "cutover": "PASSED: the target equals the source as of " + synced.found.snapshot_at
        if passed else "FAILED: equality not proven",
        "writers quiet since": f"{clock(last_write)} (the source's last change; quiet "
                               f"for {request.quiet_seconds:g} s by {clock(quiet_at)})",
        "waited for quiet": f"{quiet_at - wait_started:.1f} s (from {clock(wait_started)}, "
                            "after the first verification)",
        "proven equal at": clock(proven_at) if passed else "-",
        "cutover window": f"{proven_at - last_write:.1f} s from the last write seen to "
                          f"proven equal (quiet {quiet_at - last_write:.1f} s + final sync "
                          f"{synced.seconds:.1f} s + verification {report.seconds:.1f} s)",
        "caught up while waiting": f"{while_waiting} sync(s) and comparison(s) while "
                                   "the writers still wrote" if while_waiting else
                                   "nothing was written while waiting",
        "source untouched during the cutover": "yes" if untouched else
        "NO: a writer changed the source; stop every writer and run cutover again",
    }
    timings = {"last_write_at": clock(last_write), "wait_started_at": clock(wait_started),
               "quiet_at": clock(quiet_at), "proven_at": clock(proven_at),
               "wait_seconds": round(quiet_at - wait_started, 3),
               "window_seconds": round(proven_at - last_write, 3),
               "final_sync_seconds": round(synced.seconds, 3),
               "verification_seconds": round(report.seconds, 3)}
    evidence = write_evidence(request.evidence or default_evidence_path(chain.export.path),
                              chain_evidence(report, chain, target, synced.deletions_kept,
                                             window))
    return CutoverReport(synced, report, target.display, window, timings, evidence,
                         untouched, passed, proven_at - last_write)


def written_since(before: ExportChain, now: ExportChain,
                  verified: VerificationReport) -> set[str]:
    """The threads in which the source can differ from ``now``'s state, given that
    ``verified`` digested every thread of the source against ``before`` (the chain then):
    those it found different, and those the syncs since moved or found deleted (the syncs'
    books name every thread written, see change_detection). Every other thread was equal
    then and nothing wrote to it since."""
    threads = {tid for found in verified.drift.values() for tid in found}
    for manifest in now.generations[len(before.generations):]:
        threads.update(tid for tid, _, _, _ in export_thread_digests(manifest))
        threads.update(manifest.header.get("deleted_threads") or ())
    return threads


# --- the Dagster layer's steps: one generation, one batch ------------------------------


@dataclass(frozen=True)
class SyncGenerationRequest:
    """Write the next sync generation of the export ``export`` from what changed in the
    SQLite ``source`` (nothing applied: its batches are loaded one by one)."""

    source: Path
    export: Path
    aes_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SyncGenerationReport:
    """What moved (``found``; ``found.manifest`` None when nothing changed), the chain
    with the new generation, and per moved thread the (checkpoints, writes) written."""

    found: SyncResult
    chain: ExportChain
    moved_counts: dict[str, tuple[int, int]]


def write_sync_generation(request: SyncGenerationRequest) -> SyncGenerationReport:
    """The next sync generation of the export, written whole or not at all."""
    found = write_sync(request.source, request.export, cipher=cipher_for(request.aes_key))
    chain = found.chain or load_chain(request.export)
    moved = {} if found.manifest is None else {
        tid: (checkpoints, writes)
        for tid, _, checkpoints, writes in export_thread_digests(found.manifest)}
    return SyncGenerationReport(found, chain, moved)


def apply_sync_batch(request: BatchLoadRequest) -> BatchLoadReport:
    """One batch of a sync generation applied in its own transaction (inserted, updated
    or deleted as the generation says), then its threads that no later generation holds
    compared with the export, certified."""
    target = Target(request.target_dsn, request.schema)
    cipher = cipher_for(request.aes_key)
    manifest, chain = request.manifest, request.chain
    result = _apply_sync_batch(target, chain, manifest, request.batch, cipher)
    live = {(m.generation, k): t for m, k, t in chain.live_batches()}
    comparison = compare_batch(target, manifest, request.batch, cipher,
                               threads=live.get((manifest.generation, request.batch),
                                                frozenset()), certify=True)
    return BatchLoadReport(result, comparison, comparison.certificate(cipher))


def source_files_state(source: Path | str) -> tuple:
    """(size, mtime) of the SQLite ``source`` file and of its -wal: what any committed
    write changes (the sensor compares it)."""
    return _source_files_state(source)
