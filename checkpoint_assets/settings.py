"""The project's settings: one typed object, read from the environment in one place.

Every ``CHECKPOINT_ASSETS_*`` variable is named here once. The CLI (flags over these), the
Dagster resources and the in-process runner all read :class:`Settings`; a bad value fails
the same way wherever it is read (a :class:`SettingsError` naming the variable and its
value). No Dagster import: the settings describe the migration, not its orchestration.

This module is the one place the environment is read (and set): :meth:`Settings.from_env`,
:func:`env_value` (whether a variable is set, for the resources' ``dg.EnvVar``),
:func:`aes_key` (the key is never a field of Settings), :func:`load_env_file`,
:func:`set_environment`, :func:`env_default` and :func:`target_dsn_in_environment`;
project.py alone handles DAGSTER_HOME, the Dagster home's own variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations.contract import CONTRACT

SOURCE_ENV = "CHECKPOINT_ASSETS_SOURCE"
EXPORT_ENV = "CHECKPOINT_ASSETS_EXPORT"
# A fleet: several SQLite files into one PostgreSQL, the fleet.json `migrate` writes when
# given several --source (engine/fleet/fleet_file.py); the source and export are then its.
FLEET_ENV = "CHECKPOINT_ASSETS_FLEET"
TARGET_DSN_ENV = "CHECKPOINT_ASSETS_TARGET_DSN"
TARGET_SCHEMA_ENV = "CHECKPOINT_ASSETS_TARGET_SCHEMA"
STAGING_SCHEMA_ENV = "CHECKPOINT_ASSETS_STAGING_SCHEMA"
BATCH_SIZE_ENV = "CHECKPOINT_ASSETS_BATCH_SIZE"
READBACK_THREADS_ENV = "CHECKPOINT_ASSETS_READBACK_THREADS"
THREADS_ENV = "CHECKPOINT_ASSETS_THREADS"  # --threads: ids, or @FILE of ids
WORKERS_ENV = "CHECKPOINT_ASSETS_WORKERS"  # batch loaders (processes) to run at once
# 1: the verification compares every batch again, even those whose batch check certified
# rows that are still the same (engine/verify/certificates.py).
VERIFY_EVERY_BATCH_ENV = "CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH"
STRICT_VERSIONS_ENV = "CHECKPOINT_ASSETS_STRICT_VERSIONS"
# 1: a sync (and the cutover's syncs) deletes from the target the threads deleted in the
# source (the CLI's --propagate-deletes; the target_synced asset's resource setting).
PROPAGATE_DELETES_ENV = "CHECKPOINT_ASSETS_PROPAGATE_DELETES"
LOG_LEVEL_ENV = "CHECKPOINT_ASSETS_LOG_LEVEL"  # console log level of `migrate`'s runs
EMBEDDED_PG_ENV = "CHECKPOINT_ASSETS_EMBEDDED_PG"  # the quick start's embedded server
AES_KEY_ENV = "LANGGRAPH_AES_KEY"  # EncryptedSerializer's own variable
# The way back (the checkpoint_rollback group): the SqliteSaver file (created, or added
# to), its export, which threads, and the forward export holding the original bytes.
ROLLBACK_TO_ENV = "CHECKPOINT_ASSETS_ROLLBACK_TO"
ROLLBACK_EXPORT_ENV = "CHECKPOINT_ASSETS_ROLLBACK_EXPORT"
ROLLBACK_THREADS_ENV = "CHECKPOINT_ASSETS_ROLLBACK_THREADS"
ROLLBACK_ORIGINAL_EXPORT_ENV = "CHECKPOINT_ASSETS_ROLLBACK_ORIGINAL_EXPORT"
# 1: into an existing file, the rollback removes the threads PostgreSQL no longer has.
ROLLBACK_REMOVE_DELETED_THREADS_ENV = "CHECKPOINT_ASSETS_ROLLBACK_REMOVE_DELETED_THREADS"
# Dagster's own storage in PostgreSQL (dagster_home/dagster-postgres.yaml reads all five).
DAGSTER_PG_ENV = {
    "hostname": "CHECKPOINT_ASSETS_DAGSTER_PG_HOST",
    "port": "CHECKPOINT_ASSETS_DAGSTER_PG_PORT",
    "username": "CHECKPOINT_ASSETS_DAGSTER_PG_USER",
    "password": "CHECKPOINT_ASSETS_DAGSTER_PG_PASSWORD",
    "db_name": "CHECKPOINT_ASSETS_DAGSTER_PG_DB",
}
DAGSTER_PG_HOST_ENV = DAGSTER_PG_ENV["hostname"]
READBACK_ALL = "all"  # CHECKPOINT_ASSETS_READBACK_THREADS=all reads back every thread
ENV_FILE = ".env"  # read from the working directory, like dagster dev


class SettingsError(MigrationError):
    """A setting's value cannot be used (e.g. a number that is not a whole number)."""


@dataclass(frozen=True)
class Settings:
    """What a migration is pointed at and how it runs. None: not set (the default applies).

    ``readback_threads`` None reads back every thread; ``workers`` None lets the command
    choose (see engine.workers). The DSN is kept out of ``repr`` (it may hold a password).
    Change fields with ``dataclasses.replace`` (the CLI's flags over the environment).
    """

    source: str | None = None
    export: str | None = None
    fleet: str | None = None  # a fleet file: its sources replace ``source`` and ``export``
    target_dsn: str | None = field(default=None, repr=False)
    target_schema: str | None = None
    staging_schema: str | None = None
    batch_size: int = CONTRACT.batch_size
    readback_threads: int | None = CONTRACT.readback_threads
    workers: int | None = None
    threads: str | None = None  # --threads as given (see engine.selection)
    verify_every_batch: bool = False
    # Refuse a thread whose content differs at one channel version (engine/core/versions.py)
    # instead of migrating it with the version's first value.
    strict_versions: bool = False
    # Syncs delete from the target the threads deleted in the source.
    propagate_deletes: bool = False
    # The way back into an existing file removes the threads PostgreSQL no longer has.
    rollback_remove_deleted_threads: bool = False
    log_level: str = "INFO"
    embedded_pg: str | None = None
    dagster_pg_host: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment (default ``os.environ``) gives; unset or empty
        variables leave the default. Raises SettingsError for a value that is not usable."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            source=text(SOURCE_ENV),
            export=text(EXPORT_ENV),
            fleet=text(FLEET_ENV),
            target_dsn=text(TARGET_DSN_ENV),
            target_schema=text(TARGET_SCHEMA_ENV),
            staging_schema=text(STAGING_SCHEMA_ENV),
            batch_size=whole_number(BATCH_SIZE_ENV, text(BATCH_SIZE_ENV), CONTRACT.batch_size,
                                    "the number of checkpoints per batch (e.g. 1000)"),
            readback_threads=_readback(text(READBACK_THREADS_ENV)),
            workers=_workers(text(WORKERS_ENV)),
            threads=text(THREADS_ENV),
            verify_every_batch=yes_or_no(VERIFY_EVERY_BATCH_ENV, text(VERIFY_EVERY_BATCH_ENV)),
            strict_versions=yes_or_no(STRICT_VERSIONS_ENV, text(STRICT_VERSIONS_ENV)),
            propagate_deletes=yes_or_no(PROPAGATE_DELETES_ENV, text(PROPAGATE_DELETES_ENV)),
            rollback_remove_deleted_threads=yes_or_no(
                ROLLBACK_REMOVE_DELETED_THREADS_ENV,
                text(ROLLBACK_REMOVE_DELETED_THREADS_ENV)),
            log_level=(text(LOG_LEVEL_ENV) or "INFO").upper(),
            embedded_pg=text(EMBEDDED_PG_ENV),
            dagster_pg_host=text(DAGSTER_PG_HOST_ENV),
        )

    @property
    def staging(self) -> bool:
        """True in staging mode (a staging schema is set)."""
        return bool(self.staging_schema)


def whole_number(name: str, value: str | None, default: int, what: str) -> int:
    """``value`` of variable ``name`` as an int (``default`` when unset)."""
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number.",
                            f"Set it to {what}, or unset it for the default (environment "
                            f"or {ENV_FILE}).") from None


def yes_or_no(name: str, value: str | None) -> bool:
    """``value`` of variable ``name`` as a switch: 1/true/yes/on or 0/false/no/off (unset:
    off)."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} is neither on nor off.",
                        f"Set it to 1 or 0, or unset it (environment or {ENV_FILE}).")


def _readback(value: str | None) -> int | None:
    """CHECKPOINT_ASSETS_READBACK_THREADS: a number of threads (0 or less: all), or ``all``."""
    if value is not None and value.strip().lower() == READBACK_ALL:
        return None
    threads = whole_number(READBACK_THREADS_ENV, value, CONTRACT.readback_threads,
                           f"a number of threads or '{READBACK_ALL}'")
    return threads if threads > 0 else None


def _workers(value: str | None) -> int | None:
    """CHECKPOINT_ASSETS_WORKERS (at least 1), or None when it is not set."""
    if value is None:
        return None
    return max(1, whole_number(WORKERS_ENV, value, 1,
                               "the number of worker processes (e.g. 2)"))


def read_env_file(path: str | Path) -> dict[str, str]:
    """The NAME=value settings of an env file (``.env`` syntax; comments ignored)."""
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def load_env_file(path: str | Path = ENV_FILE) -> None:
    """Add an env file's settings to the environment, if the file exists (``.env`` in the
    working directory by default, as ``dagster dev`` reads it).

    Variables already set win, so a one-off ``VAR=... checkpoint-assets`` overrides the
    file. Keep the file owner-only if it holds the target DSN's password.
    """
    if Path(path).is_file():
        for name, value in read_env_file(path).items():
            os.environ.setdefault(name, value)


def env_value(name: str) -> str | None:
    """The value of the environment variable ``name``; None when it is unset or empty."""
    return os.environ.get(name) or None


def aes_key(variable: str = AES_KEY_ENV) -> str | None:
    """The EncryptedSerializer AES key, from ``variable`` (default $CHECKPOINT_ASSETS_AES_KEY;
    the CLI's --aes-key-env names another); None when it holds none. Never part of
    :class:`Settings`, so the key is not carried in an object that may be printed."""
    return env_value(variable or AES_KEY_ENV)


def set_environment(variables: Mapping[str, str]) -> None:
    """Put these settings into this process's environment (and so its children's)."""
    os.environ.update(variables)


def env_default(name: str, make: Callable[[], str]) -> str:
    """The variable's value; when unset, ``make()``'s, set for this process first."""
    if name not in os.environ:
        os.environ[name] = make()
    return os.environ[name]


@contextmanager
def target_dsn_in_environment(dsn: str | None) -> Iterator[None]:
    """The DSN as $CHECKPOINT_ASSETS_TARGET_DSN while the block runs (resources read it only
    through dg.EnvVar, never shown, and worker processes inherit it); the previous value
    (or none) afterwards. Without a DSN the environment is left as it is."""
    previous = os.environ.get(TARGET_DSN_ENV)
    if dsn:
        os.environ[TARGET_DSN_ENV] = dsn
    try:
        yield
    finally:
        if dsn:
            if previous is None:
                os.environ.pop(TARGET_DSN_ENV, None)
            else:
                os.environ[TARGET_DSN_ENV] = previous
