"""The target DSN's password never leaves the environment variable it came in.

Under test: the ``checkpoint-assets`` CLI (``migrate``, ``import``, ``verify``, as real
subprocesses with DAGSTER_HOME in a temporary directory) on runs that fail on purpose: a
target that does not answer, and a target that holds conflicting rows. Afterwards the
unique password must be absent from stdout/stderr, the report files, every file under
DAGSTER_HOME (the Dagster SQLite run/event storage included, searched as bytes) and every
file in the export directory. Export and report files must be owner-only (0600).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from checkpoint_assets.engine.load.target import scrub

CLI = [sys.executable, "-m", "checkpoint_assets.cli"]


def _with_password(dsn: str, password: str) -> str:
    params = conninfo_to_dict(dsn)
    params["password"] = password  # the test server trusts local connections anyway
    return make_conninfo(**params)


class _Runner:
    """Runs the CLI with a private DAGSTER_HOME and records every output."""

    def __init__(self, root: Path, dsn: str) -> None:
        self.home = root / "dagster_home"
        self.exports = root / "exports"
        self.reports = root / "reports"
        for d in (self.home, self.exports, self.reports):
            d.mkdir()
        self.dsn = dsn
        self.outputs: list[str] = []

    def run(self, *args: str, report: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
        env.update({"DAGSTER_HOME": str(self.home),
                    "CHECKPOINT_ASSETS_TARGET_DSN": self.dsn})
        extra = ["--report", str(self.reports / report)] if report else []
        done = subprocess.run([*CLI, *args, *extra], capture_output=True, text=True,
                              env=env, timeout=300, cwd=self.exports.parent)
        self.outputs.append(done.stdout + done.stderr)
        return done

    def assert_secret_absent(self, password: str) -> int:
        """Grep every output and file; return how many files were searched."""
        for output in self.outputs:
            assert password not in output, output[-2000:]
        searched = 0
        needle = password.encode()
        for directory in (self.home, self.exports, self.reports):
            for path in directory.rglob("*"):
                if path.is_file():
                    searched += 1
                    assert needle not in path.read_bytes(), f"password found in {path}"
        return searched


@pytest.fixture
def password() -> str:
    """A password no other test or file contains."""
    return f"pw-{uuid.uuid4().hex}-Secret"


def test_failed_runs_against_an_unreachable_target_leak_no_password(
        sample_db: Path, tmp_path: Path, password: str) -> None:
    """migrate, import and verify against a DSN nobody answers (with a password): exit 3,
    and the password is in no output, report, Dagster storage file or export file."""
    runner = _Runner(tmp_path, f"postgresql://migrator:{password}@127.0.0.1:1/checkpoints")
    export = runner.exports / "x.export"
    migrated = runner.run("migrate", "--source", str(sample_db), "--export", str(export),
                          report="migrate.json")
    assert migrated.returncode != 0
    exported = runner.run("export", "--source", str(sample_db), "--export", str(export))
    assert exported.returncode == 0, exported.stderr
    imported = runner.run("import", "--export", str(export), report="import.json")
    assert imported.returncode == 3 and "Cannot connect to the target" in imported.stderr
    verified = runner.run("verify", "--source", str(sample_db), "--export", str(export),
                          report="verify.json")
    assert verified.returncode == 3
    assert any(runner.home.rglob("*.db")), "migrate wrote no Dagster storage"
    assert runner.assert_secret_absent(password) > 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    for report in runner.reports.iterdir():
        assert stat.S_IMODE(report.stat().st_mode) == 0o600


def test_conflicting_and_mismatching_runs_leak_no_password(
        sample_db: Path, tmp_path: Path, target_dsn: str, password: str) -> None:
    """A reachable target (DSN with a password) whose rows were changed after the import:
    import and migrate stop with exit 4 (conflict), verify fails with exit 1; the password
    is in no output, report, Dagster storage file or export file; reports are 0600."""
    runner = _Runner(tmp_path, _with_password(target_dsn, password))
    export = runner.exports / "x.export"
    assert runner.run("export", "--source", str(sample_db), "--export", str(export),
                      "--batch-size", "40").returncode == 0
    first = runner.run("import", "--export", str(export), report="import-ok.json")
    assert first.returncode == 0, first.stderr
    with psycopg.connect(target_dsn) as conn:
        conn.execute("UPDATE checkpoint_writes SET blob = blob || '\\x00'::bytea "
                     "WHERE ctid = (SELECT ctid FROM checkpoint_writes LIMIT 1)")
    conflict = runner.run("import", "--export", str(export), report="import-conflict.json")
    assert conflict.returncode == 4 and "CONFLICT" in conflict.stderr
    verified = runner.run("verify", "--source", str(sample_db), "--export", str(export),
                          report="verify.json")
    assert verified.returncode == 1 and "Verification FAILED" in verified.stdout
    migrated = runner.run("migrate", "--source", str(sample_db), "--export", str(export),
                          "--batch-size", "40", report="migrate.json")
    assert migrated.returncode == 4, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    assert any(runner.home.rglob("*.db")), "migrate wrote no Dagster storage"
    assert runner.assert_secret_absent(password) > 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    reports = list(runner.reports.iterdir())
    assert {p.name for p in reports} >= {"import-ok.json", "verify.json", "migrate.json"}
    for report in reports:
        assert stat.S_IMODE(report.stat().st_mode) == 0o600


@pytest.mark.parametrize("password, message, expected", [
    ("hunter2", "login for u:hunter2 refused; password=hunter2",
     "login for u:*** refused; password=***"),
    # a password that is also a common word hides that word, not parts of other words
    ("postgres", "Cannot connect to postgresql://u@h:5432/postgres_db",
     "Cannot connect to postgresql://u@h:5432/postgres_db"),
    ("p", "Export /x does not exist. Pass the right --export path",
     "Export /x does not exist. Pass the right --export path"),
])
def test_scrub_removes_the_password_without_garbling_the_message(
        password: str, message: str, expected: str) -> None:
    """scrub hides the password wherever it stands alone, and only there."""
    assert scrub(message, f"host=h user=u password={password}") == expected
