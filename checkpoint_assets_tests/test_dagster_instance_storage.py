"""The audit trail: the project's Dagster instance keeps runs and check results across
restarts, in SQLite by default and in PostgreSQL (dagster-postgres) when configured.

Under test: the default DAGSTER_HOME (<project>/.dagster_home, created with the shipped
dagster.yaml), both shipped instance configurations, and reading every check evaluation
back from a fresh instance after a real migration (as after a restart of dagster dev).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import USER_TAG
from psycopg.conninfo import conninfo_to_dict

from checkpoint_assets.check_results import (
    declared_check_keys,
    latest_check_evaluations,
)
from checkpoint_assets.partitions import DEFAULT_POOL_LIMIT, FRONT_END_TAG, TARGET_POOL
from checkpoint_assets.project import (
    POSTGRES_INSTANCE_YAML,
    SQLITE_INSTANCE_YAML,
    ensure_dagster_home,
)
from checkpoint_assets.run_steps import project_instance
from checkpoint_assets.runner import migrate_in_process
from checkpoint_assets.settings import DAGSTER_PG_ENV, DAGSTER_PG_HOST_ENV
from checkpoint_assets_tests.dagster_support import fresh_database, write_corpus


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project checkout as cwd, with DAGSTER_HOME unset (as for a new user)."""
    (tmp_path / "pyproject.toml").write_text("[tool.dagster]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in DAGSTER_PG_ENV.values():
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    os.environ.pop("DAGSTER_HOME", None)


def _migrate_and_reopen(project: Path, target_dsn: str) -> list[dict]:
    """Migrate a fresh corpus through the project instance, then read the checks back
    through a brand-new instance object (what a restarted dagster dev would see)."""
    source = write_corpus(project / "support.sqlite", threads=3)
    result = migrate_in_process(source=str(source), target_dsn=target_dsn, batch_size=20)
    assert result.passed, result.render()
    with project_instance() as reopened:
        rows = latest_check_evaluations(reopened)
        runs = reopened.get_run_records()
        assert {r.dagster_run.tags.get(FRONT_END_TAG) for r in runs} == {"cli"}
        # Dagster's "user" tag: the UI says who launched them, not "Manually launched".
        assert {r.dagster_run.tags.get(USER_TAG) for r in runs} == {"checkpoint-assets migrate"}
        assert {r.run_id for r in rows} <= {r.dagster_run.run_id for r in runs}
    assert len(rows) == len(declared_check_keys())
    assert all(r.passed for r in rows), rows
    return rows


def test_default_home_is_persistent_sqlite(project: Path, target_dsn: str) -> None:
    """Without DAGSTER_HOME, history lands in <project>/.dagster_home and survives restarts;
    the shipped dagster.yaml bounds the PostgreSQL pool."""
    _migrate_and_reopen(project, target_dsn)
    home = project / ".dagster_home"
    assert os.environ["DAGSTER_HOME"] == str(home)
    assert (home / "dagster.yaml").read_bytes() == SQLITE_INSTANCE_YAML.read_bytes()
    assert list(home.glob("**/*.db")), "SQLite storage files under the home"
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert storage.get_pool_config().default_pool_limit == DEFAULT_POOL_LIMIT
        # The CLI's batch runs claimed slots in the pool: it exists with the default limit.
        limits = {p.name: p.limit for p in storage.get_pool_limits()}
        assert limits.get(TARGET_POOL) == DEFAULT_POOL_LIMIT


def test_postgres_storage_holds_runs_and_check_results(
    project: Path, target_dsn: str, admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CHECKPOINT_ASSETS_DAGSTER_PG_* set, the home uses dagster-postgres, and every
    check evaluation is read back from PostgreSQL."""
    with fresh_database(admin_dsn) as dagster_db:
        params = conninfo_to_dict(dagster_db)
        if str(params.get("host", "")).startswith("/"):
            pytest.skip("dagster-postgres needs a TCP host; the test server is socket-only")
        for field, value in {"hostname": params.get("host", "localhost"),
                             "port": params.get("port", "5432"),
                             "username": params.get("user", "postgres"),
                             "password": params.get("password", ""),
                             "db_name": params["dbname"]}.items():
            monkeypatch.setenv(DAGSTER_PG_ENV[field], str(value))
        rows = _migrate_and_reopen(project, target_dsn)
        home = project / ".dagster_home"
        assert (home / "dagster.yaml").read_bytes() == POSTGRES_INSTANCE_YAML.read_bytes()
        assert params["dbname"] not in (home / "dagster.yaml").read_text()
        assert not list(home.glob("**/*.db")), "no SQLite storage next to PostgreSQL storage"
        with psycopg.connect(dagster_db) as conn:
            stored = conn.execute(
                "SELECT count(DISTINCT (asset_key, check_name)) FROM asset_check_executions "
                "WHERE execution_status = 'SUCCEEDED'").fetchone()[0]
            runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        assert stored == len(rows)
        assert runs >= 3  # export, batches, verification


def test_home_configuration_follows_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unmodified shipped dagster.yaml follows CHECKPOINT_ASSETS_DAGSTER_PG_HOST; an edited
    one, or a DAGSTER_HOME that already holds other files, is never rewritten."""
    home = ensure_dagster_home()
    config = home / "dagster.yaml"
    assert config.read_bytes() == SQLITE_INSTANCE_YAML.read_bytes()
    monkeypatch.setenv(DAGSTER_PG_HOST_ENV, "db.invalid")
    ensure_dagster_home()
    assert config.read_bytes() == POSTGRES_INSTANCE_YAML.read_bytes()
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    monkeypatch.delenv(DAGSTER_PG_HOST_ENV)
    ensure_dagster_home()
    assert config.read_text().endswith("# edited by the operator\n")

    other = project / "someone-elses-home"
    other.mkdir()
    (other / "history").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(other))
    assert ensure_dagster_home() == other
    assert not (other / "dagster.yaml").exists()
