"""The way back on the command line: ``rollback`` and its steps alone.

``rollback`` (export + restore + verify, exit 0 only when every check passed),
``export-postgres``, ``restore`` and ``verify-rollback``. The source DSN defaults to the
migration's target ($CHECKPOINT_ASSETS_TARGET_DSN): after a cutover that is the database
the application writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from checkpoint_assets.cli.arguments import (
    cipher_of,
    source_dsn,
)
from checkpoint_assets.cli.output import (
    deleted_threads_lines,
    emit,
    reasons,
    write_evidence,
)
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.export.reader import read_manifest, verify_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.rollback.evidence import render_rollback_evidence
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.postgres_source import write_postgres_export
from checkpoint_assets.engine.rollback.sqlite_target import restore_export
from checkpoint_assets.engine.rollback.verify_rollback import verify_rollback
from checkpoint_assets.engine.rollback.way_back import (
    RollbackNotVerified,
    default_rollback_export,
    rollback,
)
from checkpoint_assets.engine.verify.check_table import (
    SQLITE_THREADS_NOT_IN_POSTGRES,
)
from checkpoint_assets.engine.verify.evidence import (
    check_status,
    default_evidence_path,
)
from checkpoint_assets.engine.verify.migration import (
    DEFAULT_READBACK_SAMPLE,
)
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.settings import (
    Settings,
)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """rollback: export + restore + verify; a new file is published only when verified."""
    dsn = source_dsn(args, settings)
    export = args.export or default_rollback_export(args.to)
    source = Target(dsn, args.schema, role="source")
    readback = None if args.readback_all else DEFAULT_READBACK_SAMPLE
    try:
        result = rollback(dsn, args.to, export, schema=args.schema,
                          threads=parse_thread_selection(args.threads), cipher=cipher_of(args),
                          readback_threads=readback, batch_size=args.batch_size,
                          original_export=args.original_export,
                          remove_deleted_threads=args.remove_deleted_threads)
    except RollbackNotVerified as exc:
        if exc.report is None:
            raise
        status = _finish(args, exc.report, read_manifest(export), source, str(args.to), None,
                         export)
        print(f"FAILED: {exc}", file=sys.stderr)
        return status
    return _finish(args, result.report, result.manifest, source, str(args.to),
                   result.restore.totals(), export, result.original_bytes)


def cmd_export_postgres(args: argparse.Namespace, settings: Settings) -> int:
    """export-postgres: PostgresSaver's tables -> export file."""
    dsn = source_dsn(args, settings)
    originals = OriginalRows(args.original_export) if args.original_export else None
    manifest = write_postgres_export(dsn, args.export, schema=args.schema,
                                     threads=parse_thread_selection(args.threads),
                                     cipher=cipher_of(args), batch_size=args.batch_size,
                                     originals=originals)
    counts = dict(originals.counts) if originals is not None else None
    emit(args, {"command": "export-postgres", "ok": True, "export": str(manifest.path),
                "checkpoints": manifest.checkpoints, "writes": manifest.writes,
                "threads": manifest.threads, "batches": len(manifest.batches),
                "content_sha256": manifest.content_sha256, "original_bytes": counts},
         f"Exported {manifest.checkpoints} checkpoints, {manifest.writes} writes, "
         f"{manifest.threads} threads from {Target(dsn, args.schema).display} to "
         f"{manifest.path}" + (f"\nCheckpoint bytes: {reasons(counts)}" if counts else ""))
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    """restore: export file -> SqliteSaver file (no verification against PostgreSQL)."""
    manifest = verify_export(args.export)
    summary = restore_export(manifest, args.to, cipher=cipher_of(args),
                             remove_deleted_threads=args.remove_deleted_threads)
    totals = summary.totals()
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
    dsn = source_dsn(args, settings)
    manifest = verify_export(args.export)
    source = Target(dsn, args.schema, role="source")
    report = verify_rollback(manifest, source, args.to, cipher=cipher_of(args),
                             readback_threads=None if args.readback_all
                             else DEFAULT_READBACK_SAMPLE)
    return _finish(args, report, manifest, source, str(args.to), None, args.export)


def _finish(args: argparse.Namespace, report: VerificationReport, manifest: Any,
            source: Target, sqlite_path: str, totals: Any, export: Path,
            original_bytes: dict[str, int] | None = None) -> int:
    """Write the rollback's evidence report, print its verification; the exit status."""
    evidence = write_evidence(
        args.evidence or default_evidence_path(export),
        render_rollback_evidence(report, manifest=manifest, source_display=source.display,
                                 sqlite_path=sqlite_path, restore_totals=totals))
    lines = ["Rollback verification " + ("PASSED" if report.passed else "FAILED")]
    for name, check in report.checks.items():
        lines.append(f"  [{check_status(check)}] {name}: {check.description}")
        lines += [f"         - {m}" for m in check.mismatches[:10]]
        lines += [f"         note: {n}" for n in check.notes]
    if totals is not None:
        lines.append(f"Restore: {totals}")
    if original_bytes:
        lines.append(f"Checkpoint bytes: {reasons(original_bytes)}")
    removed = list((totals or {}).get("removed_threads") or [])
    kept_check = report.checks.get(SQLITE_THREADS_NOT_IN_POSTGRES)
    kept = [m["thread_id"] for m in kept_check.mismatches] if kept_check else []
    lines += deleted_threads_lines(removed, kept)
    lines.append(f"\nEvidence report (Markdown): {evidence}")
    emit(args, {"command": args.command, "ok": report.passed, "source": source.display,
                "to": sqlite_path, "export": str(export), "restore": totals,
                "original_bytes": original_bytes, "removed_threads": removed,
                "threads_not_in_postgres": kept,
                "checks": {n: {"passed": c.passed, "mismatch_count": c.mismatch_count,
                               "mismatches": c.mismatches, "notes": c.notes}
                           for n, c in report.checks.items()},
                "counts": report.counts, "evidence": str(evidence)}, "\n".join(lines))
    return 0 if report.passed else 1
