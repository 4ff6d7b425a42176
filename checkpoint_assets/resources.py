"""Dagster resources: the SQLite source, the export file, the target PostgreSQL.

All configuration comes from the settings (settings.py: the environment, or the CLI's
flags over it; see ``build_resources``), so partitioned assets need no run config (UI
backfills cannot supply any) and no secret is ever part of run config. The DSN is only ever read through ``dg.EnvVar``: the UI shows the variable's
name, never its value, and messages use ``Target.display`` (password-free).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.sqlite_source import SourceCounts
from checkpoint_assets.engine.operations import migration, way_back
from checkpoint_assets.engine.operations.contract import CONTRACT
from checkpoint_assets.engine.verify.check_table import SQLITE_THREADS_NOT_IN_POSTGRES
from checkpoint_assets.project import default_export_path
from checkpoint_assets.settings import (
    AES_KEY_ENV,
    BATCH_SIZE_ENV,
    EXPORT_ENV,
    FLEET_ENV,
    PROPAGATE_DELETES_ENV,
    READBACK_THREADS_ENV,
    ROLLBACK_EXPORT_ENV,
    ROLLBACK_ORIGINAL_EXPORT_ENV,
    ROLLBACK_REMOVE_DELETED_THREADS_ENV,
    ROLLBACK_THREADS_ENV,
    ROLLBACK_TO_ENV,
    SOURCE_ENV,
    STAGING_SCHEMA_ENV,
    STRICT_VERSIONS_ENV,
    TARGET_DSN_ENV,
    TARGET_SCHEMA_ENV,
    THREADS_ENV,
    VERIFY_EVERY_BATCH_ENV,
    WORKERS_ENV,
    Settings,
    aes_key,
    env_value,
)


class SqliteSourceResource(dg.ConfigurableResource):
    """The LangGraph SqliteSaver database to migrate. Opened read-only; never written."""

    path: str = Field(default="", description="Path of the SqliteSaver database file "
                                              f"(env {SOURCE_ENV}); unused with a fleet.")
    fleet: str | None = Field(
        default=None,
        description=f"A fleet file (env {FLEET_ENV}): several SqliteSaver files into one "
                    "PostgreSQL, each with its export, label and thread names, as "
                    "`checkpoint-assets migrate --source A --source B ...` wrote it.")
    aes_key: str | None = Field(
        default=None,
        description=f"EncryptedSerializer AES key for encrypted sources (env {AES_KEY_ENV}); "
                    "unset for unencrypted sources.")

    def counts(self, threads: str | None = None) -> SourceCounts:
        """Checkpoints, writes and threads in the source right now (of the ``threads``
        named: ids separated by commas, or @FILE)."""
        return migration.count_source(Path(self.path), threads)


class ExportFileResource(dg.ConfigurableResource):
    """Where the export file (owner-only) is written, and how it is batched."""

    path: str | None = Field(
        default=None,
        description=f"Export file path (env {EXPORT_ENV}); default "
                    "<project>/.checkpoint_assets/exports/<source name>.export.")
    batch_size: int = Field(
        default=CONTRACT.batch_size,
        description=f"Checkpoints per batch (env {BATCH_SIZE_ENV}); whole threads per batch, "
                    "so one partition per batch.")
    threads: str | None = Field(
        default=None,
        description=f"Export these threads only (env {THREADS_ENV}): ids separated by "
                    "commas, or @FILE with one id a line; default every thread.")

    def resolve_path(self, source_path: str) -> Path:
        """The configured export path, or the default one for this source."""
        return Path(self.path) if self.path else default_export_path(source_path)


class PostgresTargetResource(dg.ConfigurableResource):
    """The PostgreSQL database PostgresSaver will read: DSN, schema, optional staging schema.

    In direct mode batches load straight into ``target_schema``. In staging mode
    (``staging_schema`` set) they load into the staging schema, and the publish asset moves
    everything into ``target_schema`` in one transaction once every check has passed.
    """

    dsn: str = Field(description=f"libpq DSN of the target (env {TARGET_DSN_ENV}, never shown).")
    target_schema: str | None = Field(
        default=None,
        description=f"Schema for PostgresSaver's tables (env {TARGET_SCHEMA_ENV}); default "
                    "the DSN's search_path (usually public).")
    staging_schema: str | None = Field(
        default=None,
        description=f"Staging schema (env {STAGING_SCHEMA_ENV}); set it to enable staging "
                    "mode.")
    readback_threads: int = Field(
        default=CONTRACT.readback_threads,
        description=f"Threads read back through the official savers during verification "
                    f"(env {READBACK_THREADS_ENV}, a number or 'all'); 0 or less reads back "
                    "every thread.")

    @property
    def staging(self) -> bool:
        """True in staging mode."""
        return bool(self.staging_schema)

    def final_schema(self) -> str | None:
        """The schema PostgresSaver will read in production (None: the DSN's)."""
        return self.target_schema or None

    def load_schema(self) -> str | None:
        """Where batches are loaded and verified: the staging schema or the final one."""
        if not self.staging:
            return self.final_schema()
        if self.staging_schema == (self.target_schema or "public"):
            raise MigrationError(
                f"The staging schema {self.staging_schema!r} is the target schema.",
                f"Set {STAGING_SCHEMA_ENV} to a separate schema, e.g. checkpoints_staging.")
        return self.staging_schema

    def display(self, schema: str | None) -> str:
        """How messages name the target's ``schema`` (never the password)."""
        return migration.target_display(self.dsn, schema)

    verification_workers: int = Field(
        default=0,
        description=f"Processes comparing batches at once during verification (env "
                    f"{WORKERS_ENV}); 0 lets the verification choose (one per core when the "
                    "export has enough batches).")

    verify_every_batch: bool = Field(
        default=False,
        description=f"Compare every batch again in the verification (env "
                    f"{VERIFY_EVERY_BATCH_ENV}=1), even a batch whose batch check certified "
                    "rows PostgreSQL still holds unchanged; by default such a batch is taken "
                    "over from its check.")

    strict_versions: bool = Field(
        default=False,
        description=f"Refuse a thread whose channel version holds two values that differ in "
                    f"content (env {STRICT_VERSIONS_ENV}=1); by default it is migrated as "
                    "PostgresSaver would hold it (the version's first value), the later "
                    "values kept and reported as an ERROR check.")

    def readback_sample(self) -> int | None:
        """Threads to read back (None: all)."""
        return self.readback_threads if self.readback_threads > 0 else None


class LiveMigrationResource(dg.ConfigurableResource):
    """How the live migration's syncs and cutover run (group checkpoint_live): whether
    deletions propagate, how long the cutover waits for quiet. The source, export file and
    target are the migration's own resources."""

    propagate_deletes: bool = Field(
        default=False,
        description=f"Delete from the target the threads deleted in the source (env "
                    f"{PROPAGATE_DELETES_ENV}=1; the CLI's --propagate-deletes); by default "
                    "they are kept there and the sync names them.")
    allow_mass_deletion: bool = Field(
        default=False,
        description="Follow a source that lost every thread, or more than the threshold, "
                    "since the last sync (the CLI's --allow-mass-deletion); refused by "
                    "default.")
    quiet_seconds: float = Field(
        default=10.0,
        description="Cutover: how long the source's file and -wal must stay unchanged "
                    "before the final sync (0: writers known to be stopped).")
    timeout_seconds: float | None = Field(
        default=None,
        description="Cutover: give up (a failed run, nothing proven) when the source is "
                    "not quiet within this long; default: wait as long as writers write.")
    evidence_path: str | None = Field(
        default=None,
        description="Cutover: where its evidence report (Markdown) goes; default "
                    "<export>.evidence.md beside the export file.")


class CallerChannel:
    """What a caller that runs the live assets in its own process gets from them: each
    progress line as it is said, and the operation's typed report or its error itself
    (so the command line prints them as it always did). Under ``dagster dev`` nothing is
    kept and progress goes to the step's log."""

    def __init__(self, say: Callable[[str], None] | None = None, keep: bool = False,
                 progress: Any = None, flags: dict[str, str] | None = None) -> None:
        self.say = say
        self.keep = keep
        self.progress = progress
        # How the caller names a setting in what the assets say (e.g. the CLI's flags).
        self.flags = dict(flags or {})
        self.reports: list[Any] = []
        self.error: BaseException | None = None

    @property
    def report(self) -> Any:
        """The latest report handed over, or None."""
        return self.reports[-1] if self.reports else None

    def done(self, report: Any) -> None:
        """An operation finished with ``report``."""
        if self.keep:
            self.reports.append(report)

    def failed(self, error: BaseException) -> None:
        """The operation raised ``error`` (the step then fails with its message)."""
        if self.keep:
            self.error = error

    @classmethod
    def printing(cls, stream: Any = None, progress: Any = None) -> CallerChannel:
        """A channel that prints what the operation says to ``stream`` (default stdout)
        and keeps its outcome."""
        def say(text: str) -> None:
            print(text, file=stream or sys.stdout, flush=True)

        return cls(say=say, keep=True, progress=progress)


def build_resources(settings: Settings | None = None, *, aes_key_env: str = AES_KEY_ENV,
                    live: LiveMigrationResource | None = None,
                    caller: CallerChannel | None = None) -> dict[str, Any]:
    """The resources of the code location.

    Without ``settings`` (the code location ``dagster dev`` loads): every setting the
    environment holds is a ``dg.EnvVar``, so the UI shows the variable's name; the values
    are checked as Settings.from_env checks them. With ``settings`` (the runner's: flags
    over the environment): their values. The DSN and the AES key are always
    ``dg.EnvVar``, resolved when a run starts; they are never values here (the key from
    ``aes_key_env``, the CLI's --aes-key-env). ``live`` and ``caller``: the CLI's live
    migration settings, and its channel to the operations' reports (default: from the
    settings, and a channel that keeps nothing).
    """
    secrets = {
        "aes_key": dg.EnvVar(aes_key_env) if aes_key(aes_key_env) else None,
        "dsn": dg.EnvVar(TARGET_DSN_ENV),
    }
    if settings is None:
        settings = Settings.from_env()  # fails here, in the one style, on a bad value
        source: Any = _env_or(SOURCE_ENV, settings.source)
        fleet: Any = _env_or(FLEET_ENV, settings.fleet)
        export: Any = _env_or(EXPORT_ENV, settings.export)
        batch_size: Any = _env_or(BATCH_SIZE_ENV, settings.batch_size, as_int=True)
        threads: Any = _env_or(THREADS_ENV, settings.threads)
        target_schema: Any = _env_or(TARGET_SCHEMA_ENV, settings.target_schema)
        staging_schema: Any = _env_or(STAGING_SCHEMA_ENV, settings.staging_schema)
        readback: Any = 0 if settings.readback_threads is None else _env_or(
            READBACK_THREADS_ENV, settings.readback_threads, as_int=True)
        workers: Any = _env_or(WORKERS_ENV, settings.workers or 0, as_int=True)
    else:
        source, export, batch_size = settings.source, settings.export, settings.batch_size
        fleet = settings.fleet
        threads = settings.threads
        target_schema, staging_schema = settings.target_schema, settings.staging_schema
        readback = settings.readback_threads or 0  # 0: every thread
        workers = settings.workers or 0
    return {
        "source": SqliteSourceResource(
            path=source if source is not None else "" if fleet else dg.EnvVar(SOURCE_ENV),
            fleet=fleet, aes_key=secrets["aes_key"]),
        "export_file": ExportFileResource(path=export, batch_size=batch_size,
                                          threads=threads),
        "target": PostgresTargetResource(
            dsn=secrets["dsn"], target_schema=target_schema, staging_schema=staging_schema,
            readback_threads=readback, verification_workers=workers,
            verify_every_batch=settings.verify_every_batch,
            strict_versions=settings.strict_versions),
        "rollback": rollback_resource(secrets["aes_key"], batch_size,
                                      settings.rollback_remove_deleted_threads),
        "live": live or LiveMigrationResource(propagate_deletes=settings.propagate_deletes),
        "caller": caller or CallerChannel(),
    }


class RollbackResource(dg.ConfigurableResource):
    """Where the way back writes: the SqliteSaver file, its export, which threads. The
    PostgreSQL source is the migration's target resource (after a cutover, the database
    the application writes)."""

    to_path: str | None = Field(
        default=None, description=f"SqliteSaver file to restore into (env {ROLLBACK_TO_ENV}):"
                                  " created, or added to when it exists.")
    export_path: str | None = Field(
        default=None, description=f"Export file (env {ROLLBACK_EXPORT_ENV}); default "
                                  f"<to_path>{CONTRACT.rollback_export_suffix}.")
    threads: str | None = Field(
        default=None, description=f"Only these threads (env {ROLLBACK_THREADS_ENV}): "
                                  "comma-separated ids or @FILE; default every thread.")
    original_export: str | None = Field(
        default=None, description=f"The forward migration's export (env "
                                  f"{ROLLBACK_ORIGINAL_EXPORT_ENV}): checkpoints unchanged "
                                  "since come back in their original SQLite bytes.")
    batch_size: int = Field(default=CONTRACT.batch_size, description="Checkpoints per batch.")
    remove_deleted_threads: bool = Field(
        default=False, description="Into an existing file: delete the threads it holds that "
                                   "PostgreSQL no longer has (within the threads chosen), in "
                                   "one transaction before the verification (env "
                                   f"{ROLLBACK_REMOVE_DELETED_THREADS_ENV}=1); by default "
                                   "they are kept and the warning check "
                                   f"{SQLITE_THREADS_NOT_IN_POSTGRES} names them.")
    aes_key: str | None = Field(
        default=None, description=f"EncryptedSerializer AES key (env {AES_KEY_ENV}).")

    def to(self) -> Path:
        """The SqliteSaver file; MigrationError when none is configured."""
        if not self.to_path:
            raise MigrationError("No SQLite file to roll back into is configured.",
                                 f"Set {ROLLBACK_TO_ENV} to the SqliteSaver file (new or the "
                                 "application's).")
        return Path(self.to_path)

    def export(self) -> Path:
        """The export file of the rollback."""
        return Path(self.export_path) if self.export_path else \
            way_back.rollback_export_beside(self.to())

    def loading_into(self) -> Path:
        """The file batches load into: the existing file, or the work file of a new one."""
        to = self.to()
        return to if to.exists() else way_back.work_file(to)


def rollback_resource(aes_key: Any, batch_size: Any,
                      remove_deleted_threads: bool = False) -> dg.ConfigurableResource:
    """The rollback group's resource, from its environment variables (their names shown
    in the UI), the migration's AES key and batch size, and whether the threads
    PostgreSQL no longer has are removed from an existing file."""
    return RollbackResource(
        to_path=_env_or(ROLLBACK_TO_ENV, None), export_path=_env_or(ROLLBACK_EXPORT_ENV, None),
        threads=_env_or(ROLLBACK_THREADS_ENV, None),
        original_export=_env_or(ROLLBACK_ORIGINAL_EXPORT_ENV, None),
        batch_size=batch_size, remove_deleted_threads=remove_deleted_threads,
        aes_key=aes_key)


def _env_or(name: str, value: Any, *, as_int: bool = False) -> Any:
    """``dg.EnvVar(name)`` if the variable is set (the UI shows its name), else ``value``."""
    if env_value(name):
        return dg.EnvVar.int(name) if as_int else dg.EnvVar(name)
    return value
