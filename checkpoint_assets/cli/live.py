"""A source that is still written: ``sync`` and ``cutover``.

Both run as Dagster asset runs against the project's instance (runner.py), so every sync
generation and every cutover is in the audit trail; the assets call the engine's
operations (engine/operations/). These handlers parse, call and print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from checkpoint_assets.cli.arguments import aes_key_of
from checkpoint_assets.cli.exit_status import (
    DEFAULT_ERROR_REPORT,
    ERROR_REPORTS,
    EXIT_BAD_INPUT,
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.fleet import fleet_of
from checkpoint_assets.cli.output import (
    emit,
    print_evidence_path,
    render_verification,
    sync_json,
    verification_json,
)
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import live
from checkpoint_assets.engine.operations.contract import without_secrets
from checkpoint_assets.progress import progress
from checkpoint_assets.settings import Settings


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """sync: the target follows the source, moving only what changed since the export
    (or the last sync); exit 4 on a conflict (nothing of that batch written), 3 when
    threads were refused (the others moved; every later sync tries those again). A fleet:
    each source in turn (fleet.py)."""
    if getattr(args, "sources", None) is not None:
        return _each_source(args, settings, "sync", lambda: _sync_one(args, settings))
    status, summary, text = _sync_one(args, settings)
    emit(args, summary, text)
    return status


def _sync_one(args: argparse.Namespace, settings: Settings) -> tuple[int, dict, str]:
    """One source's sync as a Dagster run: (exit status, JSON summary, text)."""
    from checkpoint_assets.live_runs import sync_in_process

    report = sync_in_process(settings, sync_request(args, settings),
                             aes_key_env=args.aes_key_env)
    return (EXIT_BAD_INPUT if report.found.refused else EXIT_OK, sync_json(report),
            report.render())


def _each_source(args: argparse.Namespace, settings: Settings, command: str,
                 one: Callable[[], tuple[int, dict, str]]) -> int:
    """``one`` (a sync or a cutover) for each source of the fleet in turn, each its own
    Dagster run; a source that fails is reported and the others still run. The exit
    status of the worst."""
    fleet = fleet_of(args, plan=False)
    statuses, summaries, lines = [], [], []
    for member in fleet.members:
        args.source, args.export = str(member.source), str(member.export)
        try:
            status, summary, text = one()
        except MigrationError as exc:
            label, status = ERROR_REPORTS.get(exc.kind, DEFAULT_ERROR_REPORT)
            error = without_secrets(str(exc), settings.target_dsn)
            summary, text = {"ok": False, "error": error}, f"{label}: {error}"
        statuses.append(status)
        summaries.append({"source": member.label, **summary})
        lines.append(f"[{member.label}] {text}")
    failed = sum(status != EXIT_OK for status in statuses)
    lines.append(f"Fleet {command}: {len(statuses) - failed} of {len(statuses)} source(s) "
                 "done" + (f", {failed} FAILED" if failed else ""))
    emit(args, {"command": command, "fleet": str(fleet.path), "ok": not failed,
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
    before the source was quiet (the algorithm: live.cutover). A fleet: each source in
    turn, each with its evidence beside its export (stop every writer first)."""
    if getattr(args, "sources", None) is not None:
        args.evidence = None  # each source's beside its export
        return _each_source(args, settings, "cutover", lambda: _cutover_one(args, settings))
    status, summary, text = _cutover_one(args, settings)
    emit(args, summary, text)
    print_evidence_path(args, Path(summary["evidence"]))
    return status


def _cutover_one(args: argparse.Namespace, settings: Settings) -> tuple[int, dict, str]:
    """One source's cutover as a Dagster run: (exit status, JSON summary, text)."""
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
    return EXIT_OK if done.passed else EXIT_MISMATCH, summary, text
