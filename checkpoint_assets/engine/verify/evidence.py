"""The evidence report: one readable Markdown summary of a migration's verification.

It states, for a reviewer who was not there: whether the migration passed, which export
and target were compared, the rows per table in SQLite, the export and PostgreSQL, every
check with what it proves and what it cannot, how long each batch took to load, every
mismatch by key, and every metadata value changed to fit JSONB. The CLI writes it to a
file; the verification asset attaches the same text to its materialization.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.engine.verify.check_table import CheckOutcome
from checkpoint_assets.engine.verify.reports import VerificationReport

DEFAULT_TITLE = "Migration evidence"
EVIDENCE_SUFFIX = ".evidence.md"
MAX_LISTED = 200  # rows per mismatch listing; the JSON report of `verify` has every one
CELL_LIMIT = 160  # characters per table cell (metadata values can be long)
METADATA_CHANGE_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "path", "reason",
                           "original", "stored")
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|`*[]<>"})
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class BatchTiming:
    """How long loading one batch took, and what it loaded."""

    key: str
    checkpoints: int
    writes: int
    seconds: float
    blobs: int = 0

    @property
    def rows(self) -> int:
        """Rows written to PostgreSQL: checkpoints, blob rows and writes."""
        return self.checkpoints + self.blobs + self.writes

    @property
    def rows_per_second(self) -> float:
        """Rows per second of loading (the batch asset's ``rows_per_second``)."""
        return self.rows / max(self.seconds, 1e-9)


def default_evidence_path(export_path: str | Path) -> Path:
    """Where the evidence of a migration goes by default: beside its export file."""
    export_path = Path(export_path)
    return export_path.with_name(export_path.name + EVIDENCE_SUFFIX)


def check_status(outcome: CheckOutcome) -> str:
    """PASS, FAIL, or WARN for a failed warning-severity check (a risk, not a failure)."""
    if outcome.passed:
        return "PASS"
    return "FAIL" if outcome.blocking else "WARN"


def every_mismatch(report: VerificationReport, name: str) -> list[dict]:
    """Every mismatch of one check that the report holds, by key.

    The check's spec says where its complete list is (content, metadata, count and
    resume findings in the per-batch comparisons, the source drift in the outcome); the
    official read-back keeps the first ``verify.MAX_LISTED`` (its ``mismatch_count`` says
    how many there were).
    """
    outcome = report.checks[name]
    if outcome.spec.every_mismatch is None:
        return list(outcome.mismatches)
    return outcome.spec.every_mismatch(report)


def render_evidence(
    report: VerificationReport,
    *,
    manifest: ExportManifest,
    target_display: str,
    batches: Sequence[BatchTiming] | None = None,
    batch_labels: Mapping[str, str] | None = None,
    title: str = DEFAULT_TITLE,
    generated_at: dt.datetime | None = None,
    max_listed: int = MAX_LISTED,
    untimed_hint: str = "",
    more_hint: str = "",
) -> str:
    """The evidence report of one verification, as Markdown.

    ``target_display`` must be the target without its password (``Target.display``).
    ``batches``: per-batch load timings, if known (a verification run on its own has
    none). ``batch_labels``: the name each export batch goes by in ``batches`` (e.g. its
    Dagster partition key), when not its export key. Only timings of this export's
    batches are listed and totalled, so the table always describes this one export.
    Listings stop after ``max_listed`` rows per check, saying how many more there are.
    The caller may say where to find what the report leaves out: ``untimed_hint`` (how to
    get the load times, when ``batches`` is None), ``more_hint`` (where every mismatch is
    listed).
    """
    when = generated_at or dt.datetime.now(dt.UTC)
    sections = [
        _headline(report, manifest, target_display, title, when),
        _counts_section(report),
        checks_section(report),
        _timings_section(manifest, batches, batch_labels or {}, untimed_hint),
        *(mismatch_section(report, name, max_listed, more_hint) for name, outcome
          in report.checks.items() if not outcome.passed),
        _metadata_changes_section(report, max_listed),
    ]
    return "\n\n".join(sections) + "\n"


def markdown_cell(value: Any, limit: int = CELL_LIMIT) -> str:
    """``value`` as the text of one Markdown table cell.

    Dicts and lists become compact JSON; text longer than ``limit`` is cut with an
    ellipsis; pipes and Markdown markup are escaped; line breaks and other control
    characters are shown as escapes (``\\n``), so a cell never breaks its table.
    """
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    else:
        text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = text.translate(_MARKDOWN_SPECIAL)
    return "".join(_escaped_control(c) if _is_control(c) else c for c in text)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   numeric: Sequence[str] = (), limit: int = CELL_LIMIT) -> str:
    """A Markdown table; columns named in ``numeric`` are right-aligned, cells are cut
    after ``limit`` characters."""
    lines = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(markdown_cell(cell, limit) for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _is_control(char: str) -> bool:
    return ord(char) < 32 or 127 <= ord(char) < 160 or char in "\u2028\u2029"


def _escaped_control(char: str) -> str:
    """A control character as Python writes it in a string literal: \\n, \\x00, \\u2028."""
    if char in _CONTROL_ESCAPES:
        return _CONTROL_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"


def _headline(report: VerificationReport, manifest: ExportManifest, target_display: str,
              title: str, when: dt.datetime) -> str:
    source = (manifest.header.get("source") or {}).get("path", "-")
    return headline(report, manifest, title, when, [("SQLite source", source)],
                    [("target", target_display)])


def headline(report: VerificationReport, manifest: ExportManifest, title: str,
             when: dt.datetime, from_side: Sequence[tuple[str, Any]],
             to_side: Sequence[tuple[str, Any]]) -> str:
    """The report's title and summary: verdict, when, the export between ``from_side`` and
    ``to_side`` (label, value pairs: where the rows came from and went to)."""
    result = "PASSED" if report.passed else "FAILED"
    failed = [n for n, c in report.checks.items() if check_status(c) == "FAIL"]
    warned = [n for n, c in report.checks.items() if check_status(c) == "WARN"]
    required = [n for n, c in report.checks.items() if c.blocking]
    if failed:
        verdict = f"{len(failed)} of {len(required)} required checks failed: {', '.join(failed)}"
    elif warned:
        verdict = f"all {len(required)} required checks passed"
    else:
        verdict = f"all {len(report.checks)} checks passed"
    if warned:
        verdict += f"; warning: {', '.join(warned)}"
    rows = [
        ("result", f"{result}: {verdict}"),
        ("verified at", f"{when.astimezone(dt.UTC).isoformat(timespec='seconds')} "
                        f"(took {report.seconds:.1f} s)"),
        *from_side,
        ("export", str(manifest.path)),
        ("export taken at", manifest.header.get("created_at", "-")),
        ("export content sha256", manifest.content_sha256),
        ("exported", f"{manifest.checkpoints} checkpoints, {manifest.writes} writes, "
                     f"{manifest.threads} threads in {len(manifest.batches)} batches"),
        *to_side,
    ]
    return (f"# {markdown_cell(title)}: {result}\n\n"
            + "\n".join(f"- **{label}**: {markdown_cell(value, 2000)}" for label, value in rows))


def _counts_section(report: VerificationReport) -> str:
    counts = report.counts
    sqlite = counts.get("sqlite", {})
    rows = []
    for table in TABLES:
        known = [counts[side].get(table) for side in ("export", "expected_target", "target")]
        known.append(sqlite.get(table))
        values = [v for v in known if v is not None]
        rows.append([table, sqlite.get(table, "-"), counts["export"].get(table, "-"),
                     counts["expected_target"][table], counts["target"][table],
                     "yes" if len(set(values)) == 1 else "NO"])
    totals = counts.get("target_tables", {})
    note = ("PostgreSQL: the rows of the exported threads in the target"
            + (" (the whole tables hold " + ", ".join(
                f"{totals[t]} {t}" for t in TABLES if t in totals) + ")" if totals else "")
            + ". Blob rows exist only in PostgresSaver's layout (one per channel version "
              "that is not stored inline); the expected number follows from the export.")
    return ("## Rows per table\n\n"
            + markdown_table(["table", "SQLite", "export", "expected in PostgreSQL",
                              "PostgreSQL", "equal"], rows,
                             numeric=("SQLite", "export", "expected in PostgreSQL",
                                      "PostgreSQL"))
            + "\n\n" + note)


def checks_section(report: VerificationReport) -> str:
    rows = [[name, check_status(c), c.mismatch_count, c.description, c.cannot_prove]
            for name, c in report.checks.items()]
    text = "## Checks\n\n" + markdown_table(
        ["check", "result", "mismatches", "what it proves", "what it cannot prove"], rows,
        numeric=("mismatches",), limit=2000)
    notes = [f"- {markdown_cell(name, 80)}: {markdown_cell(note, 2000)}"
             for name, c in report.checks.items() for note in c.notes]
    if notes:
        text += "\n\nNotes:\n\n" + "\n".join(notes)
    return text


def _timings_section(manifest: ExportManifest, batches: Sequence[BatchTiming] | None,
                     labels: Mapping[str, str], untimed_hint: str) -> str:
    if batches is None:
        return ("## Batch timings\n\nNot recorded: this verification ran on its own."
                + (f" {untimed_hint}" if untimed_hint else ""))
    names = [labels.get(entry.key, entry.key) for entry in manifest.batches]
    wanted = set(names)
    ordered = sorted((b for b in batches if b.key in wanted), key=lambda b: b.key)
    rows: list[list[Any]] = [[b.key, b.checkpoints, b.writes, b.rows, f"{b.seconds:.3f}",
                              f"{b.rows_per_second:.1f}"] for b in ordered]
    total = BatchTiming("total", sum(b.checkpoints for b in ordered),
                        sum(b.writes for b in ordered), sum(b.seconds for b in ordered),
                        sum(b.blobs for b in ordered))
    rows.append([f"total ({len(ordered)} batches)", total.checkpoints, total.writes,
                 total.rows, f"{total.seconds:.3f}", f"{total.rows_per_second:.1f}"])
    text = ("## Batch timings\n\n"
            + markdown_table(["batch", "checkpoints", "writes", "rows", "seconds",
                              "rows per second"], rows,
                             numeric=("checkpoints", "writes", "rows", "seconds",
                                      "rows per second"))
            + "\n\nSeconds: reading, converting and inserting the batch in one transaction, "
              "from the latest load of each batch; rows include blob rows.")
    timed = {b.key for b in ordered}
    untimed = [name for name in names if name not in timed]
    if untimed:
        shown = ", ".join(untimed[:20]) + (f" and {len(untimed) - 20} more"
                                           if len(untimed) > 20 else "")
        text += (f"\n\nNo load of this export recorded for {len(untimed)} of "
                 f"{len(manifest.batches)} batches: {markdown_cell(shown, 2000)}.")
    return text


def mismatch_section(report: VerificationReport, name: str, max_listed: int,
                      more_hint: str) -> str:
    outcome = report.checks[name]
    status = check_status(outcome)
    kind = "Warning" if status == "WARN" else "Mismatches"
    heading = f"## {kind}: {name} ({status}, {outcome.mismatch_count})"
    mismatches = every_mismatch(report, name)
    if not mismatches:
        return heading + "\n\nNo mismatch by key; see the notes above."
    listed = mismatches[:max_listed]
    columns = _columns(listed)
    text = heading + "\n\n" + markdown_table(
        columns, [[m.get(c) for c in columns] for m in listed])
    more_in_report = len(mismatches) - len(listed)
    not_kept = max(outcome.mismatch_count - len(mismatches), 0)
    if more_in_report:
        text += f"\n\n... {more_in_report} more" + (f"; {more_hint}." if more_hint else ".")
    if not_kept:
        text += (f"\n\n... {not_kept} more not kept by the verification (it keeps the first "
                 f"{len(mismatches)} of this check).")
    return text


def _metadata_changes_section(report: VerificationReport, max_listed: int) -> str:
    changes = report.metadata_changes
    heading = f"## Metadata values changed to fit JSONB ({len(changes)})"
    if not changes:
        return heading + "\n\nNone: every metadata value is stored as it was."
    listed = changes[:max_listed]
    text = (heading + "\n\nPostgreSQL's JSONB cannot hold these values as they were; "
            "metadata_integrity compares against the stored form.\n\n"
            + markdown_table(METADATA_CHANGE_COLUMNS,
                             [[c.get(col) for col in METADATA_CHANGE_COLUMNS] for c in listed]))
    if len(changes) > len(listed):
        text += (f"\n\n... {len(changes) - len(listed)} more; see the JSON report "
                 "(`metadata_changes`).")
    return text


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows``, in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)
