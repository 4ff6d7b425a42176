"""The embedded PostgreSQL (pgserver): the quick start's default and the tests' fallback
where no server runs. A whole migration must pass on it, whatever else this machine runs,
and the user can stop it after the quick start and ``checkpoint-assets ui``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from checkpoint_assets.embedded_postgres import HANDLE_PIDS_FILE, private_runtime_dir
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.pipeline import import_export
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.migration import verify_migration


def test_migration_passes_on_the_embedded_server(
        sample_db: Path, tmp_path: Path, embedded_target_dsn: str) -> None:
    """Export, import and verify (every thread read back) against pgserver's PostgreSQL."""
    manifest = write_export(sample_db, tmp_path / "x.export", batch_size=40)
    target = Target(embedded_target_dsn)
    summary = import_export(manifest, target)
    assert sum(b.inserted["checkpoints"] for b in summary.batches) == manifest.checkpoints
    report = verify_migration(manifest, target, source_path=sample_db, readback_threads=None)
    assert report.passed, {n: c.mismatches[:3] for n, c in report.checks.items()}


def test_stop_postgres_stops_the_server_that_ui_left_running(tmp_path: Path) -> None:
    """``checkpoint-assets ui`` starts the embedded server, then replaces itself with
    ``dagster dev`` (an exec: no exit handlers run). Nothing of it stays in pgserver's list
    of users, and ``checkpoint-assets stop-postgres`` stops the server; a second call says
    that none runs."""
    data_dir = tmp_path / "postgres"
    as_ui_does = ("import os, sys; from checkpoint_assets.embedded_postgres import "
                  "start_embedded; start_embedded(sys.argv[1]); os.execv('/bin/true', ['true'])")
    subprocess.run([sys.executable, "-c", as_ui_does, str(data_dir)], check=True, timeout=120)
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    try:
        handles = data_dir / HANDLE_PIDS_FILE
        assert not handles.exists() or json.loads(handles.read_text()) == []
        assert psutil.pid_exists(postmaster)

        stop = [sys.executable, "-m", "checkpoint_assets.cli", "stop-postgres",
                "--workdir", str(tmp_path)]
        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith("Stopped the embedded PostgreSQL")
        assert not (data_dir / "postmaster.pid").exists()
        assert not psutil.pid_exists(postmaster) \
            or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
        again = subprocess.run(stop, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.startswith("No embedded PostgreSQL runs")
    finally:  # a failed assertion must not leave the server running for the rest of the suite
        if psutil.pid_exists(postmaster) \
                and psutil.Process(postmaster).status() != psutil.STATUS_ZOMBIE:
            psutil.Process(postmaster).terminate()


def test_the_quick_start_migrates_the_sample_and_leaves_nothing_after_stop_postgres(
        tmp_path: Path) -> None:
    """README command 1's CLI: `checkpoint-assets quickstart` writes the sample database,
    starts its own embedded PostgreSQL, migrates (exit 0, every check PASS, the evidence
    report PASSED); `stop-postgres` then stops that server, and no process of it stays."""
    work, home = tmp_path / "quickstart", tmp_path / "dagster_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS_")}
    env["DAGSTER_HOME"] = str(home)
    cli = [sys.executable, "-m", "checkpoint_assets.cli"]
    try:
        done = subprocess.run([*cli, "quickstart", "--workdir", str(work)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Evidence report (PASSED" in done.stdout
        assert "FAIL" not in done.stdout.replace("FAILED and missing", "")
    finally:
        stopped = subprocess.run([*cli, "stop-postgres", "--workdir", str(work)], env=env,
                                 cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and stopped.stdout.startswith(
        "Stopped the embedded PostgreSQL"), stopped.stdout + stopped.stderr
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(work) in " ".join(p.info["cmdline"] or [])]


def test_every_process_shares_one_private_runtime_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pgserver's runtime directory (for a machine without XDG_RUNTIME_DIR) is one per user,
    mode 0700, reused by every process, so no process leaves a directory of its own behind;
    one that someone else could write to is not used."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = private_runtime_dir(), private_runtime_dir()
    assert first == second == tmp_path / f"pgserver-runtime-{os.getuid()}"
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    first.chmod(0o777)
    elsewhere = private_runtime_dir()
    assert elsewhere != first and stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
