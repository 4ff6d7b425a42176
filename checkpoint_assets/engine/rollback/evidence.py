"""The evidence report of a rollback (PostgreSQL -> SQLite), in the forward report's form."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.verify.evidence import (
    MAX_LISTED,
    checks_section,
    headline,
    markdown_cell,
    markdown_table,
    mismatch_section,
)
from checkpoint_assets.engine.verify.reports import VerificationReport

TITLE = "Rollback evidence"


def render_rollback_evidence(
    report: VerificationReport, *, manifest: ExportManifest, source_display: str,
    sqlite_path: str, restore_totals: Mapping[str, Any] | None = None,
    generated_at: dt.datetime | None = None, max_listed: int = MAX_LISTED,
) -> str:
    """The Markdown evidence of one rollback verification: verdict, rows per table on each
    side, every check with what it proves and cannot, rows already present in the SQLite
    file (and why their bytes differ, if they do), every mismatch by key.
    ``source_display`` must be the source without its password (``Target.display``)."""
    when = generated_at or dt.datetime.now(dt.UTC)
    counts = report.counts
    rows = [[table, counts["postgres"][table], counts["export"][table],
             counts["sqlite"][table],
             "yes" if len({counts[s][table] for s in ("postgres", "export", "sqlite")}) == 1
             else "NO"] for table in ("checkpoints", "checkpoint_writes")]
    sections = [
        headline(report, manifest, TITLE, when, [("PostgreSQL source", source_display)],
                 [("SQLite file", sqlite_path)]),
        "## Rows per table\n\n" + markdown_table(
            ["table", "PostgreSQL", "export", "SQLite", "equal"], rows,
            numeric=("PostgreSQL", "export", "SQLite"))
        + "\n\nThe exported threads only; blob rows exist only in PostgresSaver's layout.",
        checks_section(report),
    ]
    if restore_totals is not None:
        present = restore_totals.get("present_checkpoint_bytes") or {}
        sections.append(
            "## Restore\n\n" + markdown_table(
                ["table", "added", "already present"],
                [[t, restore_totals["inserted"][t], restore_totals["already_present"][t]]
                 for t in ("checkpoints", "writes")], numeric=("added", "already present"))
            + ("\n\nCheckpoints already in the file with the same content keep their "
               "original bytes; how they compare with the rebuilt rows:\n\n"
               + markdown_table(["rebuilt row", "checkpoints"], sorted(present.items()),
                                numeric=("checkpoints",)) if present else "")
            + _removed_threads(restore_totals))
    sections += [mismatch_section(report, name, max_listed, "")
                 for name, c in report.checks.items() if not c.passed]
    return "\n\n".join(sections) + "\n"


def _removed_threads(restore_totals: Mapping[str, Any]) -> str:
    """The restore's removal of threads PostgreSQL no longer has, if it removed any."""
    removed = restore_totals.get("removed_threads") or []
    if not removed:
        return ""
    rows = restore_totals.get("removed") or {}
    return (f"\n\nRemoved from the file, in the transaction of the restore's last batch "
            f"(--remove-deleted-threads): {len(removed)} thread(s) PostgreSQL no longer has, "
            f"{rows.get('checkpoints', 0)} checkpoints and {rows.get('writes', 0)} writes: "
            + markdown_cell(", ".join(removed[:MAX_LISTED]), 2000)
            + (f" and {len(removed) - MAX_LISTED} more" if len(removed) > MAX_LISTED else ""))
