"""The export file: lossless, owner-only, deterministic, and rejected when damaged.

Every damaged variant must be refused with a MigrationError that names the problem,
before a single row reaches PostgreSQL (the target stays empty).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from checkpoint_assets.engine.errors import MigrationError
from checkpoint_assets.engine.export_file import (
    read_batch,
    read_manifest,
    verify_export,
    write_export,
)
from checkpoint_assets.engine.loader import load_batch
from checkpoint_assets.engine.source import open_source
from checkpoint_assets.engine.target import Target


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


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _row_line_index(path: Path) -> int:
    return next(i for i, line in enumerate(_lines(path)) if b'"kind":"checkpoint"' in line)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def flip_byte(path: Path) -> None:
    lines = _lines(path)
    i = _row_line_index(path)
    line = bytearray(lines[i])
    pos = line.index(b'"checkpoint":"') + 20
    line[pos] = ord("A") if line[pos] != ord("A") else ord("B")
    lines[i] = bytes(line)
    path.write_bytes(b"".join(lines))


def duplicate_line(path: Path) -> None:
    lines = _lines(path)
    i = _row_line_index(path)
    lines.insert(i, lines[i])
    path.write_bytes(b"".join(lines))


def reorder_lines(path: Path) -> None:
    lines = _lines(path)
    i = _row_line_index(path)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path.write_bytes(b"".join(lines))


def wrong_version(path: Path) -> None:
    lines = _lines(path)
    header = json.loads(lines[0])
    header["version"] = 99
    lines[0] = json.dumps(header).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage\n" * 10)


def edit_footer_counts(path: Path) -> None:
    lines = _lines(path)
    footer = json.loads(lines[-1])
    footer["checkpoints"] += 1
    lines[-1] = json.dumps(footer).encode() + b"\n"
    path.write_bytes(b"".join(lines))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "truncated"),
    "one byte flipped": (flip_byte, "changed, added, removed or reordered"),
    "line duplicated": (duplicate_line, "changed, added, removed or reordered"),
    "lines reordered": (reorder_lines, "changed, added, removed or reordered"),
    "wrong format version": (wrong_version, "format version 99"),
    "empty": (empty, "empty"),
    "not UTF-8": (not_utf8, "UTF-8"),
    "footer edited": (edit_footer_counts, "footer"),
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


@pytest.mark.parametrize("damage", ["one byte flipped", "line duplicated", "lines reordered"])
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
