"""``checkpoint-assets``: the command-line front end.

Exit status: 0 success (for verify/migrate: every check passed); 1 verification ran and
found a mismatch; 2 usage error; 3 bad input or environment (MigrationError);
4 conflict with rows already in the target; 5 cutover's --timeout passed before the
source was quiet; 130 stopped by Ctrl-C (see :mod:`checkpoint_assets.cli.exit_status`).

The package: :mod:`parser` (argparse), :mod:`output` (every summary, table and evidence
path printed), :mod:`arguments` (what handlers derive from flags), and one module per
command group, each command one handler ``(args, settings) -> int``. :func:`main` parses,
dispatches and turns a MigrationError into its message and exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace

from checkpoint_assets.cli.arguments import default_export
from checkpoint_assets.cli.exit_status import (
    DEFAULT_ERROR_REPORT,
    ERROR_HINTS,
    ERROR_REPORTS,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    STOPPED,
    STOPPED_AT_ONCE,
)
from checkpoint_assets.cli.fleet import wants_fleet
from checkpoint_assets.cli.live import cmd_cutover, cmd_sync
from checkpoint_assets.cli.local import cmd_quickstart, cmd_stop_postgres, cmd_ui
from checkpoint_assets.cli.migration import cmd_export, cmd_import, cmd_show_export, cmd_verify
from checkpoint_assets.cli.parser import build_parser
from checkpoint_assets.cli.rollback import (
    cmd_export_postgres,
    cmd_restore,
    cmd_rollback,
    cmd_verify_rollback,
)
from checkpoint_assets.cli.runs import cmd_backfill, cmd_checks, cmd_migrate
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations.contract import stopping_on_ctrl_c, without_secrets
from checkpoint_assets.settings import TARGET_DSN_ENV, Settings, SettingsError, load_env_file

Handler = Callable[[argparse.Namespace, Settings], int]
# Every command's handler: one signature, the parsed flags and the settings.
COMMANDS: dict[str, Handler] = {
    "export": cmd_export, "import": cmd_import, "verify": cmd_verify,
    "migrate": cmd_migrate, "backfill": cmd_backfill, "checks": cmd_checks,
    "sync": cmd_sync, "cutover": cmd_cutover,
    "quickstart": cmd_quickstart, "ui": cmd_ui, "stop-postgres": cmd_stop_postgres,
    "show-export": cmd_show_export,
    "rollback": cmd_rollback, "export-postgres": cmd_export_postgres,
    "restore": cmd_restore, "verify-rollback": cmd_verify_rollback,
}
# The way back reads PostgreSQL (--source-dsn, default the target DSN) and writes SQLite.
WAY_BACK_COMMANDS = frozenset({"rollback", "export-postgres", "restore", "verify-rollback"})


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
        if args.command in ("sync", "cutover") and wants_fleet(args, settings):
            pass  # each source of the fleet has its export
        elif args.command in ("export", "import", "verify", "sync", "cutover"):
            args.export = args.export or default_export(args)
        if hasattr(args, "target"):
            dsn = args.target or settings.target_dsn or ""
            if not dsn:
                raise MigrationError("No target given.",
                                     f"Pass --target or set ${TARGET_DSN_ENV}.")
        if args.command in WAY_BACK_COMMANDS:
            dsn = getattr(args, "source_dsn", None) or settings.target_dsn or ""
            with stopping_on_ctrl_c(STOPPED_AT_ONCE):
                return COMMANDS[args.command](args, settings)
        with stopping_on_ctrl_c(STOPPED_AT_ONCE):
            return COMMANDS[args.command](args, replace(settings, target_dsn=dsn or None))
    except KeyboardInterrupt:
        print(f"INTERRUPTED: {STOPPED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MigrationError as exc:
        label, status = ERROR_REPORTS.get(exc.kind, DEFAULT_ERROR_REPORT)
        hint = ERROR_HINTS.get(type(exc))  # the CLI's own hint, where the engine's is general
        text = f"{exc.problem}\n  What to do: {hint}" if hint else str(exc)
        print(f"{label}: {without_secrets(text, dsn)}", file=sys.stderr)
        return status
