"""What the target must hold for a batch, derived from the export and kept per process."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.rows import ThreadRows
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.reader import read_batch
from checkpoint_assets.engine.verify.content_view import BatchView, source_view


@dataclass(frozen=True)
class ExpectedBatch:
    """What the target must hold for one batch: its digest, counts and findings."""

    digest: str
    counts: dict[str, int]
    thread_ids: list[str]
    metadata_changes: list[dict]
    resume_hazards: list[dict]
    superseded: list[dict] = field(default_factory=list)  # versions.Superseded.as_dict()


# Expected views this process computed, by (batch SHA-256, with a key?): the batch check
# right after a load reuses the view the loader computed while converting. Only memory:
# a cache file beside the export could be edited apart from the export, and a forged
# expectation would make a tampered target pass, so every process derives what it
# compares with from the export's digest-verified bytes. Oldest entries go first.
_EXPECTED_IN_PROCESS: OrderedDict[tuple[str, bool, frozenset[str] | None], ExpectedBatch] = \
    OrderedDict()
_EXPECTED_KEPT = 64


# The batches the loader of this process read and decoded last (digest-verified threads and
# their decode_thread results), by the same key: the batch check that follows a load builds
# its expected view from them instead of reading the batch again, and an import that runs
# no check never builds the view. Two at most: a run checks each batch right after its load.
_LOADED_IN_PROCESS: OrderedDict[tuple[str, bool], tuple[list[ThreadRows], Mapping[str, list]]] \
    = OrderedDict()
_LOADED_KEPT = 2


def remember_loaded_batch(manifest: ExportManifest, key: str, cipher: Cipher | None,
                          threads: Sequence[ThreadRows], decoded: Mapping[str, list]) -> None:
    """Keep a batch the loader read (as :func:`read_batch` yielded it) and decoded, for the
    :func:`expected_batch` of its check in this process."""
    _LOADED_IN_PROCESS[(manifest.batch(key).sha256, cipher is not None)] = (list(threads),
                                                                            decoded)
    while len(_LOADED_IN_PROCESS) > _LOADED_KEPT:
        _LOADED_IN_PROCESS.popitem(last=False)


def expected_batch(manifest: ExportManifest, key: str, cipher: Cipher | None = None,
                   threads: frozenset[str] | None = None) -> ExpectedBatch:
    """The expected view summary of one batch, derived from the export's verified bytes.

    ``threads``: only these threads of the batch (the others are held by a later sync
    generation, see export_chain); None: all of them.

    Computed once per process and batch digest (the view depends only on the batch's
    bytes, which :func:`read_batch` checks against that digest, and on whether a key
    decrypts them); a batch this process's loader has just read and decoded (see
    :func:`remember_loaded_batch`) is not read or decoded again.
    """
    loaded_key = (manifest.batch(key).sha256, cipher is not None)
    memo_key = (*loaded_key, threads)
    known = _EXPECTED_IN_PROCESS.get(memo_key)
    if known is not None:
        return known
    rows, decoded = _LOADED_IN_PROCESS.pop(loaded_key, (None, None))
    if rows is None:
        rows = list(read_batch(manifest, key, threads))
    elif threads is not None:
        rows = [t for t in rows if t.thread_id in threads]
    view = source_view(rows, cipher, decoded)
    expected = ExpectedBatch(view.digest(), view_counts(view), [t.thread_id for t in rows],
                             view.metadata_changes, view.resume_hazards,
                             view.superseded_findings)
    _EXPECTED_IN_PROCESS[memo_key] = expected
    while len(_EXPECTED_IN_PROCESS) > _EXPECTED_KEPT:
        _EXPECTED_IN_PROCESS.popitem(last=False)
    return expected


def view_counts(view: BatchView) -> dict[str, int]:
    """Rows per target table that a view stands for."""
    return {"checkpoints": len(view.checkpoints), "checkpoint_blobs": view.blob_rows,
            "checkpoint_writes": len(view.writes)}
