"""Shared fixtures: a real PostgreSQL and per-test databases.

The server on 127.0.0.1:5432 is used when it answers; otherwise (or with
CHECKPOINT_ASSETS_TEST_PG=embedded) an embedded PostgreSQL from ``pgserver`` is started
for the session. Every test that needs a database gets a fresh one, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from checkpoint_assets.embedded_postgres import start_embedded, temporary_database
from checkpoint_assets.settings import AES_KEY_ENV

SHARED_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session", autouse=True)
def _no_settings_from_the_developers_shell() -> Iterator[None]:
    """The suite starts without the tool's settings from the shell that runs it: an
    exported CHECKPOINT_ASSETS_TARGET_DSN must never reach a test's migration (tests set
    what they need; the suite's own CHECKPOINT_ASSETS_TEST_* switches stay)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if (name.startswith("CHECKPOINT_ASSETS_") and not name.startswith(
                    "CHECKPOINT_ASSETS_TEST_")) or name == AES_KEY_ENV:
                patch.delenv(name)
        yield


@pytest.fixture(autouse=True)
def _a_dagster_home_of_its_own(tmp_path_factory: pytest.TempPathFactory,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that run assets in-process (migrate, sync, cutover, rollback) record their
    runs in $DAGSTER_HOME: each test gets a home of its own (created when first used),
    never the project's .dagster_home, which two test processes would share. A test that
    sets or removes DAGSTER_HOME itself overrides this."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))


def _shared_server_answers() -> bool:
    try:
        with psycopg.connect(SHARED_SERVER_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def embedded_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded PostgreSQL of this test session (always started on demand)."""
    data_dir = tmp_path_factory.mktemp("embedded-pg")
    dsn = start_embedded(data_dir, keep_running=False)
    yield dsn
    import pgserver

    pgserver.get_server(data_dir).cleanup()


@pytest.fixture(scope="session")
def admin_dsn(request: pytest.FixtureRequest) -> str:
    """Admin DSN of the PostgreSQL the tests use."""
    if os.environ.get("CHECKPOINT_ASSETS_TEST_PG") != "embedded" and _shared_server_answers():
        return SHARED_SERVER_DSN
    return request.getfixturevalue("embedded_admin_dsn")


@pytest.fixture
def target_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    with temporary_database(admin_dsn, "ca_test") as dsn:
        yield dsn


@pytest.fixture
def embedded_target_dsn(embedded_admin_dsn: str) -> Iterator[str]:
    """A fresh database on the embedded server, whatever else runs on this machine."""
    with temporary_database(embedded_admin_dsn, "ca_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for SQLite corpora built once per session."""
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="session")
def sample_db_master(corpus_dir: Path) -> Path:
    """The quick-start sample database (a real LangGraph graph), written once."""
    from checkpoint_assets.sample import write_sample_database

    path = corpus_dir / "sample.sqlite"
    write_sample_database(path, threads=12)
    return path


@pytest.fixture(scope="session")
def rich_master(corpus_dir: Path) -> Path:
    """The rich corpus (corpus_graphs.build_rich_corpus: interrupts, subgraphs, Send
    fan-out, errors, forks, pydantic and binary values), written once per test session;
    tests that change it take a copy."""
    from checkpoint_assets_tests.corpus_graphs import build_rich_corpus

    path = corpus_dir / "rich-master.sqlite"
    build_rich_corpus(path)
    return path


@pytest.fixture
def sample_db(sample_db_master: Path, tmp_path: Path) -> Path:
    """A private copy of the sample database that a test may change."""
    import shutil

    path = tmp_path / "source.sqlite"
    shutil.copyfile(sample_db_master, path)
    return path
