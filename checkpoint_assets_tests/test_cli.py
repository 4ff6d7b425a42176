"""The command line: exit statuses, summaries, JSON reports, and no password anywhere.

The CLI runs as a real subprocess (the installed console script).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SECRET = "s3cr3t-Pa55word"
CLI = [sys.executable, "-m", "checkpoint_assets.cli"]


def run(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """Run the CLI with a clean environment plus ``env`` (``popen``: more subprocess.run
    arguments, e.g. ``preexec_fn``)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env,
                          timeout=300, cwd=cwd, **popen)


def with_password(dsn: str, password: str = SECRET) -> str:
    """The same DSN with a password (the test server trusts local connections anyway)."""
    params = conninfo_to_dict(dsn)
    params["password"] = password
    return make_conninfo(**params)


def test_export_import_verify_round_trip(sample_db: Path, tmp_path: Path,
                                         target_dsn: str) -> None:
    """export, import, verify: exit 0, summaries printed, reports owner-only, no password."""
    export = tmp_path / "x.export"
    dsn_env = {"CHECKPOINT_ASSETS_TARGET_DSN": with_password(target_dsn)}
    done = run("export", "--source", str(sample_db), "--export", str(export))
    assert done.returncode == 0, done.stderr
    assert "Exported" in done.stdout

    imported = run("import", "--export", str(export), "--report", str(tmp_path / "i.json"),
                   env=dsn_env)
    assert imported.returncode == 0, imported.stderr
    assert "checkpoint_writes" in imported.stdout and "already_present" in imported.stdout

    again = run("import", "--export", str(export), "--json", env=dsn_env)
    summary = json.loads(again.stdout)
    assert all(row["imported"] == 0 for row in summary["tables"])  # re-running is a no-op

    verified = run("verify", "--source", str(sample_db), "--export", str(export),
                   "--readback-all", "--report", str(tmp_path / "v.json"), env=dsn_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verification PASSED" in verified.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["checks"]["content_integrity"]["passed"]
    for path in (tmp_path / "i.json", tmp_path / "v.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for output in (imported, again, verified):
        assert SECRET not in output.stdout + output.stderr
    for path in (tmp_path / "i.json", tmp_path / "v.json"):
        assert SECRET not in path.read_text()


def test_verify_fails_with_exit_1_when_content_differs(sample_db: Path, tmp_path: Path,
                                                       target_dsn: str) -> None:
    """A mismatch is exit status 1 and the mismatching key is printed."""
    import psycopg

    export = tmp_path / "x.export"
    env = {"CHECKPOINT_ASSETS_TARGET_DSN": target_dsn}
    assert run("export", "--source", str(sample_db), "--export", str(export)).returncode == 0
    assert run("import", "--export", str(export), env=env).returncode == 0
    with psycopg.connect(target_dsn) as conn:
        thread_id = conn.execute("DELETE FROM checkpoint_writes WHERE ctid = (SELECT ctid FROM "
                                 "checkpoint_writes LIMIT 1) RETURNING thread_id").fetchone()[0]
    verified = run("verify", "--source", str(sample_db), "--export", str(export), env=env)
    assert verified.returncode == 1
    assert "write missing in target" in verified.stdout and thread_id in verified.stdout


@pytest.mark.parametrize("dsn", [
    # nothing listens there
    f"postgresql://migrator:{SECRET}@127.0.0.1:1/checkpoints",
    # key=value form
    f"host=127.0.0.1 port=1 user=migrator password={SECRET} dbname=checkpoints",
])
def test_unreachable_target_is_exit_3_and_never_shows_the_password(
        sample_db: Path, tmp_path: Path, dsn: str) -> None:
    """A wrong DSN: clear error, exit 3, the password nowhere in the output."""
    export = tmp_path / "x.export"
    assert run("export", "--source", str(sample_db), "--export", str(export)).returncode == 0
    for env in ({"CHECKPOINT_ASSETS_TARGET_DSN": dsn}, {}):
        args = ["import", "--export", str(export)] + ([] if env else ["--target", dsn])
        done = run(*args, env=env)
        assert done.returncode == 3
        assert "Cannot connect to the target" in done.stderr
        assert "What to do" in done.stderr
        assert SECRET not in done.stdout + done.stderr


def test_bad_source_is_exit_3_with_a_clear_message(tmp_path: Path) -> None:
    """A file that is not a checkpoint database: exit 3, names the file."""
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("hello")
    done = run("export", "--source", str(bogus), "--export", str(tmp_path / "x.export"))
    assert done.returncode == 3
    assert str(bogus) in done.stderr and "not a SQLite database" in done.stderr
    assert not (tmp_path / "x.export").exists()


def test_help_and_version() -> None:
    """--help documents exit statuses; --version prints the version."""
    assert "Exit status" in run("--help").stdout
    assert run("--version").stdout.startswith("checkpoint-assets ")


def test_settings_come_from_a_dotenv_file_and_the_environment_wins(
        sample_db: Path, tmp_path: Path, target_dsn: str) -> None:
    """A .env file in the working directory supplies source, export and target DSN; a
    variable already set in the environment overrides the file's value."""
    export = tmp_path / "from-dotenv.export"
    (tmp_path / ".env").write_text(
        f"CHECKPOINT_ASSETS_SOURCE={sample_db}\n"
        f"CHECKPOINT_ASSETS_EXPORT={tmp_path / 'overridden.export'}\n"
        f"CHECKPOINT_ASSETS_TARGET_DSN='{with_password(target_dsn)}'\n")
    (tmp_path / ".env").chmod(0o600)

    exported = run("export", cwd=tmp_path,
                   env={"CHECKPOINT_ASSETS_EXPORT": str(export)})
    assert exported.returncode == 0, exported.stderr
    assert export.is_file() and not (tmp_path / "overridden.export").exists()

    imported = run("import", "--export", str(export), "--json", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["checkpoints"] > 0
    assert SECRET not in imported.stdout + imported.stderr
