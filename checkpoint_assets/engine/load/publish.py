"""Publish a verified staging schema into the target schema, in one transaction.

It applies the loader's own conflict rules: staged rows whose keys are
new are inserted, rows already in the target with the same content are skipped, and a row
already in the target with different content is a conflict that rolls everything back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from psycopg import sql

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.load.loader import raise_on_conflict
from checkpoint_assets.engine.load.target import COLUMNS, Target, refresh_statistics_of, scrub

PUBLISH_LOCK_ID = 0x43484B5450554231  # "CHKTPUB1": one publisher per database at a time


@dataclass
class PublishResult:
    """What publishing did, per table."""

    inserted: dict[str, int]
    already_present: dict[str, int]
    seconds: float

    @property
    def rows(self) -> dict[str, int]:
        """Staged rows per table."""
        return {t: self.inserted[t] + self.already_present[t] for t in self.inserted}


def publish(staging: Target, target: Target, cipher: Cipher | None = None) -> PublishResult:
    """Copy every staged row into ``target`` in one transaction; raise ConflictError on a
    conflict (nothing is published then). Publishing twice is safe: the second run finds
    every row present and inserts nothing."""
    if not staging.schema:
        raise MigrationError("Publishing needs a staging schema.",
                             "Set CHECKPOINT_ASSETS_STAGING_SCHEMA.")
    started = time.perf_counter()
    target.setup()
    inserted: dict[str, int] = {}
    present: dict[str, int] = {}
    try:
        with target.connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PUBLISH_LOCK_ID,))
            for table in COLUMNS:
                staged = sql.Identifier(staging.schema, table)
                cols = sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS[table])
                count = sql.SQL("SELECT count(*) FROM {}").format(staged)
                total = conn.execute(count).fetchone()[0]
                # Re-running is safe: rows already there are skipped, then compared below.
                cursor = conn.execute(sql.SQL(
                    "INSERT INTO {table} ({cols}) SELECT {cols} FROM {staged} "
                    "ON CONFLICT DO NOTHING").format(
                        table=sql.Identifier(table), cols=cols, staged=staged))
                inserted[table] = cursor.rowcount
                present[table] = total - cursor.rowcount
                raise_on_conflict(conn, table, staged, cipher)
            conn.commit()
    except MigrationError:
        raise
    except Exception as exc:  # psycopg errors: nothing was published (rolled back)
        raise MigrationError(
            f"Publishing {staging.display} into {target.display} failed: "
            f"{scrub(str(exc).strip(), target.dsn)}",
            "Nothing was published. Fix the cause and materialize the publish asset again.",
        ) from None
    refresh_statistics_of(target)  # the batch checks that follow look threads up by key
    return PublishResult(inserted, present, time.perf_counter() - started)
