"""Group whole threads into batches; the grouping and its keys are deterministic."""

from __future__ import annotations

DEFAULT_BATCH_SIZE = 1000
BATCH_KEY_PREFIX = "batch-"


def batch_key(index: int) -> str:
    """The partition key of the batch at ``index`` (0-based): ``batch-00001`` is the first."""
    return f"{BATCH_KEY_PREFIX}{index + 1:05d}"


class BatchPlanner:
    """Assigns threads, in thread_id order, to batches of at most ``batch_size`` checkpoints.

    A thread is never split. A thread larger than the batch size is a batch of its own.
    Threads that have only writes rows (no checkpoint) count as one checkpoint so that
    they still land somewhere without inflating a batch.
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.index = -1
        self._filled = 0

    def place(self, checkpoints: int) -> tuple[int, bool]:
        """Place a thread with this many checkpoints; return (batch index, starts a new batch)."""
        weight = max(checkpoints, 1)
        if self.index < 0 or self._filled + weight > self.batch_size:
            self.index += 1
            self._filled = weight
            return self.index, True
        self._filled += weight
        return self.index, False
