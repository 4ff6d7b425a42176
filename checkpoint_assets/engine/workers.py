"""How many processes load or compare batches at once."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from checkpoint_assets.engine.errors import MigrationError
from checkpoint_assets.engine.export_file import ExportManifest

WORKERS_ENV = "CHECKPOINT_ASSETS_WORKERS"  # batch loaders (processes) to run at once
# A worker process takes a second or two to start; below this many batches it does not pay.
PARALLEL_MIN_BATCHES = 10


def workers_for(manifest: ExportManifest) -> int:
    """Processes for importing or verifying ``manifest``: CHECKPOINT_ASSETS_WORKERS if set,
    else the default for a multi-core machine once the export is big enough to gain."""
    configured = configured_workers()
    if configured is not None:
        return configured
    return default_workers() if len(manifest.batches) >= PARALLEL_MIN_BATCHES else 1


def configured_workers() -> int | None:
    """CHECKPOINT_ASSETS_WORKERS (at least 1), or None when it is not set."""
    value = os.environ.get(WORKERS_ENV)
    if not value:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise MigrationError(f"{WORKERS_ENV}={value!r} is not a whole number.",
                             "Set it to the number of worker processes (e.g. 2), or unset "
                             "it for the default.") from None


def default_workers() -> int:
    """Batch loaders to run at once: one per core, at most two.

    Each loader spends about two thirds of its time in Python (parsing, converting) and the
    rest waiting for PostgreSQL, so two processes on two cores keep both busy; more only
    queue up behind each other and the server.
    """
    return max(1, min(2, os.cpu_count() or 1))


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started with spawn: clean interpreters that inherit
    no lock held by another thread at fork time (Dagster's, psycopg's)."""
    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("spawn"))
