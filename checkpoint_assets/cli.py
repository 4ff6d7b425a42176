"""``checkpoint-assets``: the command-line front end.

Exit status: 0 success (for verify/migrate: every check passed); 1 verification ran and
found a mismatch; 2 usage error; 3 bad input or environment (MigrationError);
4 conflict with rows already in the target; 5 cutover's --timeout passed before the
source was quiet; 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from checkpoint_assets import __version__
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import FailureKind, MigrationError
from checkpoint_assets.engine.core.interrupts import EXIT_INTERRUPTED, stop_on_ctrl_c
from checkpoint_assets.engine.core.private_files import (
    write_private_json,
    write_private_text,
)
from checkpoint_assets.engine.core.selection import name_threads, parse_thread_selection
from checkpoint_assets.engine.core.workers import (
    PARALLEL_MIN_BATCHES,
    kill_workers,
    workers_for,
)
from checkpoint_assets.engine.export.debug_dump import iter_records
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import require_same_source, verify_export
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target, scrub
from checkpoint_assets.engine.sync.export_chain import (
    MASS_DELETION_MIN_THREADS,
    MASS_DELETION_SHARE,
    ExportChain,
    load_chain,
)
from checkpoint_assets.engine.sync.sync_target import (
    SyncReport,
    source_files_state,
    sync_target,
    wait_until_quiet,
    with_live_migration_section,
)
from checkpoint_assets.engine.verify.check_table import SOURCE_MATCHES_EXPORT
from checkpoint_assets.engine.verify.evidence import (
    EVIDENCE_SUFFIX,
    default_evidence_path,
    every_mismatch,
    render_evidence,
)
from checkpoint_assets.engine.verify.migration import (
    DEFAULT_READBACK_SAMPLE,
    MissingTablesError,
    verify_migration,
)
from checkpoint_assets.engine.verify.reports import VerificationReport
from checkpoint_assets.progress import progress
from checkpoint_assets.project import default_export_path
from checkpoint_assets.rollback_cli import ROLLBACK_COMMANDS, add_rollback_commands
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    BATCH_SIZE_ENV,
    EMBEDDED_PG_ENV,
    ENV_FILE,
    EXPORT_ENV,
    READBACK_ALL,
    READBACK_THREADS_ENV,
    SOURCE_ENV,
    STRICT_VERSIONS_ENV,
    TARGET_DSN_ENV,
    TARGET_SCHEMA_ENV,
    THREADS_ENV,
    VERIFY_EVERY_BATCH_ENV,
    WORKERS_ENV,
    Settings,
    SettingsError,
    load_env_file,
)

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_CONFLICT = 0, 1, 2, 3, 4
EXIT_TIMED_OUT = 5  # cutover --timeout passed before the source was quiet
# How main() reports an error of each kind: the label before its message, the exit status.
ERROR_REPORTS = {
    FailureKind.INTERRUPTED: ("INTERRUPTED", EXIT_INTERRUPTED),
    FailureKind.CONFLICT: ("CONFLICT", EXIT_CONFLICT),
    FailureKind.TIMED_OUT: ("TIMED OUT", EXIT_TIMED_OUT),
}
DEFAULT_ERROR_REPORT = ("ERROR", EXIT_BAD_INPUT)
# What the engine's texts leave to their caller: where to find more, which flag to pass.
EVIDENCE_UNTIMED_HINT = ("`checkpoint-assets migrate` and the `migration_verification` "
                         "asset include the load time of every batch.")
EVIDENCE_MORE_HINT = ("see the JSON report (`checkpoint-assets verify --report FILE.json` "
                      "lists every one)")
READBACK_ALL_HINT = f"--readback-all (Dagster: {READBACK_THREADS_ENV}={READBACK_ALL})"
ERROR_HINTS = {
    MissingTablesError: "Run checkpoint-assets import (or migrate) first, or point --target "
                        f"and --schema ({TARGET_DSN_ENV}, {TARGET_SCHEMA_ENV}) at the "
                        "database and schema the checkpoints were imported into.",
}
QUICKSTART_ENV_FILE = "quickstart.env"
EMBEDDED_PG_DIR = "postgres"  # the quick start's embedded server, under its workdir
QUICKSTART_BATCH_SIZE = 50  # small batches so the sample shows several partitions
STOPPED = ("Stopped (Ctrl-C) before the command finished. Every batch in the target is whole "
           "(a batch being loaded was rolled back).\n  What to do: run the command again.")
STOPPED_AT_ONCE = ("\nINTERRUPTED: stopped at once (second Ctrl-C). Every batch in the target "
                   "is whole (batches being loaded were rolled back).\n  What to do: "
                   "`checkpoint-assets backfill` (after migrate) or the same `import` again "
                   "loads the rest; runs left in progress are marked failed by the next "
                   "migrate or backfill.\n")


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The argument parser; flags fall back to ``settings`` (default: Settings.from_env(),
    the environment variables named in --help)."""
    settings = settings or Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="checkpoint-assets",
        description="Move LangGraph checkpoints from SqliteSaver (SQLite) to PostgresSaver "
                    "(PostgreSQL) losslessly, and prove it.",
        epilog="Exit status: 0 ok, 1 verification mismatch, 2 usage, 3 bad input or "
               "environment, 4 conflict with existing target rows, 5 cutover --timeout "
               "passed before the source was quiet, 130 stopped by Ctrl-C. "
               f"The target DSN is best given through ${TARGET_DSN_ENV} so the password never "
               "appears in a process list. "
               f"Environment variables may also come from a {ENV_FILE} file in the working "
               "directory (variables already set win).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_source(p: argparse.ArgumentParser, required: bool = True,
                   help_text: str = f"SqliteSaver database file (env {SOURCE_ENV})") -> None:
        p.add_argument("--source", default=settings.source,
                       required=required and settings.source is None, help=help_text)

    def add_export(p: argparse.ArgumentParser) -> None:
        p.add_argument("--export", default=settings.export,
                       help=f"export file path (env {EXPORT_ENV}; default "
                            ".checkpoint_assets/exports/<source file name>.export in "
                            "the project, the same file migrate and the Dagster assets use)")

    def add_target(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=None,
                       help=f"PostgreSQL DSN (default: ${TARGET_DSN_ENV})")
        p.add_argument("--schema", default=settings.target_schema,
                       help="PostgreSQL schema for PostgresSaver's tables (default: the "
                            f"search_path, usually public; env {TARGET_SCHEMA_ENV})")
        p.add_argument("--aes-key-env", default=AES_KEY_ENV,
                       help="environment variable holding the EncryptedSerializer AES key, "
                            f"for encrypted sources (default {AES_KEY_ENV})")

    def add_workers(p: argparse.ArgumentParser, done: str) -> None:
        p.add_argument("--workers", type=int, default=settings.workers,
                       help=f"batches {done} at once, each in its own process (env "
                            f"{WORKERS_ENV}; default: 2 on a multi-core machine for exports "
                            f"of {PARALLEL_MIN_BATCHES} or more batches, else 1)")

    def add_report(p: argparse.ArgumentParser) -> None:
        p.add_argument("--report", type=Path, help="also write the summary as JSON to this file")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")

    def add_evidence(p: argparse.ArgumentParser) -> None:
        p.add_argument("--evidence", type=Path, metavar="FILE.md",
                       help="write the evidence report (Markdown, mode 0600: counts per "
                            "table, every check with what it proves and cannot, per-batch "
                            "load times, every mismatch and changed metadata value by key) "
                            f"to this file (default: <export>{EVIDENCE_SUFFIX}, beside "
                            "the export file)")

    def add_mass_deletion(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-mass-deletion", action="store_true",
                       help="follow a source that lost every thread, or more than "
                            f"{MASS_DELETION_SHARE:.0%}% of the threads and at least "
                            f"{MASS_DELETION_MIN_THREADS}, since the last sync (refused "
                            "without it: another database at the path looks like that)")

    def add_threads(p: argparse.Namespace, what: str) -> None:
        p.add_argument("--threads", metavar="IDS|@FILE",
                       help=f"{what} these threads only: thread ids separated by commas, or "
                            "@FILE with one thread id a line; the verification and its "
                            "evidence then speak of those threads only, and say so")

    def add_strict_versions(p: argparse.ArgumentParser) -> None:
        p.add_argument("--strict-versions", action="store_true",
                       help="refuse a thread whose channel version holds two values that "
                            "differ in content, instead of migrating it with the version's "
                            "first value as PostgresSaver keeps it (the other threads still "
                            f"move; env {STRICT_VERSIONS_ENV}=1)")

    p = sub.add_parser("export", help="write the export file from the SQLite source")
    add_source(p)
    add_export(p)
    p.add_argument("--batch-size", type=int, default=settings.batch_size,
                   help=f"checkpoints per batch (env {BATCH_SIZE_ENV}; default 1000; whole "
                        "threads per batch)")
    add_threads(p, "export")
    add_report(p)

    p = sub.add_parser("import", help="load an export file into PostgreSQL")
    add_export(p)
    add_source(p, required=False,
               help_text="optional: the SqliteSaver database file the export must have "
                         "been taken from; the import stops if the export came from "
                         f"another file (env {SOURCE_ENV})")
    add_target(p)
    add_workers(p, "loaded")
    add_report(p)

    p = sub.add_parser("verify", help="compare PostgreSQL with the export and the source")
    add_source(p)
    add_export(p)
    add_target(p)
    p.add_argument("--readback", type=int, default=DEFAULT_READBACK_SAMPLE,
                   help="threads to read back through the official savers (default "
                        f"{DEFAULT_READBACK_SAMPLE})")
    p.add_argument("--readback-all", action="store_true",
                   help="read back every thread through the official savers")
    add_workers(p, "compared")
    add_report(p)
    add_evidence(p)

    for name, help_text in (
            ("migrate", "export, import and verify, as Dagster asset runs"),
            ("backfill", "load only the FAILED and missing batch partitions of the current "
                         "export (and any loaded without a passed check), then verify (the "
                         "UI's 'backfill failed and missing')")):
        p = sub.add_parser(name, help=help_text)
        add_source(p)
        add_export(p)
        add_target(p)
        p.add_argument("--batch-size", type=int, default=settings.batch_size)
        p.add_argument("--readback-all", action="store_true",
                       help="read back every thread through the official savers")
        p.add_argument("--verify-every-batch", action="store_true",
                       help="compare every batch again in the verification, also those "
                            "whose batch check certified rows that are still the same "
                            f"(env {VERIFY_EVERY_BATCH_ENV}=1)")
        add_strict_versions(p)
        add_threads(p, f"migrate (env {THREADS_ENV})")
        add_report(p)
        add_evidence(p)

    p = sub.add_parser("sync", help="bring the target to the source's current state, moving "
                                    "only what changed since the export or the last sync "
                                    "(the application may keep writing to SQLite)")
    add_source(p)
    add_export(p)
    add_target(p)
    p.add_argument("--propagate-deletes", action="store_true",
                   help="delete from the target the threads deleted in the source (only "
                        "where the target holds exactly the rows this tool loaded)")
    add_mass_deletion(p)
    add_strict_versions(p)
    add_threads(p, "sync")
    add_report(p)

    p = sub.add_parser("cutover", help="wait until no writer touched the source for "
                                       "--quiet-seconds, run the final sync and the full "
                                       "verification (every thread read back), print the "
                                       "cutover window and write the evidence report")
    add_source(p)
    add_export(p)
    add_target(p)
    p.add_argument("--quiet-seconds", type=seconds, default=10.0, metavar="SECONDS",
                   help="how long the source's file and -wal must stay unchanged before "
                        "the final sync starts (default 10; 0: do not wait, for writers "
                        "known to be stopped)")
    p.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                   help="give up when the source is not quiet within this long of starting "
                        "to wait: exit 5, before the final sync (default: wait as long as "
                        "writers write)")
    p.add_argument("--propagate-deletes", action="store_true",
                   help="as for sync: delete threads deleted in the source from the target")
    add_mass_deletion(p)
    add_strict_versions(p)
    add_threads(p, "cut over")
    add_workers(p, "compared")
    add_report(p)
    add_evidence(p)

    p = sub.add_parser("checks", help="print the latest result of every asset check")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("quickstart",
                       help="write a sample database, start an embedded PostgreSQL and migrate")
    p.add_argument("--workdir", type=Path, default=Path(".checkpoint_assets"))

    p = sub.add_parser("ui", help="start the Dagster UI (dagster dev) for this project")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workdir", type=Path, default=Path(".checkpoint_assets"),
                   help="where the quick start keeps its settings (quickstart.env)")

    p = sub.add_parser("stop-postgres",
                       help="stop the embedded PostgreSQL of the quick start (and of ui)")
    p.add_argument("--workdir", type=Path, default=Path(".checkpoint_assets"),
                   help="where the quick start keeps its server (postgres/)")

    p = sub.add_parser("show-export",
                       help="print an export file as JSON lines for people (blobs base64), "
                            "after checking its digests")
    p.add_argument("file", type=Path, help="the export file")
    p.add_argument("--batch", metavar="KEY",
                   help="print only this batch (e.g. batch-00001), checking its own digest")
    add_rollback_commands(sub, settings)
    return parser


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds, 0 or more (NaN would wait for ever, a
    negative value would skip the wait)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite number of seconds, 0 or more")
    return value


def _default_export(args: argparse.Namespace) -> Path:
    """The export path migrate and the assets use for ``--source`` (needs a source)."""
    if not getattr(args, "source", None):
        raise MigrationError("No export file given.",
                             "Pass --export FILE (or --source DB for its default export path).")
    return default_export_path(args.source)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    load_env_file()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # a usage error: the command did not start
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(settings).parse_args(argv)
    dsn = ""
    try:
        if args.command in ("export", "import", "verify", "sync", "cutover"):
            args.export = args.export or _default_export(args)
        if hasattr(args, "target"):
            dsn = args.target or settings.target_dsn or ""
            if not dsn:
                raise MigrationError("No target given.",
                                     f"Pass --target or set ${TARGET_DSN_ENV}.")
        if args.command in ROLLBACK_COMMANDS:
            dsn = getattr(args, "source_dsn", None) or settings.target_dsn or ""
            with stop_on_ctrl_c(kill_workers, STOPPED_AT_ONCE):
                return ROLLBACK_COMMANDS[args.command](args, settings, _cipher(args), _emit,
                                                       write_evidence)
        with stop_on_ctrl_c(kill_workers, STOPPED_AT_ONCE):
            return COMMANDS[args.command](args, replace(settings, target_dsn=dsn or None))
    except KeyboardInterrupt:
        print(f"INTERRUPTED: {STOPPED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MigrationError as exc:
        label, status = ERROR_REPORTS.get(exc.kind, DEFAULT_ERROR_REPORT)
        hint = ERROR_HINTS.get(type(exc))  # the CLI's own hint, where the engine's is general
        text = f"{exc.problem}\n  What to do: {hint}" if hint else str(exc)
        print(f"{label}: {scrub(text, dsn)}", file=sys.stderr)
        return status


def _cipher(args: argparse.Namespace) -> Cipher | None:
    # --aes-key-env names the variable: read here, not in Settings (its name is the user's).
    key = os.environ.get(getattr(args, "aes_key_env", AES_KEY_ENV) or AES_KEY_ENV)
    return Cipher(key.encode()) if key else None


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
    _emit(args, summary, _export_text(manifest))
    return EXIT_OK


def manifest_summary(manifest: ExportManifest) -> dict[str, Any]:
    """The export's counts and digests, for reports."""
    return {"export": str(manifest.path), "checkpoints": manifest.checkpoints,
            "writes": manifest.writes, "threads": manifest.threads,
            "batches": len(manifest.batches), "size_bytes": manifest.size_bytes,
            "content_sha256": manifest.content_sha256, "file_sha256": manifest.file_sha256,
            "types": manifest.types}


def _export_text(manifest: ExportManifest) -> str:
    return (f"Exported {manifest.checkpoints} checkpoints, {manifest.writes} writes, "
            f"{manifest.threads} threads in {len(manifest.batches)} batches to "
            f"{manifest.path} ({manifest.size_bytes:,} bytes)\n"
            f"content sha256 {manifest.content_sha256}")


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
        summary = import_export(manifest, target, cipher=_cipher(args),
                                workers=workers_for(manifest, args.workers),
                                on_batch=lambda r: advance(
                                    r.inserted["checkpoints"] + r.already_present["checkpoints"]))
    report = {"command": "import", "ok": True, "target": target.display,
              **manifest_summary(manifest), "tables": summary.table_rows(),
              "batch_results": [_batch_json(b) for b in summary.batches]}
    _emit(args, report, render_table(summary.table_rows()))
    return EXIT_OK


def _batch_json(result: Any) -> dict[str, Any]:
    data = asdict(result)
    data["metadata_changes"] = [
        {"key": list(key), **asdict(change)} for key, change in result.metadata_changes]
    return data


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """verify: PostgreSQL vs export vs SQLite (the export must come from --source); the
    evidence report goes beside the export (or to --evidence)."""
    manifest = verify_export(args.export)
    require_same_source(manifest, args.source)
    chain = load_chain(args.export)  # with its sync generations, if any
    target = Target(settings.target_dsn or "", args.schema)
    with progress("verify", manifest.checkpoints) as advance:
        report = verify_migration(
            manifest, target, source_path=args.source, cipher=_cipher(args),
            readback_threads=None if args.readback_all else args.readback, progress=advance,
            workers=workers_for(manifest, args.workers), readback_all_hint=READBACK_ALL_HINT,
            chain=chain)
    evidence = write_evidence(
        _evidence_path(args, manifest.path),
        _chain_evidence(report, chain, target, None))
    summary = {"command": "verify", "ok": report.passed, "target": target.display,
               **manifest_summary(manifest), **verification_json(report),
               "evidence": str(evidence)}
    _emit(args, summary, render_verification(report))
    _print_evidence_path(args, evidence)
    return EXIT_OK if report.passed else EXIT_MISMATCH


def _chain_evidence(report: VerificationReport, chain: ExportChain, target: Target,
                    deletions_kept: list[str] | None,
                    cutover: dict[str, str] | None = None) -> str:
    """The evidence report; with a section on the syncs and the selection when there are."""
    markdown = render_evidence(report, manifest=chain.export, target_display=target.display,
                               untimed_hint=EVIDENCE_UNTIMED_HINT,
                               more_hint=EVIDENCE_MORE_HINT)
    return with_live_migration_section(markdown, chain, deletions_kept=deletions_kept,
                                       cutover=cutover)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """sync: the target follows the source, moving only what changed since the export
    (or the last sync); exit 4 on a conflict (nothing of that batch written), 3 when
    threads were refused (the others moved; every later sync tries those again)."""
    report = _sync(args, settings)
    _emit(args, _sync_json(report), report.render())
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
    return sync_target(args.source, args.export, target, cipher=_cipher(args),
                       propagate_deletes=args.propagate_deletes,
                       read_every_thread=read_every_thread,
                       allow_mass_deletion=args.allow_mass_deletion,
                       strict_versions=args.strict_versions or settings.strict_versions)


def _sync_json(report: SyncReport) -> dict[str, Any]:
    found = report.found
    return {"command": "sync", "ok": not found.refused, "moved": found.moved,
            "refused": found.refused,
            "generation": found.generation if found.moved else None,
            "generation_file": str(found.manifest.path) if found.manifest else None,
            "added": found.added, "changed": found.changed, "deleted": found.deleted,
            "threads_read": found.threads_read, "read_every_thread": found.read_every_thread,
            "snapshot_at": found.snapshot_at,
            "rows": {what: report.total(what)
                     for what in ("inserted", "updated", "deleted", "already_present")},
            "deletions_kept": report.deletions_kept, "seconds": round(report.seconds, 3)}


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
    say(f"Source quiet since {_clock(last_write)}; final sync...")
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
        "writers quiet since": f"{_clock(last_write)} (the source's last change; quiet "
                               f"for {args.quiet_seconds:g} s by {_clock(quiet_at)})",
        "waited for quiet": f"{quiet_at - wait_started:.1f} s (from {_clock(wait_started)}, "
                            "after the first verification)",
        "proven equal at": _clock(proven_at) if passed else "-",
        "cutover window": f"{proven_at - last_write:.1f} s from the last write seen to "
                          f"proven equal (quiet {quiet_at - last_write:.1f} s + final sync "
                          f"{synced.seconds:.1f} s + verification {report.seconds:.1f} s)",
        "source untouched during the cutover": "yes" if untouched else
        "NO: a writer changed the source; stop every writer and run cutover again",
    }
    timings = {"last_write_at": _clock(last_write), "wait_started_at": _clock(wait_started),
               "quiet_at": _clock(quiet_at), "proven_at": _clock(proven_at),
               "wait_seconds": round(quiet_at - wait_started, 3),
               "window_seconds": round(proven_at - last_write, 3),
               "final_sync_seconds": round(synced.seconds, 3),
               "verification_seconds": round(report.seconds, 3)}
    evidence = write_evidence(_evidence_path(args, chain.export.path),
                              _chain_evidence(report, chain, target, synced.deletions_kept,
                                              window))
    summary = {"command": "cutover", "ok": passed, "target": target.display,
               "sync": _sync_json(synced), **verification_json(report),
               "window": window, "timings": timings, "evidence": str(evidence)}
    text = render_verification(report) + "\n\n" + "\n".join(
        f"{label}: {value}" for label, value in window.items())
    _emit(args, summary, text)
    _print_evidence_path(args, evidence)
    return EXIT_OK if passed else EXIT_MISMATCH


def _verify_chain(args: argparse.Namespace, chain: ExportChain, target: Target, *,
                  certify: bool = False,
                  earlier: VerificationReport | None = None) -> VerificationReport:
    """The cutover's verification: every live thread, read back through both savers
    (``certify``, ``earlier``: see verify_migration)."""
    with progress("verify", chain.checkpoints) as advance:
        return verify_migration(chain.export, target, source_path=args.source,
                                cipher=_cipher(args), readback_threads=None,
                                progress=advance,
                                workers=workers_for(chain.export, args.workers),
                                chain=chain, certify=certify, earlier=earlier)


def _clock(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _evidence_path(args: argparse.Namespace, export_path: str | Path) -> Path:
    """--evidence, or ``<export>.evidence.md`` beside the export file."""
    return args.evidence or default_evidence_path(export_path)


def write_evidence(path: Path, markdown: str) -> Path:
    """Write the evidence report, owner-only (it names threads and metadata values)."""
    try:
        write_private_text(path, markdown)
    except OSError as exc:
        raise MigrationError(f"Cannot write the evidence report {path}: "
                             f"{exc.strerror or exc}.",
                             "Pass --evidence FILE.md in a writable directory.") from None
    return path


def _print_evidence_path(args: argparse.Namespace, path: Path) -> None:
    if not getattr(args, "json", False):  # with --json the path is in the JSON
        print(f"\nEvidence report (Markdown): {path}")


def verification_json(report: VerificationReport) -> dict[str, Any]:
    """The verification report as JSON-able data."""
    return {
        "passed": report.passed,
        "checks": {name: {"passed": c.passed, "description": c.description,
                          "expected": c.expected, "actual": c.actual,
                          "mismatch_count": c.mismatch_count,
                          "mismatches": every_mismatch(report, name),
                          "notes": c.notes}
                   for name, c in report.checks.items()},
        "counts": report.counts,
        "metadata_changes": report.metadata_changes,
        "seconds": round(report.seconds, 3),
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (same keys in every row)."""
    if not rows:
        return "(nothing)"
    headers = list(rows[0])
    widths = [max(len(str(h)), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def render_verification(report: VerificationReport) -> str:
    """Human-readable verification result."""
    lines = ["Verification " + ("PASSED" if report.passed else "FAILED")]
    for name, check in report.checks.items():
        mark = "PASS" if check.passed else "FAIL"
        lines.append(f"  [{mark}] {name}: {check.description}")
        for mismatch in check.mismatches[:10]:
            lines.append(f"         - {mismatch}")
        if check.mismatch_count > 10:
            lines.append(f"         ... {check.mismatch_count - 10} more (see --report)")
        lines.extend(f"         note: {n}" for n in check.notes)
    counts = report.counts
    rows = [{"table": t, "sqlite": counts.get("sqlite", {}).get(t, "-"),
             "export": counts["export"].get(t, "-"),
             "expected": counts["expected_target"][t], "postgres": counts["target"][t]}
            for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")]
    lines += ["", render_table(rows)]
    if report.metadata_changes:
        lines.append(f"\n{len(report.metadata_changes)} metadata value(s) changed to fit "
                     "JSONB:")
        lines += [f"  - {c['thread_id']}/{c['checkpoint_id']} {c['path']}: {c['reason']}"
                  for c in report.metadata_changes[:20]]
    return "\n".join(lines)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """migrate: export + import + verify, run as the Dagster assets against the instance;
    the verification's evidence report is written beside the export (or to --evidence)."""
    status = _migrate(args, settings)
    _print_evidence_path(args, _migration_evidence_path(args))
    return status


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Run the migration, write its evidence report, print its summary; the exit status."""
    from checkpoint_assets.runner import migrate_in_process

    return _migration_status(args, migrate_in_process(_runner_settings(args, settings)))


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """backfill: only the FAILED and missing batch partitions, then the verification (and
    its evidence report, as for migrate)."""
    from checkpoint_assets.runner import backfill_in_process

    status = _migration_status(args, backfill_in_process(_runner_settings(args, settings)))
    _print_evidence_path(args, _migration_evidence_path(args))
    return status


def _runner_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """What migrate and backfill pass to the in-process runner: the flags over
    ``settings``."""
    return replace(settings, source=args.source, export=args.export,
                   target_schema=args.schema, batch_size=args.batch_size,
                   threads=args.threads or settings.threads,
                   readback_threads=None if args.readback_all else settings.readback_threads,
                   verify_every_batch=args.verify_every_batch or settings.verify_every_batch,
                   strict_versions=args.strict_versions or settings.strict_versions)


def _migration_status(args: argparse.Namespace, result: Any) -> int:
    """Write the run's evidence report, print the summary, return the exit status."""
    evidence = write_evidence(_migration_evidence_path(args), result.evidence
                              or _unverified_evidence(result))
    _emit(args, {**result.to_json(), "evidence": str(evidence)}, result.render())
    if result.passed:
        return EXIT_OK
    if any(r.step == "export" and r.failure is FailureKind.BAD_INPUT for r in result.runs):
        return EXIT_BAD_INPUT  # the export refused its input: nothing was loaded
    return EXIT_CONFLICT if result.conflicted_batches else EXIT_MISMATCH


def _migration_evidence_path(args: argparse.Namespace) -> Path:
    """--evidence, or beside the export the migration's assets use (the same default)."""
    return _evidence_path(args, args.export or _default_export(args))


def _unverified_evidence(result: Any) -> str:
    """The evidence file of a migration whose verification did not materialize: why,
    instead of a previous run's report."""
    return (f"# Migration evidence: FAILED\n\nMigration {result.migration_id} has no "
            "verification: it did not run to the end. What happened:\n\n"
            "```\n" + result.render() + "\n```\n")


def cmd_checks(args: argparse.Namespace, settings: Settings) -> int:
    """checks: the latest evaluation of every asset check, from the Dagster instance."""
    from checkpoint_assets.check_results import (
        latest_check_evaluations,
        render_check_rows,
    )
    from checkpoint_assets.runner import project_instance

    with project_instance() as instance:
        rows = latest_check_evaluations(instance)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2, default=str))
    else:
        print(render_check_rows(rows))
    # "ok": passed, or a warning-severity check (a reported risk, not a failure).
    all_ok = bool(rows) and all(row.ok for row in rows)
    return EXIT_OK if all_ok else EXIT_MISMATCH


def cmd_quickstart(args: argparse.Namespace, settings: Settings) -> int:
    """quickstart: sample database + embedded PostgreSQL + migrate, end to end."""
    from checkpoint_assets.embedded_postgres import ensure_database, start_embedded
    from checkpoint_assets.sample import write_sample_database

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "sample_checkpoints.sqlite"
    if not source.exists():
        sample = write_sample_database(source)
        print(f"Wrote a sample SqliteSaver database: {sample.checkpoint_count} checkpoints, "
              f"{sample.thread_count} threads -> {source}")
    admin = start_embedded(workdir / EMBEDDED_PG_DIR)
    dsn = ensure_database(admin, "checkpoints")
    variables = {SOURCE_ENV: str(source), TARGET_DSN_ENV: dsn,
                 BATCH_SIZE_ENV: str(QUICKSTART_BATCH_SIZE),
                 READBACK_THREADS_ENV: READBACK_ALL,
                 EMBEDDED_PG_ENV: str(workdir / EMBEDDED_PG_DIR)}
    write_env_file(workdir / QUICKSTART_ENV_FILE, variables)
    os.environ.update(variables)
    # The quick start is `migrate` with these flags: parsed like them, so every flag
    # migrate gains has its default here too.
    settings = Settings.from_env()
    args = build_parser(settings).parse_args(
        ["migrate", "--source", str(source), "--target", dsn,
         "--batch-size", str(QUICKSTART_BATCH_SIZE), "--readback-all"])
    status = _migrate(args, settings)
    print(f"\nSettings (source, target DSN, batch size): {workdir / QUICKSTART_ENV_FILE}")
    print("See it in the Dagster UI: .venv/bin/checkpoint-assets ui   (then open "
          "http://127.0.0.1:3000); the migration_verification asset shows the same "
          "evidence report.")
    print("The embedded PostgreSQL keeps running for the UI; stop it with "
          ".venv/bin/checkpoint-assets stop-postgres")
    print(f"Evidence report ({'PASSED' if status == EXIT_OK else 'FAILED'}; counts per "
          "table, what each check proves, per-batch load times, every mismatch by key): "
          f"{_migration_evidence_path(args)}")
    return status


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    """ui: `dagster dev` on this project's code location and persistent Dagster home.

    Settings not in the environment come from the quick start's env file, and its embedded
    PostgreSQL is started again if it is not running.
    """
    from checkpoint_assets.project import ensure_dagster_home

    load_env_file(args.workdir.resolve() / QUICKSTART_ENV_FILE)
    embedded = Settings.from_env().embedded_pg
    if embedded:
        from checkpoint_assets.embedded_postgres import start_embedded

        start_embedded(embedded)
    ensure_dagster_home()
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", "checkpoint_assets.definitions",
               "-h", args.host, "-p", str(args.port)]
    print("Starting: " + " ".join(command), flush=True)
    os.execv(command[0], command)
    return EXIT_OK  # not reached


def cmd_stop_postgres(args: argparse.Namespace, settings: Settings) -> int:
    """stop-postgres: stop the quick start's embedded PostgreSQL (its data stays)."""
    from checkpoint_assets.embedded_postgres import stop_embedded

    data_dir = args.workdir.resolve() / EMBEDDED_PG_DIR
    if stop_embedded(data_dir):
        print(f"Stopped the embedded PostgreSQL in {data_dir} (its data stays; "
              "`checkpoint-assets ui` or the quick start starts it again).")
    else:
        print(f"No embedded PostgreSQL runs in {data_dir}.")
    return EXIT_OK


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


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    """Write NAME=value lines, owner-only (a DSN may carry a password)."""
    write_private_text(path, "".join(f"{name}={value}\n" for name, value in settings.items()))


def _emit(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(text)
    report: Path | None = getattr(args, "report", None)
    if report is not None:
        try:
            write_private_json(report, summary)
        except OSError as exc:
            raise MigrationError(f"Cannot write the report {report}: {exc.strerror or exc}.",
                                 "Pass --report FILE.json in a writable directory.") from None


COMMANDS = {"export": cmd_export, "import": cmd_import, "verify": cmd_verify,
            "migrate": cmd_migrate, "backfill": cmd_backfill, "checks": cmd_checks,
            "sync": cmd_sync, "cutover": cmd_cutover,
            "quickstart": cmd_quickstart, "ui": cmd_ui, "stop-postgres": cmd_stop_postgres,
            "show-export": cmd_show_export}


if __name__ == "__main__":
    sys.exit(main())
