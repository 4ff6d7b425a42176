"""PostgresSaver's tables in a target, created or upgraded once however many batch loads
start at the same time."""

from __future__ import annotations

import time

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.load.target import LATEST_SCHEMA_VERSION, Target

SETUP_LOCK_ID = 0x43484B5054534554  # "CHKPTSET": serialises PostgresSaver.setup()
SETUP_LOCK_POLL_SECONDS = 0.2
SETUP_LOCK_TIMEOUT_SECONDS = 300.0


def ensure_tables(target: Target) -> None:
    """Create or upgrade PostgresSaver's tables in ``target`` unless they are up to date.

    Checking first means a user without CREATE privilege can load into tables an owner set
    up. Concurrent batch loads on a fresh database would race in PostgresSaver.setup(), so
    setup runs under an advisory lock, polled (pg_try_advisory_lock) rather than waited for:
    a waiting session then holds no snapshot that CREATE INDEX CONCURRENTLY would wait on.
    The check, the lock and the setup share one connection.
    """
    deadline = time.monotonic() + SETUP_LOCK_TIMEOUT_SECONDS
    # One connection throughout: a role limited to one connection can set up its tables.
    with target.connect(autocommit=True) as conn:
        if target.schema_version(conn) == LATEST_SCHEMA_VERSION:
            return  # a newer version goes on to Target.setup(), which refuses it
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (SETUP_LOCK_ID,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"Another process held the table-setup lock on {target.display} for "
                    f"{SETUP_LOCK_TIMEOUT_SECONDS:.0f} s.",
                    "Check pg_locks for a stuck session, then re-run the batch.")
            time.sleep(SETUP_LOCK_POLL_SECONDS)
        try:
            target.setup(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_ID,))
