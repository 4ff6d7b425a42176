"""The evidence report of a rollback (PostgreSQL -> SQLite), in the forward report's form."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from checkpoint_assets.engine.evidence import (
    MAX_LISTED,
    _checks_section,
    _mismatch_section,
    markdown_cell,
    markdown_table,
)
from checkpoint_assets.engine.export_file import ExportManifest
from checkpoint_assets.engine.verify import VerificationReport

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
    result = "PASSED" if report.passed else "FAILED"
    failed = [name for name, c in report.checks.items() if not c.passed]
    verdict = (f"{len(failed)} of {len(report.checks)} checks failed: {', '.join(failed)}"
               if failed else f"all {len(report.checks)} checks passed")
    lines = [
        ("result", f"{result}: {verdict}"),
        ("verified at", f"{when.astimezone(dt.UTC).isoformat(timespec='seconds')} "
                        f"(took {report.seconds:.1f} s)"),
        ("PostgreSQL source", source_display),
        ("export", str(manifest.path)),
        ("export taken at", manifest.header.get("created_at", "-")),
        ("export content sha256", manifest.content_sha256),
        ("exported", f"{manifest.checkpoints} checkpoints, {manifest.writes} writes, "
                     f"{manifest.threads} threads in {len(manifest.batches)} batches"),
        ("SQLite file", sqlite_path),
    ]
    counts = report.counts
    rows = [[table, counts["postgres"][table], counts["export"][table],
             counts["sqlite"][table],
             "yes" if len({counts[s][table] for s in ("postgres", "export", "sqlite")}) == 1
             else "NO"] for table in ("checkpoints", "checkpoint_writes")]
    sections = [
        f"# {TITLE}: {result}\n\n" + "\n".join(
            f"- **{label}**: {markdown_cell(value, 2000)}" for label, value in lines),
        "## Rows per table\n\n" + markdown_table(
            ["table", "PostgreSQL", "export", "SQLite", "equal"], rows,
            numeric=("PostgreSQL", "export", "SQLite"))
        + "\n\nThe exported threads only; blob rows exist only in PostgresSaver's layout.",
        _checks_section(report),
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
                                numeric=("checkpoints",)) if present else ""))
    sections += [_mismatch_section(report, name, max_listed, "")
                 for name, c in report.checks.items() if not c.passed]
    return "\n\n".join(sections) + "\n"
