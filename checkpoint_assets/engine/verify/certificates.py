"""What a passed batch check proved, kept so that the verification need not prove it again.

A batch check (``batch_matches_export``, right after the batch's transaction commits)
compares the batch's rows in PostgreSQL with what the export's rows mean, and reads, in
the same snapshot, the versions of those rows (:func:`target.thread_row_versions`: each
row version's creating transaction and place, with the tables' definitions; PostgreSQL
never changes a stored row in place, an UPDATE writes a new version). Its
:class:`BatchCertificate` keeps the result: the export batch it compared (by SHA-256),
which key decrypted it (a fingerprint, never the key), one SHA-256 over its threads' row
versions, and what the comparison found that the verification reports (expected counts
and view digest, metadata values PostgreSQL cannot hold, resume hazards).

The verification takes a batch over from its certificate, instead of reading and
comparing its rows again, when the export batch is the same, it is compared with the same
key (or none), and the same threads have, now, the certified row versions: no change made
through PostgreSQL has reached those rows since they compared equal. A row added, changed
(even to the same values) or removed since, or a table altered, truncated or rewritten,
changes them, and the batch is compared again. Damage below PostgreSQL (storage
corruption, files edited directly) after the check is not seen in a batch taken over.

A certificate is as trustworthy as the record that keeps it: the Dagster layer keeps it in
the batch check's own result and takes it only from the partition's current, passed
result. Comparing every batch regardless is a setting away (and what ``checkpoint-assets
verify`` always does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.load.target import Target, thread_row_versions

CERTIFICATE_VERSION = 1
# A comparison whose certificate would be larger than this (many metadata changes or
# resume hazards, or long values in them) keeps none: the verification compares it again.
MAX_CERTIFICATE_BYTES = 64 * 1024

ThreadDigests = Mapping[str, tuple[str, tuple[int, int, int]]]


@dataclass(frozen=True)
class BatchCertificate:
    """A passed comparison of one export batch with PostgreSQL, and the rows it compared."""

    batch_sha256: str  # the export batch compared (its bytes' SHA-256)
    key: str  # the fingerprint of the key it was compared with (Cipher.fingerprint), or ""
    threads: int  # how many threads the comparison covered
    rows_sha256: str  # rows_sha256() of those threads' row versions, read with the rows
    expected_counts: dict[str, int]
    expected_digest: str  # the view digest both sides had
    metadata_changes: list[dict] = field(default_factory=list)
    resume_hazards: list[dict] = field(default_factory=list)
    recorded_by: str = ""  # where the certificate was kept (a run id), for the evidence

    def to_json(self) -> dict[str, Any]:
        """The certificate as JSON (``recorded_by`` is the reader's to fill in)."""
        data = asdict(self)
        data.pop("recorded_by")
        return {"version": CERTIFICATE_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, recorded_by: str = "") -> BatchCertificate | None:
        """The certificate ``to_json`` gave, or None for anything else (another version,
        missing or malformed fields): such a batch is simply compared again."""
        if not isinstance(data, dict) or data.get("version") != CERTIFICATE_VERSION:
            return None
        try:
            return cls(batch_sha256=str(data["batch_sha256"]),
                       key=str(data["key"]), threads=int(data["threads"]),
                       rows_sha256=str(data["rows_sha256"]),
                       expected_counts={str(k): int(v)
                                        for k, v in dict(data["expected_counts"]).items()},
                       expected_digest=str(data["expected_digest"]),
                       metadata_changes=list(data["metadata_changes"]),
                       resume_hazards=list(data["resume_hazards"]), recorded_by=recorded_by)
        except (KeyError, TypeError, ValueError):
            return None


def rows_sha256(digests: ThreadDigests, thread_ids: Sequence[str]) -> str | None:
    """One SHA-256 over the row-version digests and row counts of ``thread_ids`` (in
    order), or None when one of them has no row in PostgreSQL."""
    combined = hashlib.sha256()
    for thread_id in thread_ids:
        found = digests.get(thread_id)
        if found is None:
            return None
        sha, counts = found
        combined.update(f"{thread_id}\0{sha}\0{counts[0]},{counts[1]},{counts[2]}\n"
                        .encode("utf-8", "surrogatepass"))
    return combined.hexdigest()


def key_fingerprint(cipher: Cipher | None) -> str:
    """What a certificate records of the key a comparison used ("" for none)."""
    return cipher.fingerprint() if cipher is not None else ""


def fits(certificate: BatchCertificate) -> bool:
    """Whether ``certificate`` is small enough to keep (MAX_CERTIFICATE_BYTES as JSON)."""
    return len(json.dumps(certificate.to_json(), default=str)) <= MAX_CERTIFICATE_BYTES


def digests_now(target: Target, thread_ids: Sequence[str],
                connections: int = 2) -> ThreadDigests:
    """The digest of each of ``thread_ids``' row versions now (threads with no row left
    out), read on up to ``connections`` connections at once, each in one snapshot."""
    ids = sorted(set(thread_ids))
    parts = max(1, min(connections, len(ids)))
    share = -(-len(ids) // parts) if ids else 0
    chunks = [ids[start:start + share] for start in range(0, len(ids), share or 1)]

    def digest(chunk: list[str]) -> dict[str, tuple[str, tuple[int, int, int]]]:
        with target.connect() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            return thread_row_versions(conn, chunk)

    found: dict[str, tuple[str, tuple[int, int, int]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(chunks))) as pool:
        for part in pool.map(digest, chunks):
            found.update(part)
    return found
