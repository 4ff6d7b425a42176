"""Targets and inputs the import must refuse or handle: a wrong password, a user without
the privileges it needs, an older or a newer PostgresSaver schema, and an export taken from
another SQLite source than the configured one.

Every refusal is a clear error naming the problem and the fix, a non-zero exit status, and
a target left as it was. Under test: ``checkpoint-assets import``/``verify``, ``Target.setup``,
``load_batch`` and the Dagster batch asset, against a real PostgreSQL: the shared server,
or (for the password case) a PostgreSQL 16 cluster of this module that requires
scram-sha-256 passwords. Every refusal runs the CLI as a real subprocess; the calls that
follow it (the same command once the cause is fixed) run the CLI's ``main`` in this process,
which is the same code without a second interpreter start-up, to keep the module fast.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.base import MIGRATIONS
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from checkpoint_assets.cli import main
from checkpoint_assets.embedded_postgres import ensure_database
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.export.writer import write_export
from checkpoint_assets.engine.load.loader import load_batch
from checkpoint_assets.engine.load.target import LATEST_SCHEMA_VERSION, TABLES, Target
from checkpoint_assets.partitions import BATCH_MATCHES_EXPORT, BATCH_PARTITIONS_NAME, BATCHES_ASSET
from checkpoint_assets.settings import TARGET_DSN_ENV
from checkpoint_assets_tests.corpus_graphs import build_scaled_corpus
from checkpoint_assets_tests.dagster_support import (
    check_results,
    definitions,
    materialize,
)

CLI = [sys.executable, "-m", "checkpoint_assets.cli"]
ALL_TABLES = ("checkpoint_migrations", *TABLES)
BATCH_SIZE = 40
RIGHT_PASSWORD = f"right-{uuid.uuid4().hex[:12]}-Pw"
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex[:12]}-Pw"
LEGACY_THREAD = "legacy-thread-on-old-schema"


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str, dsn: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a real subprocess with a clean environment, the DSN in the variable."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKPOINT_ASSETS")}
    if dsn is not None:
        full_env["CHECKPOINT_ASSETS_TARGET_DSN"] = dsn
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env,
                          timeout=300)


class InProcessCli:
    """Runs ``checkpoint_assets.cli.main`` in this process with a clean environment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, *args: str, dsn: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The exit status and the output of one command, like run_cli's."""
        with self.monkeypatch.context() as patched:
            for name in [n for n in os.environ if n.startswith("CHECKPOINT_ASSETS")]:
                patched.delenv(name)
            for name, value in {**({"CHECKPOINT_ASSETS_TARGET_DSN": dsn} if dsn else {}),
                                **(env or {})}.items():
                patched.setenv(name, value)
            self.capsys.readouterr()
            status = main(list(args))
            out = self.capsys.readouterr()
        return subprocess.CompletedProcess(["checkpoint-assets", *args], status, out.out,
                                           out.err)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> InProcessCli:
    """The CLI, run in this process."""
    return InProcessCli(monkeypatch, capsys)


def table_rows(dsn: str) -> dict[str, int | None]:
    """Rows per PostgresSaver table in the DSN's search_path; None for a missing table."""
    counts: dict[str, int | None] = {}
    with psycopg.connect(dsn) as conn:
        for table in ALL_TABLES:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                counts[table] = None
            else:
                counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(table))).fetchone()[0]
    return counts


NO_TABLES = {table: None for table in ALL_TABLES}


def hinted_grants(message: str) -> list[str]:
    """The GRANT statements a message tells the owner to run."""
    return re.findall(r"GRANT [^;]+;", message)


def run_as_owner(dsn: str, statements: list[sql.Composable]) -> None:
    """Execute statements (e.g. the grants a hint names) as the database's owner."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def schema_version(dsn: str) -> int:
    """The highest version recorded in checkpoint_migrations."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT max(v) FROM checkpoint_migrations").fetchone()[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exported(sample_db_master: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportManifest]:
    """The sample database (a real LangGraph graph) and an export of it in several batches."""
    export = tmp_path_factory.mktemp("bad-targets") / "sample.export"
    return sample_db_master, write_export(sample_db_master, export, batch_size=BATCH_SIZE)


@pytest.fixture(scope="module")
def other_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another real checkpoint database (three chat-agent threads), not the exported one."""
    path = tmp_path_factory.mktemp("other-source") / "other.sqlite"
    build_scaled_corpus(path, threads=3)
    return path


def _server_user() -> str | None:
    """The system user PostgreSQL runs as: None (this user) unless we are root.

    initdb refuses to run as root, so as root the cluster runs as pgserver's own dedicated
    user, prepared the way pgserver prepares it (created if missing; the binaries made
    readable and their directories traversable).
    """
    if os.geteuid() != 0:
        return None
    import stat

    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "pgserver"
    ensure_user_exists(user)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    return user


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A PostgreSQL 16 cluster of this module (pgserver's binaries) on a free TCP port of
    127.0.0.1 that requires a scram-sha-256 password for every connection. Yields the admin
    DSN with the right password; the cluster is stopped and deleted afterwards."""
    from pgserver._commands import POSTGRES_BIN_PATH

    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="ca-pw-", dir="/tmp"))  # short unix socket path
    data, pwfile, log = root / "data", root / "pwfile", root / "server.log"
    pwfile.write_text(RIGHT_PASSWORD + "\n")
    pwfile.chmod(0o600)
    if user is not None:
        shutil.chown(root, user)
        shutil.chown(pwfile, user)
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}

    def pg(program: str, *args: str, check: bool = True) -> None:
        done = subprocess.run([str(POSTGRES_BIN_PATH / program), *args], user=user, env=env,
                              cwd=root, capture_output=True, text=True, timeout=120)
        server_log = log.read_text() if log.exists() else ""
        assert done.returncode == 0 or not check, \
            f"{program} failed: {done.stdout}{done.stderr}{server_log}"

    port = _free_port()
    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
           f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C")
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60",
           "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start")
        yield f"postgresql://postgres:{RIGHT_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def restricted_role(target_dsn: str) -> Iterator[str]:
    """A login role of this test that may connect to the test's database but create nothing
    in it (no CREATE on the database or on schema public). Yields its DSN; its grants and
    the role itself are dropped afterwards."""
    role = f"ca_restricted_{uuid.uuid4().hex[:10]}"
    dbname = conninfo_to_dict(target_dsn)["dbname"]
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # PostgreSQL 15+ already revokes these from PUBLIC; older servers grant them.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(dbname)))
    try:
        yield make_conninfo(target_dsn, user=role)
    finally:
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------- wrong password


def test_wrong_password_is_exit_3_says_authentication_failed_and_shows_no_password(
        password_server: str, exported: tuple[Path, ExportManifest], cli: InProcessCli) -> None:
    """A server that requires passwords, given the wrong one: exit 3, the message says the
    login was rejected and what to check, neither the wrong nor the right password appears
    anywhere, and no table is created. With the right password the same import succeeds."""
    _, manifest = exported
    dsn = ensure_database(password_server, "checkpoints")
    wrong = make_conninfo(dsn, password=WRONG_PASSWORD)

    refused = run_cli("import", "--export", str(manifest.path), dsn=wrong)

    output = refused.stdout + refused.stderr
    assert refused.returncode == 3, output
    assert "authentication failed" in refused.stderr
    assert "Check the user name and password" in refused.stderr
    assert WRONG_PASSWORD not in output and RIGHT_PASSWORD not in output
    assert table_rows(dsn) == NO_TABLES

    accepted = cli("import", "--export", str(manifest.path), dsn=dsn)
    assert accepted.returncode == 0, accepted.stderr
    assert RIGHT_PASSWORD not in accepted.stdout + accepted.stderr
    assert table_rows(dsn)["checkpoints"] == manifest.checkpoints


# --------------------------------------------------------------------------- privileges


def test_user_without_create_privilege_is_told_the_grant_that_fixes_it(
        target_dsn: str, restricted_role: str, exported: tuple[Path, ExportManifest],
        cli: InProcessCli) -> None:
    """Importing into an empty database as a user who may not create tables: exit 3, the
    message names the missing privilege and gives GRANTs that exist; no table is created.
    Once the owner runs the hint's GRANT, the same import succeeds."""
    _, manifest = exported

    refused = run_cli("import", "--export", str(manifest.path), dsn=restricted_role)

    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "may not create or upgrade PostgresSaver's tables" in refused.stderr
    assert "permission denied for schema public" in refused.stderr
    assert "GRANT CREATE ON SCHEMA \"public\" TO" in refused.stderr
    assert "PostgresSaver.setup()" in refused.stderr
    assert "setup-target" not in refused.stderr  # no such command
    assert table_rows(target_dsn) == NO_TABLES

    grant_create = hinted_grants(refused.stderr)[0]
    assert grant_create.startswith("GRANT CREATE ON SCHEMA")
    run_as_owner(target_dsn, [sql.SQL(grant_create)])
    accepted = cli("import", "--export", str(manifest.path), dsn=restricted_role)
    assert accepted.returncode == 0, accepted.stderr
    assert table_rows(target_dsn)["checkpoints"] == manifest.checkpoints


def test_user_who_may_read_but_not_insert_is_stopped_before_any_row(
        target_dsn: str, restricted_role: str, exported: tuple[Path, ExportManifest],
        cli: InProcessCli) -> None:
    """Tables an owner set up, a user granted only SELECT: the import stops with exit 3
    naming each missing INSERT and the GRANT to run, and writes nothing; the loader used by
    the Dagster batches fails cleanly too. After the hint's GRANTs the import succeeds."""
    _, manifest = exported
    Target(target_dsn).setup()
    role = conninfo_to_dict(restricted_role)["user"]
    run_as_owner(target_dsn, [sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}")
                              .format(sql.Identifier(role))])
    empty = {"checkpoint_migrations": LATEST_SCHEMA_VERSION + 1,
             **{table: 0 for table in TABLES}}

    refused = run_cli("import", "--export", str(manifest.path), dsn=restricted_role)

    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "lacks privileges on PostgresSaver's tables" in refused.stderr
    for table in TABLES:
        assert f"INSERT on {table}" in refused.stderr
    assert "GRANT SELECT, INSERT ON checkpoints, checkpoint_blobs, checkpoint_writes TO" \
        in refused.stderr
    assert table_rows(target_dsn) == empty

    with pytest.raises(MigrationError) as info:
        load_batch(Target(restricted_role), manifest, manifest.batches[0].key, attempts=1)
    assert "permission denied for table checkpoints" in str(info.value)
    assert "Nothing of this batch was written" in str(info.value)
    assert table_rows(target_dsn) == empty

    run_as_owner(target_dsn, [sql.SQL(grant) for grant in hinted_grants(refused.stderr)])
    accepted = cli("import", "--export", str(manifest.path), dsn=restricted_role)
    assert accepted.returncode == 0, accepted.stderr
    assert table_rows(target_dsn)["checkpoints"] == manifest.checkpoints


# --------------------------------------------------------------------------- schema versions


# The version an older langgraph-checkpoint-postgres left: its tables, but not yet the
# thread_id indexes (CREATE INDEX CONCURRENTLY) nor the writes' task_path column.
OLD_VERSION_COUNT = next(i for i, m in enumerate(MIGRATIONS) if "CONCURRENTLY" in m)


def create_old_schema(dsn: str, migrations: int) -> None:
    """Run the first ``migrations`` of PostgresSaver's migrations and record them in
    checkpoint_migrations exactly as PostgresSaver.setup() does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0])
        for version, migration in enumerate(MIGRATIONS[:migrations]):
            conn.execute(migration)
            conn.execute("INSERT INTO checkpoint_migrations (v) VALUES (%s)", (version,))


def write_legacy_thread(dsn: str) -> dict[str, Any]:
    """Rows an application on the older library left in the old schema: a checkpoint with
    its blob saved by PostgresSaver.put (it only uses columns the old schema has), and a
    pending write inserted the way the old saver did, without task_path (which the old
    schema lacks). Returns the checkpoint's config."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        saver = PostgresSaver(conn)  # type: ignore[arg-type]
        version = saver.get_next_version(None, None)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": ["hello from the old schema"]}
        checkpoint["channel_versions"] = {"messages": version}
        config = saver.put({"configurable": {"thread_id": LEGACY_THREAD, "checkpoint_ns": ""}},
                           checkpoint, {"source": "input", "step": -1}, {"messages": version})
        value_type, value = saver.serde.dumps_typed("a pending write")
        conn.execute(
            "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
            "idx, channel, type, blob) VALUES (%s, '', %s, 'task-1', 0, 'messages', %s, %s)",
            (LEGACY_THREAD, config["configurable"]["checkpoint_id"], value_type, value))
    return config


def indexes_and_columns(dsn: str) -> tuple[set[str], set[str]]:
    """The public schema's index names, and the columns of checkpoint_writes."""
    with psycopg.connect(dsn) as conn:
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'checkpoint_writes'")}
    return indexes, columns


@pytest.mark.parametrize("with_legacy_rows", [False, True],
                         ids=["empty-old-schema", "old-schema-with-rows"])
def test_an_older_postgres_saver_schema_is_upgraded_then_imported_and_verified(
        target_dsn: str, exported: tuple[Path, ExportManifest], with_legacy_rows: bool,
        cli: InProcessCli) -> None:
    """Tables as an older langgraph-checkpoint-postgres left them (no thread_id indexes, no
    task_path): the import runs the library's remaining migrations, loads, and verify
    passes. Rows the old library wrote stay intact and readable by the official saver."""
    source, manifest = exported
    create_old_schema(target_dsn, OLD_VERSION_COUNT)
    legacy = write_legacy_thread(target_dsn) if with_legacy_rows else None
    indexes, columns = indexes_and_columns(target_dsn)
    assert "checkpoints_thread_id_idx" not in indexes and "task_path" not in columns
    assert schema_version(target_dsn) == OLD_VERSION_COUNT - 1

    imported = cli("import", "--export", str(manifest.path), "--source", str(source),
                   dsn=target_dsn)
    assert imported.returncode == 0, imported.stderr

    assert schema_version(target_dsn) == LATEST_SCHEMA_VERSION
    indexes, columns = indexes_and_columns(target_dsn)
    assert {"checkpoints_thread_id_idx", "checkpoint_blobs_thread_id_idx",
            "checkpoint_writes_thread_id_idx"} <= indexes and "task_path" in columns
    verified = cli("verify", "--source", str(source), "--export", str(manifest.path),
                   "--readback-all", dsn=target_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    if legacy is not None:
        with psycopg.connect(target_dsn, autocommit=True, row_factory=dict_row) as conn:
            found = PostgresSaver(conn).get_tuple(legacy)  # type: ignore[arg-type]
        assert found is not None
        assert found.checkpoint["channel_values"] == {"messages": ["hello from the old schema"]}
        assert found.pending_writes == [("task-1", "messages", "a pending write")]
        assert table_rows(target_dsn)["checkpoints"] == manifest.checkpoints + 1


def set_up_by_a_newer_library(dsn: str) -> int:
    """PostgresSaver's tables, with checkpoint_migrations recording a version this
    langgraph-checkpoint-postgres does not know; returns that version."""
    Target(dsn).setup()
    newer = LATEST_SCHEMA_VERSION + 5
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO checkpoint_migrations (v) VALUES (%s)", (newer,))
    return newer


def test_a_schema_newer_than_this_library_is_refused_before_writing(
        target_dsn: str, exported: tuple[Path, ExportManifest]) -> None:
    """checkpoint_migrations records a version this langgraph-checkpoint-postgres does not
    know (a newer one set the tables up): exit 3, the message says so and to upgrade the
    pin, and nothing is written, not even to checkpoint_migrations."""
    _, manifest = exported
    newer = set_up_by_a_newer_library(target_dsn)
    before = table_rows(target_dsn)

    refused = run_cli("import", "--export", str(manifest.path), dsn=target_dsn)

    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"schema version {newer}" in refused.stderr
    assert "newer langgraph-checkpoint-postgres" in refused.stderr
    assert "Upgrade langgraph-checkpoint-postgres" in refused.stderr
    assert table_rows(target_dsn) == before
    assert before["checkpoints"] == 0 and schema_version(target_dsn) == newer


# --------------------------------------------------------------------------- other source


def test_cli_refuses_an_export_taken_from_another_source(
        target_dsn: str, exported: tuple[Path, ExportManifest], other_source: Path,
        cli: InProcessCli) -> None:
    """import with --source (or CHECKPOINT_ASSETS_SOURCE) naming another database than the
    one the export was taken from, and verify against it: exit 3, the message names both
    files and the fix, and the target gets no table and no row."""
    source, manifest = exported
    by_flag = run_cli("import", "--export", str(manifest.path), "--source", str(other_source),
                      dsn=target_dsn)
    by_env = cli("import", "--export", str(manifest.path), dsn=target_dsn,
                 env={"CHECKPOINT_ASSETS_SOURCE": str(other_source)})
    verified = cli("verify", "--export", str(manifest.path), "--source", str(other_source),
                   dsn=target_dsn)

    for refused in (by_flag, by_env, verified):
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert f"was taken from {source.resolve()}" in refused.stderr
        assert f"not from the configured source {other_source.resolve()}" in refused.stderr
        assert "re-materialize the checkpoint_export asset" in refused.stderr
    assert table_rows(target_dsn) == NO_TABLES


def test_dagster_batch_fails_when_the_export_was_taken_from_another_source(
        target_dsn: str, exported: tuple[Path, ExportManifest], other_source: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source resource now names another database than the export on disk was taken
    from: materializing a batch partition fails with a failed batch check that names both
    files, and the target gets no table and no row."""
    _, manifest = exported
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    key = manifest.batches[0].key
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(BATCH_PARTITIONS_NAME, [e.key for e in manifest.batches])
        code = definitions(other_source, manifest.path, batch_size=BATCH_SIZE)
        run = materialize(code, instance, BATCHES_ASSET, partition=key)
        evaluation = check_results(run, instance)[BATCH_MATCHES_EXPORT]

    assert not run.success
    assert not evaluation.passed and evaluation.partition == key
    actual = evaluation.metadata["actual"].value
    assert "was taken from" in actual and str(other_source.resolve()) in actual
    assert table_rows(target_dsn) == NO_TABLES


def test_dagster_batch_refuses_a_schema_newer_than_this_library(
        target_dsn: str, exported: tuple[Path, ExportManifest], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch asset checks the schema version too: a newer checkpoint_migrations fails
    the partition with a failed batch check naming the version, and nothing is written."""
    source, manifest = exported
    newer = set_up_by_a_newer_library(target_dsn)
    before = table_rows(target_dsn)
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    key = manifest.batches[0].key
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(BATCH_PARTITIONS_NAME, [e.key for e in manifest.batches])
        run = materialize(definitions(source, manifest.path, batch_size=BATCH_SIZE), instance,
                          BATCHES_ASSET, partition=key)
        evaluation = check_results(run, instance)[BATCH_MATCHES_EXPORT]

    assert not run.success
    assert not evaluation.passed
    assert f"schema version {newer}" in evaluation.metadata["actual"].value
    assert table_rows(target_dsn) == before
