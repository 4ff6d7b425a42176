"""Keep the target in step with a source that is still written: sync and wait for quiet.

A sync (:func:`sync_target`) makes sure the newest generation of the export is applied,
writes the next generation with what changed in the source (export_chain.write_sync) and
applies it batch by batch (loader.apply_sync_batch), then, if asked, removes the threads
deleted in the source. :func:`wait_until_quiet` is the cutover's wait for writers to stop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import MigrationError, TimedOut
from checkpoint_assets.engine.core.private_files import write_private_text
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.snapshot import source_files
from checkpoint_assets.engine.load.target import COLUMNS, Target
from checkpoint_assets.engine.sync.apply_generation import (
    SyncApplyResult,
    apply_deletions,
    apply_sync_batch,
    load_live_threads,
)
from checkpoint_assets.engine.sync.export_chain import (
    ExportChain,
    SyncResult,
    load_chain,
    write_sync,
)
from checkpoint_assets.engine.verify.evidence import markdown_cell

# What a sync takes for granted, said in its output (the README's reliability section too).
SYNC_ASSUMES = ("A sync finds changes by SQLite rowid fingerprints: a row changed in place by "
                "an UPDATE that keeps its rowid is not seen (SqliteSaver never does that); "
                "verify and cutover compare content and catch it.")
# A pause in the writes this long is said while waiting for quiet (and the next write).
PAUSE_NOTICE_SECONDS = 5.0


@dataclass
class SyncReport:
    """What one sync found and did to the target."""

    found: SyncResult
    applied: list[SyncApplyResult] = field(default_factory=list)
    # The newest earlier generation applied once more first (rows only when it had not
    # been applied whole).
    reapplied: list[SyncApplyResult] = field(default_factory=list)
    # Every batch of the chain loaded again: its markers named other targets, never this.
    reloaded: list[SyncApplyResult] = field(default_factory=list)
    deletions: list[SyncApplyResult] = field(default_factory=list)
    # Threads deleted in the source that still have rows in the target (not propagated).
    deletions_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, what: str) -> dict[str, int]:
        """Rows per table over the applied batches: "inserted", "updated", "deleted" or
        "already_present" (deletions of threads included)."""
        return {t: sum(getattr(r, what)[t]
                       for r in [*self.reloaded, *self.reapplied, *self.applied,
                                 *self.deletions])
                for t in COLUMNS}

    def render(self) -> str:
        """What happened, for people."""
        found = self.found
        lines = []
        if not found.moved:
            touched = any(n for what in ("inserted", "updated", "deleted")
                          for n in self.total(what).values())
            lines.append(f"Nothing changed in the source since the last generation "
                         f"(read {found.threads_read} thread(s) whose fingerprint changed); "
                         + ("no new generation." if touched else "nothing was moved."))
        else:
            assert found.manifest is not None
            lines.append(
                f"Sync generation {found.generation}: {len(found.added)} new, "
                f"{len(found.changed)} changed, {len(found.deleted)} deleted thread(s) in "
                f"the source; their {found.manifest.checkpoints} checkpoints and "
                f"{found.manifest.writes} writes (whole threads) -> {found.manifest.path}")
        if self.reloaded:
            lines.append(f"This export's syncs were applied to other targets, never to this "
                         f"one (server, database and schema identity: dropped and created "
                         f"again?): every batch the chain holds was loaded again "
                         f"({len(self.reloaded)} batch(es)).")
        if found.read_every_thread:
            lines.append("Every thread was read and digested this time (asked for, or a "
                         "rowid of the previous generation's last row was used again).")
        for what in ("inserted", "updated", "deleted"):
            counts = self.total(what)
            if any(counts.values()):
                lines.append(f"  {what}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
        for refused in found.refused:
            lines.append(f"  REFUSED thread {refused['thread_id']!r} (not moved; the others "
                         f"were): {refused['problem']} What to do: {refused['what_to_do']} "
                         "Every later sync reads it again and moves it once it converts.")
        if self.deletions_kept:
            lines.append(f"  {len(self.deletions_kept)} thread(s) deleted in the source are "
                         f"kept in the target: {self.deletions_kept[:20]} (pass "
                         "--propagate-deletes to delete them there too)")
        lines.append(f"Source state as of {found.snapshot_at} ({self.seconds:.2f} s).")
        lines.append(SYNC_ASSUMES)
        return "\n".join(lines)


def apply_generation(target: Target, chain: ExportChain, manifest: ExportManifest,
                     cipher: Cipher | None = None,
                     on_batch: Callable[[SyncApplyResult], None] | None = None,
                     ) -> list[SyncApplyResult]:
    """Apply every batch of one sync generation, each in its own transaction (a re-run
    finds them applied and changes nothing)."""
    results = []
    for entry in manifest.batches:
        results.append(apply_sync_batch(target, chain, manifest, entry.key, cipher))
        if on_batch is not None:
            on_batch(results[-1])
    return results


def sync_target(source_path: str | Path, export_path: str | Path, target: Target, *,
                cipher: Cipher | None = None, propagate_deletes: bool = False,
                on_batch: Callable[[SyncApplyResult], None] | None = None,
                read_every_thread: bool = False, strict_versions: bool = False,
                allow_mass_deletion: bool = False) -> SyncReport:
    """One sync: write the next generation from the source's changes, make sure the
    target holds what the chain held until then, apply the new generation, and handle
    the threads deleted in the source.
    ``read_every_thread``: digest every thread of the source instead of trusting the
    fingerprints (see export_chain). ``allow_mass_deletion``: follow a source that lost
    every thread or more than the threshold (refusals.is_mass_deletion). A changed
    thread that cannot be converted is left out and listed in ``found.refused``
    (``strict_versions``: also one whose content differs at one channel version); the
    others move.

    What the target held until now: the newest generation is applied again unless a sync
    applied it whole to this very target (its ``.applied`` marker names the target's
    identity, :meth:`Target.identity`, and the generation's digest); that completes a
    sync that stopped, or a generation file written again by hand. When the chain's
    markers name other targets and never this one (the target database was dropped and
    created again under the same name, or this is another target), every batch the
    chain holds is loaded again (``reloaded``).

    Raises SourceWentBackwards or MassDeletion (engine/sync/refusals.py) before anything is written
    or applied; ConflictError (nothing of that batch written) when the target holds rows
    of a changed thread that this tool did not load; MigrationError for bad input.
    """
    started = time.perf_counter()
    target.setup()
    identity = target.identity()
    assert identity is not None  # setup() created the tables
    chain = load_chain(export_path)
    # First: it refuses a source that went backwards before anything is applied.
    found = write_sync(source_path, export_path, read_every_thread=read_every_thread,
                       cipher=cipher, strict_versions=strict_versions,
                       allow_mass_deletion=allow_mass_deletion)
    report = SyncReport(found)
    if chain.synced and not _was_applied(chain.latest, identity):
        known = _applied_targets(chain)
        if known and identity not in known:
            report.reloaded = reload_chain(target, chain, cipher, on_batch)
        else:
            report.reapplied = apply_generation(target, chain, chain.latest, cipher)
        _mark_applied(chain.latest, identity)
    if found.manifest is not None:
        chain = found.chain or load_chain(export_path)
        report.applied = apply_generation(target, chain, found.manifest, cipher, on_batch)
        _mark_applied(found.manifest, identity)
    still_there = _threads_in_target(target, chain.deleted)
    if propagate_deletes:
        for manifest in chain.generations[1:]:
            gone = set(manifest.header.get("deleted_threads") or ()) & set(still_there)
            if gone:
                report.deletions.append(apply_deletions(target, chain, manifest, cipher,
                                                        sorted(gone)))
        still_there = _threads_in_target(target, chain.deleted)
    report.deletions_kept = still_there
    report.seconds = time.perf_counter() - started
    return report


def reload_chain(target: Target, chain: ExportChain, cipher: Cipher | None = None,
                 on_batch: Callable[[SyncApplyResult], None] | None = None,
                 ) -> list[SyncApplyResult]:
    """Load again every batch the chain holds (chain.live_batches: each live thread from
    the generation holding it), each in its own transaction (loader.load_live_threads):
    a row is inserted when missing, and any other target row of those threads is a
    ConflictError for that batch. Running it again changes nothing.
    """
    results = []
    for manifest, key, threads in chain.live_batches():
        results.append(load_live_threads(target, chain, manifest, key, threads, cipher))
        if on_batch is not None:
            on_batch(results[-1])
    return results


def _applied_marker(manifest: ExportManifest) -> Path:
    """Beside a generation file: the targets a sync applied it to whole, one line each:
    the target's identity (Target.identity: server, database and schema, not the DSN)
    and the generation's footer digest (another file written at the same name has
    another), both SHA-256 hex digests."""
    return manifest.path.with_name(f"{manifest.path.name}.applied")


def _marker_lines(manifest: ExportManifest) -> list[tuple[str, str]]:
    """(target identity, generation digest) of every line of the generation's marker
    (lines of other forms, written by versions before issue 21, are left out)."""
    try:
        text = _applied_marker(manifest).read_text(encoding="ascii")
    except OSError:
        return []
    lines = [line.split() for line in text.splitlines()]
    return [(parts[0], parts[1]) for parts in lines if len(parts) == 2]


def _was_applied(manifest: ExportManifest, identity: str) -> bool:
    """Whether a sync applied every batch of this generation, this very file, to the
    target with ``identity`` (else the next sync applies it again before the next one)."""
    return (identity, manifest.footer_sha256) in _marker_lines(manifest)


def _applied_targets(chain: ExportChain) -> set[str]:
    """The identities of the targets any generation of the chain was applied to."""
    return {identity for manifest in chain.generations[1:]
            for identity, _ in _marker_lines(manifest)}


def _mark_applied(manifest: ExportManifest, identity: str) -> None:
    """Record that every batch of this generation was applied to the target with
    ``identity`` (the other lines are kept); a MigrationError when the filesystem refuses
    (full, read-only, no permission)."""
    marker = _applied_marker(manifest)
    try:
        known = marker.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        known = []
    this = f"{identity} {manifest.footer_sha256}"
    if this in known:
        return
    try:
        write_private_text(marker, "".join(f"{line}\n" for line in [*known, this]))
    except OSError as exc:
        raise MigrationError(
            f"Cannot record that sync generation {manifest.generation} was applied to the "
            f"target: writing {marker} failed: {exc.strerror or exc}. Every batch of it "
            "is in the target (each committed whole); the marker was left as it was.",
            "Free space on that filesystem, or make the export's directory writable to "
            "you, then run sync again: it applies this generation again (which changes "
            "nothing) and records it.") from None


def _threads_in_target(target: Target, threads: list[str]) -> list[str]:
    """Those of ``threads`` that have any row in the target."""
    if not threads:
        return []
    found: set[str] = set()
    with target.connect(autocommit=True) as conn:
        for table in COLUMNS:
            found.update(row[0] for row in conn.execute(sql.SQL(
                "SELECT DISTINCT thread_id FROM {} WHERE thread_id = ANY(%s)").format(
                sql.Identifier(table)), (threads,)))
    return sorted(found)


def source_files_state(source_path: str | Path) -> tuple:
    """(size, mtime) of the database file and of its -wal file: what any committed write
    changes. Cheap (two stat calls); the sensor and the cutover's wait compare it. A
    symlinked source is followed to the real file, whose -wal SQLite writes
    (snapshot.source_files)."""
    files = source_files(source_path)
    out = []
    for path in (files.database, files.wal):
        try:
            stat = os.stat(path)
            out.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def wait_until_quiet(source_path: str | Path, quiet_seconds: float,
                     say: Callable[[str], None] = print, poll_seconds: float = 0.5,
                     timeout_seconds: float | None = None,
                     on_change: Callable[[], None] | None = None) -> tuple[float, tuple]:
    """Block until the source's files have not changed for ``quiet_seconds``. Says what
    it waits for, then one line whenever the source starts being written and one when
    writes have paused for PAUSE_NOTICE_SECONDS (not a line at every poll that sees a
    write). ``on_change`` is called after each poll that saw the files change (the
    cutover catches up with the writers while it waits). Returns (when the last change
    was seen as a ``time.time()``, or the files' modification time when none was seen;
    the files' state then). Raises TimedOut when ``timeout_seconds`` pass first."""
    started = time.time()
    state = source_files_state(source_path)
    if state[0] is None:
        raise MigrationError(f"Source {source_path} does not exist.",
                             "Pass the path of the SqliteSaver database file (--source).")
    changed_at = max(entry[1] for entry in state if entry is not None) / 1e9
    limit = "" if timeout_seconds is None else f", for at most {timeout_seconds:g} s"
    say(f"Waiting until {source_path} has not changed for {quiet_seconds:g} s{limit} (stop "
        "the application's writers now)...")
    writing, writes_seen = False, 0
    while True:
        now = time.time()
        remaining = quiet_seconds - (now - changed_at)
        if remaining <= 0:
            return changed_at, state
        left = None if timeout_seconds is None else timeout_seconds - (now - started)
        if left is not None and left <= 0:
            raise TimedOut(
                f"The source {source_path} was not quiet for {quiet_seconds:g} s within "
                f"--timeout {timeout_seconds:g} s: {writes_seen} write(s) seen while "
                f"waiting, the last at {_local_clock(changed_at)}. The cutover stopped "
                "before its final sync; the target holds what the catch-up sync moved, "
                "and nothing was proven.",
                "Stop every writer of the source (or allow a longer --timeout), then run "
                "cutover again.")
        time.sleep(min(poll_seconds, remaining) if left is None
                   else min(poll_seconds, remaining, left))
        files = source_files_state(source_path)
        if files != state:
            state, changed_at, writes_seen = files, time.time(), writes_seen + 1
            if not writing:
                writing = True
                say(f"  {_local_clock(changed_at)} the source is being written; waiting "
                    f"until it has not changed for {quiet_seconds:g} s...")
            if on_change is not None:
                on_change()
        elif writing and time.time() - changed_at >= PAUSE_NOTICE_SECONDS:
            writing = False
            say(f"  no write since {_local_clock(changed_at)}; the final sync follows "
                f"in {quiet_seconds - (time.time() - changed_at):.0f} s unless the source "
                "is written again")


def _local_clock(seconds: float) -> str:
    """HH:MM:SS of a ``time.time()`` in local time, for what the wait says."""
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def with_live_migration_section(markdown: str, chain: ExportChain, *,
                                deletions_kept: list[str] | None = None,
                                cutover: dict[str, str] | None = None) -> str:
    """An evidence report with the :func:`live_migration_section` appended when there is
    something to say: syncs, a selection of threads, or a cutover."""
    if not (chain.synced or chain.selection is not None or cutover):
        return markdown
    return markdown + "\n" + live_migration_section(
        chain, deletions_kept=deletions_kept, cutover=cutover) + "\n"


def live_migration_section(chain: ExportChain, *, deletions_kept: list[str] | None = None,
                           cutover: dict[str, str] | None = None) -> str:
    """The evidence report's section on the export's sync generations: as of when the
    target was compared with the source, which threads (a selection says so), what the
    cutover took (``cutover``: label -> value), deleted threads kept in the target (when
    known)."""
    selection = chain.selection
    rows = [
        ("expected state read from the source at", f"{chain.snapshot_at} (generation "
                                           f"{chain.latest.generation}: "
                                           f"{chain.latest.path.name})"),
        ("generations", f"the export and {len(chain.generations) - 1} sync(s); state digest "
                        f"{chain.content_sha256}"),
        ("threads", f"{chain.threads} live threads, {chain.checkpoints} checkpoints, "
                    f"{chain.writes} writes"),
        ("selection", "every thread of the source" if selection is None else
         f"ONLY these {len(selection)} thread(s) (--threads); the checks speak of them "
         f"alone: {', '.join(selection)}"),
        *([("deleted in the source, kept in the target",
            ", ".join(deletions_kept) if deletions_kept else "none")]
          if deletions_kept is not None else []),
        *(cutover or {}).items(),
    ]
    return "## Live migration\n\n" + "\n".join(
        f"- **{label}**: {markdown_cell(value, 2000)}" for label, value in rows)
