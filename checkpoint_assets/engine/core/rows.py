"""The two kinds of source row, exactly as SqliteSaver stores them."""

from __future__ import annotations

from typing import NamedTuple


class CheckpointRow(NamedTuple):
    """One row of SqliteSaver's ``checkpoints`` table."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    type: str | None
    checkpoint: bytes | None
    metadata: bytes | None


class WriteRow(NamedTuple):
    """One row of SqliteSaver's ``writes`` table (``task_path`` is '' in old databases)."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str | None
    value: bytes | None


class ThreadRows(NamedTuple):
    """All rows of one thread: its checkpoints and its writes, each in key order."""

    thread_id: str
    checkpoints: list[CheckpointRow]
    writes: list[WriteRow]
