"""--threads ids that match nothing in the source are refused, by name, before anything is written.

Under test: ``parse_thread_selection`` (a ``@FILE`` saved with a UTF-8 byte order mark),
and ``export``, ``migrate`` (through the Dagster export asset), ``sync`` and ``cutover`` of
the command line against a real SqliteSaver file written by a LangGraph graph and a real
PostgreSQL. A typo or a BOM once meant that a thread was silently never migrated while
every check passed (issue 21, item 5); now each command exits 3 (bad input) naming the
ids, and neither an export file nor a row in the target is left behind.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from checkpoint_assets.cli import main
from checkpoint_assets.cli.exit_status import EXIT_BAD_INPUT
from checkpoint_assets.engine.core.selection import parse_thread_selection
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.export.source_state import read_source_state
from checkpoint_assets.engine.export.sqlite_source import open_source
from checkpoint_assets.engine.export.writer import write_export, write_generation
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import TABLES, Target

HELD = ["support-000", "support-001"]  # threads of the sample database
TYPO = "suport-002"  # a thread id the source does not hold


def target_rows(dsn: str) -> int:
    """Rows in PostgresSaver's tables (0 when they were never created)."""
    with psycopg.connect(dsn) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        return sum(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(table))).fetchone()[0] for table in TABLES if table in present)


def cutover_flags(command: str) -> list[str]:
    """cutover need not wait here: nothing writes to the source."""
    return ["--quiet-seconds", "0", "--workers", "1"] if command == "cutover" else []


def test_a_thread_list_saved_with_a_byte_order_mark_names_the_threads_themselves(
        sample_db: Path, tmp_path: Path) -> None:
    """Windows editors start a UTF-8 file with a BOM: it is not part of the first id, so the
    export holds that thread."""
    ids = tmp_path / "tenant.txt"
    ids.write_text("\ufeff" + "\r\n".join(HELD) + "\r\n", encoding="utf-8")

    assert parse_thread_selection(f"@{ids}") == HELD
    manifest = write_export(sample_db, tmp_path / "x.export", selection=HELD)
    assert main(["export", "--source", str(sample_db), "--export", str(tmp_path / "y.export"),
                 "--threads", f"@{ids}"]) == 0
    assert manifest.threads == 2 and manifest.selection == HELD


def test_export_refuses_ids_the_source_does_not_hold_and_writes_no_file(
        sample_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export --threads with a typo: exit 3, the missing id named (quoted), no export."""
    export = tmp_path / "x.export"

    status = main(["export", "--source", str(sample_db), "--export", str(export),
                   "--threads", ",".join([*HELD, TYPO])])

    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT, err
    assert f"has no checkpoint or write of 1 requested thread(s): '{TYPO}'" in err
    assert "No export was written" in err and "What to do" in err
    assert list(tmp_path.iterdir()) == [sample_db]


def test_migrate_refuses_them_in_its_export_run_and_loads_nothing(
        sample_db: Path, tmp_path: Path, target_dsn: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """migrate --threads with a typo (the Dagster export asset refuses it): exit 3 as for
    other bad input, the id named, no export file and nothing in the target."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    export = tmp_path / "tenant.export"

    status = main(["migrate", "--source", str(sample_db), "--export", str(export),
                   "--target", target_dsn, "--threads", f"{HELD[0]},{TYPO}"])

    out = capsys.readouterr().out
    assert status == EXIT_BAD_INPUT, out
    assert f"'{TYPO}'" in out and "skipped: batches and verification: the export failed" in out
    assert not export.exists()
    assert target_rows(target_dsn) == 0


@pytest.mark.parametrize("command", ["sync", "cutover"])
def test_sync_and_cutover_refuse_threads_the_export_does_not_follow(
        sample_db: Path, tmp_path: Path, target_dsn: str, command: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """sync/cutover --threads with a typo beside a good tenant export: exit 3, the ids not
    in the export named, the target unchanged."""
    export = tmp_path / "tenant.export"
    import_export(write_export(sample_db, export, selection=HELD), Target(target_dsn))
    before = target_rows(target_dsn)

    status = main([command, "--source", str(sample_db), "--export", str(export),
                   "--target", target_dsn, "--threads", f"{HELD[0]},{TYPO}",
                   *cutover_flags(command)])

    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT, err
    assert f"not in it: '{TYPO}'; in it, not given: '{HELD[1]}'" in err
    assert target_rows(target_dsn) == before
    assert not list(tmp_path.glob("tenant.export.sync-*"))


@pytest.mark.parametrize("command", ["sync", "cutover"])
def test_an_older_export_that_selected_a_typo_is_refused_by_sync_and_cutover(
        sample_db: Path, tmp_path: Path, target_dsn: str, command: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An export an earlier version took with a typo in its selection (it did not refuse
    one): the syncs of that chain (cutover's catch-up sync first) refuse it by name and
    write no generation and no row."""
    export = tmp_path / "tenant.export"
    selection = sorted([*HELD, TYPO])
    source = open_source(sample_db)
    try:
        with source.snapshot():  # what write_export wrote before it checked the ids
            state = read_source_state(source, selection)
            write_generation(source, export,
                             (source.thread_rows(tid) for tid in sorted(state.threads)), state,
                             header={"selection": selection}, batch_size=1000)
    finally:
        source.close()
    import_export(read_manifest(export), Target(target_dsn))
    before = target_rows(target_dsn)

    status = main([command, "--source", str(sample_db), "--export", str(export),
                   "--target", target_dsn, *cutover_flags(command)])

    err = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT, err
    assert f"requested thread(s): '{TYPO}'. Nothing was synced." in err
    assert target_rows(target_dsn) == before
    assert not list(tmp_path.glob("tenant.export.sync-*"))
