"""Where the project keeps its files: project root, working directory, Dagster home.

The Dagster home holds the audit trail (runs, materializations, check results), so it must
survive restarts: unless DAGSTER_HOME is set, it is ``<project root>/.dagster_home``, created
with the shipped dagster.yaml (SQLite storage), or with the PostgreSQL-storage variant when
CHECKPOINT_ASSETS_DAGSTER_PG_HOST is set.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from checkpoint_assets.settings import Settings

if TYPE_CHECKING:  # imported where used: the engine's commands start without Dagster
    import dagster as dg

SHIPPED_HOME = Path(__file__).parent / "dagster_home"
SQLITE_INSTANCE_YAML = SHIPPED_HOME / "dagster.yaml"
POSTGRES_INSTANCE_YAML = SHIPPED_HOME / "dagster-postgres.yaml"
# Several hosts sharing one PostgreSQL-backed instance (copied by hand; README).
DISTRIBUTED_INSTANCE_YAML = SHIPPED_HOME / "dagster-distributed.yaml"
HOME_DIR_NAME = ".dagster_home"
WORKDIR_NAME = ".checkpoint_assets"
# Held (flock) while a process creates the home or opens its storage: two commands started at
# once on a fresh home would otherwise both create Dagster's SQLite tables and stamp their
# alembic version twice, which breaks the home for every later command.
HOME_LOCK_NAME = ".checkpoint_assets.lock"
# Held (flock) for the whole of a `migrate` or `backfill`: the batch partitions of a home are
# exactly one export's, so a second migration started meanwhile (another export, another
# target) would replace the partitions the first is loading. The second one waits.
MIGRATION_LOCK_NAME = ".checkpoint_assets.migration.lock"


def project_root(start: Path | None = None) -> Path:
    """The nearest directory (from ``start`` or the cwd, upwards) with this project's
    pyproject.toml or workspace.yaml; the starting directory itself if there is none."""
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / "workspace.yaml").is_file() or (directory / "pyproject.toml").is_file():
            return directory
    return start


def default_export_path(source_path: str | Path, root: Path | None = None) -> Path:
    """Where the export of ``source_path`` goes when no export path is configured."""
    stem = Path(source_path).name
    return project_root(root) / WORKDIR_NAME / "exports" / f"{stem}.export"


def default_fleet_dir(root: Path | None = None) -> Path:
    """Where a fleet's exports and its fleet.json go when no --export-dir is given."""
    return project_root(root) / WORKDIR_NAME / "exports" / "fleet"


def instance_yaml_for_environment() -> Path:
    """The shipped dagster.yaml variant the environment asks for."""
    return (POSTGRES_INSTANCE_YAML if Settings.from_env().dagster_pg_host
            else SQLITE_INSTANCE_YAML)


def ensure_dagster_home(root: Path | None = None) -> Path:
    """Make sure a persistent Dagster home exists, set DAGSTER_HOME to it, and return it.

    - DAGSTER_HOME set: that directory is used. A dagster.yaml is written into it only if
      the directory is new or empty (an existing home is never reconfigured).
    - DAGSTER_HOME unset: ``<project root>/.dagster_home`` is used and DAGSTER_HOME is set
      for this process (and the Dagster processes it starts).
    - The dagster.yaml written is the PostgreSQL-storage variant when
      CHECKPOINT_ASSETS_DAGSTER_PG_HOST is set, else the SQLite one. A home whose dagster.yaml
      is an unmodified copy of the other variant is switched; an edited one is left alone.
    """
    configured = os.environ.get("DAGSTER_HOME")
    home = Path(configured) if configured else project_root(root) / HOME_DIR_NAME
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    with home_lock(home):
        ours = not configured or not any(p.name != HOME_LOCK_NAME for p in home.iterdir())
        wanted = instance_yaml_for_environment()
        current = home / "dagster.yaml"
        if not current.exists():
            if ours:
                shutil.copyfile(wanted, current)
        elif _is_shipped_copy(current) and current.read_bytes() != wanted.read_bytes():
            shutil.copyfile(wanted, current)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold the home's exclusive lock (a lock file in it; released when the process ends,
    however it ends)."""
    with open(home / HOME_LOCK_NAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def one_migration_at_a_time(home: Path, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold the home's migration lock for the block; call ``waiting`` first when another
    process holds it (then wait for it). Released when the process ends, however it ends."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / MIGRATION_LOCK_NAME, "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting()
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def open_project_instance() -> dg.DagsterInstance:
    """The project's persistent Dagster instance, its storage created once.

    Opening an instance creates its storage (tables, alembic version) when the home is new;
    the home's lock makes a second process wait until the first has finished, after which
    it finds the storage complete.
    """
    import dagster as dg

    home = ensure_dagster_home()
    with home_lock(home):
        instance = dg.DagsterInstance.get()
        # Every storage is created here, under the lock, if it is not yet (some lazily).
        _ = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
    return instance


def _is_shipped_copy(path: Path) -> bool:
    data = path.read_bytes()
    return data in (SQLITE_INSTANCE_YAML.read_bytes(), POSTGRES_INSTANCE_YAML.read_bytes())


def initialize_target_pool(instance: dg.DagsterInstance) -> None:
    """Create the target pool's limit row (from the instance's default) if it is missing.

    Dagster creates it lazily, on the first step that claims the pool. Two runs that start
    at once on a fresh PostgreSQL-backed instance then both insert it; the loser's aborted
    transaction fails its whole run (dagster 1.13 retries with an UPDATE inside the aborted
    transaction). Creating the row once, before any batch run starts, removes the race.
    """
    from checkpoint_assets.partitions import TARGET_POOL

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    if TARGET_POOL not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(TARGET_POOL)
