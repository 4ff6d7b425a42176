"""The argument parser of ``checkpoint-assets``: every command, its flags and their
defaults from the settings (the environment variables named in --help).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from checkpoint_assets import __version__
from checkpoint_assets.engine.operations.contract import CONTRACT
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    BATCH_SIZE_ENV,
    ENV_FILE,
    EXPORT_ENV,
    FLEET_ENV,
    SOURCE_ENV,
    STRICT_VERSIONS_ENV,
    TARGET_DSN_ENV,
    TARGET_SCHEMA_ENV,
    THREADS_ENV,
    VERIFY_EVERY_BATCH_ENV,
    WORKERS_ENV,
    Settings,
)


def add_fleet_file(p: argparse.ArgumentParser) -> None:
    """--fleet and --export-dir: where a fleet's fleet.json is (several --source)."""
    p.add_argument("--fleet", type=Path, default=None,
                   help=f"the fleet file migrate wrote (env {FLEET_ENV}; default "
                        "<export dir>/fleet.json when a fleet is named by --source)")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="a fleet's exports and fleet.json (default "
                        ".checkpoint_assets/exports/fleet in the project)")


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
                            f"of {CONTRACT.parallel_min_batches} or more batches, else 1)")

    def add_report(p: argparse.ArgumentParser) -> None:
        p.add_argument("--report", type=Path, help="also write the summary as JSON to this file")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")

    def add_evidence(p: argparse.ArgumentParser) -> None:
        p.add_argument("--evidence", type=Path, metavar="FILE.md",
                       help="write the evidence report (Markdown, mode 0600: counts per "
                            "table, every check with what it proves and cannot, per-batch "
                            "load times, every mismatch and changed metadata value by key) "
                            f"to this file (default: <export>{CONTRACT.evidence_suffix}, beside "
                            "the export file)")

    def add_mass_deletion(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-mass-deletion", action="store_true",
                       help="follow a source that lost every thread, or more than "
                            f"{CONTRACT.mass_deletion_share:.0%}% of the threads and at least "
                            f"{CONTRACT.mass_deletion_min_threads}, since the last sync (refused "
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
    p.add_argument("--readback", type=int, default=CONTRACT.readback_threads,
                   help="threads to read back through the official savers (default "
                        f"{CONTRACT.readback_threads})")
    p.add_argument("--readback-all", action="store_true",
                   help="read back every thread through the official savers")
    add_workers(p, "compared")
    add_report(p)
    add_evidence(p)

    def add_fleet(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", "--sources", dest="source", action="append",
                       metavar="DB|@LIST|GLOB|DIR",
                       help=f"SqliteSaver database file (env {SOURCE_ENV}); give it more "
                            "than once, or @LIST (one path a line), a glob or a directory, "
                            "for a fleet of files into one PostgreSQL")
        add_fleet_file(p)
        p.add_argument("--thread-prefix", default=None, metavar="TEMPLATE",
                       help='a fleet: put TEMPLATE in front of every thread id, {source} '
                            'replaced by the source\'s label (e.g. "{source}:"), so '
                            "thread ids reused across files stay apart")
        p.add_argument("--thread-map", type=Path, default=None, metavar="FILE.json",
                       help='a fleet: rename the threads named in FILE.json, {"<source '
                            'label or file name>": {"<old id>": "<new id>"}}')

    for name, help_text in (
            ("migrate", "export, import and verify, as Dagster asset runs"),
            ("backfill", "load only the FAILED and missing batch partitions of the current "
                         "export (and any loaded without a passed check), then verify (the "
                         "UI's 'backfill failed and missing')")):
        p = sub.add_parser(name, help=help_text)
        add_fleet(p)
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
        if name == "backfill":
            p.add_argument("--fleet-source", metavar="LABEL",
                           help="of a fleet, only the failed and missing partitions of this "
                                "source (then the whole fleet's verification)")

    p = sub.add_parser("sync", help="bring the target to the source's current state, moving "
                                    "only what changed since the export or the last sync "
                                    "(the application may keep writing to SQLite)")
    add_fleet(p)
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
    add_fleet(p)
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
    p.add_argument("--digest-every-thread", action="store_true",
                   help="in the window, digest every thread of the source again (default: "
                        "those written since the first verification, which digested all; "
                        "costs a full read of the source in the window)")
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
    p.add_argument("--fleet", type=Path, default=None,
                   help="show a fleet: the fleet.json `migrate` wrote for several --source "
                        f"(sets {FLEET_ENV} for the code location)")

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
                       help="export file" + ("" if required else " (default: <--to>"
                                             f"{CONTRACT.rollback_export_suffix})"))

    def add_verification(p: argparse.ArgumentParser) -> None:
        p.add_argument("--readback-all", action="store_true",
                       help="read back every thread through both official savers "
                            f"(default: a sample of {CONTRACT.readback_threads})")
        p.add_argument("--evidence", type=Path, metavar="FILE.md",
                       help="evidence report (default: <export>.evidence.md)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument("--report", type=Path, help="also write the summary as JSON here")

    p = sub.add_parser("rollback", help="PostgreSQL -> SQLite: export, restore and verify "
                                        "(exit 0 only when every check passed)")
    add_source(p)
    add_to(p)
    add_threads(p)
    p.add_argument("--fleet-source", metavar="LABEL",
                   help="one source of a fleet: its threads, back into one file with the "
                        "thread ids that source gave them (its export is the original "
                        "export); the fleet from --fleet or --export-dir")
    add_fleet_file(p)
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
