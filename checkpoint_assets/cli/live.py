"""A source that is still written: ``sync`` and ``cutover``.

Both run as Dagster asset runs against the project's instance (runner.py), so every sync
generation and every cutover is in the audit trail; the assets call the engine's
operations (engine/operations/). These handlers parse, call and print.
"""

from __future__ import annotations

import argparse
import sys

from checkpoint_assets.cli.arguments import aes_key_of
from checkpoint_assets.cli.fleet import fleet_of
from checkpoint_assets.cli.exit_status import (
    DEFAULT_ERROR_REPORT,
    ERROR_REPORTS,
    EXIT_BAD_INPUT,
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.output import (
    emit,
    print_evidence_path,
    render_verification,
    sync_json,
    verification_json,
)
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import live
from checkpoint_assets.progress import progress
from checkpoint_assets.settings import Settings


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """sync: the target follows the source, moving only what changed since the export
    (or the last sync); exit 4 on a conflict (nothing of that batch written), 3 when
    threads were refused (the others moved; every later sync tries those again)."""
    from checkpoint_assets.live_runs import sync_in_process

    if getattr(args, "sources", None) is not None:
        return _sync_fleet(args, settings)
    report = sync_in_process(settings, sync_request(args, settings),
                             aes_key_env=args.aes_key_env)
    emit(args, sync_json(report), report.render())
    return EXIT_BAD_INPUT if report.found.refused else EXIT_OK


def _sync_fleet(args: argparse.Namespace, settings: Settings) -> int:
    """sync of a fleet: each source in turn, each its own run (a source that fails is
    reported and the others still sync); the exit status of the worst."""
    from checkpoint_assets.live_runs import sync_in_process

    fleet = fleet_of(args, plan=False)
    statuses, summaries, lines = [], [], []
    for member in fleet.members:
        args.source, args.export = str(member.source), str(member.export)
        try:
            report = sync_in_process(settings, sync_request(args, settings),
                                     aes_key_env=args.aes_key_env)
        except MigrationError as exc:
            label, status = ERROR_REPORTS.get(exc.kind, DEFAULT_ERROR_REPORT)
            statuses.append(status)
            summaries.append({"source": member.label, "ok": False, "error": str(exc)})
            lines.append(f"[{member.label}] {label}: {exc}")
            continue
        statuses.append(EXIT_BAD_INPUT if report.found.refused else EXIT_OK)
        summaries.append({"source": member.label, **sync_json(report)})
        lines.append(f"[{member.label}] {report.render()}")
    failed = sum(status != EXIT_OK for status in statuses)
    lines.append(f"Fleet sync: {len(statuses) - failed} of {len(statuses)} source(s) synced"
                 + (f", {failed} FAILED" if failed else ""))
    emit(args, {"command": "sync", "fleet": str(fleet.path), "ok": not failed,
                "sources": summaries}, "\n".join(lines))
    return max(statuses, default=EXIT_OK)


def sync_request(args: argparse.Namespace, settings: Settings) -> live.SyncRequest:
    """The sync the flags ask for."""
    return live.SyncRequest(
        source=args.source, export=args.export, target_dsn=settings.target_dsn or "",
        schema=args.schema, threads=args.threads, aes_key=aes_key_of(args),
        propagate_deletes=args.propagate_deletes or settings.propagate_deletes,
        allow_mass_deletion=args.allow_mass_deletion,
        strict_versions=args.strict_versions or settings.strict_versions)


def cmd_cutover(args: argparse.Namespace, settings: Settings) -> int:
    """cutover: wait for quiet, final sync, verification of every thread (read back through
    both savers), the cutover window, the evidence report; exit 0 only when proven equal
    and no writer touched the source meanwhile; exit 5 (TimedOut) when --timeout passed
    before the source was quiet (the algorithm: live.cutover)."""
    request = live.CutoverRequest(
        sync=sync_request(args, settings), quiet_seconds=args.quiet_seconds,
        timeout_seconds=args.timeout, workers=args.workers, evidence=args.evidence,
        digest_every_thread=args.digest_every_thread)
    # With --json, stdout holds the JSON alone: what the cutover says goes to stderr.
    from checkpoint_assets.live_runs import cutover_in_process

    done = cutover_in_process(settings, request, say_to=sys.stderr if args.json else sys.stdout,
                              progress=progress, aes_key_env=args.aes_key_env)
    summary = {"command": "cutover", "ok": done.passed, "target": done.target_display,
               "sync": sync_json(done.synced), **verification_json(done.report),
               "window": done.window, "timings": done.timings,
               "evidence": str(done.evidence)}
    text = render_verification(done.report) + "\n\n" + "\n".join(
        f"{label}: {value}" for label, value in done.window.items())
    emit(args, summary, text)
    print_evidence_path(args, done.evidence)
    return EXIT_OK if done.passed else EXIT_MISMATCH

