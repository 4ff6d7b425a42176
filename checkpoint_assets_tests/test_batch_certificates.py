"""The verification takes over what the batch checks proved, and only that.

A batch check compares its batch's rows in PostgreSQL with the export right after the load
and keeps a certificate: a digest of the versions of the rows it compared
(engine/certificates.py). Under test, against a real PostgreSQL and a corpus written by a
real graph: the verification after the batches takes every batch over and says so in its
check and its evidence; a byte changed in PostgreSQL after its batch check is compared
again and caught by key while the other batches are still taken over;
CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH compares every batch; a certificate that does not
describe the batch as PostgreSQL holds it now (a forged digest, another key, another
export batch, a row rewritten with the same values, a table altered without rewriting a
row, an unreadable record) is never taken over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.assets.verification import EVIDENCE_METADATA
from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.engine.core.crypto import Cipher
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.certificates import BatchCertificate
from checkpoint_assets.engine.verify.check_table import CONTENT_INTEGRITY
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.engine.verify.migration import verify_migration
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCHES_ASSET,
    CERTIFICATE_METADATA,
    VERIFICATION_ASSET,
    batch_certificates,
)
from checkpoint_assets.resources import build_resources
from checkpoint_assets.settings import TARGET_DSN_ENV, Settings
from checkpoint_assets_tests.dagster_support import (
    check_results,
    fresh_database,
    materialize,
    migrate,
    write_corpus,
)
from checkpoint_assets_tests.tampering import append_a_byte_to_a_blob

BATCH_SIZE = 12
TAKEN_OVER = "batches were compared row by row by their own batch check"


def _definitions(source: Path, export: Path, *, every_batch: bool = False) -> dg.Definitions:
    return build_definitions(build_resources(replace(
        Settings.from_env(), source=str(source), export=str(export), batch_size=BATCH_SIZE,
        readback_threads=None, verify_every_batch=every_batch)))


@pytest.fixture
def migrated(admin_dsn: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real corpus migrated as asset runs (export, each batch with its check, the
    verification) into a database of its own."""
    source = write_corpus(tmp_path / "support.sqlite", threads=6)
    export = tmp_path / "export.export"
    with fresh_database(admin_dsn) as dsn, dg.instance_for_test() as instance:
        mp = pytest.MonkeyPatch()
        mp.setenv(TARGET_DSN_ENV, dsn)
        code = _definitions(source, export)
        runs = migrate(code, instance)
        yield {"source": source, "export": export, "dsn": dsn, "instance": instance,
               "defs": code, "runs": runs}
        mp.undo()


def _notes(evaluation: dg.AssetCheckEvaluation) -> str:
    notes = evaluation.metadata.get("notes")
    return str(notes.value) if notes is not None else ""


def test_the_verification_takes_over_every_batch_its_check_certified(
        migrated: dict[str, Any]) -> None:
    """Every batch check passed and kept a certificate; the verification passed, and its
    content check and evidence say that all batches were taken over from those checks."""
    instance, runs = migrated["instance"], migrated["runs"]
    batches = len(runs["batches"])
    assert batches >= 3, "the corpus should span several batches"
    for run in runs["batches"].values():
        evaluation = check_results(run, instance)[BATCH_MATCHES_EXPORT]
        assert evaluation.passed
        certificate = evaluation.metadata[CERTIFICATE_METADATA].value
        assert certificate["threads"] >= 1 and len(certificate["rows_sha256"]) == 64
    assert len(batch_certificates(instance, dg.AssetCheckKey(
        BATCHES_ASSET, BATCH_MATCHES_EXPORT))) == batches

    verification = check_results(runs["verification"], instance)
    assert all(e.passed for e in verification.values())
    said = f"{batches} of {batches} {TAKEN_OVER}"
    assert said in _notes(verification[CONTENT_INTEGRITY])
    materialization = runs["verification"].asset_materializations_for_node(
        VERIFICATION_ASSET.path[-1])[0]
    assert said in materialization.metadata[EVIDENCE_METADATA].value


def test_the_report_says_what_a_batch_taken_over_rests_on(migrated: dict[str, Any]) -> None:
    """A batch taken over was compared by its batch check, not by the verification: the
    content check's note and the evidence report say that this rests on the Dagster
    instance's record of that check being genuine, and how to compare every batch."""
    instance, runs = migrated["instance"], migrated["runs"]
    content = check_results(runs["verification"], instance)[CONTENT_INTEGRITY]
    evidence = runs["verification"].asset_materializations_for_node(
        VERIFICATION_ASSET.path[-1])[0].metadata[EVIDENCE_METADATA].value

    rests_on = ("rests on the record of its check's result being genuine (that record is "
                "the Dagster instance's;")
    assert rests_on in _notes(content) and rests_on in evidence
    assert ("CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH=1, or `checkpoint-assets verify`, compares "
            "every batch instead)." in _notes(content))
    assert "checkpoint-assets verify" in evidence


def test_a_byte_changed_after_its_batch_check_is_compared_again_and_caught(
        migrated: dict[str, Any]) -> None:
    """One byte appended to a blob in PostgreSQL after the batches were checked (LangGraph's
    decoder would not even notice): the verification run again compares that batch row by
    row and fails content_integrity naming the checkpoints reading the blob; every other
    batch is still taken over."""
    instance, batches = migrated["instance"], len(migrated["runs"]["batches"])
    changed = append_a_byte_to_a_blob(migrated["dsn"])

    again = materialize(migrated["defs"], instance, VERIFICATION_ASSET)

    assert not again.success
    content = check_results(again, instance)[CONTENT_INTEGRITY]
    assert not content.passed
    named = {(m["thread_id"], m["checkpoint_id"])
             for m in content.metadata["mismatch_keys"].value}
    assert named == {(changed.thread_id, cid) for cid in changed.readers}
    assert (f"{batches - 1} of {batches} {TAKEN_OVER}" in _notes(content)
            and "the other 1 were compared now" in _notes(content))


def test_verify_every_batch_compares_every_batch_again(migrated: dict[str, Any]) -> None:
    """With CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH=1 nothing is taken over: the verification
    compares every batch (and passes), and says nothing of certificates."""
    assert Settings.from_env({"CHECKPOINT_ASSETS_VERIFY_EVERY_BATCH": "1"}).verify_every_batch
    code = _definitions(migrated["source"], migrated["export"], every_batch=True)
    again = materialize(code, migrated["instance"], VERIFICATION_ASSET)
    assert again.success
    content = check_results(again, migrated["instance"])[CONTENT_INTEGRITY]
    assert content.passed and TAKEN_OVER not in _notes(content)


@pytest.fixture
def imported(target_dsn: str, tmp_path: Path) -> dict[str, Any]:
    """A real corpus exported and imported by the engine, with each batch's certified
    comparison (what a batch check keeps)."""
    source = write_corpus(tmp_path / "support.sqlite", threads=4)
    export = tmp_path / "x.export"
    write_export(source, export, batch_size=BATCH_SIZE)
    manifest = read_manifest(export)
    target = Target(target_dsn)
    import_export(manifest, target)
    certificates = {}
    for batch in manifest.batches:
        certificate = compare_batch(target, manifest, batch.key, certify=True).certificate(
            None)
        assert certificate is not None
        certificates[certificate.batch_sha256] = certificate
    return {"source": source, "manifest": manifest, "target": target,
            "certificates": certificates}


def _taken_over(imported: dict[str, Any], certificates: dict[str, BatchCertificate]) -> int:
    report = verify_migration(imported["manifest"], imported["target"],
                              source_path=imported["source"], readback_threads=None,
                              certificates=certificates)
    assert report.passed
    return sum(1 for c in report.batches if c.certificate_from)


def test_only_a_certificate_that_describes_the_rows_now_is_taken_over(
        imported: dict[str, Any]) -> None:
    """A certificate is taken over only for its own export batch, compared with the key
    the verification has (here none), with the same row versions in PostgreSQL; a forged
    digest, a certificate recorded with a key, or another batch's certificate get the
    batch compared again (and the verification still passes: the target is intact)."""
    certificates: dict[str, BatchCertificate] = imported["certificates"]
    assert _taken_over(imported, certificates) == len(certificates)
    first, *others = certificates.values()
    forged = replace(first, rows_sha256="0" * 64)
    keyed = replace(first, key=Cipher(b"k" * 32).fingerprint())
    moved = replace(others[0], batch_sha256=first.batch_sha256)
    for wrong in (forged, keyed, moved):
        assert _taken_over(imported, {**certificates, first.batch_sha256: wrong}) \
            == len(certificates) - 1


def test_a_row_rewritten_with_the_same_values_is_compared_again(
        imported: dict[str, Any]) -> None:
    """An UPDATE that writes the same values is a new row version: its batch is compared
    again (and passes, the content being the same), the others are taken over."""
    certificates: dict[str, BatchCertificate] = imported["certificates"]
    with psycopg.connect(imported["target"].dsn) as conn:
        assert conn.execute("UPDATE checkpoints SET metadata = metadata WHERE ctid = "
                            "(SELECT min(ctid) FROM checkpoints)").rowcount == 1
    assert _taken_over(imported, certificates) == len(certificates) - 1


def test_a_table_altered_without_rewriting_a_row_is_compared_again_and_caught(
        imported: dict[str, Any]) -> None:
    """Two columns of checkpoint_writes swap names (no row is written, every row version
    stays): the certificates no longer hold, every batch is compared row by row, and the
    verification fails naming the writes."""
    with psycopg.connect(imported["target"].dsn) as conn:
        for old, new in (("channel", "swap"), ("type", "channel"), ("swap", "type")):
            conn.execute(sql.SQL("ALTER TABLE checkpoint_writes RENAME COLUMN {} TO {}")
                         .format(sql.Identifier(old), sql.Identifier(new)))
    report = verify_migration(imported["manifest"], imported["target"],
                              source_path=imported["source"], readback_threads=0,
                              certificates=imported["certificates"])
    assert not any(c.certificate_from for c in report.batches)
    assert not report.checks[CONTENT_INTEGRITY].passed
    assert report.checks[CONTENT_INTEGRITY].mismatch_count > 0


def test_a_certificate_record_is_read_back_only_in_its_own_version() -> None:
    """What the batch check keeps reads back as it was; anything else (another version,
    missing fields, not a mapping) is no certificate at all."""
    certificate = BatchCertificate(
        batch_sha256="a" * 64, key="", threads=3, rows_sha256="b" * 64,
        expected_counts={"checkpoints": 5, "checkpoint_blobs": 2, "checkpoint_writes": 7},
        expected_digest="c" * 64, metadata_changes=[{"thread_id": "t", "path": "x"}])
    kept = json.loads(json.dumps(certificate.to_json()))
    assert BatchCertificate.from_json(kept, recorded_by="run 1") == replace(
        certificate, recorded_by="run 1")
    for broken in ({**kept, "version": 2}, {k: v for k, v in kept.items() if k != "threads"},
                   [kept], None, "certificate"):
        assert BatchCertificate.from_json(broken) is None
