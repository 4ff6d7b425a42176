"""The fleet step (issue 24, goal 4): a corpus cut into many SQLite files, migrated at once.

``benchmarks.run --steps migrate,fleet`` cuts the corpus of the size (e.g. 1M checkpoints)
into ``--fleet-sources`` files (default 200, ~5K checkpoints each; whole threads, the
same rows, so the comparison with the one file's ``migrate`` in the same run is like for
like), then runs ``checkpoint-assets migrate --source DIR`` through the console script
with a fresh Dagster home and target, and the partitions page's GraphQL query against the
home it left. The files are cached beside the corpus (benchmarks/.cache/).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

DEFAULT_SOURCES = 200
FLEET_MAX_X_MIGRATE = 1.3


def ensure_fleet(corpus: Path, sources: int, directory: Path) -> Path:
    """A directory of ``sources`` SQLite files holding ``corpus``'s threads between them
    (thread i in file i mod ``sources``), cached; built with SQLite's INSERT .. SELECT."""
    fleet = directory / f"fleet-{sources}-of-{corpus.stem}"
    if fleet.is_dir():
        return fleet
    partial = fleet.with_name(f".{fleet.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    print(f"cutting {corpus.name} into {sources} files -> {fleet}", flush=True)
    with sqlite3.connect(f"file:{corpus}?mode=ro", uri=True) as base:
        schema = [sql for (sql,) in base.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN "
            "('checkpoints', 'writes')")]
    for n in range(sources):
        path = partial / f"source-{n:04d}.sqlite"
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            for statement in schema:
                conn.execute(statement)
            conn.execute("ATTACH DATABASE ? AS base", (f"file:{corpus}?mode=ro",))
            conn.execute("CREATE TEMP TABLE mine AS SELECT thread_id FROM (SELECT thread_id, "
                         "row_number() OVER (ORDER BY thread_id) - 1 AS place FROM (SELECT "
                         "DISTINCT thread_id FROM base.checkpoints)) WHERE place % ? = ?",
                         (sources, n))
            for table in ("checkpoints", "writes"):
                conn.execute(f"INSERT INTO main.{table} SELECT * FROM base.{table} "
                             "WHERE thread_id IN (SELECT thread_id FROM temp.mine)")
            conn.commit()
            conn.execute("PRAGMA journal_mode = WAL")  # as SqliteSaver leaves its files
        finally:
            conn.close()
    os.replace(partial, fleet)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return fleet


def step_fleet(fleet_dir: str, dsn: str, workdir: str) -> dict[str, Any]:
    """``checkpoint-assets migrate --source DIR`` via the console script, a fresh Dagster
    home and target: its wall time, runs and checks."""
    from benchmarks.run import migrate_breakdown, run_console_script

    work = Path(workdir)
    seconds, result = run_console_script(
        work, dsn, ["migrate", "--source", fleet_dir, "--export-dir", str(work / "exports")],
        {"DAGSTER_HOME": str(work / "dagster_home")})
    files = sorted(Path(fleet_dir).glob("*.sqlite"))
    checkpoints = 0
    for path in files:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            checkpoints += conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    runs = result["runs"]
    return {"seconds": seconds, "sources": len(files), "checkpoints": checkpoints,
            "batch_runs": sum(r["step"] == "batch" for r in runs),
            "in_process_seconds": result["seconds"],
            "breakdown_seconds": migrate_breakdown(seconds, result["seconds"], runs),
            "all_checks_passed": result["ok"]}


def fleet_targets(migrate: dict[str, Any] | None, fleet: dict[str, Any],
                  ui: dict[str, Any] | None) -> list[tuple[str, float | None, str, bool]]:
    """(target, value, limit, met) of the fleet step against the one file's migrate."""
    out = []
    ratio = fleet["seconds"] / migrate["seconds"] if migrate else None
    out.append((f"{fleet['sources']} sources migrate <= {FLEET_MAX_X_MIGRATE}x one file's",
                ratio, f"<= {FLEET_MAX_X_MIGRATE}",
                ratio is not None and ratio <= FLEET_MAX_X_MIGRATE and fleet["all_checks_passed"]))
    if ui is not None:
        query = min(ui["partitions_page_query_seconds"])
        out.append(("fleet partitions page GraphQL query <= 3 s", query, "<= 3.0", query <= 3.0))
    return out
