"""Helpers shared by the Dagster-layer tests: real corpora, asset runs, table snapshots.

Corpora are written by a real LangGraph graph on a real SqliteSaver (checkpoint_assets.sample);
runs go through the code location's own asset job against a real Dagster instance.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from psycopg import sql
from psycopg.conninfo import make_conninfo

from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.embedded_postgres import temporary_database
from checkpoint_assets.engine.load.target import TABLES
from checkpoint_assets.partitions import (
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    VERIFICATION_ASSET,
)
from checkpoint_assets.project import SQLITE_INSTANCE_YAML
from checkpoint_assets.resources import build_resources
from checkpoint_assets.sample import write_sample_database
from checkpoint_assets.settings import (
    BATCH_SIZE_ENV,
    EXPORT_ENV,
    READBACK_THREADS_ENV,
    SOURCE_ENV,
    TARGET_DSN_ENV,
    Settings,
)


def write_corpus(path: Path, threads: int = 6) -> Path:
    """A SqliteSaver database written by the sample support-agent graph."""
    write_sample_database(path, threads=threads)
    return path


def definitions(source: Path, export: Path, *, batch_size: int, schema: str | None = None,
                staging_schema: str | None = None, readback_threads: int = 0) -> dg.Definitions:
    """The code location's definitions with explicit, non-secret settings."""
    env = Settings.from_env()
    resources = build_resources(replace(
        env, source=str(source), export=str(export), batch_size=batch_size,
        target_schema=schema if schema is not None else env.target_schema,
        staging_schema=staging_schema if staging_schema is not None else env.staging_schema,
        readback_threads=readback_threads if readback_threads > 0 else None))
    return build_definitions(resources, staging=staging_schema is not None)


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, *assets: dg.AssetKey,
                partition: str | None = None) -> dg.ExecuteInProcessResult:
    """One run of the code location's asset job for ``assets`` (and their checks)."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=list(assets),
                                  partition_key=partition, raise_on_error=False)


def materialize_range(defs: dg.Definitions, instance: dg.DagsterInstance, asset: dg.AssetKey,
                      first: str, last: str) -> dg.ExecuteInProcessResult:
    """One run for the partitions ``first``..``last`` of ``asset``, as a backfill with a
    multi-run policy launches it."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[asset], raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last})


def migrate(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, Any]:
    """Export, every partition (one run each), verification; return the runs by step."""
    runs: dict[str, Any] = {"export": materialize(defs, instance, EXPORT_ASSET)}
    keys = sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    runs["batches"] = {k: materialize(defs, instance, BATCHES_ASSET, partition=k) for k in keys}
    runs["verification"] = materialize(defs, instance, VERIFICATION_ASSET)
    return runs


def check_results(run: dg.ExecuteInProcessResult,
                  instance: dg.DagsterInstance) -> dict[str, dg.AssetCheckEvaluation]:
    """The run's check evaluations by check name, as the instance stored them (a run's
    in-process result leaves out those a failing step logged before it raised)."""
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {e.check_name: e for e in (r.event_log_entry.dagster_event.event_specific_data
                                      for r in records)}


def sqlite_counts(path: Path) -> dict[str, int]:
    """Row counts straight from the SQLite file (independent of the engine)."""
    with sqlite3.connect(path) as conn:
        return {"checkpoints": conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0],
                "writes": conn.execute("SELECT count(*) FROM writes").fetchone()[0]}


def table_snapshot(dsn: str, schema: str = "public") -> dict[str, str]:
    """A digest per table of every row with its xmin and ctid: changes if any row is
    inserted, deleted or rewritten (an UPDATE, even to the same values, changes xmin)."""
    digests = {}
    with psycopg.connect(dsn) as conn:
        for table in TABLES:
            rows = conn.execute(sql.SQL(
                "SELECT xmin::text, ctid::text, t::text FROM {} t ORDER BY 1, 2").format(
                    sql.Identifier(schema, table))).fetchall()
            digests[table] = hashlib.sha256(repr(rows).encode()).hexdigest() + f":{len(rows)}"
    return digests


def fresh_database(admin_dsn: str) -> Any:
    """A new, empty database on the test server (dropped afterwards)."""
    return temporary_database(admin_dsn, "ca_dagster")


def with_password(dsn: str, password: str) -> str:
    """The same DSN carrying a password (the test servers trust local users and ignore it)."""
    return make_conninfo(dsn, password=password)


def dagster_dev_project(root: Path, target_dsn: str, *, threads: int,
                        batch_size: int) -> tuple[Path, Path, dict[str, str]]:
    """(source, export path, environment) of a project under ``root`` as ``dagster dev``
    serves it: a corpus of ``threads`` threads, a persistent DAGSTER_HOME with the shipped
    dagster.yaml (the "Join the Dagster community" dialog already seen, as after a user's
    first visit), the settings only in the environment, no read-back sample."""
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes(SQLITE_INSTANCE_YAML.read_bytes())
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    source = write_corpus(root / "support.sqlite", threads=threads)
    export = root / "export.export"
    env = {SOURCE_ENV: str(source), EXPORT_ENV: str(export), BATCH_SIZE_ENV: str(batch_size),
           READBACK_THREADS_ENV: "0", TARGET_DSN_ENV: target_dsn, "DAGSTER_HOME": str(home)}
    return source, export, env
