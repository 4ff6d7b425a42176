"""Changes to a migrated target that the checks must catch, made the way an accident or an
attacker would make them: with SQL on the real rows."""

from __future__ import annotations

from typing import NamedTuple

import psycopg


class ChangedBlob(NamedTuple):
    """A blob row changed in the target, and the checkpoints that read it."""

    thread_id: str
    checkpoint_ns: str
    channel: str
    version: str
    readers: set[str]  # ids of the checkpoints naming the blob's version


def append_a_byte_to_a_blob(dsn: str) -> ChangedBlob:
    """Append one NUL byte to the first msgpack blob (by thread, channel, version): a
    change LangGraph's decoder does not even notice."""
    with psycopg.connect(dsn) as conn:
        thread_id, ns, channel, version = conn.execute(
            "UPDATE checkpoint_blobs SET blob = blob || '\\x00'::bytea WHERE ctid = (SELECT "
            "ctid FROM checkpoint_blobs WHERE type = 'msgpack' ORDER BY thread_id, channel, "
            "version LIMIT 1) RETURNING thread_id, checkpoint_ns, channel, version").fetchone()
        readers = {row[0] for row in conn.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s "
            "AND checkpoint->'channel_versions'->>%s = %s", (thread_id, ns, channel, version))}
    return ChangedBlob(thread_id, ns, channel, version, readers)
