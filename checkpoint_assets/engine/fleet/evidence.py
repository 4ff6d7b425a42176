"""The fleet's evidence report: one table of every source, then what failed, by source.

PASSED only when every source passed: a source that failed (a damaged file, a conflict, a
mismatch) is a FAILED row of its own and never hides the others' results, nor do their
results hide it. Each source's full evidence report is written beside its export.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from checkpoint_assets.engine.fleet.collisions import SharedThreads
from checkpoint_assets.engine.fleet.fleet_file import FleetMember
from checkpoint_assets.engine.verify.evidence import check_status, markdown_table
from checkpoint_assets.engine.verify.reports import VerificationReport

FLEET_TITLE = "Fleet migration evidence"
MAX_SHARED_LISTED = 50


@dataclass(frozen=True)
class MemberResult:
    """One source's verification (None when it did not get that far: ``error`` says why)
    and where its own evidence report is."""

    member: FleetMember
    report: VerificationReport | None
    error: str | None = None
    evidence: str | None = None

    @property
    def passed(self) -> bool:
        """Verified, and every check passed."""
        return self.report is not None and self.report.passed

    def failing_checks(self) -> list[str]:
        """The checks that failed (blocking ones; warnings are shown in the source's own
        report)."""
        if self.report is None:
            return []
        return [name for name, outcome in self.report.checks.items()
                if not outcome.passed and outcome.blocking]


def render_fleet_evidence(results: Sequence[MemberResult], shared: SharedThreads,
                          target_display: str,
                          target_tables: dict[str, int], readback_per_source: int | None,
                          generated_at: dt.datetime | None = None) -> str:
    """The fleet's evidence report (Markdown). ``target_tables``: the target's whole
    tables' rows; ``readback_per_source``: threads each source read back (None: all)."""
    when = (generated_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    passed = bool(results) and all(r.passed for r in results)
    failed = [r for r in results if not r.passed]
    totals = {"sqlite": 0, "export": 0, "target": 0}
    rows = []
    for r in results:
        counts = r.report.counts if r.report is not None else {}
        cells = {side: (counts.get(side) or {}).get("checkpoints") for side in totals}
        for side, value in cells.items():
            totals[side] += value or 0
        names = r.member.names.to_json() or "kept"
        status = "PASSED" if r.passed else "FAILED"
        why = r.error or ", ".join(r.failing_checks()) or ""
        rows.append([r.member.label, str(r.member.source), cells["sqlite"], cells["export"],
                     cells["target"], names, status, why, r.evidence or ""])
    sections = [
        f"# {FLEET_TITLE}: {'PASSED' if passed else 'FAILED'}",
        markdown_table(["", ""], [
            ("Sources", len(results)), ("Passed", len(results) - len(failed)),
            ("Failed", ", ".join(r.member.label for r in failed) or "none"),
            ("Target", target_display), ("Generated", when)]),
        "## Sources\n\nEvery source is verified on its own (counts, content, metadata, "
        "source drift, read-back through both savers: "
        + ("every thread" if readback_per_source is None
           else f"a sample of {readback_per_source} thread(s) of each source")
        + "): a source's checkpoints are counted in PostgreSQL among its own threads "
        "only.\n\n" + markdown_table(
            ["source", "file", "SQLite checkpoints", "export", "PostgreSQL", "thread names",
             "result", "failed", "evidence"], rows,
            numeric=["SQLite checkpoints", "export", "PostgreSQL"]),
        "## In total\n\n" + markdown_table(
            ["", "checkpoints"],
            [("SQLite (every source)", totals["sqlite"]), ("export", totals["export"]),
             ("PostgreSQL (each source's threads)", totals["target"]),
             ("PostgreSQL (the whole table)", target_tables.get("checkpoints"))],
            numeric=["checkpoints"])
        + ("\n\nThreads held by several sources with the same content (copies) are counted "
           "once per source holding them and stored once in PostgreSQL." if shared.copies
           else ""),
        _shared_section(shared),
    ]
    for r in failed:
        if r.report is not None:
            sections.append(f"## {r.member.label}: failed checks\n\n" + markdown_table(
                ["check", "result", "actual"],
                [(name, check_status(outcome), outcome.actual)
                 for name, outcome in r.report.checks.items() if not outcome.passed]))
    return "\n\n".join(s for s in sections if s) + "\n"


def _shared_section(shared: SharedThreads) -> str:
    if not shared.copies and not shared.collisions:
        return ("## Thread ids\n\nNo thread id is held by more than one source (after the "
                "thread names above).")
    lines = ["## Thread ids held by more than one source"]
    if shared.copied:
        lines.append("Copied files (every thread identical to an earlier source's): "
                     + ", ".join(f"{label} (copy of {original})"
                                 for label, original in shared.copied.items()) + ".")
    lines.append(markdown_table(
        ["thread_id", "sources", "same content"],
        [(s.thread_id, ", ".join(s.labels), "yes (a copy)" if s.identical else "NO")
         for s in (*shared.collisions, *shared.copies)[:MAX_SHARED_LISTED]]))
    more = len(shared.copies) + len(shared.collisions) - MAX_SHARED_LISTED
    if more > 0:
        lines.append(f"... and {more} more.")
    return "\n\n".join(lines)
