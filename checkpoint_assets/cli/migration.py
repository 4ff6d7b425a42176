"""The forward migration's steps one at a time: ``export``, ``import``, ``verify``,
``show-export`` (each one operation of engine/operations/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from checkpoint_assets.cli.arguments import aes_key_of
from checkpoint_assets.cli.exit_status import (
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.output import (
    batch_json,
    emit,
    export_text,
    manifest_summary,
    print_evidence_path,
    render_table,
    render_verification,
    verification_json,
)
from checkpoint_assets.engine.operations import migration
from checkpoint_assets.progress import progress
from checkpoint_assets.settings import (
    READBACK_ALL,
    READBACK_THREADS_ENV,
    Settings,
)

READBACK_ALL_HINT = f"--readback-all (Dagster: {READBACK_THREADS_ENV}={READBACK_ALL})"


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """export: SQLite -> export file."""
    done = migration.export(migration.ExportRequest(
        source=args.source, export=args.export, batch_size=args.batch_size,
        threads=args.threads), progress=progress)
    summary = {"command": "export", "ok": True, **manifest_summary(done.manifest)}
    emit(args, summary, export_text(done.manifest))
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """import: export file -> PostgreSQL, batch by batch (checked against --source, if
    given, before anything is written)."""
    done = migration.load(migration.LoadRequest(
        export=args.export, target_dsn=settings.target_dsn or "", schema=args.schema,
        source=args.source, aes_key=aes_key_of(args), workers=args.workers),
        progress=progress)
    report = {"command": "import", "ok": True, "target": done.target_display,
              **manifest_summary(done.manifest), "tables": done.summary.table_rows(),
              "batch_results": [batch_json(b) for b in done.summary.batches]}
    emit(args, report, render_table(done.summary.table_rows()))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """verify: PostgreSQL vs export vs SQLite (the export must come from --source); the
    evidence report goes beside the export (or to --evidence)."""
    done = migration.verify(migration.VerifyRequest(
        source=args.source, export=args.export, target_dsn=settings.target_dsn or "",
        schema=args.schema, aes_key=aes_key_of(args),
        readback_threads=None if args.readback_all else args.readback,
        workers=args.workers, readback_all_hint=READBACK_ALL_HINT, evidence=args.evidence),
        progress=progress)
    summary = {"command": "verify", "ok": done.passed, "target": done.target_display,
               **manifest_summary(done.manifest), **verification_json(done.report),
               "evidence": str(done.evidence)}
    emit(args, summary, render_verification(done.report))
    print_evidence_path(args, done.evidence)
    return EXIT_OK if done.passed else EXIT_MISMATCH


def cmd_show_export(args: argparse.Namespace, settings: Settings) -> int:
    """show-export: every record of an export (or one batch) as one JSON object a line."""
    out = sys.stdout
    try:
        for record in migration.export_records(args.file, args.batch):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
    except BrokenPipeError:  # `| head` closed the pipe: that is not an error
        # Python flushes stdout again at exit; let that go nowhere instead of failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
