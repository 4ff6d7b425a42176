"""The way back as one step: export PostgreSQL, restore into SQLite, verify, publish.

A new SQLite file gets its final name only once the verification passed on it; an existing
file is loaded with the forward rules (see :mod:`sqlite_target`) and verified afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.batches import DEFAULT_BATCH_SIZE
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.errors import FailureKind, MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.rollback.original_rows import OriginalRows
from checkpoint_assets.engine.rollback.postgres_source import write_postgres_export
from checkpoint_assets.engine.rollback.sqlite_target import RestoreSummary, restore_export
from checkpoint_assets.engine.rollback.verify_rollback import verify_rollback
from checkpoint_assets.engine.verify.migration import DEFAULT_READBACK_SAMPLE
from checkpoint_assets.engine.verify.reports import VerificationReport

ROLLBACK_EXPORT_SUFFIX = ".rollback.export"


def default_rollback_export(to_path: str | Path) -> Path:
    """Where a rollback into ``to_path`` writes its export when none is given."""
    to_path = Path(to_path)
    return to_path.with_name(to_path.name + ROLLBACK_EXPORT_SUFFIX)


class RollbackNotVerified(MigrationError):
    """The restored SQLite file failed a check; a new file was not published."""

    kind = FailureKind.MISMATCH

    def __init__(self, problem: str, hint: str, report: VerificationReport | None = None
                 ) -> None:
        super().__init__(problem, hint)
        self.report = report

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.problem, self.hint, None))


def not_verified_error(report: VerificationReport, to_path: str | Path) -> RollbackNotVerified:
    """The error of a new SQLite file that failed ``report``: it was not published."""
    failed = [name for name, c in report.checks.items() if not c.passed]
    return RollbackNotVerified(
        f"The restored SQLite file failed {', '.join(failed)}; it was not written "
        f"to {to_path}.",
        "Read the evidence report, fix the cause, and run the rollback again.",
        report)


@dataclass
class RollbackResult:
    """What a rollback did: the export, the restore and the verification."""

    manifest: ExportManifest
    restore: RestoreSummary
    report: VerificationReport
    # With an original export: per rebuilt checkpoint, original bytes or why not.
    original_bytes: dict[str, int] | None = None


def rollback(
    source_dsn: str,
    to_path: str | Path,
    export_path: str | Path,
    *,
    schema: str | None = None,
    threads: Sequence[str] | None = None,
    cipher: Cipher | None = None,
    readback_threads: int | None = DEFAULT_READBACK_SAMPLE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    original_export: str | Path | None = None,
    remove_deleted_threads: bool = False,
) -> RollbackResult:
    """Export PostgresSaver's tables (or ``threads``) to ``export_path``, restore them into
    the SqliteSaver file ``to_path`` and verify; returns the result (check
    ``result.report.passed``). A new file that fails verification is not published: raises
    RollbackNotVerified with the report, nothing at ``to_path``. ``original_export``: the
    forward migration's export; checkpoints unchanged since come back in their original
    bytes (:mod:`original_rows`). An existing file's threads that PostgreSQL no longer has
    are reported (check ``sqlite_threads_not_in_postgres``, a warning) and, with
    ``remove_deleted_threads``, deleted in the transaction of the restore's last batch.
    """
    originals = OriginalRows(original_export) if original_export is not None else None
    source = Target(source_dsn, schema, role="source")
    manifest = write_postgres_export(source_dsn, export_path, schema=schema, threads=threads,
                                     cipher=cipher, batch_size=batch_size, progress=progress,
                                     originals=originals)
    reports: list[VerificationReport] = []

    def verify_before_publish(path: Path) -> None:
        report = verify_rollback(manifest, source, path, cipher=cipher,
                                 readback_threads=readback_threads)
        reports.append(report)
        if not report.passed:
            raise not_verified_error(report, to_path)

    to_path = Path(to_path)
    new_file = not to_path.exists()
    summary = restore_export(manifest, to_path, cipher=cipher,
                             before_publish=verify_before_publish if new_file else None,
                             remove_deleted_threads=remove_deleted_threads)
    if not new_file:
        reports.append(verify_rollback(manifest, source, to_path, cipher=cipher,
                                       readback_threads=readback_threads,
                                       removed_threads=summary.removed_threads))
    return RollbackResult(manifest, summary, reports[-1],
                          dict(originals.counts) if originals is not None else None)
