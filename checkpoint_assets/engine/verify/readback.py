"""Read threads back through LangGraph's own savers and compare them field by field.

This is the witness closest to the application: ``SqliteSaver.list`` on the source and
``PostgresSaver.list`` on the target, per (thread_id, checkpoint_ns), compared on config,
checkpoint (channel values included), metadata, parent config and pending writes.

Four differences are legitimate and normalised, each counted in the notes:
- a checkpoint whose value of a channel differs from the value first written at the same
  version reads that first value from PostgresSaver, which keeps one value per version
  (see versions.py; the later value is named by the verification's own checks);
- a checkpoint with ``v`` < 4 keeps ``pending_sends`` in SQLite; PostgresSaver rebuilds
  them from the parent's ``__pregel_tasks`` writes as a channel value (the same rewrite
  LangGraph's ``Pregel._migrate_checkpoint`` applies when it loads such a checkpoint);
- a DeltaChannel snapshot blob is keyed by version, so PostgresSaver also shows it on a
  sibling checkpoint that shares the version;
- metadata values JSONB cannot hold (NUL characters, NaN...) are compared as changed by
  :func:`jsonb_metadata`; each such change is listed in the report's metadata_changes.

A row either saver cannot deserialize is a finding, reported by its checkpoint's key with
the saver's error; only database errors stop the comparison.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import fields, is_dataclass
from enum import Enum
from itertools import repeat
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import TASKS, _DeltaSnapshot
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.rows import dict_row

from checkpoint_assets.engine.core.checkpoint_metadata import jsonb_metadata
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.thread_names import KEPT, ThreadNames
from checkpoint_assets.engine.core.workers import process_pool
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.snapshot import private_snapshot
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.sync.export_chain import ExportChain, as_chain

# Below this many threads a second process does not pay for its start.
PARALLEL_MIN_THREADS = 200


def compare_thread_readback(
    source_path: str | Path, target: Target, threads: Sequence[str],
    cipher: Cipher | None = None, workers: int = 1, snapshot: Path | str | None = None,
    names: ThreadNames = KEPT,
) -> tuple[list[dict], list[str]]:
    """Compare the given threads through both savers; return (mismatches, notes).

    ``threads`` are the target's ids; ``names`` says what the source calls them (a
    fleet's prefix or mapping): SqliteSaver is asked for the source's id, and its configs
    are compared as if they carried the target's.

    The source is read from a private snapshot: a new one, or ``snapshot``, one the caller
    took of ``source_path``, or the live file's read-only URI (snapshot.live_uri), which
    each query reads as of its own start. With ``workers`` > 1 (and enough threads) the
    threads are read back in that many processes at once, each from the same snapshot.
    """
    with nullcontext(snapshot) if snapshot else private_snapshot(Path(source_path)) as copy:
        if workers <= 1 or len(threads) < PARALLEL_MIN_THREADS:
            mismatches, normalised = _compare_threads(copy, target, threads, cipher, names)
        else:
            chunks = [list(threads[i::workers]) for i in range(workers)]
            mismatches, normalised = [], Counter()
            with process_pool(workers) as pool:
                for found, counts in pool.map(_compare_threads, repeat(copy), repeat(target),
                                              chunks, repeat(cipher), repeat(names)):
                    mismatches.extend(found)
                    normalised.update(counts)
            order = {thread_id: n for n, thread_id in enumerate(threads)}
            mismatches.sort(key=lambda m: order.get(m.get("thread_id"), -1))
    notes = [f"normalised ({name}): {count}" for name, count in normalised.items() if count]
    return mismatches, notes


def _compare_threads(copy: Path | str, target: Target, threads: Sequence[str],
                     cipher: Cipher | None, names: ThreadNames = KEPT,
                     ) -> tuple[list[dict], Counter]:
    serde = cipher.serializer if cipher is not None else JsonPlusSerializer()
    sqlite_conn = sqlite3.connect(copy, check_same_thread=False,
                                  uri=str(copy).startswith("file:"))
    mismatches: list[dict] = []
    normalised = Counter({"v<4 pending_sends": 0, "DeltaChannel snapshot on a sibling": 0,
                          FIRST_VALUE: 0,
                          "metadata value PostgreSQL cannot hold (see metadata_changes)": 0})
    try:
        sqlite_saver = SqliteSaver(sqlite_conn, serde=serde)
        sqlite_saver.is_setup = True  # never run setup(): it may create tables or columns
        columns = {r[1] for r in sqlite_conn.execute("PRAGMA table_info(writes)")}
        sqlite_saver._has_task_path = "task_path" in columns
        with target.connect(autocommit=True) as pg_conn:
            pg_conn.row_factory = dict_row  # type: ignore[assignment]
            pg_saver = PostgresSaver(pg_conn, serde=serde)  # type: ignore[arg-type]
            for thread_id in threads:
                source_id = names.in_source(thread_id)
                namespaces = [r[0] for r in sqlite_conn.execute(
                    "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?",
                    (source_id,))]
                for ns in namespaces:
                    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                    in_source = {"configurable": {"thread_id": source_id, "checkpoint_ns": ns}}
                    left = _as_target(_listed(sqlite_saver, in_source), thread_id)
                    right = _listed(pg_saver, config)
                    if isinstance(left, list) and isinstance(right, list):
                        mismatches.extend(_compare(thread_id, ns, left, right, normalised))
                        continue
                    ids = [r[0] for r in sqlite_conn.execute(
                        "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND "
                        "checkpoint_ns = ? ORDER BY checkpoint_id DESC", (source_id, ns))]
                    for name, saver, listed, asked in (
                            ("SqliteSaver", sqlite_saver, left, in_source),
                            ("PostgresSaver", pg_saver, right, config)):
                        if not isinstance(listed, list):
                            mismatches.extend({**m, "thread_id": thread_id} for m in
                                              _unreadable(name, saver, asked, ids, listed))
    finally:
        sqlite_conn.close()
    return mismatches, normalised


def _as_target(listed: list | Exception, thread_id: str) -> list | Exception:
    """SqliteSaver's tuples with the target's thread id in their configs (the source's
    own id when a fleet renamed it; the rest of each tuple is the stored content)."""
    if not isinstance(listed, list):
        return listed

    def renamed(config: Any) -> Any:
        if not config or config["configurable"].get("thread_id") == thread_id:
            return config
        return {**config, "configurable": {**config["configurable"], "thread_id": thread_id}}
    return [item._replace(config=renamed(item.config), parent_config=renamed(item.parent_config))
            for item in listed]


def _listed(saver: Any, config: dict) -> list | Exception:
    """``saver.list(config)`` as a list, or the error the saver raised reading a row."""
    try:
        return list(saver.list(config))
    except (psycopg.Error, sqlite3.Error, MigrationError):
        raise  # the database, not a row: the verification stops with this error
    except Exception as exc:  # a row the saver cannot deserialize: a finding, named by key
        return exc


def _unreadable(saver_name: str, saver: Any, config: dict, checkpoint_ids: Sequence[str],
                error: Exception) -> list[dict]:
    """The checkpoints ``saver`` cannot read (each tried on its own), as mismatches."""
    thread_id = config["configurable"]["thread_id"]
    ns = config["configurable"]["checkpoint_ns"]
    found = []
    for checkpoint_id in checkpoint_ids:
        one = {"configurable": {**config["configurable"], "checkpoint_id": checkpoint_id}}
        try:
            saver.get_tuple(one)
        except (psycopg.Error, sqlite3.Error, MigrationError):
            raise
        except Exception as exc:  # reported by key, see _listed
            found.append({"thread_id": thread_id, "checkpoint_ns": ns,
                          "checkpoint_id": checkpoint_id,
                          "problem": f"{saver_name} cannot read it ({_error_text(exc)})"})
    return found or [{"thread_id": thread_id, "checkpoint_ns": ns,
                      "problem": f"{saver_name} cannot list this thread "
                                 f"({_error_text(error)})"}]


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _compare(thread_id: str, ns: str, left: list, right: list,
             normalised: dict[str, int]) -> list[dict]:
    if len(left) != len(right):
        return [{"thread_id": thread_id, "checkpoint_ns": ns,
                 "problem": f"{len(left)} checkpoints in SQLite, {len(right)} in PostgreSQL"}]
    found = []
    firsts = _first_values(left, normalised)
    for a, b in zip(left, right):
        checkpoint_a = _normalise_sqlite_checkpoint(firsts[id(a)], normalised)
        checkpoint_b = _normalise_pg_checkpoint(b.checkpoint, checkpoint_a, normalised)
        pairs = {"config": (a.config, b.config), "checkpoint": (checkpoint_a, checkpoint_b),
                 "metadata": (_normalise_metadata(a.metadata, b.metadata, normalised),
                              b.metadata),
                 "parent_config": (a.parent_config, b.parent_config),
                 "pending_writes": (a.pending_writes, b.pending_writes)}
        differing = [name for name, (x, y) in pairs.items() if not _same(x, y)]
        if differing:
            found.append({"thread_id": thread_id, "checkpoint_ns": ns,
                          "checkpoint_id": a.config["configurable"]["checkpoint_id"],
                          "problem": "differs: " + ", ".join(differing)})
    return found


FIRST_VALUE = ("a later value at an unchanged channel version, read as the version's first "
               "value (see reencoded_at_same_version, content_differs_at_same_version)")


def _first_values(listed: list, normalised: dict[str, int]) -> dict[int, dict]:
    """Each SQLite checkpoint of one namespace (``listed`` newest first, as ``list`` gives
    them) as PostgresSaver reads it: every channel value at a version an older checkpoint
    wrote first is that first value (PostgresSaver keeps one value per version). By
    ``id()`` of the CheckpointTuple."""
    first: dict[tuple[str, str], Any] = {}
    out: dict[int, dict] = {}
    for item in reversed(listed):
        checkpoint = item.checkpoint
        values = dict(checkpoint.get("channel_values", {}))
        for channel, version in (checkpoint.get("channel_versions") or {}).items():
            if channel not in values:
                continue
            key = (channel, str(version))
            if key not in first:
                first[key] = values[channel]
            elif not _same(first[key], values[channel]):
                values[channel] = first[key]
                normalised[FIRST_VALUE] += 1
        out[id(item)] = {**checkpoint, "channel_values": values}
    return out


def _normalise_metadata(metadata: Any, stored: Any, normalised: dict[str, int]) -> Any:
    """The source metadata as JSONB must hold it (the changes are reported separately)."""
    if _same(metadata, stored):
        return metadata
    fitted, changes = jsonb_metadata(metadata)
    if changes and _same(fitted, stored):
        normalised["metadata value PostgreSQL cannot hold (see metadata_changes)"] += 1
        return fitted
    return metadata


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


def _same(x: Any, y: Any) -> bool:
    return x == y or canonical(x) == canonical(y)


def canonical(value: Any) -> Any:
    """A form of ``value`` that compares equal exactly when the values are the same.

    ``==`` alone is wrong both ways for checkpoint values: NaN is not equal to itself,
    ``-0.0 == 0.0``, a str-Enum equals its string, and two equal sets may serialise in
    different orders.
    """
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, Enum):
        return ("enum", type(value).__qualname__, canonical(value.value))
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return ("model", type(value).__qualname__, canonical(value.model_dump()))
    if is_dataclass(value) and not isinstance(value, type):
        return ("dataclass", type(value).__qualname__,
                {f.name: canonical(getattr(value, f.name)) for f in fields(value)})
    if isinstance(value, dict):
        return ("dict", sorted(((repr(canonical(k)), canonical(v)) for k, v in value.items()),
                               key=lambda kv: kv[0]))
    if isinstance(value, (set, frozenset)):
        return ("set", sorted((canonical(v) for v in value), key=repr))
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("namedtuple", type(value).__qualname__, [canonical(v) for v in value])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canonical(v) for v in value])
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return ("object", type(value).__qualname__, canonical(vars(value)))
    return value


def readback_sample(manifest: ExportManifest | ExportChain, size: int | None) -> list[str]:
    """Threads to read back through the official savers: all (size None) or a fixed sample."""
    chain = as_chain(manifest)
    threads = [tid for tid, _, _, _ in chain.thread_digests()]
    if size is None or size >= len(threads):
        return threads
    return sorted(random.Random(chain.content_sha256).sample(threads, size))
