"""What the command handlers derive from the parsed flags: the AES key, the export and
evidence paths, the PostgreSQL source of the way back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import contract
from checkpoint_assets.project import default_export_path
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    TARGET_DSN_ENV,
    Settings,
    aes_key,
)


def aes_key_of(args: argparse.Namespace) -> str | None:
    """The EncryptedSerializer key in --aes-key-env's variable, or None."""
    return aes_key(getattr(args, "aes_key_env", AES_KEY_ENV))


def default_export(args: argparse.Namespace) -> Path:
    """The export path migrate and the assets use for ``--source`` (needs a source)."""
    if not getattr(args, "source", None):
        raise MigrationError("No export file given.",
                             "Pass --export FILE (or --source DB for its default export path).")
    return default_export_path(args.source)


def migration_evidence_path(args: argparse.Namespace) -> Path:
    """--evidence, or beside the export the migration's assets use (the same default)."""
    return args.evidence or contract.evidence_beside(args.export or default_export(args))


def source_dsn(args: argparse.Namespace, settings: Settings) -> str:
    """--source-dsn, else the migration's target DSN; MigrationError when neither is set."""
    dsn = getattr(args, "source_dsn", None) or settings.target_dsn
    if not dsn:
        raise MigrationError("No PostgreSQL source given.",
                             f"Pass --source-dsn or set ${TARGET_DSN_ENV}.")
    return dsn
