"""The one place the command line prints its results: summaries as text or JSON (and
``--report`` files), verification and check tables, evidence report paths (the engine's
operations write the reports).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.operations import contract
from checkpoint_assets.engine.sync.sync_target import SyncReport
from checkpoint_assets.engine.verify.reports import VerificationReport


def emit(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    """Print the summary (as JSON with --json, else ``text``); with --report also write
    it as JSON, owner-only."""
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(text)
    report: Path | None = getattr(args, "report", None)
    if report is not None:
        try:
            contract.write_private_json(report, summary)
        except OSError as exc:
            raise MigrationError(f"Cannot write the report {report}: {exc.strerror or exc}.",
                                 "Pass --report FILE.json in a writable directory.") from None


def manifest_summary(manifest: ExportManifest) -> dict[str, Any]:
    """The export's counts and digests, for reports."""
    return {"export": str(manifest.path), "checkpoints": manifest.checkpoints,
            "writes": manifest.writes, "threads": manifest.threads,
            "batches": len(manifest.batches), "size_bytes": manifest.size_bytes,
            "content_sha256": manifest.content_sha256, "file_sha256": manifest.file_sha256,
            "types": manifest.types}


def export_text(manifest: ExportManifest) -> str:
    return (f"Exported {manifest.checkpoints} checkpoints, {manifest.writes} writes, "
            f"{manifest.threads} threads in {len(manifest.batches)} batches to "
            f"{manifest.path} ({manifest.size_bytes:,} bytes)\n"
            f"content sha256 {manifest.content_sha256}")


def batch_json(result: Any) -> dict[str, Any]:
    data = asdict(result)
    data["metadata_changes"] = [
        {"key": list(key), **asdict(change)} for key, change in result.metadata_changes]
    return data


def sync_json(report: SyncReport) -> dict[str, Any]:
    found = report.found
    return {"command": "sync", "ok": not found.refused, "moved": found.moved,
            "refused": found.refused,
            "generation": found.generation if found.moved else None,
            "generation_file": str(found.manifest.path) if found.manifest else None,
            "added": found.added, "changed": found.changed, "deleted": found.deleted,
            "threads_read": found.threads_read, "read_every_thread": found.read_every_thread,
            "fingerprints_read": found.fingerprints_read,
            "snapshot_at": found.snapshot_at,
            "rows": {what: report.total(what)
                     for what in ("inserted", "updated", "deleted", "already_present")},
            "deletions_kept": report.deletions_kept, "seconds": round(report.seconds, 3)}


def print_evidence_path(args: argparse.Namespace, path: Path) -> None:
    if not getattr(args, "json", False):  # with --json the path is in the JSON
        print(f"\nEvidence report (Markdown): {path}")


def verification_json(report: VerificationReport) -> dict[str, Any]:
    """The verification report as JSON-able data."""
    return {
        "passed": report.passed,
        "checks": {name: {"passed": c.passed, "description": c.description,
                          "expected": c.expected, "actual": c.actual,
                          "mismatch_count": c.mismatch_count,
                          "mismatches": contract.every_mismatch(report, name),
                          "notes": c.notes}
                   for name, c in report.checks.items()},
        "counts": report.counts,
        "metadata_changes": report.metadata_changes,
        "seconds": round(report.seconds, 3),
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (same keys in every row)."""
    if not rows:
        return "(nothing)"
    headers = list(rows[0])
    widths = [max(len(str(h)), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def render_verification(report: VerificationReport) -> str:
    """Human-readable verification result."""
    lines = ["Verification " + ("PASSED" if report.passed else "FAILED")]
    for name, check in report.checks.items():
        mark = "PASS" if check.passed else "FAIL"
        lines.append(f"  [{mark}] {name}: {check.description}")
        for mismatch in check.mismatches[:10]:
            lines.append(f"         - {mismatch}")
        if check.mismatch_count > 10:
            lines.append(f"         ... {check.mismatch_count - 10} more (see --report)")
        lines.extend(f"         note: {n}" for n in check.notes)
    counts = report.counts
    rows = [{"table": t, "sqlite": counts.get("sqlite", {}).get(t, "-"),
             "export": counts["export"].get(t, "-"),
             "expected": counts["expected_target"][t], "postgres": counts["target"][t]}
            for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")]
    lines += ["", render_table(rows)]
    if report.metadata_changes:
        lines.append(f"\n{len(report.metadata_changes)} metadata value(s) changed to fit "
                     "JSONB:")
        lines += [f"  - {c['thread_id']}/{c['checkpoint_id']} {c['path']}: {c['reason']}"
                  for c in report.metadata_changes[:20]]
    return "\n".join(lines)


def deleted_threads_lines(removed: list[str], kept: list[str]) -> list[str]:
    """What the output says about the file's threads PostgreSQL no longer has."""
    lines = []
    if removed:
        lines.append(f"Removed {len(removed)} thread(s) PostgreSQL no longer has from the "
                     f"SQLite file: {', '.join(removed[:20])}")
    if kept:
        lines.append(f"WARNING: the SQLite file keeps {len(kept)} thread(s) PostgreSQL no "
                     f"longer has (deleted there?): {', '.join(kept[:20])}. Roll back (or "
                     "restore) again with --remove-deleted-threads to remove them.")
    return lines


def reasons(counts: dict[str, int]) -> str:
    """Per-reason checkpoint counts, most first: "412 original bytes ..., 3 ..."."""
    return "; ".join(f"{n} {reason}" for reason, n in
                     sorted(counts.items(), key=lambda item: -item[1]))
