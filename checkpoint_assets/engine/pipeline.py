"""Whole-export steps built from the engine's parts: import every batch, summarise a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from checkpoint_assets.engine.crypto import Cipher
from checkpoint_assets.engine.export_file import ExportManifest
from checkpoint_assets.engine.loader import BatchLoadResult, load_batch
from checkpoint_assets.engine.target import Target

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
) -> ImportSummary:
    """Set up the target schema and load every batch, each in its own transaction."""
    started = time.perf_counter()
    target.setup()
    summary = ImportSummary()
    for entry in manifest.batches:
        result = load_batch(target, manifest, entry.key, cipher=cipher)
        summary.batches.append(result)
        if on_batch is not None:
            on_batch(result)
    summary.seconds = time.perf_counter() - started
    return summary
