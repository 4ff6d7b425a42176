"""When a sync refuses to follow the source: it went backwards, or lost most threads at once.

A sync follows the database the chain was taken from, grown: SqliteSaver never removes a
row inside a live thread (it inserts, replaces a pending write under the same key, and
``delete_thread`` removes whole threads). So a live thread with fewer checkpoints or
writes than the chain's state says means another database at the path, or a backup
restored over it: :func:`require_not_backwards` refuses such a sync before anything is
written. Whole-thread deletions are followed, except that losing every thread, or more
than :data:`MASS_DELETION_SHARE` of them and at least :data:`MASS_DELETION_MIN_THREADS`,
in one sync needs ``allow_mass_deletion`` (an application started without its volume
looks exactly like that).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.source_state import SourceState, source_identity
from checkpoint_assets.engine.export.sqlite_source import SourceDatabase

if TYPE_CHECKING:
    from checkpoint_assets.engine.sync.export_chain import ExportChain

# A sync that finds more than this share of the chain's threads deleted, and at least
# MASS_DELETION_MIN_THREADS of them (or every thread), needs allow_mass_deletion: an
# application deletes threads a few at a time between two syncs, while an empty database
# at the path (a volume not mounted) or an old backup drops most of them at once. The floor
# keeps a small database's ordinary deletions (2 of 3 threads) from needing the flag.
MASS_DELETION_SHARE = 0.5
MASS_DELETION_MIN_THREADS = 10


class SourceWentBackwards(MigrationError):
    """The source lacks rows the export chain says it held, other than by deleting whole
    threads: it is not the database the chain was taken from (or a backup of it)."""


class MassDeletion(MigrationError):
    """A sync found so many threads deleted that it needs an explicit flag to follow."""


def is_mass_deletion(known: int, deleted: int) -> bool:
    """Whether losing ``deleted`` of ``known`` threads in one sync needs the explicit flag:
    every thread, or more than MASS_DELETION_SHARE of them and at least
    MASS_DELETION_MIN_THREADS."""
    if deleted == 0:
        return False
    return deleted == known or (deleted > known * MASS_DELETION_SHARE
                                and deleted >= MASS_DELETION_MIN_THREADS)


def require_not_backwards(chain: ExportChain, state: SourceState, source: SourceDatabase, *,
                          allow_mass_deletion: bool = False,
                          only: Collection[str] | None = None) -> None:
    """Refuse to follow a source that lost what the chain says it held.

    ``state`` is the source now (read_source_state, inside the sync's snapshot). A thread
    of the chain's state that is still in the source with fewer checkpoints or writes
    is a SourceWentBackwards: SqliteSaver deletes only whole threads (``delete_thread``;
    langgraph-checkpoint-sqlite 3.x has no call that removes rows inside a thread), so
    this is another database at the path or a backup restored over it. Threads gone
    whole are deletions, unless they are every thread or more than the threshold
    (:func:`is_mass_deletion`) without ``allow_mass_deletion``: a MassDeletion. Both name
    what identifies the file now and then (source_state.source_identity). ``only``: the
    threads that can have shrunk (the others carry their earlier entries, see
    change_detection); None: every thread.
    """
    previous = chain.state
    shrunk = []
    common = previous.threads.keys() & (state.threads.keys() if only is None else only)
    for tid in sorted(common):
        before, now = previous.threads[tid], state.threads[tid]
        if now[0] < before[0] or now[3] < before[3]:
            shrunk.append(f"{tid!r}: {before[0]} checkpoints and {before[3]} writes in "
                          f"generation {chain.latest.generation}, {now[0]} and {now[3]} now")
    deleted = len(previous.threads.keys() - state.threads.keys())
    source_path = source.path
    if shrunk:
        raise SourceWentBackwards(
            f"Source {source_path} went backwards: {len(shrunk)} thread(s) have fewer rows "
            f"than the export chain says the source held, and SqliteSaver never removes "
            f"rows inside a thread: {'; '.join(shrunk[:10])}"
            f"{' ...' if len(shrunk) > 10 else ''}. This is not the database you exported "
            f"(or it was restored from a backup).{_identity_note(chain, source)} Nothing was "
            "written or applied.",
            "Point --source at the database the application writes now. If this file "
            "really is the application's database from now on (a restore you mean to "
            "keep), export it again (checkpoint-assets migrate --export NEW_FILE) into a "
            "target that does not hold the newer rows, instead of syncing.")
    if is_mass_deletion(len(previous.threads), deleted) and not allow_mass_deletion:
        raise MassDeletion(
            f"Source {source_path} lacks {deleted} of the {len(previous.threads)} thread(s) "
            f"the export chain says it held (generation {chain.latest.generation}); a sync "
            f"follows more than {MASS_DELETION_SHARE:.0%} of the threads (at least "
            f"{MASS_DELETION_MIN_THREADS}), or every thread, deleted at once only when told "
            f"to. This may not be the database you exported (an application started "
            f"without its volume, a backup restored over it).{_identity_note(chain, source)}"
            " Nothing was written or applied.",
            "Check that --source is the application's database. If the threads really "
            "were deleted, run the sync again with --allow-mass-deletion (and "
            "--propagate-deletes to delete them from the target too).")


def _identity_note(chain: ExportChain, source: SourceDatabase) -> str:
    """What changed in the file's identity since the chain's newest generation read it
    (empty when the generation recorded none: written before issue 21)."""
    recorded = (chain.latest.header.get("source") or {}).get("identity")
    if not recorded:
        return ""
    now = source_identity(source)
    notes = []
    if (recorded.get("device"), recorded.get("inode")) != (now["device"], now["inode"]):
        notes.append(f"the file is another file than generation {chain.latest.generation} "
                     f"read (device/inode {now['device']}/{now['inode']}, then "
                     f"{recorded.get('device')}/{recorded.get('inode')})")
    else:
        notes.append("the file is the same file (device and inode) as generation "
                     f"{chain.latest.generation} read: it was written over in place")
    for table, first in (recorded.get("first_rows") or {}).items():
        if first is not None and now["first_rows"].get(table) != first:
            notes.append(f"the first {table} row it held (rowid {first[0]}, thread "
                         f"{first[1]!r}) is not the first row now")
    return " Identity: " + "; ".join(notes) + "."
