"""The SQLite bytes a checkpoint had before it was migrated, for a byte-identical way back.

A checkpoint rebuilt from PostgreSQL holds the same values as its SQLite original but
rarely the same bytes (JSONB keeps no key order, an encrypted value gets a fresh nonce, a
json row comes back with other spacing: :func:`reverse_convert.difference_reason`). The
forward migration's export (and its sync generations) still holds the original rows: when
a rebuilt checkpoint has exactly the content of the original row with its key, the
original bytes are used. A checkpoint that changed on PostgreSQL after the migration, or
was written there, keeps its rebuilt bytes. Writes rows already come back byte for byte.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from pathlib import Path

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.core.rows import CheckpointRow, ThreadRows
from checkpoint_assets.engine.export.reader import read_batch
from checkpoint_assets.engine.rollback.reverse_convert import (
    JSON_TEXT,
    KEY_ORDER,
    NEW_NONCE,
    SAME_BYTES,
    difference_reason,
)
from checkpoint_assets.engine.sync.export_chain import ExportChain, batch_of, load_chain

# Reasons that mean "the same content, other bytes": the original's bytes may stand in.
SAME_CONTENT = (KEY_ORDER, NEW_NONCE, JSON_TEXT)
ORIGINAL_BYTES = "original bytes (from the forward export)"
BATCHES_KEPT = 4  # a thread's newest rows come from the export or a sync generation


class OriginalRows:
    """The rows of the forward export chain at ``export_path``, looked up by thread.

    ``counts`` tells, per rebuilt checkpoint, what :meth:`prefer_original` did: the
    original bytes, byte-identical anyway, or why the rebuilt bytes stay (no original:
    written on PostgreSQL; other content: changed there).
    """

    def __init__(self, export_path: str | Path) -> None:
        self.chain: ExportChain = load_chain(export_path)
        self.counts: Counter[str] = Counter()
        self._batches: OrderedDict[tuple[int, str], dict[str, ThreadRows]] = OrderedDict()

    def provenance(self) -> dict[str, str]:
        """What the export's header records about the originals used."""
        return {"path": str(self.chain.export.path.resolve()),
                "footer_sha256": self.chain.latest.footer_sha256}

    def thread(self, thread_id: str) -> ThreadRows | None:
        """The thread's rows as the chain holds them now, or None if it never held it."""
        state = self.chain.state
        entry = state.threads.get(thread_id)
        if entry is None:
            return None
        manifest = self.chain.generations[entry[state.GENERATION]]
        key = batch_of(manifest, thread_id)
        if key is None:
            return None
        place = (manifest.generation, key)
        if place not in self._batches:
            self._batches[place] = {t.thread_id: t for t in read_batch(manifest, key)}
            while len(self._batches) > BATCHES_KEPT:
                self._batches.popitem(last=False)
        return self._batches[place].get(thread_id)

    def prefer_original(self, rebuilt: ThreadRows, cipher: Cipher | None) -> ThreadRows:
        """``rebuilt`` with every checkpoint whose content equals its original's in the
        original's bytes."""
        original = self.thread(rebuilt.thread_id)
        by_key = {row[:3]: row for row in original.checkpoints} if original else {}
        checkpoints: list[CheckpointRow] = []
        for row in rebuilt.checkpoints:
            before = by_key.get(row[:3])
            reason = "written on PostgreSQL (no original)" if before is None \
                else difference_reason(before, row, cipher)
            if reason in SAME_CONTENT:
                checkpoints.append(before)
                self.counts[ORIGINAL_BYTES] += 1
            else:
                checkpoints.append(row)
                self.counts[reason if reason != SAME_BYTES else ORIGINAL_BYTES] += 1
        return ThreadRows(rebuilt.thread_id, checkpoints, rebuilt.writes)
