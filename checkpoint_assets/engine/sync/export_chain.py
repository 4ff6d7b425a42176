"""The chain of export generations: a full export (generation 0) and the syncs after it.

A sync writes generation n beside the export (``<export>.sync-000n``, the same file format)
holding only the threads whose content changed since generation n-1, whole, and the
source's state (:class:`SourceState`: every thread's fingerprint, digest and the generation
holding its rows). The chain defines what the target must hold: each live thread's rows
come from the latest generation holding it; threads deleted in the source are listed in
the header of the sync that noticed them. Every generation's header names the footer
digest of the one before, so a stale or foreign file breaks the chain and is refused.

How a sync finds changes, at a cost that follows the change: the rows above each table's
recorded highest rowid name the threads written since, and the tables' row counts must
balance with them (engine/sync/change_detection.py); when they do not, or were not
recorded, the source's per-thread fingerprints (count, max and sum of rowids per table,
read from the primary-key indexes) are compared with the previous state. The threads whose
fingerprint differs are read and digested, and only those whose digest differs are
written. A WAL-mode source is read in place, in one read transaction (no copy).

Why a fingerprint cannot stay the same when a thread's rows change: SqliteSaver only
inserts (a new row raises the count), replaces (``INSERT OR REPLACE``: SQLite picks the
new row's rowid, the table's max + 1, before it deletes the old row, so the thread's max
and sum grow, even for the table's last row) and deletes whole threads. Only a rowid used
again can fool it: after the rows with the highest rowids were deleted, a new row may get
a rowid a deleted row had. Each generation records its tables' last rows; when the row at
that rowid now holds other content, rowids were reused and every thread is digested that
time (read whole). ``write_sync(..., read_every_thread=True)`` does the same on request
(the cutover does when its verification finds the source differs from the chain's state).

A sync refuses a source that went backwards or lost most of its threads at once
(engine/sync/refusals.py) before anything is written.
"""

from __future__ import annotations

import bisect
import datetime as dt
import fcntl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.core.selection import refuse_missing_threads
from checkpoint_assets.engine.export.file_format import (
    GENERATION_SUFFIX,
    ExportManifest,
    row_sha256,
)
from checkpoint_assets.engine.export.reader import (
    export_thread_digests,
    read_batch,
    read_manifest,
    read_state,
    require_same_source,
)
from checkpoint_assets.engine.export.source_state import SourceState, read_source_state
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import thread_digests, write_generation
from checkpoint_assets.engine.load.convert import convert_thread
from checkpoint_assets.engine.sync.change_detection import nothing_changed, read_change
from checkpoint_assets.engine.sync.refusals import require_not_backwards


def generation_path(export_path: str | Path, generation: int) -> Path:
    """Where generation ``generation`` of an export lives (0: the export itself)."""
    export_path = Path(export_path)
    if generation == 0:
        return export_path
    return export_path.with_name(f"{export_path.name}{GENERATION_SUFFIX}{generation:04d}")


@dataclass
class ExportChain:
    """An export and its sync generations, read from their footers and the last state."""

    generations: list[ExportManifest]
    _states: dict[int, SourceState] = field(default_factory=dict)
    _sorted_ids: dict[int, list[str]] = field(default_factory=dict)  # see batch_threads

    @property
    def export(self) -> ExportManifest:
        """Generation 0: the full export."""
        return self.generations[0]

    @property
    def latest(self) -> ExportManifest:
        """The newest generation."""
        return self.generations[-1]

    @property
    def selection(self) -> list[str] | None:
        """The threads the chain is restricted to (--threads), or None: every thread."""
        return self.export.selection

    @property
    def state(self) -> SourceState:
        """The source state as of the newest generation: the expected target."""
        return self.state_at(len(self.generations) - 1)

    def state_at(self, generation: int) -> SourceState:
        """The source state generation ``generation`` recorded (an export written without
        one, see reader.read_state: its threads' digests, with no fingerprints)."""
        if generation not in self._states:
            manifest = self.generations[generation]
            state = read_state(manifest)
            if state is None:
                state = SourceState(
                    {tid: [c, None, None, w, None, None, sha, generation]
                     for tid, sha, c, w in export_thread_digests(manifest)},
                    {}, manifest.header.get("created_at", ""))
            self._states[generation] = state
        return self._states[generation]

    @property
    def synced(self) -> bool:
        """Whether any sync generation follows the export (else the export alone is the
        expected state, and its footer's figures are used as they are)."""
        return len(self.generations) > 1

    @property
    def threads(self) -> int:
        """Live threads of the expected state."""
        return len(self.state.threads) if self.synced else self.export.threads

    @property
    def checkpoints(self) -> int:
        """Checkpoints of the expected state."""
        return self.state.checkpoints if self.synced else self.export.checkpoints

    @property
    def writes(self) -> int:
        """Writes of the expected state."""
        return self.state.writes if self.synced else self.export.writes

    @cached_property
    def content_sha256(self) -> str:
        """Digest of the expected state's content (as a full export of it would state)."""
        return self.state.digest() if self.synced else self.export.content_sha256

    @property
    def snapshot_at(self) -> str:
        """When the newest generation read the source."""
        return self.state.snapshot_at

    @property
    def deleted(self) -> list[str]:
        """Threads deleted in the source after they were exported (and not re-created)."""
        named = {tid for m in self.generations[1:] for tid in m.header.get("deleted_threads")
                 or ()}
        return sorted(named - self.state.threads.keys()) if named else []

    def thread_digests(self) -> Iterator[tuple[str, str, int, int]]:
        """(thread_id, sha256, checkpoints, writes) of every live thread, in order."""
        if not self.synced:
            yield from export_thread_digests(self.export)
            return
        state = self.state
        for tid in sorted(state.threads):
            entry = state.threads[tid]
            yield tid, entry[state.SHA], entry[0], entry[3]

    def live_batches(self) -> list[tuple[ExportManifest, str, frozenset[str] | None]]:
        """Every (generation, batch key, threads) whose rows the target must hold: the
        threads of the batch this generation still holds (None: all of them)."""
        if not self.synced:
            return [(self.export, entry.key, None) for entry in self.export.batches]
        state = self.state
        held: dict[int, list[str]] = {}
        for tid in sorted(state.threads):
            held.setdefault(state.threads[tid][state.GENERATION], []).append(tid)
        out: list[tuple[ExportManifest, str, frozenset[str] | None]] = []
        for manifest in self.generations:
            mine = held.get(manifest.generation, [])
            for entry in manifest.batches:
                inside = _between(mine, entry.first_thread, entry.last_thread)
                if inside:
                    out.append((manifest, entry.key,
                                None if len(inside) == entry.threads else frozenset(inside)))
        return out

    def batch_threads(self, manifest: ExportManifest, key: str) -> list[str]:
        """The threads of batch ``key`` of generation ``manifest``, in order, from the
        state that generation recorded (the batch's bytes are not read)."""
        generation = manifest.generation
        if generation not in self._sorted_ids:
            state = self.state_at(generation)
            self._sorted_ids[generation] = sorted(
                tid for tid, entry in state.threads.items()
                if entry[state.GENERATION] == generation)
        entry = manifest.batch(key)
        return _between(self._sorted_ids[generation], entry.first_thread, entry.last_thread)

    def rows_before(self, thread_ids: Sequence[str], generation: int) -> list[ThreadRows]:
        """The rows these threads had as of generation ``generation - 1`` (what this tool
        loaded for them before), read from the generations that held them. A thread
        deleted in the source before then (its rows kept in the target) counts with its
        rows before it was deleted; threads that never existed are left out."""
        state = self.state_at(generation - 1)
        deleted_at = {tid: m.generation for m in self.generations[1:generation]
                      for tid in m.header.get("deleted_threads") or ()}
        wanted: dict[tuple[int, str], set[str]] = {}
        for tid in thread_ids:
            entry = state.threads.get(tid)
            if entry is None and tid in deleted_at:
                earlier = self.state_at(deleted_at[tid] - 1)
                entry = earlier.threads.get(tid)
                state_of_entry = earlier
            else:
                state_of_entry = state
            if entry is None:
                continue
            holder = self.generations[entry[state_of_entry.GENERATION]]
            key = batch_of(holder, tid)
            if key is not None:
                wanted.setdefault((holder.generation, key), set()).add(tid)
        rows: list[ThreadRows] = []
        for (holder, key), tids in sorted(wanted.items()):
            rows.extend(read_batch(self.generations[holder], key, tids))
        return sorted(rows, key=lambda t: t.thread_id)


def _between(sorted_ids: list[str], first: str, last: str) -> list[str]:
    return sorted_ids[bisect.bisect_left(sorted_ids, first):
                      bisect.bisect_right(sorted_ids, last)]


def batch_of(manifest: ExportManifest, thread_id: str) -> str | None:
    """The key of the batch of ``manifest`` that holds ``thread_id``, or None (batches
    hold threads in thread_id order, so a binary search over their last threads)."""
    place = bisect.bisect_left(manifest.last_threads, thread_id)
    if place < len(manifest.batches) and manifest.batches[place].first_thread <= thread_id:
        return manifest.batches[place].key
    return None


def load_chain(export_path: str | Path) -> ExportChain:
    """The export at ``export_path`` and every sync generation after it, each link checked
    (its header names the previous generation's footer digest)."""
    generations = [read_manifest(export_path)]
    while True:
        path = generation_path(export_path, len(generations))
        if not path.exists():
            return ExportChain(generations)
        manifest = read_manifest(path)
        previous = generations[-1]
        if (manifest.header.get("previous_export_sha256") != previous.footer_sha256
                or manifest.generation != len(generations)):
            raise MigrationError(
                f"Sync generation {path} does not follow {previous.path} (it belongs to "
                "another export of this source).",
                f"Delete {path.name} and every later {Path(export_path).name}"
                f"{GENERATION_SUFFIX}NNNN file in {path.parent}, then run the sync again.")
        generations.append(manifest)


@dataclass(frozen=True)
class SyncResult:
    """What one sync found in the source and wrote (``manifest`` None: nothing changed)."""

    manifest: ExportManifest | None
    generation: int
    added: list[str]
    changed: list[str]
    deleted: list[str]
    threads_read: int  # threads whose rows were read and digested
    read_every_thread: bool  # rowids were reused (or asked): every thread was digested
    snapshot_at: str
    seconds: float
    # Changed threads left out of the generation because they cannot be converted (a
    # damaged or pickled row, or --strict-versions): thread_id, problem, what to do. The
    # chain keeps their earlier state, so every later sync looks at them again.
    refused: list[dict[str, str]] = field(default_factory=list)
    # Threads whose fingerprint was read: the changed ones (change_detection.read_change),
    # or every thread when the books did not balance or were not kept.
    fingerprints_read: int = 0
    # The chain with the new generation, its states already read (None: nothing written).
    chain: ExportChain | None = field(default=None, repr=False, compare=False)

    @property
    def moved(self) -> bool:
        """Whether the sync wrote a generation (something changed)."""
        return self.manifest is not None


def write_sync(source_path: str | Path, export_path: str | Path, *,
               read_every_thread: bool = False, cipher: Cipher | None = None,
               strict_versions: bool = False,
               allow_mass_deletion: bool = False) -> SyncResult:
    """Write the next generation of the export at ``export_path`` with what changed in the
    source since the newest generation; nothing is written when nothing changed.

    Raises SourceWentBackwards (nothing written) when a thread the chain knows has fewer
    checkpoints or writes in the source than the chain says, and MassDeletion when the
    threads found deleted are every thread or more than the threshold (see
    :func:`require_not_backwards`) and ``allow_mass_deletion`` is not set.

    One snapshot of the source is read (the live file, for a WAL source an application has
    open): the tables' books (change_detection: nothing changed is seen without reading
    the chain's state), or every fingerprint (indexes only) when they do not balance; then
    the rows of the threads that changed. Two syncs of one export (the sensor's and a
    command's) take turns: each holds an exclusive lock on the export file while it reads
    the chain and writes the next generation.

    A changed thread that cannot be converted (``cipher``: the key of an encrypted source;
    ``strict_versions``: see convert.convert_thread) is left out and listed in ``refused``:
    one thread never holds back the others, and since the chain keeps its earlier state
    the next sync reads it again, and moves it once the source is fixed.
    """
    with _exclusive(Path(export_path)):
        return _write_sync(source_path, export_path, read_every_thread, cipher,
                           strict_versions, allow_mass_deletion)


@contextmanager
def _exclusive(export_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on the export file, held for the block (the system drops
    it should the process die inside)."""
    try:
        handle = export_path.open("rb")
    except OSError:
        read_manifest(export_path)  # says that the export does not exist, what to do
        raise
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write_sync(source_path: str | Path, export_path: str | Path,
                read_every_thread: bool, cipher: Cipher | None,
                strict_versions: bool, allow_mass_deletion: bool) -> SyncResult:
    started = time.perf_counter()
    chain = load_chain(export_path)
    require_same_source(chain.export, source_path)
    generation = len(chain.generations)
    source = open_source(source_path, live=True, names=chain.export.thread_names)
    try:
        with source.snapshot():
            if not read_every_thread and chain.selection is None \
                    and nothing_changed(source, chain.latest.books):
                return SyncResult(None, generation, [], [], [], 0, False,
                                  dt.datetime.now(dt.UTC).isoformat(),
                                  time.perf_counter() - started)
            previous = chain.state
            change = None if read_every_thread or chain.selection is not None \
                else read_change(source, previous)
            state = change.state if change is not None \
                else read_source_state(source, chain.selection)
            if chain.selection is not None:
                # A selected id the chain never held and the source does not hold: a
                # typo that an export of an earlier version did not refuse.
                refuse_missing_threads(
                    chain.selection, {*state.threads, *previous.threads, *chain.deleted},
                    str(source.path), "Nothing was synced.",
                    f"Check the ids the export {chain.export.path} was taken for "
                    "(checkpoint-assets show-export); migrate the right selection into a "
                    "new export file (--threads, --export).")
            require_not_backwards(chain, state, source,
                                  allow_mass_deletion=allow_mass_deletion,
                                  only=None if change is None else change.suspects)
            if change is not None:
                suspects = change.suspects
            else:
                suspects = {tid for tid, entry in state.threads.items()
                            if tid not in previous.threads
                            or previous.threads[tid][previous.FINGERPRINT]
                            != entry[state.FINGERPRINT]}
                for table in ("checkpoints", "writes"):
                    recorded = previous.last_rows.get(table)
                    now = source.last_row(table, recorded[0]) if recorded is not None \
                        else None
                    if now is not None and row_sha256(now[1]) != recorded[2]:
                        read_every_thread = True  # the rowid was used again
                if read_every_thread or not previous.last_rows:
                    suspects = set(state.threads)
            if change is None:  # (read_change carried them over)
                for tid, entry in state.threads.items():
                    if tid not in suspects:
                        entry[state.SHA:] = previous.threads[tid][previous.SHA:]
            added: list[str] = []
            changed: list[str] = []
            refused: list[dict[str, str]] = []

            def changed_threads() -> Iterator[ThreadRows]:
                for tid in sorted(suspects):
                    rows = source.thread_rows(tid)
                    sha = next(thread_digests(iter(rows.checkpoints), iter(rows.writes)))[1]
                    old = previous.threads.get(tid)
                    if old is not None and old[previous.SHA] == sha:
                        state.threads[tid][state.SHA:] = old[previous.SHA:]
                        continue
                    problem = conversion_problem(rows, cipher, strict_versions)
                    if problem is not None:
                        refused.append({"thread_id": tid, **problem})
                        state.tables = None  # its new rows are not in this state's books
                        # As if unseen: the next sync finds it changed and reads it again.
                        if old is not None:
                            state.threads[tid] = list(old)
                        else:
                            del state.threads[tid]
                        continue
                    (changed if old is not None else added).append(tid)
                    yield rows

            deleted = sorted(previous.threads.keys() - state.threads.keys())
            fingerprints_read = len(suspects) if change is not None else len(state.threads)
            if not suspects and not deleted:  # nothing to write, not even a file to drop
                return SyncResult(None, generation, [], [], [], 0, read_every_thread,
                                  state.snapshot_at, time.perf_counter() - started,
                                  fingerprints_read=fingerprints_read)
            path = generation_path(export_path, generation)
            write_generation(
                source, path, changed_threads(), state, generation=generation,
                batch_size=int(chain.export.header.get("batch_size") or DEFAULT_BATCH_SIZE),
                header={"previous_export_sha256": chain.latest.footer_sha256,
                        "deleted_threads": deleted, "selection": chain.selection})
    finally:
        source.close()
    manifest: ExportManifest | None = None
    grown: ExportChain | None = None
    if added or changed or deleted:
        manifest = read_manifest(path)
        grown = ExportChain([*chain.generations, manifest],
                            {**chain._states, generation: state})
    else:  # fingerprints moved, contents did not (e.g. VACUUM renumbered rowids)
        path.unlink()
    return SyncResult(manifest, generation, added, changed, deleted, len(suspects),
                      read_every_thread, state.snapshot_at, time.perf_counter() - started,
                      refused, fingerprints_read, grown)


def conversion_problem(thread: ThreadRows, cipher: Cipher | None,
                       strict_versions: bool) -> dict[str, str] | None:
    """Why this thread's rows cannot be converted for PostgreSQL (problem, what to do), or
    None when they can. Encrypted rows without a key are not looked into (the load that
    follows says so for every such thread)."""
    if cipher is None and any("+" in (row.type or "") for row in thread.checkpoints):
        return None
    try:
        convert_thread(thread, cipher, strict_versions=strict_versions)
    except MigrationError as exc:
        return {"problem": exc.problem, "what_to_do": exc.hint}
    return None


def as_chain(expected: ExportManifest | ExportChain) -> ExportChain:
    """The chain of an export (itself when it is a chain already)."""
    return expected if isinstance(expected, ExportChain) else ExportChain([expected])
