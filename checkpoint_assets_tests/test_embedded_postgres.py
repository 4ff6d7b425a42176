"""The embedded PostgreSQL (pgserver): the quick start's default and the tests' fallback
where no server runs. A whole migration must pass on it, whatever else this machine runs."""

from __future__ import annotations

from pathlib import Path

from checkpoint_assets.engine.export_file import write_export
from checkpoint_assets.engine.pipeline import import_export
from checkpoint_assets.engine.target import Target
from checkpoint_assets.engine.verify import verify_migration


def test_migration_passes_on_the_embedded_server(
        sample_db: Path, tmp_path: Path, embedded_target_dsn: str) -> None:
    """Export, import and verify (every thread read back) against pgserver's PostgreSQL."""
    manifest = write_export(sample_db, tmp_path / "x.export", batch_size=40)
    target = Target(embedded_target_dsn)
    summary = import_export(manifest, target)
    assert sum(b.inserted["checkpoints"] for b in summary.batches) == manifest.checkpoints
    report = verify_migration(manifest, target, source_path=sample_db, readback_threads=None)
    assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items()}
