"""Whole-export steps built from the engine's parts: import every batch, summarise a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from itertools import islice

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import Interrupted
from checkpoint_assets.engine.core.workers import process_pool
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.loader import BatchLoadResult, load_batch
from checkpoint_assets.engine.load.target import Target

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


@dataclass
class ImportSummary:
    """Totals of loading every batch of an export."""

    batches: list[BatchLoadResult] = field(default_factory=list)
    seconds: float = 0.0

    def table_rows(self) -> list[dict[str, object]]:
        """One summary row per table: rows read, imported, already present, conflicts."""
        rows = []
        for table in TABLES:
            inserted = sum(b.inserted[table] for b in self.batches)
            present = sum(b.already_present[table] for b in self.batches)
            rows.append({"table": table, "rows": inserted + present, "imported": inserted,
                         "already_present": present, "conflicts": 0,
                         "seconds": round(self.seconds, 3)})
        return rows


def import_export(
    manifest: ExportManifest,
    target: Target,
    *,
    cipher: Cipher | None = None,
    on_batch: Callable[[BatchLoadResult], None] | None = None,
    workers: int = 1,
) -> ImportSummary:
    """Set up the target schema and load every batch, each in its own transaction.

    With ``workers`` > 1, batches load in that many processes at once (each batch is still
    one transaction under its own advisory lock). If a batch fails, no new batch is
    started, the ones already loading finish, and the first failure is raised; the batches
    that committed stay, and a re-run skips them. A Ctrl-C raises Interrupted once the
    workers have stopped (a batch being loaded rolls back).
    """
    started = time.perf_counter()
    target.setup()
    summary = ImportSummary()
    keys = [entry.key for entry in manifest.batches]
    try:
        if workers <= 1 or len(keys) <= 1:
            for key in keys:
                _record(summary, load_batch(target, manifest, key, cipher=cipher), on_batch)
        else:
            _load_in_processes(summary, manifest, target, keys, cipher, on_batch,
                               min(workers, len(keys)))
    except KeyboardInterrupt:
        raise Interrupted(
            f"Import stopped (Ctrl-C): {len(summary.batches)} of {len(keys)} batches are "
            f"loaded into {target.display}, each whole; the batches being loaded were "
            "rolled back.",
            "Run the same `checkpoint-assets import` again to load the rest (batches "
            "already loaded are skipped), then `checkpoint-assets verify`.") from None
    summary.batches.sort(key=lambda result: result.key)
    summary.seconds = time.perf_counter() - started
    return summary


def _record(summary: ImportSummary, result: BatchLoadResult,
            on_batch: Callable[[BatchLoadResult], None] | None) -> None:
    summary.batches.append(result)
    if on_batch is not None:
        on_batch(result)


def _load_in_processes(summary: ImportSummary, manifest: ExportManifest, target: Target,
                       keys: list[str], cipher: Cipher | None,
                       on_batch: Callable[[BatchLoadResult], None] | None,
                       workers: int) -> None:
    pending = iter(keys)
    with process_pool(workers) as pool:
        running = {pool.submit(load_batch, target, manifest, key, cipher=cipher)
                   for key in islice(pending, workers)}
        failure: BaseException | None = None
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    _record(summary, future.result(), on_batch)
                except Exception as exc:  # raised below, once the others finished
                    failure = failure or exc
            if failure is None:
                running |= {pool.submit(load_batch, target, manifest, key, cipher=cipher)
                            for key in islice(pending, len(done))}
    if failure is not None:
        raise failure
