"""The way back on the command line: ``rollback`` and its steps alone.

``rollback`` (export + restore + verify, exit 0 only when every check passed; run as the
``checkpoint_rollback`` assets, so it is in the Dagster instance's audit trail),
``export-postgres``, ``restore`` and ``verify-rollback``. The source DSN defaults to the
migration's target ($CHECKPOINT_ASSETS_TARGET_DSN): after a cutover that is the database
the application writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checkpoint_assets.cli.arguments import (
    aes_key_of,
    source_dsn,
)
from checkpoint_assets.cli.fleet import fleet_of
from checkpoint_assets.cli.output import (
    deleted_threads_lines,
    emit,
    reasons,
)
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import contract, way_back
from checkpoint_assets.engine.operations import fleet as fleet_ops
from checkpoint_assets.settings import (
    Settings,
)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """rollback: export + restore + verify; a new file is published only when verified."""
    from checkpoint_assets.assets.rollback import READBACK_ALL_HINT, REMOVE_HINT
    from checkpoint_assets.live_runs import rollback_in_process

    if args.fleet_source is not None:  # one source of a fleet: its threads, its own ids
        if args.threads:
            raise MigrationError("--threads and --fleet-source were both given.",
                                 "A fleet's source is rolled back whole; pass one of them.")
        args.fleet = args.fleet or (Path(settings.fleet) if settings.fleet else None)
        fleet = fleet_of(args, plan=False)
        args.threads = f"@{fleet_ops.source_thread_list(fleet, args.fleet_source)}"
        args.original_export = args.original_export or fleet.member(args.fleet_source).export
    request = way_back.RollbackRequest(
        source_dsn=source_dsn(args, settings), to=args.to, export=args.export,
        schema=args.schema, threads=args.threads, aes_key=aes_key_of(args),
        readback_threads=None if args.readback_all else contract.CONTRACT.readback_threads,
        batch_size=args.batch_size, original_export=args.original_export,
        remove_deleted_threads=args.remove_deleted_threads, evidence=args.evidence)
    # Run as the checkpoint_rollback assets: its runs and checks are in the audit trail.
    # Its notes name the command line's flags, not the Dagster settings.
    flags = {READBACK_ALL_HINT: "--readback-all", REMOVE_HINT: "--remove-deleted-threads"}
    done = rollback_in_process(settings, request, aes_key_env=args.aes_key_env, flags=flags)
    return print_rollback(args, done)


def print_rollback(args: argparse.Namespace, done: way_back.RollbackReport) -> int:
    """Print a rollback's verification (and why a new file was not published); the exit
    status."""
    status = _finish(args, done)
    if done.not_verified is not None:
        print(f"FAILED: {done.not_verified}", file=sys.stderr)
    return status


def cmd_export_postgres(args: argparse.Namespace, settings: Settings) -> int:
    """export-postgres: PostgresSaver's tables -> export file."""
    done = way_back.export_postgres(way_back.PostgresExportRequest(
        source_dsn=source_dsn(args, settings), export=args.export, schema=args.schema,
        threads=args.threads, aes_key=aes_key_of(args), batch_size=args.batch_size,
        original_export=args.original_export))
    manifest, counts = done.manifest, done.original_bytes
    emit(args, {"command": "export-postgres", "ok": True, "export": str(manifest.path),
                "checkpoints": manifest.checkpoints, "writes": manifest.writes,
                "threads": manifest.threads, "batches": len(manifest.batches),
                "content_sha256": manifest.content_sha256, "original_bytes": counts},
         f"Exported {manifest.checkpoints} checkpoints, {manifest.writes} writes, "
         f"{manifest.threads} threads from {done.source_display} to "
         f"{manifest.path}" + (f"\nCheckpoint bytes: {reasons(counts)}" if counts else ""))
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    """restore: export file -> SqliteSaver file (no verification against PostgreSQL)."""
    done = way_back.restore(way_back.RestoreRequest(
        export=args.export, to=args.to, aes_key=aes_key_of(args),
        remove_deleted_threads=args.remove_deleted_threads))
    summary = done.summary
    totals = done.totals()
    emit(args, {"command": "restore", "ok": True, "to": str(args.to),
                "new_file": summary.new_file, **totals},
         f"Restored into {args.to}: added {totals['inserted']['checkpoints']} checkpoints, "
         f"{totals['inserted']['writes']} writes; already present "
         f"{totals['already_present']['checkpoints']} checkpoints, "
         f"{totals['already_present']['writes']} writes"
         + "".join(f"\n{line}" for line in deleted_threads_lines(
             summary.removed_threads, summary.kept_threads)))
    return 0


def cmd_verify_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """verify-rollback: the rollback checks on a restored file."""
    done = way_back.verify_rollback(way_back.VerifyRollbackRequest(
        source_dsn=source_dsn(args, settings), export=args.export, to=args.to,
        schema=args.schema, aes_key=aes_key_of(args),
        readback_threads=None if args.readback_all else contract.CONTRACT.readback_threads,
        evidence=args.evidence))
    return _finish(args, done)


def _finish(args: argparse.Namespace, done: way_back.RollbackReport) -> int:
    """Print the rollback's verification (its evidence report is written); the exit
    status."""
    report, totals, original_bytes = done.report, done.totals, done.original_bytes
    lines = ["Rollback verification " + ("PASSED" if report.passed else "FAILED")]
    for name, check in report.checks.items():
        lines.append(f"  [{contract.check_status(check)}] {name}: {check.description}")
        lines += [f"         - {m}" for m in check.mismatches[:10]]
        lines += [f"         note: {n}" for n in check.notes]
    if totals is not None:
        lines.append(f"Restore: {totals}")
    if original_bytes:
        lines.append(f"Checkpoint bytes: {reasons(original_bytes)}")
    removed = list((totals or {}).get("removed_threads") or [])
    kept = done.threads_not_in_postgres
    lines += deleted_threads_lines(removed, kept)
    lines.append(f"\nEvidence report (Markdown): {done.evidence}")
    emit(args, {"command": args.command, "ok": report.passed, "source": done.source_display,
                "to": str(done.to), "export": str(done.export), "restore": totals,
                "original_bytes": original_bytes, "removed_threads": removed,
                "threads_not_in_postgres": kept,
                "checks": {n: {"passed": c.passed, "mismatch_count": c.mismatch_count,
                               "mismatches": c.mismatches, "notes": c.notes}
                           for n, c in report.checks.items()},
                "counts": report.counts, "evidence": str(done.evidence)}, "\n".join(lines))
    return 0 if report.passed else 1
