"""A source that is still written: ``sync`` and ``cutover``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from checkpoint_assets.cli.arguments import (
    cipher_of,
    evidence_path,
)
from checkpoint_assets.cli.exit_status import (
    EXIT_BAD_INPUT,
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.output import (
    chain_evidence,
    emit,
    print_evidence_path,
    render_verification,
    sync_json,
    verification_json,
    write_evidence,
)
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.selection import name_threads, parse_thread_selection
from checkpoint_assets.engine.core.workers import (
    workers_for,
)
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import (
    ExportChain,
    load_chain,
)
from checkpoint_assets.engine.sync.sync_target import (
    SyncReport,
    source_files_state,
    sync_target,
    wait_until_quiet,
)
from checkpoint_assets.engine.verify.check_table import (
    SOURCE_MATCHES_EXPORT,
)
from checkpoint_assets.engine.verify.migration import (
    verify_migration,
)
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.progress import progress
from checkpoint_assets.settings import (
    Settings,
)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """sync: the target follows the source, moving only what changed since the export
    (or the last sync); exit 4 on a conflict (nothing of that batch written), 3 when
    threads were refused (the others moved; every later sync tries those again)."""
    report = _sync(args, settings)
    emit(args, sync_json(report), report.render())
    return EXIT_BAD_INPUT if report.found.refused else EXIT_OK


def _sync(args: argparse.Namespace, settings: Settings,
          read_every_thread: bool = False) -> SyncReport:
    chain = load_chain(args.export)
    selection = parse_thread_selection(args.threads)
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
    target = Target(settings.target_dsn or "", args.schema)
    return sync_target(args.source, args.export, target, cipher=cipher_of(args),
                       propagate_deletes=args.propagate_deletes,
                       read_every_thread=read_every_thread,
                       allow_mass_deletion=args.allow_mass_deletion,
                       strict_versions=args.strict_versions or settings.strict_versions)

FIRST_VERIFICATION_MESSAGE = ("First verification of every thread, before the cutover window "
                              "(writers may still write)...")


def cmd_cutover(args: argparse.Namespace, settings: Settings) -> int:
    """cutover: wait for quiet, final sync, verification of every thread (read back through
    both savers), the cutover window, the evidence report; exit 0 only when proven equal
    and no writer touched the source meanwhile; exit 5 (TimedOut) when --timeout passed
    before the source was quiet.

    Before it waits, while writers may still write, it syncs and compares every thread
    (certified: with the versions of the rows compared); after the final sync the
    verification compares again only what changed since, so the window follows the last
    changes rather than the size of the database.
    """
    def say(text: str) -> None:  # with --json, stdout holds the JSON alone
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    say("Catch-up sync (writers may still write)...")
    say(_sync(args, settings).render())
    say(FIRST_VERIFICATION_MESSAGE)
    target = Target(settings.target_dsn or "", args.schema)
    first = _verify_chain(args, load_chain(args.export), target, certify=True)
    wait_started = time.time()
    last_write, quiet_files = wait_until_quiet(args.source, args.quiet_seconds, say=say,
                                               timeout_seconds=args.timeout)
    quiet_at = time.time()
    say(f"Source quiet since {clock(last_write)}; final sync...")
    synced = _sync(args, settings)
    say(synced.render())
    chain = load_chain(args.export)
    report = _verify_chain(args, chain, target, certify=True, earlier=first)
    if not report.checks[SOURCE_MATCHES_EXPORT].passed \
            and source_files_state(args.source) == quiet_files:
        # The fingerprints missed a change (rowids used again): digest every thread.
        say("The source differs from the synced state; syncing again, every thread "
            "digested...")
        synced = _sync(args, settings, read_every_thread=True)
        chain = load_chain(args.export)
        report = _verify_chain(args, chain, target, certify=True, earlier=first)
    proven_at = time.time()
    untouched = source_files_state(args.source) == quiet_files
    passed = report.passed and untouched
    # The window starts at the last write seen (the writers' stop), not when the wait
    # noticed quiet: the application is down from its last write to "proven equal".
    window = {
        "cutover": "PASSED: the target equals the source as of " + synced.found.snapshot_at
        if passed else "FAILED: equality not proven",
        "writers quiet since": f"{clock(last_write)} (the source's last change; quiet "
                               f"for {args.quiet_seconds:g} s by {clock(quiet_at)})",
        "waited for quiet": f"{quiet_at - wait_started:.1f} s (from {clock(wait_started)}, "
                            "after the first verification)",
        "proven equal at": clock(proven_at) if passed else "-",
        "cutover window": f"{proven_at - last_write:.1f} s from the last write seen to "
                          f"proven equal (quiet {quiet_at - last_write:.1f} s + final sync "
                          f"{synced.seconds:.1f} s + verification {report.seconds:.1f} s)",
        "source untouched during the cutover": "yes" if untouched else
        "NO: a writer changed the source; stop every writer and run cutover again",
    }
    timings = {"last_write_at": clock(last_write), "wait_started_at": clock(wait_started),
               "quiet_at": clock(quiet_at), "proven_at": clock(proven_at),
               "wait_seconds": round(quiet_at - wait_started, 3),
               "window_seconds": round(proven_at - last_write, 3),
               "final_sync_seconds": round(synced.seconds, 3),
               "verification_seconds": round(report.seconds, 3)}
    evidence = write_evidence(evidence_path(args, chain.export.path),
                              chain_evidence(report, chain, target, synced.deletions_kept,
                                              window))
    summary = {"command": "cutover", "ok": passed, "target": target.display,
               "sync": sync_json(synced), **verification_json(report),
               "window": window, "timings": timings, "evidence": str(evidence)}
    text = render_verification(report) + "\n\n" + "\n".join(
        f"{label}: {value}" for label, value in window.items())
    emit(args, summary, text)
    print_evidence_path(args, evidence)
    return EXIT_OK if passed else EXIT_MISMATCH


def _verify_chain(args: argparse.Namespace, chain: ExportChain, target: Target, *,
                  certify: bool = False,
                  earlier: VerificationReport | None = None) -> VerificationReport:
    """The cutover's verification: every live thread, read back through both savers
    (``certify``, ``earlier``: see verify_migration)."""
    with progress("verify", chain.checkpoints) as advance:
        return verify_migration(chain.export, target, source_path=args.source,
                                cipher=cipher_of(args), readback_threads=None,
                                progress=advance,
                                workers=workers_for(chain.export, args.workers),
                                chain=chain, certify=certify, earlier=earlier)


def clock(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
