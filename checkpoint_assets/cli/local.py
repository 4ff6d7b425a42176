"""The quick start and the local Dagster UI: ``quickstart``, ``ui``, ``stop-postgres``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from checkpoint_assets.cli.arguments import (
    migration_evidence_path,
)
from checkpoint_assets.cli.exit_status import (
    EXIT_OK,
)
from checkpoint_assets.cli.fleet import wants_fleet
from checkpoint_assets.cli.parser import build_parser
from checkpoint_assets.cli.runs import (
    run_migration,
)
from checkpoint_assets.engine.operations.contract import write_private_file
from checkpoint_assets.settings import (
    BATCH_SIZE_ENV,
    EMBEDDED_PG_ENV,
    FLEET_ENV,
    READBACK_ALL,
    READBACK_THREADS_ENV,
    SOURCE_ENV,
    TARGET_DSN_ENV,
    Settings,
    load_env_file,
    set_environment,
)

QUICKSTART_ENV_FILE = "quickstart.env"

EMBEDDED_PG_DIR = "postgres"  # the quick start's embedded server, under its workdir

QUICKSTART_BATCH_SIZE = 50  # small batches so the sample shows several partitions


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
    set_environment(variables)
    # The quick start is `migrate` with these flags: parsed like them, so every flag
    # migrate gains has its default here too.
    settings = Settings.from_env()
    args = build_parser(settings).parse_args(
        ["migrate", "--source", str(source), "--target", dsn,
         "--batch-size", str(QUICKSTART_BATCH_SIZE), "--readback-all"])
    wants_fleet(args, settings)  # one source: --source as its path
    status = run_migration(args, settings)
    print(f"\nSettings (source, target DSN, batch size): {workdir / QUICKSTART_ENV_FILE}")
    print("See it in the Dagster UI: .venv/bin/checkpoint-assets ui   (then open "
          "http://127.0.0.1:3000); the migration_verification asset shows the same "
          "evidence report.")
    print("The embedded PostgreSQL keeps running for the UI; stop it with "
          ".venv/bin/checkpoint-assets stop-postgres")
    print(f"Evidence report ({'PASSED' if status == EXIT_OK else 'FAILED'}; counts per "
          "table, what each check proves, per-batch load times, every mismatch by key): "
          f"{migration_evidence_path(args)}")
    return status


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    """ui: `dagster dev` on this project's code location and persistent Dagster home.

    Settings not in the environment come from the quick start's env file, and its embedded
    PostgreSQL is started again if it is not running.
    """
    from checkpoint_assets.project import ensure_dagster_home

    load_env_file(args.workdir.resolve() / QUICKSTART_ENV_FILE)
    if args.fleet is not None:  # the code location's assets work on this fleet
        set_environment({FLEET_ENV: str(args.fleet.resolve())})
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


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    """Write NAME=value lines, owner-only (a DSN may carry a password)."""
    write_private_file(path, "".join(f"{name}={value}\n" for name, value in settings.items()))
