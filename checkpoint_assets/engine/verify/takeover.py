"""Take a batch's earlier certified comparison over while its rows stay the same.

See :mod:`checkpoint_assets.engine.verify.certificates` for what a certificate proves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.load.target import (
    TABLES,
    Target,
    thread_row_versions,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.verify.certificates import (
    BatchCertificate,
    digests_now,
    key_fingerprint,
    rows_sha256,
)
from checkpoint_assets.engine.verify.reports import BatchComparison


def earlier_comparison_now(conn: Any, earlier: BatchComparison,
                           threads: frozenset[str] | None,
                           unchanged: frozenset[str] | None = None) -> BatchComparison | None:
    """``earlier`` (a certified pass of the same export batch) for the batch's threads now
    (``threads``: those a later generation did not take away; None: all of them), when
    every one of them still has the rows it passed with; else None (compare again).
    ``unchanged``: the threads a scan found with the very rows they were certified with
    (unchanged.threads_unchanged_since); without it, their row versions are read on
    ``conn``.

    Sound because the export side of a thread is the same (same batch bytes) and its
    target rows are byte for byte those that compared equal (the same row versions as in
    the snapshot the comparison read)."""
    if threads is None and earlier.threads is not None:
        return None  # a batch's live threads only ever shrink; anything else: compare
    now_ids = earlier.thread_ids if threads is None else sorted(threads)
    if not earlier.passed or not earlier.certified or not set(now_ids) <= set(
            earlier.certified):
        return None
    if unchanged is not None:
        if not unchanged.issuperset(now_ids):
            return None
        now = earlier.certified  # the scan found these very rows
    else:
        now = thread_row_versions(conn, now_ids)
        if any(now.get(tid) != earlier.certified[tid] for tid in now_ids):
            return None
    if len(now_ids) == len(earlier.thread_ids):
        return replace(earlier, threads=threads, reused=True)
    kept = set(now_ids)
    counts = _row_counts(now, now_ids)
    digest = "taken over: " + hashlib.sha256(
        "".join(now[tid][0] for tid in now_ids).encode()).hexdigest()
    return replace(
        earlier, expected_counts=counts, actual_counts=dict(counts), expected_digest=digest,
        actual_digest=digest, threads=threads, thread_ids=now_ids,
        certified={tid: now[tid] for tid in now_ids}, reused=True,
        metadata_changes=[m for m in earlier.metadata_changes if m["thread_id"] in kept],
        resume_hazards=[h for h in earlier.resume_hazards if h["thread_id"] in kept],
        superseded=[s for s in earlier.superseded if s["thread_id"] in kept])


def take_over_certified(target: Target, chain: ExportChain,
                        items: Sequence[tuple[ExportManifest, str, frozenset[str] | None]],
                        certificates: Mapping[str, BatchCertificate], cipher: Cipher | None,
                        connections: int = 2) -> dict[int, BatchComparison]:
    """The comparisons of the ``items`` (``chain.live_batches()``) whose certificate still
    holds, by position: the same export batch, compared with the same key (or none), the
    same threads, and their row versions now the certified ones (read on ``connections``
    connections at once, for every candidate)."""
    candidates = []
    for place, (manifest, key, threads) in enumerate(items):
        sha = manifest.batch(key).sha256
        certificate = certificates.get(sha)
        if certificate is None or certificate.key != key_fingerprint(cipher):
            continue
        ids = sorted(threads) if threads is not None else chain.batch_threads(manifest, key)
        if len(ids) == certificate.threads:
            candidates.append((place, key, sha, threads, ids, certificate))
    now = digests_now(target, [tid for c in candidates for tid in c[4]], connections)
    taken = {}
    for place, key, sha, threads, ids, certificate in candidates:
        if rows_sha256(now, ids) != certificate.rows_sha256:
            continue  # something changed (or another batch): compared again
        counts = _row_counts(now, ids)
        taken[place] = BatchComparison(
            key=key, expected_counts=dict(certificate.expected_counts), actual_counts=counts,
            expected_digest=certificate.expected_digest,
            actual_digest=certificate.expected_digest, content_mismatches=[],
            metadata_mismatches=[], metadata_changes=list(certificate.metadata_changes),
            resume_hazards=list(certificate.resume_hazards), batch_sha256=sha,
            threads=threads, thread_ids=ids, certified={tid: now[tid] for tid in ids},
            reused=True, certificate_from=certificate.recorded_by or "its certificate")
    return taken


def _row_counts(digests: Mapping[str, tuple[str, tuple[int, int, int]]],
                thread_ids: Sequence[str]) -> dict[str, int]:
    """Rows per table of ``thread_ids``, from their row-version digests."""
    return dict(zip(TABLES, (sum(digests[tid][1][i] for tid in thread_ids)
                             for i in range(len(TABLES)))))
