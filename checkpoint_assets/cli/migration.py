"""The forward migration's steps one at a time: ``export``, ``import``, ``verify``,
``show-export``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from checkpoint_assets.cli.arguments import (
    cipher_of,
    evidence_path,
)
from checkpoint_assets.cli.exit_status import (
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.output import (
    batch_json,
    chain_evidence,
    emit,
    export_text,
    manifest_summary,
    print_evidence_path,
    render_table,
    render_verification,
    verification_json,
    write_evidence,
)
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.core.workers import (
    workers_for,
)
from checkpoint_assets.engine.export.debug_dump import iter_records
from checkpoint_assets.engine.export.reader import require_same_source, verify_export
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import (
    load_chain,
)
from checkpoint_assets.engine.verify.migration import (
    verify_migration,
)
from checkpoint_assets.progress import progress
from checkpoint_assets.settings import (
    READBACK_ALL,
    READBACK_THREADS_ENV,
    Settings,
)

READBACK_ALL_HINT = f"--readback-all (Dagster: {READBACK_THREADS_ENV}={READBACK_ALL})"


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """export: SQLite -> export file."""
    source = open_source(args.source)
    try:
        total = source.counts().checkpoints
    finally:
        source.close()
    with progress("export", total) as advance:
        manifest = write_export(args.source, args.export, batch_size=args.batch_size,
                                progress=advance, selection=parse_thread_selection(args.threads))
    summary = {"command": "export", "ok": True, **manifest_summary(manifest)}
    emit(args, summary, export_text(manifest))
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """import: export file -> PostgreSQL, batch by batch (checked against --source, if
    given, before anything is written)."""
    manifest = verify_export(args.export)
    if manifest.generation:
        raise MigrationError(
            f"{manifest.path} is sync generation {manifest.generation} of an export: it "
            "holds only what changed and is applied under the sync's rules.",
            "Run checkpoint-assets sync (it applies the newest generation again) and import "
            "only the export itself.")
    if args.source:
        require_same_source(manifest, args.source)
    target = Target(settings.target_dsn or "", args.schema)
    with progress("import", manifest.checkpoints) as advance:
        summary = import_export(manifest, target, cipher=cipher_of(args),
                                workers=workers_for(manifest, args.workers),
                                on_batch=lambda r: advance(
                                    r.inserted["checkpoints"] + r.already_present["checkpoints"]))
    report = {"command": "import", "ok": True, "target": target.display,
              **manifest_summary(manifest), "tables": summary.table_rows(),
              "batch_results": [batch_json(b) for b in summary.batches]}
    emit(args, report, render_table(summary.table_rows()))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """verify: PostgreSQL vs export vs SQLite (the export must come from --source); the
    evidence report goes beside the export (or to --evidence)."""
    manifest = verify_export(args.export)
    require_same_source(manifest, args.source)
    chain = load_chain(args.export)  # with its sync generations, if any
    target = Target(settings.target_dsn or "", args.schema)
    with progress("verify", manifest.checkpoints) as advance:
        report = verify_migration(
            manifest, target, source_path=args.source, cipher=cipher_of(args),
            readback_threads=None if args.readback_all else args.readback, progress=advance,
            workers=workers_for(manifest, args.workers), readback_all_hint=READBACK_ALL_HINT,
            chain=chain)
    evidence = write_evidence(
        evidence_path(args, manifest.path),
        chain_evidence(report, chain, target, None))
    summary = {"command": "verify", "ok": report.passed, "target": target.display,
               **manifest_summary(manifest), **verification_json(report),
               "evidence": str(evidence)}
    emit(args, summary, render_verification(report))
    print_evidence_path(args, evidence)
    return EXIT_OK if report.passed else EXIT_MISMATCH


def cmd_show_export(args: argparse.Namespace, settings: Settings) -> int:
    """show-export: every record of an export (or one batch) as one JSON object a line."""
    out = sys.stdout
    try:
        for record in iter_records(args.file, args.batch):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
    except BrokenPipeError:  # `| head` closed the pipe: that is not an error
        # Python flushes stdout again at exit; let that go nowhere instead of failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
