"""How long the cutover's scan of PostgreSQL takes (engine/verify/unchanged.py).

Run from the repository root against a migrated target (for instance the database a
``benchmarks.run --steps live`` or ``migrate`` run left, or one of your own)::

    .venv/bin/python -m benchmarks.unchanged_scan --dsn postgresql://... [--repeat 3]

Every thread in the target is taken as certified with its current rows and a mark taken
now, then ``threads_unchanged_since`` scans the three tables (at once, one snapshot);
prints each run's seconds and how many threads it found unchanged (all of them, when
nothing wrote meanwhile). Nothing is written.
"""

from __future__ import annotations

import argparse
import time

from psycopg import sql

from checkpoint_assets.engine.load.target import TABLES, Target
from checkpoint_assets.engine.verify.unchanged import mark_now, threads_unchanged_since


def current_rows(target: Target) -> dict[str, tuple[int, int, int]]:
    """Each thread's rows per table now (TABLES order)."""
    rows: dict[str, list[int]] = {}
    with target.connect() as conn:
        for position, table in enumerate(TABLES):
            query = sql.SQL("SELECT thread_id, count(*) FROM {} GROUP BY thread_id").format(
                sql.Identifier(table))
            for thread_id, count in conn.execute(query):
                rows.setdefault(thread_id, [0, 0, 0])[position] = count
    return {tid: (counts[0], counts[1], counts[2]) for tid, counts in rows.items()}


def main(argv: list[str] | None = None) -> int:
    """Time the scan ``--repeat`` times; print seconds and threads found unchanged."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    target = Target(args.dsn)
    mark = mark_now(target)
    certified = {tid: (counts, mark) for tid, counts in current_rows(target).items()}
    for _ in range(args.repeat):
        started = time.perf_counter()
        scan = threads_unchanged_since(target, certified)
        print(f"{time.perf_counter() - started:.3f} s: {len(scan.unchanged)} of "
              f"{len(certified)} threads unchanged; rows {scan.table_rows}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
