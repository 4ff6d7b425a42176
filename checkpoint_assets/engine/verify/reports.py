"""What a verification reports: per-batch comparisons and the whole run's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.verify.certificates import (
    BatchCertificate,
    fits,
    key_fingerprint,
    rows_sha256,
)

if TYPE_CHECKING:  # annotations only: check_table imports this module
    from checkpoint_assets.engine.verify.check_table import CheckOutcome
    from checkpoint_assets.engine.verify.unchanged import RowVersionsMark

MAX_LISTED = 50


@dataclass
class BatchComparison:
    """Export vs target for one batch."""

    key: str
    expected_counts: dict[str, int]
    actual_counts: dict[str, int]
    expected_digest: str
    actual_digest: str
    content_mismatches: list[dict]
    metadata_mismatches: list[dict]
    metadata_changes: list[dict] = field(default_factory=list)
    resume_hazards: list[dict] = field(default_factory=list)
    # What was compared, and (certified comparisons) per thread the digest of its row
    # versions (target.thread_row_versions) read in the same snapshot, with its rows per
    # table: while a thread's digest stays the same, so does its part of this result.
    batch_sha256: str = ""
    threads: frozenset[str] | None = None
    thread_ids: list[str] = field(default_factory=list)
    certified: dict[str, tuple[str, tuple[int, int, int]]] = field(default_factory=dict)
    reused: bool = False  # taken over from an earlier verification (rows unchanged since)
    # Taken over from this batch's certificate (see certificates.py): where it was kept.
    certificate_from: str = ""
    # Later values of a channel version in the export (versions.Superseded.as_dict()).
    superseded: list[dict] = field(default_factory=list)
    # Certified: the target's mark taken before the rows were read (unchanged.py); a
    # comparison taken over keeps the mark of the one that read them.
    mark: RowVersionsMark | None = None

    @property
    def passed(self) -> bool:
        """Counts, digest and every row equal."""
        return (self.expected_counts == self.actual_counts
                and self.expected_digest == self.actual_digest
                and not self.content_mismatches and not self.metadata_mismatches)

    def certificate(self, cipher: Cipher | None) -> BatchCertificate | None:
        """This comparison's certificate, for a later verification to take over
        (``cipher``: the key it was compared with); None unless it passed and certified
        every thread it compared, and when the certificate would be too large to keep."""
        digest = rows_sha256(self.certified, self.thread_ids) if self.certified else None
        if not self.passed or digest is None or self.superseded:
            return None
        certificate = BatchCertificate(
            batch_sha256=self.batch_sha256, key=key_fingerprint(cipher),
            threads=len(self.thread_ids), rows_sha256=digest,
            expected_counts=dict(self.expected_counts), expected_digest=self.expected_digest,
            metadata_changes=list(self.metadata_changes),
            resume_hazards=list(self.resume_hazards))
        return certificate if fits(certificate) else None


@dataclass
class VerificationReport:
    """Every check of one verification run."""

    checks: dict[str, CheckOutcome]
    counts: dict[str, dict[str, int]]
    metadata_changes: list[dict]
    seconds: float
    batches: list[BatchComparison] = field(default_factory=list)
    # Threads read back equal through both savers (in this run, or in the earlier one a
    # certified run took them over from).
    read_back_equal: frozenset[str] = frozenset()
    # The source's threads that differ from the expected state: changed, added, removed.
    drift: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check passed (warnings do not count)."""
        return all(c.passed for c in self.checks.values() if c.blocking)
