"""Keep the target in step with a source that is still written: sync and wait for quiet.

A sync (:func:`sync_target`) makes sure the newest generation of the export is applied,
writes the next generation with what changed in the source (export_chain.write_sync) and
applies it batch by batch (loader.apply_sync_batch), then, if asked, removes the threads
deleted in the source. :func:`wait_until_quiet` is the cutover's wait for writers to stop.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from checkpoint_assets.engine.crypto import Cipher
from checkpoint_assets.engine.errors import MigrationError
from checkpoint_assets.engine.evidence import markdown_cell
from checkpoint_assets.engine.export_chain import (
    ExportChain,
    SyncResult,
    load_chain,
    write_sync,
)
from checkpoint_assets.engine.export_file import ExportManifest
from checkpoint_assets.engine.loader import (
    COLUMNS,
    SyncApplyResult,
    apply_deletions,
    apply_sync_batch,
)
from checkpoint_assets.engine.private_files import write_private_text
from checkpoint_assets.engine.snapshot import source_files
from checkpoint_assets.engine.target import Target


@dataclass
class SyncReport:
    """What one sync found and did to the target."""

    found: SyncResult
    applied: list[SyncApplyResult] = field(default_factory=list)
    # The newest earlier generation applied once more first (rows only when it had not
    # been applied whole).
    reapplied: list[SyncApplyResult] = field(default_factory=list)
    deletions: list[SyncApplyResult] = field(default_factory=list)
    # Threads deleted in the source that still have rows in the target (not propagated).
    deletions_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, what: str) -> dict[str, int]:
        """Rows per table over the applied batches: "inserted", "updated", "deleted" or
        "already_present" (deletions of threads included)."""
        return {t: sum(getattr(r, what)[t]
                       for r in [*self.reapplied, *self.applied, *self.deletions])
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
        if found.read_every_thread:
            lines.append("Every thread was read and digested this time (asked for, or a "
                         "rowid of the previous generation's last row was used again).")
        for what in ("inserted", "updated", "deleted"):
            counts = self.total(what)
            if any(counts.values()):
                lines.append(f"  {what}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
        if self.deletions_kept:
            lines.append(f"  {len(self.deletions_kept)} thread(s) deleted in the source are "
                         f"kept in the target: {self.deletions_kept[:20]} (pass "
                         "--propagate-deletes to delete them there too)")
        lines.append(f"Source state as of {found.snapshot_at} ({self.seconds:.2f} s).")
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
                read_every_thread: bool = False,
                allow_mass_deletion: bool = False) -> SyncReport:
    """One sync: write the next generation from the source's changes, apply the newest
    earlier generation again unless a sync applied it whole to this target (it completes
    a sync that stopped), apply the new one, and handle the threads deleted in the source.
    ``read_every_thread``: digest every thread of the source instead of trusting the
    fingerprints (see export_chain). ``allow_mass_deletion``: follow a source that lost
    every thread or more than the threshold (export_chain.is_mass_deletion).

    Raises SourceWentBackwards or MassDeletion (export_chain) before anything is written
    or applied; ConflictError (nothing of that batch written) when the target holds rows
    of a changed thread that this tool did not load; MigrationError for bad input.
    """
    started = time.perf_counter()
    target.setup()
    chain = load_chain(export_path)
    # First: it refuses a source that went backwards before anything is applied.
    found = write_sync(source_path, export_path, read_every_thread=read_every_thread,
                       allow_mass_deletion=allow_mass_deletion)
    report = SyncReport(found)
    if chain.synced and not _was_applied(chain.latest, target):
        report.reapplied = apply_generation(target, chain, chain.latest, cipher)
        _mark_applied(chain.latest, target)
    if found.manifest is not None:
        chain = load_chain(export_path)
        report.applied = apply_generation(target, chain, found.manifest, cipher, on_batch)
        _mark_applied(found.manifest, target)
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


def _applied_marker(manifest: ExportManifest) -> Path:
    """Beside a generation file: the targets a sync applied it to whole (one digest of
    the target's display name and schema a line)."""
    return manifest.path.with_name(f"{manifest.path.name}.applied")


def _target_id(target: Target) -> str:
    return hashlib.sha256(f"{target.display}\x00{target.schema or ''}".encode()).hexdigest()


def _was_applied(manifest: ExportManifest, target: Target) -> bool:
    """Whether a sync applied every batch of this generation to ``target`` (else the next
    sync applies it again before it writes the next generation)."""
    try:
        lines = _applied_marker(manifest).read_text(encoding="ascii").split()
    except OSError:
        return False
    return _target_id(target) in lines


def _mark_applied(manifest: ExportManifest, target: Target) -> None:
    marker, this = _applied_marker(manifest), _target_id(target)
    try:
        known = marker.read_text(encoding="ascii").split()
    except FileNotFoundError:
        known = []
    if this not in known:
        write_private_text(marker, "".join(f"{line}\n" for line in [*known, this]))


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
                     ) -> tuple[float, tuple]:
    """Block until the source's files have not changed for ``quiet_seconds``; say what it
    waits for whenever a write is seen. Returns (when the last change was seen as a
    ``time.time()``, the files' state then)."""
    state = source_files_state(source_path)
    if state[0] is None:
        raise MigrationError(f"Source {source_path} does not exist.",
                             "Pass the path of the SqliteSaver database file (--source).")
    changed_at = max(entry[1] for entry in state if entry is not None) / 1e9
    say(f"Waiting until {source_path} has not changed for {quiet_seconds:g} s (stop the "
        "application's writers now)...")
    while True:
        remaining = quiet_seconds - (time.time() - changed_at)
        if remaining <= 0:
            return changed_at, state
        time.sleep(min(poll_seconds, remaining))
        now = source_files_state(source_path)
        if now != state:
            state, changed_at = now, time.time()
            say(f"  the source was written at {time.strftime('%H:%M:%S')}; waiting "
                f"{quiet_seconds:g} s more...")


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
