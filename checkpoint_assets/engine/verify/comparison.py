"""Compare the target's rows of a batch with what the export's rows mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import psycopg
from psycopg import sql

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.versions import SUPERSEDED_TABLE
from checkpoint_assets.engine.core.workers import process_pool
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_batch
from checkpoint_assets.engine.load import superseded_table
from checkpoint_assets.engine.load.target import (
    Target,
    thread_row_versions,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.verify.certificates import (
    BatchCertificate,
)
from checkpoint_assets.engine.verify.content_view import BatchView, source_view, target_view
from checkpoint_assets.engine.verify.expected_views import (
    expected_batch,
    view_counts,
)
from checkpoint_assets.engine.verify.reports import BatchComparison, VerificationReport
from checkpoint_assets.engine.verify.takeover import earlier_comparison_now, take_over_certified
from checkpoint_assets.engine.verify.unchanged import RowVersionsMark


def target_rows(target_conn: Any, threads: Sequence[str]) -> tuple[list, list, list, list]:
    """All target rows of these threads: (checkpoints, blobs, writes, superseded values),
    read in binary (bytea as it is: as hex text it takes twice as long)."""
    q = {
        "checkpoints": "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                       "checkpoint, metadata FROM {} WHERE thread_id = ANY(%s)",
        "checkpoint_blobs": "SELECT thread_id, checkpoint_ns, channel, version, type, blob "
                            "FROM {} WHERE thread_id = ANY(%s)",
        "checkpoint_writes": "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, "
                             "task_path, idx, channel, type, blob FROM {} "
                             "WHERE thread_id = ANY(%s)",
    }
    out = []
    for table, text in q.items():
        query = sql.SQL(text).format(sql.Identifier(table))
        out.append(target_conn.cursor(binary=True).execute(query, (list(threads),))
                   .fetchall())
    return out[0], out[1], out[2], superseded_table.read_rows(target_conn, threads)


def compare_batch(
    target: Target, manifest: ExportManifest, key: str, cipher: Cipher | None = None,
    conn: Any = None, threads: frozenset[str] | None = None,
    earlier: BatchComparison | None = None, certify: bool = False,
) -> BatchComparison:
    """Compare one batch of the export (or only ``threads`` of it) with what the target
    holds for its threads.

    The target's rows are always read and digested; the export side comes from
    :func:`expected_batch`. Only when the digests differ is the batch decoded again to
    name every mismatching checkpoint and write. ``certify``: the rows are read in one
    snapshot with the digest of each thread's row versions (:func:`thread_row_versions`);
    ``earlier``, a certified passed comparison of the same export batch, is taken over
    (``reused``) when each of the batch's threads still has the row versions it passed
    with: the same rows, already compared.
    """
    if conn is None:
        with target.connect() as own:
            if certify:
                own.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                own.read_only = True
            return compare_batch(target, manifest, key, cipher, own, threads, earlier,
                                 certify)
    if certify and earlier is not None:
        taken_over = earlier_comparison_now(conn, earlier, threads)
        if taken_over is not None:
            return taken_over
    expected = expected_batch(manifest, key, cipher, threads)
    rows = target_rows(conn, expected.thread_ids)
    # Row versions cover PostgresSaver's tables only: a batch with superseded values is
    # never certified, so every verification compares its SUPERSEDED_TABLE rows again.
    certified = thread_row_versions(conn, expected.thread_ids) \
        if certify and not expected.superseded else {}
    actual = target_view(*rows, cipher=cipher)
    actual_digest = actual.digest()
    content: list[dict] = []
    metadata: list[dict] = []
    if actual_digest != expected.digest:
        full = source_view(read_batch(manifest, key, threads), cipher)
        content, metadata = _view_mismatches(full, actual)
    return BatchComparison(
        key=key,
        expected_counts=expected.counts, actual_counts=view_counts(actual),
        expected_digest=expected.digest, actual_digest=actual_digest,
        content_mismatches=content, metadata_mismatches=metadata,
        metadata_changes=expected.metadata_changes,
        resume_hazards=expected.resume_hazards, superseded=expected.superseded,
        batch_sha256=manifest.batch(key).sha256, threads=threads,
        thread_ids=expected.thread_ids, certified=certified,
    )


def _key_dict(key: tuple) -> dict[str, Any]:
    names = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx")
    return dict(zip(names, key))


def _view_mismatches(expected: BatchView, actual: BatchView) -> tuple[list[dict], list[dict]]:
    content: list[dict] = []
    metadata: list[dict] = []
    for key in sorted(set(expected.checkpoints) | set(actual.checkpoints)):
        want, got = expected.checkpoints.get(key), actual.checkpoints.get(key)
        if want is None:
            content.append({**_key_dict(key), "problem": "checkpoint in target, not in export"})
        elif got is None:
            content.append({**_key_dict(key), "problem": "checkpoint missing in target"})
        else:
            parts = want.differing_parts(got)
            if "metadata" in parts:
                metadata.append({**_key_dict(key), "problem": "metadata differs",
                                 "expected": want.metadata[:500], "actual": got.metadata[:500]})
            rest = [p for p in parts if p != "metadata"]
            if rest:
                content.append({**_key_dict(key), "problem": "differs: " + ", ".join(rest)})
    for key in sorted(set(expected.writes) | set(actual.writes)):
        want_w, got_w = expected.writes.get(key), actual.writes.get(key)
        if want_w != got_w:
            problem = ("write missing in target" if got_w is None else
                       "write in target, not in export" if want_w is None else
                       "write differs")
            content.append({**_key_dict(key), "problem": problem})
    for key in sorted(set(expected.superseded) | set(actual.superseded)):
        want_s, got_s = expected.superseded.get(key), actual.superseded.get(key)
        if want_s != got_s:
            problem = (f"superseded value missing in {SUPERSEDED_TABLE}" if got_s is None
                       else f"{SUPERSEDED_TABLE} row not in the export" if want_s is None
                       else f"superseded value differs in {SUPERSEDED_TABLE}")
            content.append({**_key_dict(key[:3]), "channel": key[3], "problem": problem})
    return content, metadata


def compare_batches(manifest: ExportManifest, target: Target, cipher: Cipher | None = None,
                    *, workers: int = 1, progress: Any = None,
                    chain: ExportChain | None = None, certify: bool = False,
                    earlier: VerificationReport | None = None,
                    certificates: Mapping[str, BatchCertificate] | None = None,
                    unchanged: frozenset[str] | None = None,
                    mark: RowVersionsMark | None = None,
                    ) -> list[BatchComparison]:
    """:func:`compare_batch` for every batch of the export (with ``chain``: every batch of
    its generations, each for the threads it still holds), in export order, in
    ``workers`` processes; ``progress(checkpoints)`` after each batch. ``certify`` and
    ``earlier``: see :func:`verify_migration`. ``certificates`` (by batch SHA-256): a
    batch whose certificate still holds is taken over (:func:`take_over_certified`), the
    others are compared. ``unchanged``: the threads whose rows a scan found to be those
    ``earlier`` compared (unchanged.threads_unchanged_since): an earlier comparison whose
    threads all are is taken over here, and every other batch compared afresh. ``mark``:
    this run's (certified runs), kept by each batch it compares or takes over from a
    certificate."""
    chain = chain or ExportChain([manifest])
    items = chain.live_batches()
    taken = take_over_certified(target, chain, items, certificates, cipher, workers) \
        if certificates else {}
    known = {c.batch_sha256: c for c in (earlier.batches if earlier else ())}
    if unchanged is not None:
        for place, (m, k, threads) in enumerate(items):
            prior = known.get(m.batch(k).sha256)
            if place not in taken and prior is not None:
                kept = earlier_comparison_now(None, prior, threads, unchanged)
                if kept is not None:
                    taken[place] = kept
        known = {}  # the others changed: compared, not looked at again
    rest = [item for place, item in enumerate(items) if place not in taken]
    arguments = (
        [m for m, _, _ in rest], [k for _, k, _ in rest], repeat(cipher), repeat(None),
        [t for _, _, t in rest],
        [known.get(m.batch(k).sha256) for m, k, _ in rest], repeat(certify))
    for place in taken:
        if taken[place].mark is None:  # a certificate's rows were read at this run's mark
            taken[place].mark = mark
    if workers <= 1 or len(rest) <= 1:
        compared = map(compare_batch, repeat(target), *arguments)
        return [_progressed(taken[place] if place in taken else next(compared), progress,
                            mark) for place in range(len(items))]
    with process_pool(min(workers, len(rest))) as pool:
        compared = pool.map(compare_batch, repeat(target), *arguments)
        return [_progressed(taken[place] if place in taken else next(compared), progress,
                            mark) for place in range(len(items))]


def _progressed(comparison: BatchComparison, progress: Any,
                mark: RowVersionsMark | None) -> BatchComparison:
    if comparison.certified and not comparison.reused:
        comparison.mark = mark
    if progress is not None:  # the checkpoints compared: the batch's, or its live threads'
        progress(comparison.expected_counts["checkpoints"])
    return comparison
