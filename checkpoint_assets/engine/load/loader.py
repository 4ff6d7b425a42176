"""Load one batch of the export into PostgreSQL: one transaction, idempotent, conflict-safe.

Order of events for a batch:
1. the batch's bytes are checked against the export's digests (nothing touched yet);
2. every row is converted (a row that cannot be converted losslessly stops here);
3. one transaction takes an advisory lock on the batch, so two loaders of the same batch
   run one after the other and the second finds everything already present;
4. rows go in with binary COPY: straight into the tables when none of the batch's threads
   exist yet, otherwise through temporary tables and ``INSERT .. ON CONFLICT DO NOTHING``;
5. every row of the batch is compared with what the table now holds: a row that was
   already there with different content is a conflict, and the transaction rolls back."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.types.json import Jsonb

from checkpoint_assets.engine.core.checkpoint_metadata import MetadataChange
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import ConflictError, FailureKind, MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_batch
from checkpoint_assets.engine.load import superseded_table
from checkpoint_assets.engine.load.convert import (
    ConvertedThread,
    JsonText,
    VersionConflictError,
    convert_thread,
    decode_thread,
    split_type,
)
from checkpoint_assets.engine.load.target import (
    COLUMNS,
    PRIMARY_KEYS,
    Target,
    TargetUnreachableError,
    refresh_statistics,
    scrub,
)
from checkpoint_assets.engine.verify.expected_views import remember_loaded_batch

# Columns whose equality means "the same row"; the writes' task_path is part of content.
CONTENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("parent_checkpoint_id", "checkpoint", "metadata"),
    "checkpoint_blobs": ("type", "blob"),
    "checkpoint_writes": ("task_path", "channel", "type", "blob"),
}
MAX_CONFLICT_KEYS = 20
TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg.errors.SerializationFailure,
                    psycopg.errors.DeadlockDetected)
# OperationalError subclasses that the same rows always raise again (e.g. an index row over
# the btree size limit): retrying cannot help, so they fail at once like any other error.
PERMANENT_ERRORS = (psycopg.errors.ProgramLimitExceeded,)


@dataclass
class BatchLoadResult:
    """What loading one batch did, per table."""

    key: str
    inserted: dict[str, int]
    already_present: dict[str, int]
    seconds: float
    batch_sha256: str
    threads: int
    attempts: int = 1
    metadata_changes: list[tuple[tuple[str, str, str], MetadataChange]] = field(
        default_factory=list)
    superseded: int = 0  # rows of versions.SUPERSEDED_TABLE this batch has
    refused: list[VersionConflictError] = field(default_factory=list)  # --strict-versions

    @property
    def rows(self) -> dict[str, int]:
        """Rows of the batch per table (inserted + already present)."""
        return {t: self.inserted[t] + self.already_present[t] for t in self.inserted}


class TransientLoadError(MigrationError):
    """The database went away or aborted the transaction; retrying may succeed."""

    kind = FailureKind.TRANSIENT


@dataclass
class ConvertedBatch:
    """One batch converted: its thread ids, PostgresSaver rows per table, the metadata
    changes JSONB forced, and the later values of channel versions (versions.py) with the
    threads --strict-versions refused."""

    threads: list[str]
    rows: dict[str, list[tuple]]
    metadata_changes: list
    superseded: list[tuple] = field(default_factory=list)
    refused: list[VersionConflictError] = field(default_factory=list)


def convert_batch(manifest: ExportManifest, key: str, cipher: Cipher | None = None,
                  strict_versions: bool = False) -> ConvertedBatch:
    """Verify and convert one batch. With ``strict_versions`` a thread whose content
    differs at one channel version is left out (listed in ``refused``); the others are
    converted as usual."""
    out = ConvertedBatch([], {t: [] for t in COLUMNS}, [])
    pickled: list[dict[str, str]] = []
    parsed = list(read_batch(manifest, key))
    decoded: dict[str, list] = {}
    for thread in parsed:
        pickled.extend(
            {"thread_id": r.thread_id, "checkpoint_ns": r.checkpoint_ns,
             "checkpoint_id": r.checkpoint_id}
            for r in thread.checkpoints if split_type(r.type)[0] == "pickle")
        if pickled:
            continue
        decoded[thread.thread_id] = decode_thread(thread, cipher)
        try:
            converted: ConvertedThread = convert_thread(thread, cipher,
                                                        decoded[thread.thread_id],
                                                        strict_versions)
        except VersionConflictError as exc:
            out.refused.append(exc)
            continue
        out.threads.append(thread.thread_id)
        out.rows["checkpoints"].extend(converted.checkpoints)
        out.rows["checkpoint_blobs"].extend(converted.blobs)
        out.rows["checkpoint_writes"].extend(converted.writes)
        out.metadata_changes.extend(converted.metadata_changes)
        out.superseded.extend(converted.superseded)
    if pickled:
        raise MigrationError(
            f"Batch {key} holds {len(pickled)} checkpoints stored with pickle "
            f"(pickle_fallback): {pickled}. Unpickling needs the application's own classes, "
            "so they are not migrated.",
            "Re-save those threads with the msgpack serializer in the application, export "
            "again, or delete them from the source if they are not needed.",
        )
    # The batch check that follows in this process builds its expected view from these.
    remember_loaded_batch(manifest, key, cipher, parsed, decoded)
    return out


def load_batch(
    target: Target,
    manifest: ExportManifest,
    key: str,
    *,
    cipher: Cipher | None = None,
    attempts: int = 3,
    backoff_seconds: float = 1.0,
    strict_versions: bool = False,
) -> BatchLoadResult:
    """Load one batch of ``manifest`` into ``target`` in one transaction.

    Transient database errors (connection lost, server restart, serialization failure)
    are retried up to ``attempts`` times with exponential backoff. Raises ConflictError
    if the target holds different rows under the batch's keys, MigrationError for bad
    input; the target is unchanged in every failure case. ``strict_versions``: threads
    whose content differs at one channel version are not loaded, the others are; the
    result's ``refused`` names them (see convert_batch).
    """
    started = time.perf_counter()
    batch = convert_batch(manifest, key, cipher, strict_versions)
    threads, rows = batch.threads, batch.rows
    lock_id = batch_lock_id(target.schema, manifest.batch(key).sha256)
    for attempt in range(1, attempts + 1):
        try:
            with target.connect() as conn:
                # Before the batch's transaction: a rollback must not undo the statistics.
                refresh_statistics(conn)
                inserted, present = load_rows(conn, lock_id, threads, rows, cipher)
                superseded_table.insert_rows(conn, batch.superseded)
                conn.commit()
            break
        except ConflictError:
            raise
        except PERMANENT_ERRORS as exc:
            raise MigrationError(
                f"Loading batch {key} into {target.display} failed: "
                f"{scrub(str(exc).strip(), target.dsn)}",
                "Nothing of this batch was written. Fix the cause and re-run this batch.",
            ) from None
        except TRANSIENT_ERRORS as exc:
            if attempt == attempts:
                raise TransientLoadError(
                    f"Loading batch {key} into {target.display} failed {attempts} times: "
                    f"{scrub(str(exc).strip(), target.dsn)}",
                    "Nothing of this batch was written. Check the server, then re-run "
                    "(backfill) this batch.",
                ) from None
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
        except MigrationError as exc:
            if isinstance(exc, TargetUnreachableError) and attempt < attempts:
                time.sleep(backoff_seconds * 2 ** (attempt - 1))
                continue
            raise
        except psycopg.Error as exc:
            raise MigrationError(
                f"Loading batch {key} into {target.display} failed: "
                f"{scrub(str(exc).strip(), target.dsn)}",
                "Nothing of this batch was written. Fix the cause and re-run this batch.",
            ) from None
    return BatchLoadResult(
        key=key, inserted=inserted, already_present=present,
        seconds=time.perf_counter() - started, batch_sha256=manifest.batch(key).sha256,
        threads=len(threads), attempts=attempt, metadata_changes=batch.metadata_changes,
        superseded=len(batch.superseded), refused=batch.refused,
    )


def batch_lock_id(schema: str | None, batch_sha: str) -> int:
    digest = hashlib.sha256(f"{schema or ''}\x00{batch_sha}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def load_rows(
    conn: psycopg.Connection,
    lock_id: int,
    threads: list[str],
    rows: dict[str, list[tuple]],
    cipher: Cipher | None,
) -> tuple[dict[str, int], dict[str, int]]:
    # Two loaders of the same batch queue here; the second then finds every row present.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
    if not any_thread_present(conn, threads):
        for table, table_rows in rows.items():
            copy_rows(conn, sql.Identifier(table), table, table_rows)
        return ({t: len(r) for t, r in rows.items()}, {t: 0 for t in rows})
    inserted: dict[str, int] = {}
    present: dict[str, int] = {}
    for table, table_rows in rows.items():
        stage = stage_table(conn, f"stage_{table}", table, table_rows)
        # Re-running is safe: rows already there are skipped, then compared below.
        cursor = conn.execute(sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
        ).format(table=sql.Identifier(table), stage=stage, cols=column_list(table)))
        inserted[table] = cursor.rowcount
        present[table] = len(table_rows) - cursor.rowcount
        raise_on_conflict(conn, table, stage, cipher, threads)
    return inserted, present


def stage_table(conn: psycopg.Connection, name: str, table: str,
           rows: Sequence[tuple]) -> sql.Identifier:
    """A temporary table ``name`` shaped like ``table`` holding ``rows``, analyzed."""
    stage = sql.Identifier(name)
    conn.execute(sql.SQL(
        "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
    ).format(stage, sql.Identifier(table)))
    copy_rows(conn, stage, table, rows)
    # A temporary table is never analyzed by autovacuum; without statistics the planner
    # may join it to the whole table instead of looking its keys up (raise_on_conflict).
    conn.execute(sql.SQL("ANALYZE {}").format(stage))
    return stage


def any_thread_present(conn: psycopg.Connection, threads: list[str]) -> bool:
    for table in COLUMNS:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE thread_id = ANY(%s))").format(
            sql.Identifier(table))
        row = conn.execute(query, (threads,)).fetchone()
        if row and row[0]:
            return True
    return False


def column_list(table: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS[table])


def as_jsonb(value: Any) -> Any:
    return Jsonb(value, dumps=text_as_is) if isinstance(value, JsonText) else value


def text_as_is(text: str) -> str:
    return text


def copy_rows(conn: psycopg.Connection, relation: sql.Composable, table: str,
          rows: Sequence[tuple]) -> None:
    if not rows:
        return
    if table == "checkpoints":
        rows = [(*row[:4], as_jsonb(row[4]), as_jsonb(row[5])) for row in rows]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        relation, column_list(table))
    cursor = conn.cursor()
    # A writer thread sends the data while this thread formats the next rows.
    with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
        copy.set_types([pg_type for _, pg_type in COLUMNS[table]])
        for row in rows:
            copy.write_row(row)


def raise_on_conflict(conn: psycopg.Connection, table: str, stage: sql.Composable,
                      cipher: Cipher | None, threads: Sequence[str] | None = None) -> None:
    """Raise ConflictError if a row of ``stage`` differs from the ``table`` row with its key.

    ``threads``, if given, are the only threads ``stage`` holds: the table is then read
    through its thread_id index for them alone, never scanned whole, however big it is.
    """
    keys = PRIMARY_KEYS[table]
    join = sql.SQL(" AND ").join(
        sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in keys)
    differs = sql.SQL(" OR ").join(
        sql.SQL("t.{c} IS DISTINCT FROM s.{c}").format(c=sql.Identifier(c))
        for c in CONTENT_COLUMNS[table])
    extra = sql.SQL(", t.type, t.blob, s.type, s.blob") if table == "checkpoint_blobs" \
        else sql.SQL("")
    if threads is not None:
        differs = sql.SQL("t.thread_id = ANY(%(threads)s) AND ({})").format(differs)
    query = sql.SQL("SELECT {keys}{extra} FROM {stage} s JOIN {table} t ON {join} "
                    "WHERE {differs}").format(
        keys=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in keys),
        extra=extra, stage=stage, table=sql.Identifier(table), join=join, differs=differs)
    conflicts = []
    for record in conn.execute(query, {"threads": list(threads or [])}):
        if table == "checkpoint_blobs" and cipher is not None and same_plaintext(
                cipher, record[len(keys):]):
            continue  # the same value encrypted again with a fresh nonce
        conflicts.append(dict(zip(keys, record[:len(keys)])))
    if conflicts:
        shown = conflicts[:MAX_CONFLICT_KEYS]
        raise ConflictError(
            f"The target already holds {len(conflicts)} {table} row(s) with the same keys but "
            f"different content, e.g. {shown}. Nothing of this batch was written and the "
            "existing rows were left as they are.",
            "Find out who wrote those rows (an application already running on PostgresSaver? "
            "an earlier migration from a different source?). Migrate into an empty "
            "database or schema, or delete the conflicting threads from the target, then "
            "re-run this batch.",
            keys=conflicts,
        )


def same_plaintext(cipher: Cipher, record: Sequence[Any]) -> bool:
    t_type, t_blob, s_type, s_blob = record
    if t_type != s_type or "+" not in (t_type or ""):
        return False
    name = t_type.split("+", 1)[1]
    return cipher.decrypt(name, bytes(t_blob)) == cipher.decrypt(name, bytes(s_blob))
