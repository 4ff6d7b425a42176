"""A real PostgreSQL started locally from the ``pgserver`` package, for the quick start
and for tests on machines where no server runs. Nothing to install, nothing to configure.
"""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from checkpoint_assets.settings import env_default

DEFAULT_DATA_DIR = Path(".checkpoint_assets") / "postgres"
# pgserver's list of processes using the server; it stops the server when the last one
# leaves, unless the server was started to keep running.
HANDLE_PIDS_FILE = ".handle_pids.json"


def _pgserver() -> Any:
    """The pgserver module (imported here: only the embedded path needs it), with the
    private XDG_RUNTIME_DIR its platformdirs wants."""
    env_default("XDG_RUNTIME_DIR", lambda: str(private_runtime_dir()))
    import pgserver

    return pgserver


def private_runtime_dir() -> Path:
    """One runtime directory per user for pgserver (``<tmp>/pgserver-runtime-<uid>``, mode
    0700), reused by every process: a new directory per process was left behind by each
    one. A path someone else owns, or that others may write to, is not trusted: then a
    fresh private directory is made instead."""
    path = Path(tempfile.gettempdir()) / f"pgserver-runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return Path(tempfile.mkdtemp(prefix="pgserver-runtime-"))
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or info.st_mode & 0o077:
        return Path(tempfile.mkdtemp(prefix="pgserver-runtime-"))
    return path


def start_embedded(data_dir: str | Path = DEFAULT_DATA_DIR, *, keep_running: bool = True) -> str:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``.

    Returns an admin DSN (user ``postgres``, database ``postgres``, Unix socket in the
    data directory). With ``keep_running`` the server outlives this process, so the
    Dagster UI started later finds the migrated data.
    """
    pgserver = _pgserver()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    uri = server.get_uri()
    if keep_running:
        # A server that outlives us needs no handle of ours: leave pgserver's list now, not
        # at exit (``checkpoint-assets ui`` replaces this process with dagster dev, and an
        # exec runs no exit handlers, which left our pid in the list for ever).
        server.cleanup()
    return uri


def stop_embedded(data_dir: str | Path = DEFAULT_DATA_DIR) -> bool:
    """Stop the embedded PostgreSQL in ``data_dir`` if it runs; True if it was stopped.

    Whoever else is still connected is disconnected (PostgreSQL's fast shutdown); the data
    stays in ``data_dir`` and the next quick start or ``ui`` starts the server again.
    """
    data_dir = Path(data_dir).resolve()
    (data_dir / HANDLE_PIDS_FILE).unlink(missing_ok=True)
    if not (data_dir / "postmaster.pid").exists():
        return False
    pgserver = _pgserver()
    # pgserver runs the server as the user "pgserver" when started by root.
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    return True


def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` if missing and return a DSN for it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for_database(admin_dsn, name)


def dsn_for_database(dsn: str, name: str) -> str:
    """The same DSN pointing at another database."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**params)


@contextmanager
def temporary_database(admin_dsn: str, prefix: str = "ca_tmp") -> Iterator[str]:
    """A new, empty database with a unique name, dropped afterwards whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield dsn_for_database(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
