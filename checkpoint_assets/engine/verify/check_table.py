"""The checks, declared once: names, what each proves and cannot, severity, judge.

Every check is declared in ``CHECKS`` (the migration's, run by
:func:`checkpoint_assets.engine.verify.migration.verify_migration`) or
``ROLLBACK_CHECKS`` (the way back's, judged by
:func:`checkpoint_assets.engine.rollback.verify_rollback.verify_rollback`): its name (the
contract with the Dagster layer and the CLI), what it proves and cannot, its severity, and
the function that judges the ``Findings`` and returns its ``CheckOutcome``.
:func:`check_spec` finds a check of either family by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.versions import CONTENT, SUPERSEDED_TABLE
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.target import (
    Target,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.verify.readback import compare_thread_readback, readback_sample
from checkpoint_assets.engine.verify.reports import MAX_LISTED, BatchComparison, VerificationReport

COUNT_MATCH = "checkpoint_count_match"
CONTENT_INTEGRITY = "content_integrity"
METADATA_INTEGRITY = "metadata_integrity"
SOURCE_MATCHES_EXPORT = "source_matches_export"
OFFICIAL_READBACK = "official_saver_readback"
RESUMABLE_ON_POSTGRES = "resumable_on_postgres_saver"
REENCODED_AT_SAME_VERSION = "reencoded_at_same_version"
CONTENT_DIFFERS_AT_SAME_VERSION = "content_differs_at_same_version"
# The way back's checks (see ROLLBACK_CHECKS).
ROLLBACK_COUNT_MATCH = "rollback_count_match"
EXPORT_MATCHES_POSTGRES = "export_matches_postgres"
SQLITE_MATCHES_EXPORT = "sqlite_matches_export"
SQLITE_THREADS_NOT_IN_POSTGRES = "sqlite_threads_not_in_postgres"


@dataclass
class CheckOutcome:
    """The result of one check, with what a reviewer needs to act on it."""

    name: str
    passed: bool
    expected: Any
    actual: Any
    mismatches: list[dict] = field(default_factory=list)
    mismatch_count: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> CheckSpec:
        """The check's declaration: what it proves and cannot, its severity."""
        return check_spec(self.name)

    @property
    def description(self) -> str:
        """What this check proves."""
        return self.spec.description

    @property
    def cannot_prove(self) -> str:
        """What this check cannot prove ("-": nothing beyond what it states)."""
        return self.spec.cannot_prove

    @property
    def blocking(self) -> bool:
        """A failure fails the verification (else it is a warning: a risk, reported)."""
        return not self.spec.warning


@dataclass(frozen=True)
class Findings:
    """What the checks judge: the per-batch comparisons, the counts, the source's drift."""

    manifest: ExportManifest
    target: Target
    cipher: Cipher | None
    source_path: str | Path | None
    readback_threads: int | None
    readback_all_hint: str  # how the caller reads back every thread
    comparisons: list[BatchComparison]
    counts: dict[str, dict[str, int]]
    drift: dict[str, list[str]]
    chain: ExportChain  # the expected state: the export and its sync generations
    workers: int = 1  # processes the read-back may use
    # Threads an earlier certified run read back equal, their rows unchanged since.
    read_back_before: frozenset[str] = frozenset()
    # The verification's private snapshot of the source (or the live file's URI).
    source_copy: Path | str | None = None
    # What the certificates' record is and how the caller compares every batch instead.
    certificates_hint: str = ""
    read_back_equal: set[str] = field(default_factory=set)  # filled by the read-back check
    # How many threads the source-drift check digested when not every one (see
    # verify_migration's source_drift_in); None: every thread.
    source_digested: int | None = None


def check_count_match(f: Findings) -> CheckOutcome:
    """Counts per batch and in total: PostgreSQL = export, and SQLite = export."""
    counts = f.counts
    count_mismatches = [
        {"batch": c.key, "expected": c.expected_counts, "actual": c.actual_counts}
        for c in f.comparisons if c.expected_counts != c.actual_counts]
    sqlite_ok = f.source_path is None or (
        counts["sqlite"]["checkpoints"] == f.chain.checkpoints
        and counts["sqlite"]["checkpoint_writes"] == f.chain.writes)
    return CheckOutcome(
        COUNT_MATCH, passed=(not count_mismatches
                             and counts["expected_target"] == counts["target"] and sqlite_ok),
        expected={"export": counts["export"], "target": counts["expected_target"]},
        actual={"target": counts["target"],
                **({"sqlite": counts["sqlite"]} if f.source_path else {})},
        mismatches=count_mismatches[:MAX_LISTED], mismatch_count=len(count_mismatches),
        notes=[] if sqlite_ok else ["SQLite counts differ from the export: the source changed "
                                    "after the export was taken."])


def check_content_integrity(f: Findings) -> CheckOutcome:
    """Per batch, the target's content digest equals the export's; mismatches by key."""
    content = [m for c in f.comparisons for m in c.content_mismatches]
    return CheckOutcome(
        CONTENT_INTEGRITY, passed=not content,
        expected={c.key: c.expected_digest for c in f.comparisons},
        actual={c.key: c.actual_digest for c in f.comparisons},
        mismatches=content[:MAX_LISTED], mismatch_count=len(content),
        notes=_taken_over_notes(f))


def _taken_over_notes(f: Findings) -> list[str]:
    """What the content and metadata checks say of batches taken over from certificates
    (see certificates.py): how many, from which runs' batch checks, why, and what that
    rests on (the record that kept the certificates being genuine)."""
    comparisons = f.comparisons
    certified = [c for c in comparisons if c.certificate_from]
    if not certified:
        return []
    compared = len(comparisons) - len(certified)
    runs = sorted({c.certificate_from for c in certified})
    return [f"{len(certified)} of {len(comparisons)} batches were compared row by row by "
            f"their own batch check when they were loaded ({', '.join(runs[:10])}"
            f"{', ...' if len(runs) > 10 else ''}), and PostgreSQL still holds the very row "
            "versions that check compared, under the same table definitions (a changed row "
            "is a new version): not compared again"
            + (f"; the other {compared} were compared now." if compared else ".")
            + " Taking a batch over rests on the record of its check's result being genuine"
            + (f" ({f.certificates_hint})" if f.certificates_hint else "") + "."]


def check_metadata_integrity(f: Findings) -> CheckOutcome:
    """Every checkpoint's metadata equals the source's (in the form JSONB holds)."""
    metadata = [m for c in f.comparisons for m in c.metadata_mismatches]
    changes = sum(len(c.metadata_changes) for c in f.comparisons)
    return CheckOutcome(
        METADATA_INTEGRITY, passed=not metadata,
        expected=f.chain.checkpoints,
        actual=f.chain.checkpoints - len(metadata),
        mismatches=metadata[:MAX_LISTED], mismatch_count=len(metadata),
        notes=([f"{changes} metadata value(s) PostgreSQL cannot hold were changed; "
                "see metadata_changes."] if changes else [])
        + _taken_over_notes(f))


def check_source_matches_export(f: Findings) -> CheckOutcome:
    """The SQLite source's threads, digested now, equal the export's."""
    drift = f.drift
    drifted = drift["changed"] + drift["added"] + drift["removed"]
    return CheckOutcome(
        SOURCE_MATCHES_EXPORT, passed=not drifted,
        expected=f.chain.content_sha256, actual="unchanged" if not drifted else drift,
        mismatches=[{"thread_id": t, "problem": kind} for kind, ts in drift.items()
                    for t in ts][:MAX_LISTED],
        mismatch_count=len(drifted),
        notes=(["Export again and import to bring these threads over."] if drifted else [])
        + ([f"Digested again: the {f.source_digested} thread(s) written since the first "
            "verification or differing then; it digested every other thread equal, and "
            "the syncs since show no write to any of them."]
           if f.source_digested is not None else []))


def check_official_readback(f: Findings) -> CheckOutcome:
    """SqliteSaver.list equals PostgresSaver.list for the sampled (or every) thread."""
    assert f.source_path is not None
    threads = readback_sample(f.chain, f.readback_threads)
    again = [tid for tid in threads if tid not in f.read_back_before]
    read_mismatches, notes = compare_thread_readback(f.source_path, f.target, again,
                                                     f.cipher, workers=f.workers,
                                                     snapshot=f.source_copy,
                                                     names=f.chain.export.thread_names)
    f.read_back_equal.update(set(threads) - {m["thread_id"] for m in read_mismatches})
    if len(again) < len(threads):
        notes = [*notes, f"{len(threads) - len(again)} thread(s) were read back equal "
                         "before the final sync and their rows are the same since on both "
                         "sides (same row versions in PostgreSQL, same source digest): "
                         "not read back again."]
    if len(threads) < f.chain.threads:
        how = f" with {f.readback_all_hint}" if f.readback_all_hint else ""
        notes = [*notes, f"A sample of {len(threads)} of {f.chain.threads} threads; "
                         f"read back every thread{how}."]
    return CheckOutcome(
        OFFICIAL_READBACK, passed=not read_mismatches,
        # Threads read back equal: expected all of the sample, actual those that were.
        expected=len(threads),
        actual=len(threads) - len({m["thread_id"] for m in read_mismatches}),
        mismatches=read_mismatches[:MAX_LISTED], mismatch_count=len(read_mismatches),
        notes=notes)


def check_resumable_on_postgres(f: Findings) -> CheckOutcome:
    """No thread's latest state holds a value a live PostgresSaver cannot save again."""
    hazards = [h for c in f.comparisons for h in c.resume_hazards]
    return CheckOutcome(
        RESUMABLE_ON_POSTGRES, passed=not hazards, expected=0, actual=len(hazards),
        mismatches=hazards[:MAX_LISTED], mismatch_count=len(hazards),
        notes=["Before switching these threads to PostgresSaver, have the application "
               "replace such values (e.g. strip NUL from strings), or keep them inside a "
               "dict/list channel (stored as a blob)."] if hazards else [])


def check_reencoded_at_same_version(f: Findings) -> CheckOutcome:
    """Checkpoints whose value of a channel is another encoding of the value first written
    at the same version (or that value with fields added): listed, never silent."""
    return _superseded_outcome(REENCODED_AT_SAME_VERSION, f,
                               [s for c in f.comparisons for s in c.superseded
                                if s["kind"] != CONTENT])


def check_content_differs_at_same_version(f: Findings) -> CheckOutcome:
    """Checkpoints whose value of a channel differs in content from the value first
    written at the same version."""
    return _superseded_outcome(CONTENT_DIFFERS_AT_SAME_VERSION, f,
                               [s for c in f.comparisons for s in c.superseded
                                if s["kind"] == CONTENT])


def _superseded_outcome(name: str, f: Findings, found: list[dict]) -> CheckOutcome:
    where = f"{f.target.schema}.{SUPERSEDED_TABLE}" if f.target.schema else SUPERSEDED_TABLE
    notes = [] if not found else [
        f"PostgreSQL holds the first value of each channel version, as PostgresSaver would "
        f"had the application written to it from the start; each later value listed here "
        f"is kept with its original bytes in {where} (content_integrity compares them) and "
        "`checkpoint-assets rollback` gives those checkpoints back as they were."]
    if found and name == CONTENT_DIFFERS_AT_SAME_VERSION:
        notes.append("The application would read the first value for these checkpoints. "
                     "Look at each thread; --strict-versions (or "
                     "CHECKPOINT_ASSETS_STRICT_VERSIONS=1) refuses such threads instead.")
    return CheckOutcome(name, passed=not found, expected=0, actual=len(found),
                        mismatches=found[:MAX_LISTED], mismatch_count=len(found), notes=notes)


@dataclass(frozen=True)
class CheckSpec:
    """One check of the verification, declared once: the engine runs it, the Dagster layer
    declares it as an asset check, the evidence report describes it."""

    name: str
    description: str  # what it proves
    cannot_prove: str  # what it cannot ("-": nothing beyond what it states)
    run: Callable[[Findings], CheckOutcome]
    warning: bool = False  # severity WARN: reports a risk, never fails the migration
    needs_source: bool = False  # runs only when the SQLite source is at hand
    # Every mismatch the report holds (the outcome keeps the first MAX_LISTED); None: the
    # outcome's own list.
    every_mismatch: Callable[[VerificationReport], list[dict]] | None = None


# The checks, in the order they run and are reported. Their names are the contract with the
# Dagster layer and the CLI; their texts are the README's "What each check proves (and what
# it cannot)".
CHECKS = (
    CheckSpec(
        COUNT_MATCH,
        "Checkpoints, writes and blob rows: PostgreSQL = export = SQLite, in total and per "
        "thread.",
        "Content: equal counts can hide changed values (content_integrity compares them).",
        check_count_match,
        every_mismatch=lambda r: [
            {"batch": b.key, "expected": b.expected_counts, "actual": b.actual_counts}
            for b in r.batches if b.expected_counts != b.actual_counts]),
    CheckSpec(
        CONTENT_INTEGRITY,
        "Every checkpoint's channel values, versions and parent link, and every pending "
        "write, equal the source's byte for byte.",
        "The behaviour of your application code on the migrated state; in a batch taken "
        "over from its batch check, damage below PostgreSQL (storage corruption, files "
        "edited directly) after that check.",
        check_content_integrity,
        every_mismatch=lambda r: [m for b in r.batches for m in b.content_mismatches]),
    CheckSpec(
        METADATA_INTEGRITY,
        "Every checkpoint's metadata equals the source's; values PostgreSQL cannot hold are "
        "listed by key.",
        "-",
        check_metadata_integrity,
        every_mismatch=lambda r: [m for b in r.batches for m in b.metadata_mismatches]),
    CheckSpec(
        SOURCE_MATCHES_EXPORT,
        "The SQLite source still holds exactly what was exported (no writer changed it "
        "since).",
        "Writes to SQLite after the check ran.",
        check_source_matches_export, needs_source=True,
        every_mismatch=lambda r: _drifted_threads(r.checks[SOURCE_MATCHES_EXPORT])),
    CheckSpec(
        OFFICIAL_READBACK,
        "SqliteSaver.list equals PostgresSaver.list field by field for the checked threads.",
        "Classes your application would need to deserialize that are not importable where "
        "the check runs; threads outside the sample (unless every thread was read back).",
        check_official_readback, needs_source=True),
    CheckSpec(
        RESUMABLE_ON_POSTGRES,
        "No thread's latest state holds a str/float that a live PostgresSaver cannot save "
        "on its next put (NUL, NaN, inf; -0.0 and 1e20-style floats change). A warning: "
        "the migrated data is intact either way.",
        "-",
        check_resumable_on_postgres, warning=True,
        every_mismatch=lambda r: [h for b in r.batches for h in b.resume_hazards]),
    CheckSpec(
        REENCODED_AT_SAME_VERSION,
        "Every checkpoint whose channel value was re-encoded at an unchanged version (the "
        "same fields and values with another class or none, as when a class moved or an "
        "entry point could not import it; or a model that gained fields) is listed by key, "
        "channel and version; PostgreSQL reads the version's first value, as PostgresSaver "
        "would, and the later bytes are kept. A warning: nothing is lost.",
        "Whether your application's current classes read the first value the way they "
        "read the later one (defaults of added fields).",
        check_reencoded_at_same_version, warning=True,
        every_mismatch=lambda r: [s for b in r.batches for s in b.superseded
                                  if s["kind"] != CONTENT]),
    CheckSpec(
        CONTENT_DIFFERS_AT_SAME_VERSION,
        "No channel version holds two values whose content differs; each one that does is "
        "listed by key, channel and version with what differs (PostgreSQL reads the first, "
        "the later is kept).",
        "-",
        check_content_differs_at_same_version,
        every_mismatch=lambda r: [s for b in r.batches for s in b.superseded
                                  if s["kind"] == CONTENT]),
)
CHECK_SPECS = {spec.name: spec for spec in CHECKS}
CHECK_NAMES = tuple(CHECK_SPECS)


def _judged_by_verify_rollback(findings: Any) -> CheckOutcome:
    """The rollback's checks are judged together by verify_rollback, not one by one."""
    raise AssertionError("rollback checks are judged by verify_rollback")


# The way back's checks (run and judged by verify_rollback, in this order); their names
# are the contract with the rollback's Dagster assets and the CLI.
ROLLBACK_CHECKS = (
    CheckSpec(
        ROLLBACK_COUNT_MATCH,
        "Checkpoints and writes of the exported threads: PostgreSQL = export = SQLite, in "
        "total and per batch.",
        "Content: equal counts can hide changed values (the other checks compare them).",
        _judged_by_verify_rollback),
    CheckSpec(
        EXPORT_MATCHES_POSTGRES,
        "Every exported checkpoint, converted the forward way, equals PostgreSQL's: channel "
        "values, versions, parent link, metadata; every pending write byte for byte.",
        "Rows written to PostgreSQL after the export's snapshot.",
        _judged_by_verify_rollback),
    CheckSpec(
        SQLITE_MATCHES_EXPORT,
        "Every exported thread in the SQLite file holds the export's rows byte for byte, "
        "or rows that were already there with the same content.",
        "Threads of the SQLite file that are not in the export (see "
        f"{SQLITE_THREADS_NOT_IN_POSTGRES}).",
        _judged_by_verify_rollback),
    CheckSpec(
        SQLITE_THREADS_NOT_IN_POSTGRES,
        "The SQLite file holds no thread that PostgreSQL no longer has (deleted there after "
        "the cutover, e.g. an erasure request); threads the rollback removed for that reason "
        "(--remove-deleted-threads) are named. A warning: such a thread is kept as it was.",
        "Threads PostgreSQL deleted after the export's snapshot; whether a kept thread may "
        "stay (the rollback cannot know why PostgreSQL deleted it).",
        _judged_by_verify_rollback, warning=True),
)
# Both families, by name: what an outcome's ``spec`` finds.
_ALL_CHECK_SPECS = {spec.name: spec for spec in (*CHECKS, *ROLLBACK_CHECKS)}


def check_spec(name: str) -> CheckSpec:
    """The declaration of the check ``name``: the migration's or the rollback's."""
    return _ALL_CHECK_SPECS[name]


def _drifted_threads(outcome: CheckOutcome) -> list[dict]:
    """Every thread the source-drift check found, by kind (its ``actual`` lists them all)."""
    if not isinstance(outcome.actual, dict):
        return list(outcome.mismatches)
    return [{"thread_id": thread, "problem": kind}
            for kind, threads in outcome.actual.items() for thread in threads]
