"""What a running application does to a benchmark corpus between two syncs.

Applied by a real LangGraph application (the chat-agent graph of ``build_scaled_corpus``)
through SqliteSaver, so every write pattern a sync must carry is the library's own:

- new turns in finished threads (new checkpoints and writes);
- resumed interrupts (paused threads run on: new checkpoints, ``__resume__`` writes);
- replaced writes: a paused thread's ``__interrupt__`` write put again for the same task
  (SqliteSaver's ``INSERT OR REPLACE``), the last one twice in a row, while it is the
  writes table's last row;
- new threads; ``delete_thread`` on others.

The counts are absolute (the same change can be applied to corpora of different sizes).
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.constants import INTERRUPT
from langgraph.types import Interrupt

from checkpoint_assets_tests.corpus_graphs import (
    build_chat_graph,
    chat_input,
    resume_paused_thread,
    thread_config,
)


@dataclass
class LiveChange:
    """The threads one application session touched, by kind of write."""

    new_turns: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    replaced_writes: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def changed_threads(self) -> int:
        """Threads whose rows changed, new and deleted ones included."""
        return len({*self.new_turns, *self.resumed, *self.replaced_writes, *self.added,
                    *self.deleted})


def corpus_thread_ids(path: str | Path) -> list[str]:
    """Every thread id of a SqliteSaver file, sorted."""
    with closing(sqlite3.connect(str(path))) as conn:
        return [row[0] for row in conn.execute(
            "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id")]


def apply_live_changes(path: str | Path, *, changed: int, added: int, deleted: int,
                       seed: int = 1) -> LiveChange:
    """Change ``changed`` existing threads (a third new turns, a third resumed interrupts, a
    third replaced interrupt writes), start ``added`` new threads and delete ``deleted``
    others, through SqliteSaver on the file at ``path``."""
    rng = random.Random(seed)
    threads = corpus_thread_ids(path)
    paused = paused_thread_ids(path)
    paused_set = set(paused)
    finished = [t for t in threads if t not in paused_set]
    rng.shuffle(paused)
    rng.shuffle(finished)
    thirds = [changed // 3, changed // 3, changed - 2 * (changed // 3)]
    change = LiveChange(
        new_turns=finished[:thirds[0]], resumed=paused[:thirds[1]],
        replaced_writes=paused[thirds[1]:thirds[1] + thirds[2]])
    untouched = finished[thirds[0]:]
    change.deleted = untouched[:deleted]
    change.added = [f"live-{seed}-{i:05d}" for i in range(added)]
    conn = sqlite3.connect(str(path), check_same_thread=False)
    with closing(conn):
        saver = SqliteSaver(conn)
        graph = build_chat_graph(saver)
        for turn, thread_id in enumerate(change.new_turns, start=1):
            graph.invoke(chat_input(rng, turn, with_refund=False), thread_config(thread_id))
        for thread_id in change.resumed:
            resume_paused_thread(graph, thread_id, "approve")
        for thread_id in change.added:
            graph.invoke(chat_input(rng, 0, with_refund=False), thread_config(thread_id))
        for thread_id in change.deleted:
            saver.delete_thread(thread_id)
        for thread_id in change.replaced_writes:
            replace_interrupt_write(saver, thread_id, f"reworded by session {seed}")
        if change.replaced_writes:
            # Its write is now the writes table's last row; replace it again.
            replace_interrupt_write(saver, change.replaced_writes[-1],
                                    f"reworded twice by session {seed}")
    return change


def replace_interrupt_write(saver: SqliteSaver, thread_id: str, note: str) -> None:
    """Put a paused thread's ``__interrupt__`` write again for the same task with another
    value: SqliteSaver replaces the row (``INSERT OR REPLACE``)."""
    config = thread_config(thread_id)
    latest = saver.get_tuple(config)
    assert latest is not None, thread_id
    task_id, _, value = next(w for w in latest.pending_writes if w[1] == INTERRUPT)
    old = value[0] if isinstance(value, (list, tuple)) else value
    question = {**old.value, "note": note} if isinstance(old.value, dict) else old.value
    saver.put_writes(latest.config, [(INTERRUPT, [Interrupt(value=question, id=old.id)])],
                     task_id)


def paused_thread_ids(path: str | Path) -> list[str]:
    """Threads whose latest root checkpoint waits on an interrupt (an ``__interrupt__``
    write on it), sorted."""
    with closing(sqlite3.connect(str(path))) as conn:
        return [row[0] for row in conn.execute(
            "SELECT DISTINCT w.thread_id FROM writes w JOIN ("
            " SELECT thread_id, max(checkpoint_id) AS latest FROM checkpoints"
            " WHERE checkpoint_ns = '' GROUP BY thread_id) c"
            " ON w.thread_id = c.thread_id AND w.checkpoint_ns = ''"
            " AND w.checkpoint_id = c.latest"
            " WHERE w.channel = ? ORDER BY w.thread_id", (INTERRUPT,))]
