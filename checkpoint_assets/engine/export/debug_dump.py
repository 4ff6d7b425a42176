"""An export file's records as JSON-ready dicts, for people (``show-export``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.export.file_format import (
    ThreadDigest,
)
from checkpoint_assets.engine.export.reader import (
    read_batch,
    read_manifest,
    verify_export,
)


def iter_records(path: str | Path, key: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of an export as a JSON-ready dict (blobs as base64), for people.

    The whole file is verified first (:func:`verify_export`); with ``key``, only that batch
    is read, after its own digest is checked. Records come in file order: header, then per
    batch its ``batch`` record, per thread a ``thread`` record followed by its
    ``checkpoint`` and ``write`` records, the ``batch_end``; then the ``footer``.
    """
    manifest = read_manifest(path) if key is not None else verify_export(path)
    yield {"kind": "header", **manifest.header}
    entries = [manifest.batch(key)] if key is not None else list(manifest.batches)
    for entry in entries:
        yield {"kind": "batch", "key": entry.key}
        for thread in read_batch(manifest, entry.key):
            digest = ThreadDigest()
            for row in (*thread.checkpoints, *thread.writes):
                digest.add(row)
            yield {"kind": "thread", "thread_id": thread.thread_id,
                   "checkpoints": len(thread.checkpoints), "writes": len(thread.writes),
                   "sha256": digest.hexdigest()}
            for row in thread.checkpoints:
                yield {"kind": "checkpoint", **_readable(row._asdict())}
            for row in thread.writes:
                yield {"kind": "write", **_readable(row._asdict())}
        yield {"kind": "batch_end", **entry.to_json()}
    if key is None:
        yield {"kind": "footer", "threads": manifest.threads,
               "checkpoints": manifest.checkpoints, "writes": manifest.writes,
               "types": manifest.types, "content_sha256": manifest.content_sha256,
               "file_sha256": manifest.file_sha256, "footer_sha256": manifest.footer_sha256}


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    return {name: base64.b64encode(value).decode("ascii") if isinstance(value, bytes)
            else value for name, value in row.items()}
