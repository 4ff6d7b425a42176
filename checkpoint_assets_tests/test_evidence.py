"""The evidence report: one readable Markdown summary of a migration.

Under test: the file the CLI writes (``verify``, ``migrate``) and the ``evidence`` metadata
of the verification asset. It holds the rows per table (equal to SQLite's own counts),
every check with PASS/FAIL/WARN and what it proves and cannot, the load time of every
batch, every mismatch and every changed metadata value by key, and never the DSN's
password. Everything runs against real SQLite files written by LangGraph graphs and the
real PostgreSQL.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import TypedDict

import dagster as dg
import psycopg
import pytest
from langgraph.graph import END, START, StateGraph

from checkpoint_assets import cli
from checkpoint_assets.cli.exit_status import EXIT_MISMATCH, EXIT_OK
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.check_table import (
    CHECK_NAMES,
    CONTENT_INTEGRITY,
    METADATA_INTEGRITY,
)
from checkpoint_assets.engine.verify.evidence import MAX_LISTED
from checkpoint_assets.partitions import BATCHES_ASSET, VERIFICATION_ASSET, partition_keys
from checkpoint_assets.settings import TARGET_DSN_ENV
from checkpoint_assets_tests import corpus_graphs as cg
from checkpoint_assets_tests.dagster_support import (
    definitions,
    migrate,
    sqlite_counts,
    with_password,
)

SECRET = "s3cr3t-Evidence-pw"
BATCH_SIZE = 45  # the 12-thread sample spans three batches
ODD_THREAD = "odd|thread\nid"  # a pipe and a line break must stay inside their cell


# --------------------------------------------------------------------------- reading Markdown


def section(markdown: str, heading: str) -> str:
    """The text of the ``## `` section whose heading starts with ``heading``."""
    found = [part for part in re.split(r"^## ", markdown, flags=re.MULTILINE)
             if part.startswith(heading)]
    assert found, f"no section {heading!r} in:\n{markdown}"
    return found[0]


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row, as written (escaped pipes stay in the cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in ``text``, as one dict per row keyed by header.

    Asserts that every row has as many cells as the header: no value broke its table.
    """
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = cells(lines[0])
    rows = [cells(line) for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows), lines
    return [dict(zip(header, row)) for row in rows]


def by_first_column(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Table rows keyed by their first cell."""
    return {next(iter(row.values())): row for row in rows}


# --------------------------------------------------------------------------- helpers


class Note(TypedDict):
    text: str


def add_thread(path: Path, thread_id: str) -> None:
    """Run a small real LangGraph graph on the SqliteSaver file for one more thread."""
    builder = StateGraph(Note)
    builder.add_node("shout", lambda state: {"text": state["text"].upper()})
    builder.add_edge(START, "shout")
    builder.add_edge("shout", END)
    with cg.open_sqlite_saver(path) as saver:
        builder.compile(checkpointer=saver).invoke({"text": "hello"},
                                                   cg.thread_config(thread_id))


def exported_and_imported(source: Path, tmp_path: Path, dsn: str) -> Path:
    """The source exported and loaded into the target by the engine; the export's path."""
    manifest = write_export(source, tmp_path / "x.export")
    import_export(manifest, Target(dsn))
    return manifest.path


def verify(source: Path, export: Path, *extra: str) -> int:
    """``checkpoint-assets verify`` in this process (the DSN comes from the environment)."""
    return cli.main(["verify", "--source", str(source), "--export", str(export), *extra])


# --------------------------------------------------------------------------- verify



def passed_evidence(evidence: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The evidence file the command printed last: owner-only, PASSED, no password."""
    output = capsys.readouterr()
    assert output.out.rstrip().endswith(str(evidence))
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    text = evidence.read_text()
    assert text.startswith("# Migration evidence: PASSED")
    assert SECRET not in text + output.out + output.err
    return text

def test_verify_writes_an_owner_only_evidence_file_beside_the_export(
        sample_db: Path, tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """export, import, verify: ``<export>.evidence.md``, mode 0600, path printed last; the
    rows per table are SQLite's own counts, every check PASSes, and the DSN's password is
    nowhere (the DSN carries one; the test server ignores it)."""
    monkeypatch.setenv(TARGET_DSN_ENV, with_password(target_dsn, SECRET))
    export = tmp_path / "x.export"
    assert cli.main(["export", "--source", str(sample_db), "--export", str(export)]) == 0
    assert cli.main(["import", "--export", str(export)]) == 0
    assert verify(sample_db, export, "--readback-all") == EXIT_OK

    text = passed_evidence(tmp_path / "x.export.evidence.md", capsys)

    sqlite = sqlite_counts(sample_db)
    counts = by_first_column(table(section(text, "Rows per table")))
    for table_name, expected in (("checkpoints", sqlite["checkpoints"]),
                                 ("checkpoint_writes", sqlite["writes"])):
        row = counts[table_name]
        assert [row["SQLite"], row["export"], row["expected in PostgreSQL"],
                row["PostgreSQL"], row["equal"]] == [str(expected)] * 4 + ["yes"]
    checks = by_first_column(table(section(text, "Checks")))
    assert set(checks) == set(CHECK_NAMES)
    assert {row["result"] for row in checks.values()} == {"PASS"}
    assert all(row["what it proves"] and row["what it cannot prove"]
               for row in checks.values())
    assert "Not recorded" in section(text, "Batch timings")  # the import ran separately


def test_a_damaged_blob_and_metadata_value_are_failures_named_by_key(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte appended to a channel value and one metadata value changed in PostgreSQL:
    content_integrity and metadata_integrity FAIL, and their sections name the keys."""
    export = exported_and_imported(sample_db, tmp_path, target_dsn)
    with psycopg.connect(target_dsn) as conn:
        blob_thread, channel = conn.execute(
            "UPDATE checkpoint_blobs SET blob = blob || '\\x00'::bytea WHERE ctid = "
            "(SELECT ctid FROM checkpoint_blobs WHERE type = 'msgpack' LIMIT 1) "
            "RETURNING thread_id, channel").fetchone()
        meta_thread, _, meta_checkpoint = conn.execute(
            "UPDATE checkpoints SET metadata = metadata || '{\"step\": 999}' WHERE ctid = "
            "(SELECT ctid FROM checkpoints LIMIT 1) "
            "RETURNING thread_id, checkpoint_ns, checkpoint_id").fetchone()
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    evidence = tmp_path / "damaged.md"
    assert verify(sample_db, export, "--evidence", str(evidence)) == EXIT_MISMATCH

    text = evidence.read_text()
    assert text.startswith("# Migration evidence: FAILED")
    checks = by_first_column(table(section(text, "Checks")))
    assert checks[CONTENT_INTEGRITY]["result"] == "FAIL"
    assert checks[METADATA_INTEGRITY]["result"] == "FAIL"
    assert checks["checkpoint_count_match"]["result"] == "PASS"  # counts alone would pass
    content = table(section(text, f"Mismatches: {CONTENT_INTEGRITY}"))
    assert any(row["thread_id"] == blob_thread and f"channel {channel}" in row["problem"]
               for row in content)
    metadata = table(section(text, f"Mismatches: {METADATA_INTEGRITY}"))
    assert [(row["thread_id"], row["checkpoint_id"]) for row in metadata] == [
        (meta_thread, meta_checkpoint)]
    assert '"step":999' in metadata[0]["actual"]


def test_long_listings_stop_at_the_cap_and_the_json_report_has_every_mismatch(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pending write deleted from PostgreSQL: the evidence lists the first MAX_LISTED
    by key and says how many more; the JSON report lists all of them. A thread id with a
    pipe and a line break stays inside its cell."""
    add_thread(sample_db, ODD_THREAD)
    export = exported_and_imported(sample_db, tmp_path, target_dsn)
    with psycopg.connect(target_dsn) as conn:
        deleted = conn.execute("DELETE FROM checkpoint_writes").rowcount
    assert deleted > MAX_LISTED
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    report = tmp_path / "report.json"
    assert verify(sample_db, export, "--report", str(report)) == EXIT_MISMATCH

    text = (tmp_path / "x.export.evidence.md").read_text()
    listing = section(text, f"Mismatches: {CONTENT_INTEGRITY}")
    rows = table(listing)
    assert len(rows) == MAX_LISTED
    assert {row["problem"] for row in rows} == {"write missing in target"}
    assert f"... {deleted - MAX_LISTED} more; see the JSON report" in listing
    assert r"odd\|thread\nid" in {row["thread_id"] for row in rows}
    content = json.loads(report.read_text())["checks"][CONTENT_INTEGRITY]
    assert content["mismatch_count"] == len(content["mismatches"]) == deleted
    assert ODD_THREAD in {m["thread_id"] for m in content["mismatches"]}


def test_values_jsonb_cannot_hold_are_listed_by_key_and_the_resume_risk_is_a_warning(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source with NUL/NaN values: the migration PASSES, resumable_on_postgres_saver is
    WARN with its threads and channels, and every metadata value changed to fit JSONB is
    listed with its key, path and reason."""
    corpus = cg.build_rich_corpus(tmp_path / "rich.sqlite")
    export = exported_and_imported(corpus.path, tmp_path, target_dsn)
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    assert verify(corpus.path, export) == EXIT_OK

    text = (tmp_path / "x.export.evidence.md").read_text()
    assert text.startswith("# Migration evidence: PASSED")
    checks = by_first_column(table(section(text, "Checks")))
    assert checks["resumable_on_postgres_saver"]["result"] == "WARN"
    hazards = table(section(text, "Warning: resumable_on_postgres_saver"))
    assert {("rich-basic", "note"), ("rich-basic", "nan_float")} <= {
        (row["thread_id"], row["channel"]) for row in hazards}
    changes = table(section(text, "Metadata values changed to fit JSONB"))
    assert changes and {row["thread_id"] for row in changes} == {"rich-nul-metadata"}
    assert all(row["checkpoint_id"] and row["path"].startswith("$.") and "NUL" in row["reason"]
               for row in changes)


# --------------------------------------------------------------------------- Dagster


def test_the_verification_asset_carries_the_evidence_with_every_batchs_load_time(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Export, every partition and the verification as asset runs: the verification's
    materialization has an ``evidence`` Markdown entry whose batch timings are the numeric
    metadata of each partition's materialization."""
    monkeypatch.setenv(TARGET_DSN_ENV, with_password(target_dsn, SECRET))
    code = definitions(sample_db, tmp_path / "x.export", batch_size=BATCH_SIZE)
    with dg.instance_for_test() as instance:
        runs = migrate(code, instance)
        assert runs["verification"].success
        assert len(runs["batches"]) >= 2
        metadata = runs["verification"].asset_materializations_for_node(
            VERIFICATION_ASSET.path[-1])[0].metadata
        loads = {key: run.asset_materializations_for_node(BATCHES_ASSET.path[-1])[0].metadata
                 for key, run in runs["batches"].items()}

    evidence = metadata["evidence"]
    assert isinstance(evidence, dg.MarkdownMetadataValue)
    assert evidence.value.startswith("# Migration evidence: PASSED")
    assert SECRET not in evidence.value
    timings = by_first_column(table(section(evidence.value, "Batch timings")))
    for key, load in loads.items():
        # Numeric per-batch metadata, so the UI plots it across partitions.
        assert isinstance(load["rows_checkpoints"], dg.IntMetadataValue)
        assert isinstance(load["rows_checkpoint_writes"], dg.IntMetadataValue)
        assert isinstance(load["seconds"], dg.FloatMetadataValue)
        assert isinstance(load["rows_per_second"], dg.FloatMetadataValue)
        assert timings[key]["checkpoints"] == str(load["rows_checkpoints"].value)
        assert timings[key]["writes"] == str(load["rows_checkpoint_writes"].value)
        assert timings[key]["seconds"] == f"{load['seconds'].value:.3f}"
    total = sqlite_counts(sample_db)
    assert timings[f"total ({len(loads)} batches)"]["checkpoints"] == str(total["checkpoints"])


def test_after_a_new_batch_size_the_evidence_describes_the_new_export_only(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrated with one batch size, exported again with another and loaded: the evidence
    lists only the new export's batches, and its timing total is its rows per table."""
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    export = tmp_path / "x.export"
    with dg.instance_for_test() as instance:
        assert migrate(definitions(sample_db, export, batch_size=BATCH_SIZE),
                       instance)["verification"].success
        runs = migrate(definitions(sample_db, export, batch_size=BATCH_SIZE * 3), instance)
        assert runs["verification"].success
        evidence = runs["verification"].asset_materializations_for_node(
            VERIFICATION_ASSET.path[-1])[0].metadata["evidence"].value
    keys = partition_keys(read_manifest(export))
    timings = by_first_column(table(section(evidence, "Batch timings")))
    assert set(timings) == {*keys, f"total ({len(keys)} batches)"}
    counts = by_first_column(table(section(evidence, "Rows per table")))
    total = timings[f"total ({len(keys)} batches)"]
    assert total["checkpoints"] == counts["checkpoints"]["PostgreSQL"]
    assert total["writes"] == counts["checkpoint_writes"]["PostgreSQL"]


def test_migrate_writes_the_verification_evidence_beside_the_export(
        sample_db: Path, tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``checkpoint-assets migrate``: the evidence file is the verification asset's evidence
    of this run, owner-only, with a timings row per batch, and its path is printed last."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("CHECKPOINT_ASSETS_WORKERS", "1")  # no worker processes to start
    monkeypatch.setenv(TARGET_DSN_ENV, with_password(target_dsn, SECRET))
    export = tmp_path / "x.export"
    assert cli.main(["migrate", "--source", str(sample_db), "--export", str(export),
                     "--batch-size", str(BATCH_SIZE)]) == EXIT_OK

    text = passed_evidence(tmp_path / "x.export.evidence.md", capsys)
    timings = by_first_column(table(section(text, "Batch timings")))
    batches = partition_keys(read_manifest(export))
    assert len(batches) >= 2 and f"total ({len(batches)} batches)" in timings
    assert set(timings) == {*batches, f"total ({len(batches)} batches)"}
    assert all(float(timings[key]["seconds"]) > 0 for key in batches)
    checks = by_first_column(table(section(text, "Checks")))
    assert set(checks) == set(CHECK_NAMES)
    assert {row["result"] for row in checks.values()} == {"PASS"}
