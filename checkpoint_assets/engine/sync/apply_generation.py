"""Apply a sync generation to the target: changed threads replaced whole, deleted ones removed.

The loader's rules hold (one transaction per batch, an advisory lock on it, conflicts
roll back), and a row the target application changed or deleted since this tool loaded
it is a conflict, never overwritten or re-created.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import ConflictError, MigrationError
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load import superseded_table
from checkpoint_assets.engine.load.convert import (
    convert_thread,
)
from checkpoint_assets.engine.load.loader import (
    CONTENT_COLUMNS,
    MAX_CONFLICT_KEYS,
    batch_lock_id,
    column_list,
    convert_batch,
    same_plaintext,
    stage_table,
)
from checkpoint_assets.engine.load.target import (
    COLUMNS,
    PRIMARY_KEYS,
    Target,
    scrub,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain


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
                         (batch_lock_id(target.schema, "sync:" + chain.export.footer_sha256),))
            for table in COLUMNS:
                stage_table(conn, f"new_{table}", table, rows[table])
                stage_table(conn, f"before_{table}", table, before[table])
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
            if any(s_type is not None and same_plaintext(cipher, (t_type, t_blob, s_type,
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
        stale = [r for r in stale if not same_plaintext(cipher, r[len(keys):])]
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
        table=ident, new=new, cols=column_list(table))).rowcount
    result.inserted[table] = inserted
    result.updated[table] = len(stale)
    result.deleted[table] = deleted
    result.already_present[table] = new_rows - inserted - len(stale)
