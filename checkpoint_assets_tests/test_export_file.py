"""The export file: lossless, owner-only, deterministic, and rejected when damaged.

Every damaged variant must be refused with a MigrationError that names the problem,
before a single row reaches PostgreSQL (the target stays empty).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import ormsgpack
import psycopg
import pytest

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.debug_dump import iter_records
from checkpoint_assets.engine.export.file_format import (
    END,
    FRAME_HEAD,
    MAGIC,
    TRAILER,
    ThreadDigest,
)
from checkpoint_assets.engine.export.reader import (
    export_thread_digests,
    read_batch,
    read_manifest,
    verify_export,
)
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import thread_digests, write_export
from checkpoint_assets.engine.load.loader import load_batch
from checkpoint_assets.engine.load.target import Target


def test_export_carries_every_source_row_byte_exact(sample_db: Path, tmp_path: Path) -> None:
    """Reading the export back yields exactly the rows SQLite holds, in key order."""
    manifest = write_export(sample_db, tmp_path / "out.export", batch_size=30)
    exported_checkpoints = [r for key in (b.key for b in manifest.batches)
                            for t in read_batch(manifest, key) for r in t.checkpoints]
    exported_writes = [r for key in (b.key for b in manifest.batches)
                       for t in read_batch(manifest, key) for r in t.writes]
    source = open_source(sample_db)
    try:
        assert exported_checkpoints == list(source.checkpoints())
        assert exported_writes == list(source.writes())
        counts = source.counts()
    finally:
        source.close()
    assert (manifest.checkpoints, manifest.writes, manifest.threads) == (
        counts.checkpoints, counts.writes, counts.threads)


def test_export_is_owner_only(sample_db: Path, tmp_path: Path) -> None:
    """The export holds users' conversations: mode 0600."""
    manifest = write_export(sample_db, tmp_path / "out.export")
    assert stat.S_IMODE(manifest.path.stat().st_mode) == 0o600


def test_batches_hold_whole_threads_and_keys_are_deterministic(
        sample_db: Path, tmp_path: Path) -> None:
    """Two exports of one source give the same batches, keys and digests."""
    first = write_export(sample_db, tmp_path / "a.export", batch_size=25)
    second = write_export(sample_db, tmp_path / "b.export", batch_size=25)
    assert [(b.key, b.sha256, b.checkpoints) for b in first.batches] == [
        (b.key, b.sha256, b.checkpoints) for b in second.batches]
    assert first.content_sha256 == second.content_sha256
    threads_seen: set[str] = set()
    for entry in first.batches:
        threads = {t.thread_id for t in read_batch(first, entry.key)}
        assert not threads & threads_seen, "a thread was split across batches"
        threads_seen |= threads
        assert entry.checkpoints <= 25 or entry.threads == 1


def _frames(path: Path) -> list[tuple[bytes, bytes]]:
    """The file as (kind, payload) frames, between the signature and the trailer."""
    data = path.read_bytes()
    footer_offset = TRAILER.unpack(data[-TRAILER.size:])[0]
    frames, position = [], len(MAGIC)
    while position <= footer_offset:
        kind, length = FRAME_HEAD.unpack_from(data, position)
        position += FRAME_HEAD.size
        frames.append((kind, data[position:position + length]))
        position += length
    return frames


def _write_frames(path: Path, frames: list[tuple[bytes, bytes]]) -> None:
    """Write frames back as a file with a consistent trailer (the digests are not redone)."""
    body = MAGIC + b"".join(FRAME_HEAD.pack(kind, len(payload)) + payload
                            for kind, payload in frames[:-1])
    footer = FRAME_HEAD.pack(frames[-1][0], len(frames[-1][1])) + frames[-1][1]
    path.write_bytes(body + footer + TRAILER.pack(len(body), END))


def _first(frames: list[tuple[bytes, bytes]], kind: bytes) -> int:
    return next(i for i, (k, _) in enumerate(frames) if k == kind)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def flip_byte(path: Path) -> None:
    """One byte inside a checkpoint blob: the frame stays valid msgpack."""
    frames = _frames(path)
    i = _first(frames, b"C")
    payload = bytearray(frames[i][1])
    payload[len(payload) // 2] ^= 0x01
    frames[i] = (b"C", bytes(payload))
    _write_frames(path, frames)


def duplicate_frame(path: Path) -> None:
    frames = _frames(path)
    i = _first(frames, b"T")
    frames[i:i + 3] = frames[i:i + 3] * 2
    _write_frames(path, frames)


def reorder_frames(path: Path) -> None:
    """The first two threads of the first batch swap places."""
    frames = _frames(path)
    i = _first(frames, b"T")
    frames[i:i + 6] = frames[i + 3:i + 6] + frames[i:i + 3]
    _write_frames(path, frames)


def wrong_version(path: Path) -> None:
    frames = _frames(path)
    header = ormsgpack.unpackb(frames[0][1])
    header["version"] = 99
    frames[0] = (b"H", ormsgpack.packb(header))
    _write_frames(path, frames)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_an_export(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage\n" * 10)


def version_1(path: Path) -> None:
    """The start of an export written by an earlier version (JSON lines)."""
    path.write_bytes(b'{"kind":"header","format":"checkpoint-assets-export","version":1}\n')


def edit_footer_counts(path: Path) -> None:
    frames = _frames(path)
    footer = ormsgpack.unpackb(frames[-1][1])
    footer["checkpoints"] += 1
    frames[-1] = (b"F", ormsgpack.packb(footer))
    _write_frames(path, frames)


def footer_moved(path: Path) -> None:
    """The trailer points into the middle of the file."""
    data = path.read_bytes()
    path.write_bytes(data[:-TRAILER.size] + TRAILER.pack(len(MAGIC) + 1, END))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # the file is cut off (the trailer and footer are gone)
    "truncated": (truncate, "truncated"),
    # one byte inside a row's blob changed
    "one byte flipped": (flip_byte, "changed, added, removed or reordered"),
    # a thread (summary and rows frames) appears twice
    "thread duplicated": (duplicate_frame, "changed, added, removed or reordered"),
    # two threads of a batch swapped
    "threads reordered": (reorder_frames, "changed, added, removed or reordered"),
    # a header from a future format
    "wrong format version": (wrong_version, "format version 99"),
    # a file of format version 1 (JSON lines): export again
    "format version 1": (version_1, "Export again with this version"),
    # nothing at all
    "empty": (empty, "empty"),
    # some other file
    "not an export": (not_an_export, "signature"),
    # the footer's counts edited without its digest
    "footer edited": (edit_footer_counts, "footer"),
    # the trailer names the wrong footer offset
    "footer moved": (footer_moved, "footer"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_export_is_refused_before_any_row_is_loaded(
        damage: str, sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """Each kind of damage gets a clear error and leaves the target untouched."""
    path = tmp_path / "out.export"
    good = write_export(sample_db, path, batch_size=1000)
    mutate, expected_words = DAMAGE[damage]
    mutate(path)
    target = Target(target_dsn)
    target.setup()
    with pytest.raises(MigrationError) as excinfo:
        manifest = verify_export(path)
        load_batch(target, manifest, good.batches[0].key)
    assert expected_words in str(excinfo.value)
    assert "What to do" in str(excinfo.value)
    with psycopg.connect(target_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM checkpoint_writes").fetchone()[0] == 0


@pytest.mark.parametrize("damage", ["one byte flipped", "thread duplicated",
                                    "threads reordered"])
def test_a_damaged_batch_is_refused_even_without_the_full_file_check(
        damage: str, sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """Loading one batch checks that batch's own digest first (partitions load alone)."""
    path = tmp_path / "out.export"
    write_export(sample_db, path, batch_size=1000)
    DAMAGE[damage][0](path)
    manifest = read_manifest(path)  # the footer itself is intact
    target = Target(target_dsn)
    target.setup()
    with pytest.raises(MigrationError, match="does not match its digest"):
        load_batch(target, manifest, manifest.batches[0].key)
    with psycopg.connect(target_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0


def test_a_crash_while_exporting_leaves_no_file(sample_db: Path, tmp_path: Path) -> None:
    """The export is written under a temporary name and renamed only when complete."""
    out_dir = tmp_path / "exports"
    path = out_dir / "out.export"

    def explode(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_export(sample_db, path, progress=explode)
    assert list(out_dir.iterdir()) == []


def test_thread_digests_are_the_canonical_digests_of_the_source_rows(
        sample_db: Path, tmp_path: Path) -> None:
    """Each thread's digest in the file is recomputed from SQLite's rows alone (the
    encoding-independent definition sync and source_matches_export rely on)."""
    manifest = write_export(sample_db, tmp_path / "out.export", batch_size=30)
    from_source: dict[str, ThreadDigest] = {}
    source = open_source(sample_db)
    try:
        for row in [*source.checkpoints(), *source.writes()]:
            from_source.setdefault(row.thread_id, ThreadDigest()).add(row)
        # the way source_matches_export computes them: one msgpack call per thread and table
        by_thread = dict(thread_digests(source.checkpoints(), source.writes()))
    finally:
        source.close()
    in_file = {thread: sha for thread, sha, _, _ in export_thread_digests(manifest)}
    assert in_file == {thread: d.hexdigest() for thread, d in from_source.items()}
    assert by_thread == in_file


def test_the_header_says_where_the_export_came_from(sample_db: Path, tmp_path: Path) -> None:
    """Format version 2 names its source kind and path, and the export it follows (none)."""
    header = write_export(sample_db, tmp_path / "out.export").header
    assert (header["format"], header["version"]) == ("checkpoint-assets-export", 2)
    assert header["source"]["kind"] == "sqlite"
    assert header["source"]["path"] == str(sample_db.resolve())
    assert header["previous_export_sha256"] is None


def test_a_rows_frame_in_another_encoding_is_refused(sample_db: Path, tmp_path: Path) -> None:
    """The same rows encoded non-canonically (str 8 instead of a fixstr), with every digest
    recomputed to match, are still refused: a thread digest must be over the canonical
    row bytes, or it would not equal the digest SQLite gives."""
    path = tmp_path / "out.export"
    manifest = write_export(sample_db, path, batch_size=1000)
    frames = _frames(path)
    i = _first(frames, b"C")
    payload = frames[i][1]
    at = payload.index(b"\xa1c")  # the first row's tag "c" as a fixstr
    frames[i] = (b"C", payload[:at] + b"\xd9\x01c" + payload[at + 2:])
    _write_frames(path, frames)
    _redigest_first_batch(path, manifest.batches[0].key)
    with pytest.raises(MigrationError, match="canonical form"):
        list(read_batch(read_manifest(path), manifest.batches[0].key))


def _redigest_first_batch(path: Path, key: str) -> None:
    """Recompute the first batch's digest and range, the file and footer digests."""
    import hashlib

    frames = _frames(path)
    start = _first(frames, b"B")
    end = _first(frames, b"E")
    offset = len(MAGIC) + sum(FRAME_HEAD.size + len(p) for _, p in frames[:start])
    batch = b"".join(FRAME_HEAD.pack(k, len(p)) + p for k, p in frames[start:end])
    summary = ormsgpack.unpackb(frames[end][1])
    summary["sha256"] = hashlib.sha256(batch).hexdigest()
    frames[end] = (b"E", ormsgpack.packb(summary))
    footer = ormsgpack.unpackb(frames[-1][1])
    entry = footer["batches"][0]
    assert entry["key"] == key
    entry.update(sha256=summary["sha256"], offset=offset, length=len(batch))
    footer["file_sha256"] = hashlib.sha256(
        MAGIC + b"".join(FRAME_HEAD.pack(k, len(p)) + p for k, p in frames[:-1])).hexdigest()
    del footer["footer_sha256"]
    footer["footer_sha256"] = hashlib.sha256(
        ormsgpack.packb(footer, option=ormsgpack.OPT_SORT_KEYS)).hexdigest()
    frames[-1] = (b"F", ormsgpack.packb(footer))
    _write_frames(path, frames)


def test_show_export_prints_every_row_as_json(sample_db: Path, tmp_path: Path) -> None:
    """The human form has one record per row, blobs in base64 that decode to the bytes."""
    import base64

    manifest = write_export(sample_db, tmp_path / "out.export", batch_size=30)
    records = list(iter_records(manifest.path))
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "header" and kinds[-1] == "footer"
    assert kinds.count("checkpoint") == manifest.checkpoints
    assert kinds.count("write") == manifest.writes
    assert kinds.count("batch") == kinds.count("batch_end") == len(manifest.batches)
    first_key = manifest.batches[0].key
    rows = next(iter(read_batch(manifest, first_key))).checkpoints
    shown = next(r for r in records if r["kind"] == "checkpoint")
    assert base64.b64decode(shown["checkpoint"]) == rows[0].checkpoint
    one_batch = list(iter_records(manifest.path, first_key))
    assert [r["kind"] for r in one_batch].count("checkpoint") == manifest.batches[0].checkpoints


def test_show_export_command_prints_json_lines_and_refuses_a_damaged_file(
        sample_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``checkpoint-assets show-export FILE [--batch KEY]``: JSON lines on stdout, exit 0;
    a damaged file: exit 3 with the reason and what to do, nothing printed as rows."""
    import json

    from checkpoint_assets.cli import main

    manifest = write_export(sample_db, tmp_path / "out.export", batch_size=30)
    key = manifest.batches[1].key
    assert main(["show-export", str(manifest.path), "--batch", key]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[1] == {"kind": "batch", "key": key}
    assert records[-1]["kind"] == "batch_end" and records[-1]["key"] == key
    flip_byte(manifest.path)
    assert main(["show-export", str(manifest.path)]) == 3
    captured = capsys.readouterr()
    assert "changed, added, removed or reordered" in captured.err
    assert "What to do" in captured.err
    assert '"kind": "checkpoint"' not in captured.out
