"""Thread ids two sources share, found from their exports before anything is written.

PostgreSQL holds one thread per (thread_id, checkpoint_ns); two SQLite files holding the
same thread id would be merged into one conversation (pgloader or dlt would merge them
silently). From each source's export (its thread summaries: id, content digest, counts),
every thread id held by more than one source is either

- a **copy**: the same content in every source holding it (a copied file, a thread
  replicated on purpose): loaded once, each source's verification proves it; or
- a **collision**: different content. The fleet is refused, naming the thread ids and the
  files, unless the user tells the sources apart (a prefix per source, a mapping file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.sync.export_chain import ExportChain

MAX_NAMED = 10


@dataclass(frozen=True)
class SharedThread:
    """A thread id (the target's) held by several sources (by label, in fleet order)."""

    thread_id: str
    labels: tuple[str, ...]
    identical: bool  # the same content in each: a copy

    def to_json(self) -> dict:
        """JSON form (the evidence, the CLI's report)."""
        return {"thread_id": self.thread_id, "sources": list(self.labels),
                "identical": self.identical}


@dataclass(frozen=True)
class SharedThreads:
    """Every thread id held by more than one source, copies and collisions apart."""

    copies: tuple[SharedThread, ...]
    collisions: tuple[SharedThread, ...]
    # {label: the earlier source it is a copy of}: sources every thread of which an
    # earlier source of the fleet holds with the same content (a copied file).
    copied: dict[str, str]


def shared_threads(chains: Mapping[str, ExportChain]) -> SharedThreads:
    """The thread ids more than one of ``chains`` (by source label, in fleet order) holds,
    from their thread digests (the state their syncs reached, if any; each chain's read
    once), and the sources that are copies of an earlier one."""
    holders: dict[str, list[tuple[str, str]]] = {}
    held_by: dict[str, int] = dict.fromkeys(chains, 0)
    for label, chain in chains.items():
        for thread_id, sha, _, _ in chain.thread_digests():
            holders.setdefault(thread_id, []).append((label, sha))
            held_by[label] += 1
    copies, collisions = [], []
    for thread_id in sorted(t for t, held in holders.items() if len(held) > 1):
        held = holders[thread_id]
        shared = SharedThread(thread_id, tuple(label for label, _ in held),
                              len({sha for _, sha in held}) == 1)
        (copies if shared.identical else collisions).append(shared)
    return SharedThreads(tuple(copies), tuple(collisions), _copied(copies, held_by))


def _copied(copies: list[SharedThread], held_by: dict[str, int]) -> dict[str, str]:
    """The sources all of whose threads are copies also held by one earlier source."""
    order = {label: n for n, label in enumerate(held_by)}
    in_common: dict[tuple[str, str], int] = {}
    for shared in copies:
        for later in shared.labels:
            for earlier in shared.labels:
                if order[earlier] < order[later]:
                    in_common[later, earlier] = in_common.get((later, earlier), 0) + 1
    copied: dict[str, str] = {}
    for (later, earlier), count in sorted(in_common.items(), key=lambda i: order[i[0][1]]):
        if count == held_by[later] and later not in copied:
            copied[later] = earlier
    return copied


def refuse_collisions(shared: SharedThreads, paths: Mapping[str, str],
                      consequence: str) -> None:
    """Raise a MigrationError naming the colliding thread ids and the files holding them
    (``paths``: label -> file), or return when there is none."""
    if not shared.collisions:
        return
    listed = "; ".join(
        f"{s.thread_id!r} in {' and '.join(paths[label] for label in s.labels)}"
        for s in shared.collisions[:MAX_NAMED])
    more = len(shared.collisions) - MAX_NAMED
    raise MigrationError(
        f"{len(shared.collisions)} thread id(s) are held by more than one source with "
        f"different content, so PostgreSQL would merge different conversations into one "
        f"thread: {listed}{f' and {more} more' if more > 0 else ''}. {consequence}",
        'Tell the sources apart: --thread-prefix "{source}:" gives every thread the '
        "source's label in front (the plan lists the labels), or --thread-map FILE.json "
        '({"<label>": {"<old id>": "<new id>"}}) renames the threads you name.')
