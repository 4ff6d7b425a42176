"""Read threads back through LangGraph's own savers and compare them field by field.

This is the witness closest to the application: ``SqliteSaver.list`` on the source and
``PostgresSaver.list`` on the target, per (thread_id, checkpoint_ns), compared on config,
checkpoint (channel values included), metadata, parent config and pending writes.

Two differences are legitimate and normalised, each counted in the notes:
- a checkpoint with ``v`` < 4 keeps ``pending_sends`` in SQLite; PostgresSaver rebuilds
  them from the parent's ``__pregel_tasks`` writes as a channel value (the same rewrite
  LangGraph's ``Pregel._migrate_checkpoint`` applies when it loads such a checkpoint);
- a DeltaChannel snapshot blob is keyed by version, so PostgresSaver also shows it on a
  sibling checkpoint that shares the version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import TASKS, _DeltaSnapshot
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.rows import dict_row

from checkpoint_assets.engine.crypto import Cipher
from checkpoint_assets.engine.snapshot import private_snapshot
from checkpoint_assets.engine.target import Target

FIELDS = ("config", "checkpoint", "metadata", "parent_config", "pending_writes")


def compare_thread_readback(
    source_path: str | Path, target: Target, threads: Sequence[str],
    cipher: Cipher | None = None,
) -> tuple[list[dict], list[str]]:
    """Compare the given threads through both savers; return (mismatches, notes)."""
    serde = cipher.serializer if cipher is not None else JsonPlusSerializer()
    with private_snapshot(Path(source_path)) as copy:
        return _compare_threads(copy, target, threads, serde)


def _compare_threads(copy: Path, target: Target, threads: Sequence[str],
                     serde: Any) -> tuple[list[dict], list[str]]:
    sqlite_conn = sqlite3.connect(copy, check_same_thread=False)
    mismatches: list[dict] = []
    normalised = {"v<4 pending_sends": 0, "DeltaChannel snapshot on a sibling": 0}
    try:
        sqlite_saver = SqliteSaver(sqlite_conn, serde=serde)
        sqlite_saver.is_setup = True  # never run setup(): it may create tables or columns
        columns = {r[1] for r in sqlite_conn.execute("PRAGMA table_info(writes)")}
        sqlite_saver._has_task_path = "task_path" in columns
        with target.connect(autocommit=True) as pg_conn:
            pg_conn.row_factory = dict_row  # type: ignore[assignment]
            pg_saver = PostgresSaver(pg_conn, serde=serde)  # type: ignore[arg-type]
            for thread_id in threads:
                namespaces = [r[0] for r in sqlite_conn.execute(
                    "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?",
                    (thread_id,))]
                for ns in namespaces:
                    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                    left = list(sqlite_saver.list(config))
                    right = list(pg_saver.list(config))
                    mismatches.extend(_compare(thread_id, ns, left, right, normalised))
    finally:
        sqlite_conn.close()
    notes = [f"normalised ({name}): {count}" for name, count in normalised.items() if count]
    return mismatches, notes


def _compare(thread_id: str, ns: str, left: list, right: list,
             normalised: dict[str, int]) -> list[dict]:
    if len(left) != len(right):
        return [{"thread_id": thread_id, "checkpoint_ns": ns,
                 "problem": f"{len(left)} checkpoints in SQLite, {len(right)} in PostgreSQL"}]
    found = []
    for a, b in zip(left, right):
        checkpoint_a = _normalise_sqlite_checkpoint(a.checkpoint, normalised)
        checkpoint_b = _normalise_pg_checkpoint(b.checkpoint, checkpoint_a, normalised)
        pairs = {"config": (a.config, b.config), "checkpoint": (checkpoint_a, checkpoint_b),
                 "metadata": (a.metadata, b.metadata),
                 "parent_config": (a.parent_config, b.parent_config),
                 "pending_writes": (a.pending_writes, b.pending_writes)}
        differing = [name for name, (x, y) in pairs.items() if not _same(x, y)]
        if differing:
            found.append({"thread_id": thread_id, "checkpoint_ns": ns,
                          "checkpoint_id": a.config["configurable"]["checkpoint_id"],
                          "problem": "differs: " + ", ".join(differing)})
    return found


def _normalise_sqlite_checkpoint(checkpoint: dict, normalised: dict[str, int]) -> dict:
    checkpoint = {**checkpoint, "channel_values": dict(checkpoint.get("channel_values", {})),
                  "channel_versions": dict(checkpoint.get("channel_versions", {}))}
    sends = checkpoint.pop("pending_sends", None)
    if checkpoint.get("v", 4) < 4 and sends:
        checkpoint["channel_values"][TASKS] = sends
        checkpoint["channel_versions"][TASKS] = max(checkpoint["channel_versions"].values())
        normalised["v<4 pending_sends"] += 1
    return checkpoint


def _normalise_pg_checkpoint(checkpoint: dict, reference: dict,
                             normalised: dict[str, int]) -> dict:
    values = dict(checkpoint.get("channel_values", {}))
    for channel, value in list(values.items()):
        if isinstance(value, _DeltaSnapshot) and channel not in reference["channel_values"]:
            del values[channel]
            normalised["DeltaChannel snapshot on a sibling"] += 1
    checkpoint = {**checkpoint, "channel_values": values}
    checkpoint.pop("pending_sends", None)
    return checkpoint


_PLAIN = JsonPlusSerializer()


def _same(x: Any, y: Any) -> bool:
    if x == y:
        return True
    # NaN is not equal to itself; equal serialisations are equal values.
    try:
        return _PLAIN.dumps_typed(x) == _PLAIN.dumps_typed(y)
    except Exception:
        return False
