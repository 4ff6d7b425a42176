"""Load one batch of the export into PostgreSQL: one transaction, idempotent, conflict-safe.

Order of events for a batch:
1. the batch's bytes are checked against the export's digests (nothing touched yet);
2. every row is converted (a row that cannot be converted losslessly stops here);
3. one transaction takes an advisory lock on the batch, so two loaders of the same batch
   run one after the other and the second finds everything already present;
4. rows go in with binary COPY: straight into the tables when none of the batch's threads
   exist yet, otherwise through temporary tables and ``INSERT .. ON CONFLICT DO NOTHING``;
5. every row of the batch is compared with what the table now holds: a row that was
   already there with different content is a conflict, and the transaction rolls back.
"""

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
from checkpoint_assets.engine.core.rows import ThreadRows
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
from checkpoint_assets.engine.sync.export_chain import ExportChain
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
    lock_id = _lock_id(target.schema, manifest.batch(key).sha256)
    for attempt in range(1, attempts + 1):
        try:
            with target.connect() as conn:
                # Before the batch's transaction: a rollback must not undo the statistics.
                refresh_statistics(conn)
                inserted, present = _load_rows(conn, lock_id, threads, rows, cipher)
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


def _lock_id(schema: str | None, batch_sha: str) -> int:
    digest = hashlib.sha256(f"{schema or ''}\x00{batch_sha}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _load_rows(
    conn: psycopg.Connection,
    lock_id: int,
    threads: list[str],
    rows: dict[str, list[tuple]],
    cipher: Cipher | None,
) -> tuple[dict[str, int], dict[str, int]]:
    # Two loaders of the same batch queue here; the second then finds every row present.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
    if not _any_thread_present(conn, threads):
        for table, table_rows in rows.items():
            _copy(conn, sql.Identifier(table), table, table_rows)
        return ({t: len(r) for t, r in rows.items()}, {t: 0 for t in rows})
    inserted: dict[str, int] = {}
    present: dict[str, int] = {}
    for table, table_rows in rows.items():
        stage = _stage(conn, f"stage_{table}", table, table_rows)
        # Re-running is safe: rows already there are skipped, then compared below.
        cursor = conn.execute(sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
        ).format(table=sql.Identifier(table), stage=stage, cols=_cols(table)))
        inserted[table] = cursor.rowcount
        present[table] = len(table_rows) - cursor.rowcount
        raise_on_conflict(conn, table, stage, cipher, threads)
    return inserted, present


def _stage(conn: psycopg.Connection, name: str, table: str,
           rows: Sequence[tuple]) -> sql.Identifier:
    """A temporary table ``name`` shaped like ``table`` holding ``rows``, analyzed."""
    stage = sql.Identifier(name)
    conn.execute(sql.SQL(
        "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
    ).format(stage, sql.Identifier(table)))
    _copy(conn, stage, table, rows)
    # A temporary table is never analyzed by autovacuum; without statistics the planner
    # may join it to the whole table instead of looking its keys up (raise_on_conflict).
    conn.execute(sql.SQL("ANALYZE {}").format(stage))
    return stage


def _any_thread_present(conn: psycopg.Connection, threads: list[str]) -> bool:
    for table in COLUMNS:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE thread_id = ANY(%s))").format(
            sql.Identifier(table))
        row = conn.execute(query, (threads,)).fetchone()
        if row and row[0]:
            return True
    return False


def _cols(table: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS[table])


def _as_jsonb(value: Any) -> Any:
    return Jsonb(value, dumps=_text_as_is) if isinstance(value, JsonText) else value


def _text_as_is(text: str) -> str:
    return text


def _copy(conn: psycopg.Connection, relation: sql.Composable, table: str,
          rows: Sequence[tuple]) -> None:
    if not rows:
        return
    if table == "checkpoints":
        rows = [(*row[:4], _as_jsonb(row[4]), _as_jsonb(row[5])) for row in rows]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        relation, _cols(table))
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
        if table == "checkpoint_blobs" and cipher is not None and _same_plaintext(
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


def _same_plaintext(cipher: Cipher, record: Sequence[Any]) -> bool:
    t_type, t_blob, s_type, s_blob = record
    if t_type != s_type or "+" not in (t_type or ""):
        return False
    name = t_type.split("+", 1)[1]
    return cipher.decrypt(name, bytes(t_blob)) == cipher.decrypt(name, bytes(s_blob))


# --------------------------------------------------------------------------- sync generations


@dataclass
class SyncApplyResult:
    """What applying one batch of a sync generation (or its deletions) did, per table."""

    key: str
    threads: int
    inserted: dict[str, int]
    updated: dict[str, int]
    deleted: dict[str, int]
    already_present: dict[str, int]
    seconds: float = 0.0


def convert_rows(threads: Sequence[ThreadRows], cipher: Cipher | None) -> dict[str, list[tuple]]:
    """The PostgresSaver rows of these threads, per table (as a load converts them)."""
    rows: dict[str, list[tuple]] = {t: [] for t in COLUMNS}
    for thread in threads:
        converted = convert_thread(thread, cipher)
        rows["checkpoints"].extend(converted.checkpoints)
        rows["checkpoint_blobs"].extend(converted.blobs)
        rows["checkpoint_writes"].extend(converted.writes)
    return rows


def apply_sync_batch(target: Target, chain: ExportChain, manifest: ExportManifest, key: str,
                     cipher: Cipher | None = None) -> SyncApplyResult:
    """Bring the target's rows of one sync batch's threads to the batch, in one transaction.

    A row is inserted when its key is new; updated, or removed when the batch no longer
    has it, only when the target row is the one this tool loaded before (the conversion
    of the thread's rows in the generation that held it until now). Any other target row
    of these threads (written or changed by someone else) is a ConflictError by key, and
    nothing is written; so is a row this tool loaded that the target no longer holds
    while the batch still has its key (the target application deleted it: the sync does
    not re-create it). Running it again changes nothing.
    """
    started = time.perf_counter()
    batch = convert_batch(manifest, key, cipher)
    threads = batch.threads
    before = convert_rows(chain.rows_before(threads, manifest.generation), cipher)
    result = _apply_threads(target, chain, key, threads, batch.rows, before, cipher,
                            batch.superseded)
    result.seconds = time.perf_counter() - started
    return result


def load_live_threads(target: Target, chain: ExportChain, manifest: ExportManifest, key: str,
                      threads: frozenset[str] | None = None,
                      cipher: Cipher | None = None) -> SyncApplyResult:
    """Load the threads of one batch that the chain still holds there (``threads``; None:
    all of them) into a target that lost what this tool loaded before (a database dropped
    and created again), in one transaction: each row is inserted when missing, and any
    other target row of those threads is a ConflictError by key (nothing of the batch
    written). Running it again changes nothing."""
    started = time.perf_counter()
    batch = convert_batch(manifest, key, cipher)
    keep = (lambda thread_id: True) if threads is None else threads.__contains__
    ids = [tid for tid in batch.threads if keep(tid)]
    rows = {table: [row for row in batch.rows[table] if keep(row[0])] for table in batch.rows}
    superseded = [row for row in batch.superseded if keep(row[0])]
    # Nothing this tool loaded is there any more: every row present must be the new one.
    result = _apply_threads(target, chain, key, ids, rows, {t: [] for t in COLUMNS}, cipher,
                            superseded)
    result.seconds = time.perf_counter() - started
    return result


def apply_deletions(target: Target, chain: ExportChain, manifest: ExportManifest,
                    cipher: Cipher | None = None,
                    threads: Sequence[str] | None = None) -> SyncApplyResult:
    """Delete from the target the threads generation ``manifest`` found deleted in the
    source (or ``threads`` of them), in one transaction, only where the target holds
    exactly the rows this tool loaded for them (else ConflictError by key, nothing
    deleted)."""
    started = time.perf_counter()
    deleted = list(threads if threads is not None
                   else manifest.header.get("deleted_threads") or [])
    before = convert_rows(chain.rows_before(deleted, manifest.generation), cipher)
    result = _apply_threads(target, chain, f"sync-{manifest.generation:04d}-deletions",
                            deleted, {t: [] for t in COLUMNS}, before, cipher)
    result.seconds = time.perf_counter() - started
    return result


def _apply_threads(target: Target, chain: ExportChain, key: str, threads: list[str],
                   rows: dict[str, list[tuple]], before: dict[str, list[tuple]],
                   cipher: Cipher | None, superseded: Sequence[tuple] = ()) -> SyncApplyResult:
    result = SyncApplyResult(key, len(threads), {}, {}, {}, {})
    if not threads:
        for counts in (result.inserted, result.updated, result.deleted, result.already_present):
            counts.update({t: 0 for t in COLUMNS})
        return result
    try:
        with target.connect() as conn:
            # One sync of this export at a time: batches of two generations share threads.
            conn.execute("SELECT pg_advisory_xact_lock(%s)",
                         (_lock_id(target.schema, "sync:" + chain.export.footer_sha256),))
            for table in COLUMNS:
                _stage(conn, f"new_{table}", table, rows[table])
                _stage(conn, f"before_{table}", table, before[table])
            found = [k for table in COLUMNS for k in _not_ours(conn, table, threads, cipher)]
            gone = [k for table in COLUMNS for k in _deleted_in_target(conn, table)]
            if gone:
                raise deleted_in_target_error(key, gone, found)
            if found:
                raise ConflictError(
                    f"The target holds {len(found)} row(s) of threads this sync changes that "
                    f"this tool did not load or that someone changed since, e.g. "
                    f"{found[:MAX_CONFLICT_KEYS]}. Nothing of {key} was written or deleted.",
                    "Find out who wrote those rows (an application already writing to "
                    "PostgresSaver?). Leave them and keep these threads out of the "
                    "migration (migrate the other threads into a new --export with "
                    "--threads), or, if the source is right, delete those threads from the "
                    "target and load them again with an export of their own (migrate "
                    "--threads THEM --export F) before the next sync: deleting them alone "
                    "is a deletion the sync refuses too.",
                    keys=found)
            for table in COLUMNS:
                _apply_table(conn, table, threads, len(rows[table]), cipher, result)
            # This project's own rows of these threads follow them (no one else writes them).
            superseded_table.replace_threads(conn, threads, superseded)
            conn.commit()
    except psycopg.Error as exc:
        raise MigrationError(
            f"Applying {key} to {target.display} failed: {scrub(str(exc).strip(), target.dsn)}",
            "Nothing of it was written. Fix the cause and run the sync again.") from None
    return result


def _key_join(left: str, right: str, table: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{l}.{c} = {r}.{c}").format(l=sql.Identifier(left), r=sql.Identifier(right),
                                             c=sql.Identifier(c))
        for c in PRIMARY_KEYS[table])


def _differs(left: str, right: str, table: str) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(" OR ").join(
        sql.SQL("{l}.{c} IS DISTINCT FROM {r}.{c}").format(
            l=sql.Identifier(left), r=sql.Identifier(right), c=sql.Identifier(c))
        for c in CONTENT_COLUMNS[table]))


def _not_ours(conn: psycopg.Connection, table: str, threads: list[str],
              cipher: Cipher | None) -> list[dict]:
    """Keys of target rows of ``threads`` equal neither to what this tool loaded before
    (stage ``before_*``) nor to what it loads now (stage ``new_*``)."""
    keys = PRIMARY_KEYS[table]
    blobs = table == "checkpoint_blobs"
    extra = sql.SQL(", t.type, t.blob, b.type, b.blob, n.type, n.blob") if blobs \
        else sql.SQL("")
    query = sql.SQL(
        "SELECT {keys}{extra} FROM {table} t "
        "LEFT JOIN {before} b ON {jb} LEFT JOIN {new} n ON {jn} "
        "WHERE t.thread_id = ANY(%s) AND (b.thread_id IS NULL OR {db}) "
        "AND (n.thread_id IS NULL OR {dn})").format(
        keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in keys),
        extra=extra, table=sql.Identifier(table),
        before=sql.Identifier(f"before_{table}"), new=sql.Identifier(f"new_{table}"),
        jb=_key_join("t", "b", table), jn=_key_join("t", "n", table),
        db=_differs("t", "b", table), dn=_differs("t", "n", table))
    out = []
    for record in conn.execute(query, (threads,)):
        if blobs and cipher is not None:
            t_type, t_blob, b_type, b_blob, n_type, n_blob = record[len(keys):]
            if any(s_type is not None and _same_plaintext(cipher, (t_type, t_blob, s_type,
                                                                    s_blob))
                   for s_type, s_blob in ((b_type, b_blob), (n_type, n_blob))):
                continue  # the same value, encrypted with another nonce
        out.append({"table": table, **dict(zip(keys, record[:len(keys)])),
                    "conflict": "written or changed in the target"})
    return out


def _deleted_in_target(conn: psycopg.Connection, table: str) -> list[dict]:
    """Keys of rows this tool loaded (stage ``before_*``) that the target no longer holds
    although this sync keeps them (stage ``new_*`` has the key): the target application
    deleted them. A key the sync itself removes (absent from ``new_*``: a thread deleted
    in the source, or started again under the same id) is not one of them."""
    keys = PRIMARY_KEYS[table]
    query = sql.SQL(
        "SELECT {keys} FROM {before} b WHERE EXISTS (SELECT 1 FROM {new} n WHERE {jn}) "
        "AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {jt})").format(
        keys=sql.SQL(", ").join(sql.SQL("b.{}").format(sql.Identifier(c)) for c in keys),
        before=sql.Identifier(f"before_{table}"), new=sql.Identifier(f"new_{table}"),
        table=sql.Identifier(table), jn=_key_join("n", "b", table),
        jt=_key_join("t", "b", table))
    return [{"table": table, **dict(zip(keys, record)), "conflict": "deleted in the target"}
            for record in conn.execute(query)]


def deleted_in_target_error(key: str, gone: list[dict], changed: list[dict]) -> ConflictError:
    """The ConflictError for rows this tool loaded that the target application deleted
    (``gone``), with the rows it changed (``changed``) if any: what happened and what to
    do. Every key is in the error's ``keys``."""
    threads = sorted({k["thread_id"] for k in gone})
    also = (f" It also holds {len(changed)} row(s) of these threads that this tool did not "
            f"load or that someone changed, e.g. {changed[:MAX_CONFLICT_KEYS]}."
            if changed else "")
    return ConflictError(
        f"The target application deleted {len(gone)} row(s) of {len(threads)} thread(s) "
        f"that this tool had loaded (PostgresSaver.delete_thread?), and the source still "
        f"has them: {threads[:MAX_CONFLICT_KEYS]}, e.g. {gone[:MAX_CONFLICT_KEYS]}. The "
        f"sync does not bring deleted rows back: nothing of {key} was written or "
        f"re-created.{also}",
        "If that deletion is meant to stand (an erasure request), stop whatever still "
        "writes these threads to SQLite, delete them there too (SqliteSaver.delete_thread) "
        "and migrate the other threads into a new --export (--threads): this export's "
        "syncs stop at this batch while they are gone. If they were deleted by mistake, "
        "load them again with an export of their own (checkpoint-assets migrate --threads "
        "THEM --export F), then sync again.",
        keys=gone + changed)


def _apply_table(conn: psycopg.Connection, table: str, threads: list[str], new_rows: int,
                 cipher: Cipher | None, result: SyncApplyResult) -> None:
    """Delete, update and insert so the target's rows of ``threads`` are stage ``new_*``
    (every target row of them is known to be this tool's: see :func:`_not_ours`)."""
    ident, new = sql.Identifier(table), sql.Identifier(f"new_{table}")
    keys = PRIMARY_KEYS[table]
    deleted = conn.execute(sql.SQL(
        "DELETE FROM {table} t WHERE t.thread_id = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM {new} n WHERE {join})").format(
        table=ident, new=new, join=_key_join("t", "n", table)), (threads,)).rowcount
    blobs = table == "checkpoint_blobs"
    stale = conn.execute(sql.SQL(
        "SELECT {keys}{extra} FROM {table} t JOIN {new} n ON {join} WHERE {differs}").format(
        keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in keys),
        extra=sql.SQL(", t.type, t.blob, n.type, n.blob") if blobs else sql.SQL(""),
        table=ident, new=new, join=_key_join("t", "n", table),
        differs=_differs("t", "n", table))).fetchall()
    if blobs and cipher is not None:
        stale = [r for r in stale if not _same_plaintext(cipher, r[len(keys):])]
    content = CONTENT_COLUMNS[table]
    update = sql.SQL("UPDATE {table} t SET ({cols}) = (SELECT {ncols} FROM {new} n WHERE "
                     "{join}) WHERE {keys}").format(
        table=ident, new=new, join=_key_join("t", "n", table),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in content),
        ncols=sql.SQL(", ").join(sql.SQL("n.{}").format(sql.Identifier(c)) for c in content),
        keys=sql.SQL(" AND ").join(sql.SQL("t.{} = %s").format(sql.Identifier(c))
                                   for c in keys))
    with conn.cursor() as cursor:
        cursor.executemany(update, [tuple(r[:len(keys)]) for r in stale])
    inserted = conn.execute(sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {new} ON CONFLICT DO NOTHING").format(
        table=ident, new=new, cols=_cols(table))).rowcount
    result.inserted[table] = inserted
    result.updated[table] = len(stale)
    result.deleted[table] = deleted
    result.already_present[table] = new_rows - inserted - len(stale)
