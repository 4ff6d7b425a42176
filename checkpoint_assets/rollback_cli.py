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

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.export.reader import read_manifest, verify_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.rollback.evidence import render_rollback_evidence
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.postgres_source import write_postgres_export
from checkpoint_assets.engine.rollback.sqlite_target import restore_export
from checkpoint_assets.engine.rollback.verify_rollback import verify_rollback
from checkpoint_assets.engine.rollback.way_back import (
    ROLLBACK_EXPORT_SUFFIX,
    RollbackNotVerified,
    default_rollback_export,
    rollback,
)
from checkpoint_assets.engine.verify.check_table import SQLITE_THREADS_NOT_IN_POSTGRES
from checkpoint_assets.engine.verify.evidence import check_status, default_evidence_path
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    TARGET_DSN_ENV,
    TARGET_SCHEMA_ENV,
    Settings,
)


def add_rollback_commands(sub: Any, settings: Settings) -> None:
    """Add rollback, export-postgres, restore and verify-rollback to the parser."""

    def add_source(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source-dsn", default=None,
                       help="PostgreSQL DSN holding PostgresSaver's tables (default: "
                            f"${TARGET_DSN_ENV}, the migration's target)")
        p.add_argument("--schema", default=settings.target_schema,
                       help=f"schema of PostgresSaver's tables (env {TARGET_SCHEMA_ENV})")
        p.add_argument("--aes-key-env", default=AES_KEY_ENV,
                       help="environment variable holding the EncryptedSerializer AES key "
                            f"(default {AES_KEY_ENV})")

    def add_threads(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", metavar="IDS|@FILE",
                       help="only these threads: comma-separated ids, or @FILE with one id "
                            "a line (e.g. copy one conversation down to debug it)")

    def add_to(p: argparse.ArgumentParser) -> None:
        p.add_argument("--to", type=Path, required=True, metavar="FILE.sqlite",
                       help="SqliteSaver file: created (under a temporary name, renamed when "
                            "complete) or, if it exists, added to (rows already there with "
                            "the same content are kept; other content: conflict)")

    def add_originals(p: argparse.ArgumentParser) -> None:
        p.add_argument("--original-export", type=Path, metavar="FILE",
                       help="the forward migration's export (its sync generations beside "
                            "it): checkpoints unchanged since come back in their original "
                            "SQLite bytes")

    def add_remove(p: argparse.ArgumentParser) -> None:
        p.add_argument("--remove-deleted-threads", action="store_true",
                       help="into an existing file: delete the threads it holds that "
                            "PostgreSQL no longer has (within --threads), in the transaction "
                            "of the restore's last batch; without it they are kept and "
                            "reported")

    def add_export(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--export", type=Path, required=required,
                       help="export file" + ("" if required else
                                             f" (default: <--to>{ROLLBACK_EXPORT_SUFFIX})"))

    def add_verification(p: argparse.ArgumentParser) -> None:
        p.add_argument("--readback-all", action="store_true",
                       help="read back every thread through both official savers "
                            f"(default: a sample of {DEFAULT_READBACK_SAMPLE})")
        p.add_argument("--evidence", type=Path, metavar="FILE.md",
                       help="evidence report (default: <export>.evidence.md)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument("--report", type=Path, help="also write the summary as JSON here")

    p = sub.add_parser("rollback", help="PostgreSQL -> SQLite: export, restore and verify "
                                        "(exit 0 only when every check passed)")
    add_source(p)
    add_to(p)
    add_threads(p)
    add_export(p, required=False)
    add_originals(p)
    add_remove(p)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    add_verification(p)

    p = sub.add_parser("export-postgres", help="write an export file from PostgresSaver's "
                                               "tables (one consistent snapshot)")
    add_source(p)
    add_threads(p)
    add_export(p, required=True)
    add_originals(p)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--report", type=Path, help="also write the summary as JSON here")

    p = sub.add_parser("restore", help="load an export file into a SqliteSaver file")
    add_export(p, required=True)
    add_to(p)
    add_remove(p)
    p.add_argument("--aes-key-env", default=AES_KEY_ENV)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--report", type=Path, help="also write the summary as JSON here")

    p = sub.add_parser("verify-rollback", help="compare a restored SQLite file with the "
                                               "export and with PostgreSQL")
    add_source(p)
    add_export(p, required=True)
    add_to(p)
    add_verification(p)


def source_dsn(args: argparse.Namespace, settings: Settings) -> str:
    """--source-dsn, else the migration's target DSN; MigrationError when neither is set."""
    dsn = getattr(args, "source_dsn", None) or settings.target_dsn
    if not dsn:
        raise MigrationError("No PostgreSQL source given.",
                             f"Pass --source-dsn or set ${TARGET_DSN_ENV}.")
    return dsn


def cmd_rollback(args: argparse.Namespace, settings: Settings, cipher: Any,
                 emit: Any, write_evidence: Any) -> int:
    """rollback: export + restore + verify; a new file is published only when verified."""
    dsn = source_dsn(args, settings)
    export = args.export or default_rollback_export(args.to)
    source = Target(dsn, args.schema, role="source")
    readback = None if args.readback_all else DEFAULT_READBACK_SAMPLE
    try:
        result = rollback(dsn, args.to, export, schema=args.schema,
                          threads=parse_thread_selection(args.threads), cipher=cipher,
                          readback_threads=readback, batch_size=args.batch_size,
                          original_export=args.original_export,
                          remove_deleted_threads=args.remove_deleted_threads)
    except RollbackNotVerified as exc:
        if exc.report is None:
            raise
        status = _finish(args, exc.report, read_manifest(export), source, str(args.to), None,
                         emit, write_evidence, export)
        print(f"FAILED: {exc}", file=sys.stderr)
        return status
    return _finish(args, result.report, result.manifest, source, str(args.to),
                   result.restore.totals(), emit, write_evidence, export,
                   result.original_bytes)


def cmd_export_postgres(args: argparse.Namespace, settings: Settings, cipher: Any,
                        emit: Any, write_evidence: Any) -> int:
    """export-postgres: PostgresSaver's tables -> export file."""
    dsn = source_dsn(args, settings)
    originals = OriginalRows(args.original_export) if args.original_export else None
    manifest = write_postgres_export(dsn, args.export, schema=args.schema,
                                     threads=parse_thread_selection(args.threads), cipher=cipher,
                                     batch_size=args.batch_size, originals=originals)
    counts = dict(originals.counts) if originals is not None else None
    emit(args, {"command": "export-postgres", "ok": True, "export": str(manifest.path),
                "checkpoints": manifest.checkpoints, "writes": manifest.writes,
                "threads": manifest.threads, "batches": len(manifest.batches),
                "content_sha256": manifest.content_sha256, "original_bytes": counts},
         f"Exported {manifest.checkpoints} checkpoints, {manifest.writes} writes, "
         f"{manifest.threads} threads from {Target(dsn, args.schema).display} to "
         f"{manifest.path}" + (f"\nCheckpoint bytes: {_reasons(counts)}" if counts else ""))
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings, cipher: Any,
                emit: Any, write_evidence: Any) -> int:
    """restore: export file -> SqliteSaver file (no verification against PostgreSQL)."""
    manifest = verify_export(args.export)
    summary = restore_export(manifest, args.to, cipher=cipher,
                             remove_deleted_threads=args.remove_deleted_threads)
    totals = summary.totals()
    emit(args, {"command": "restore", "ok": True, "to": str(args.to),
                "new_file": summary.new_file, **totals},
         f"Restored into {args.to}: added {totals['inserted']['checkpoints']} checkpoints, "
         f"{totals['inserted']['writes']} writes; already present "
         f"{totals['already_present']['checkpoints']} checkpoints, "
         f"{totals['already_present']['writes']} writes"
         + "".join(f"\n{line}" for line in _deleted_threads_lines(
             summary.removed_threads, summary.kept_threads)))
    return 0


def cmd_verify_rollback(args: argparse.Namespace, settings: Settings, cipher: Any,
                        emit: Any, write_evidence: Any) -> int:
    """verify-rollback: the rollback checks on a restored file."""
    dsn = source_dsn(args, settings)
    manifest = verify_export(args.export)
    source = Target(dsn, args.schema, role="source")
    report = verify_rollback(manifest, source, args.to, cipher=cipher,
                             readback_threads=None if args.readback_all
                             else DEFAULT_READBACK_SAMPLE)
    return _finish(args, report, manifest, source, str(args.to), None, emit, write_evidence,
                   args.export)


def _deleted_threads_lines(removed: list[str], kept: list[str]) -> list[str]:
    """What the output says about the file's threads PostgreSQL no longer has."""
    lines = []
    if removed:
        lines.append(f"Removed {len(removed)} thread(s) PostgreSQL no longer has from the "
                     f"SQLite file: {', '.join(removed[:20])}")
    if kept:
        lines.append(f"WARNING: the SQLite file keeps {len(kept)} thread(s) PostgreSQL no "
                     f"longer has (deleted there?): {', '.join(kept[:20])}. Roll back (or "
                     "restore) again with --remove-deleted-threads to remove them.")
    return lines


def _reasons(counts: dict[str, int]) -> str:
    """Per-reason checkpoint counts, most first: "412 original bytes ..., 3 ..."."""
    return "; ".join(f"{n} {reason}" for reason, n in
                     sorted(counts.items(), key=lambda item: -item[1]))


def _finish(args: argparse.Namespace, report: VerificationReport, manifest: Any,
            source: Target, sqlite_path: str, totals: Any, emit: Any, write_evidence: Any,
            export: Path, original_bytes: dict[str, int] | None = None) -> int:
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
        lines.append(f"Checkpoint bytes: {_reasons(original_bytes)}")
    removed = list((totals or {}).get("removed_threads") or [])
    kept_check = report.checks.get(SQLITE_THREADS_NOT_IN_POSTGRES)
    kept = [m["thread_id"] for m in kept_check.mismatches] if kept_check else []
    lines += _deleted_threads_lines(removed, kept)
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


ROLLBACK_COMMANDS = {"rollback": cmd_rollback, "export-postgres": cmd_export_postgres,
                     "restore": cmd_restore, "verify-rollback": cmd_verify_rollback}
