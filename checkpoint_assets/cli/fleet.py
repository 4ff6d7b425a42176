"""Many SQLite files into one PostgreSQL from the command line.

``migrate``, ``backfill`` and ``sync`` take ``--source`` more than once (or ``@LIST``, a
glob, a directory), or ``--fleet fleet.json``: then they work on a fleet. ``migrate``
plans the fleet (a label, an export and thread names per source: fleet.json in
``--export-dir``) and runs the same Dagster assets over it; ``backfill`` and ``sync`` read
the fleet file. A single plain ``--source`` keeps the one-source commands as they were.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.fleet.fleet_file import FLEET_FILE_NAME, Fleet
from checkpoint_assets.engine.fleet.sources import GLOB_CHARACTERS
from checkpoint_assets.engine.operations import fleet as fleet_ops
from checkpoint_assets.project import default_fleet_dir
from checkpoint_assets.settings import FLEET_ENV, SOURCE_ENV, Settings


def wants_fleet(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether the flags name a fleet: --fleet, several --source, a source given as @LIST,
    a glob or a directory, or a way to tell sources' threads apart. Sets ``args.source``
    to the one source otherwise (the one-source commands read it as a path)."""
    sources = args.source or ([settings.source] if settings.source else [])
    if getattr(args, "fleet", None) is None and settings.fleet and not args.source:
        args.fleet = Path(settings.fleet)
    fleet = (args.fleet is not None or len(sources) > 1
             or args.thread_prefix is not None or args.thread_map is not None
             or any(_names_several(str(spec)) for spec in sources))
    if fleet:
        args.sources = sources
        args.source = None
        return True
    if not sources:
        raise MigrationError("No source given.",
                             f"Pass --source DB (env {SOURCE_ENV}), several --source for a "
                             f"fleet, or --fleet fleet.json (env {FLEET_ENV}).")
    args.source = sources[0]
    return False


def _names_several(spec: str) -> bool:
    """A --source value that names files rather than one file: @LIST, a directory, or a
    glob (a file whose name holds glob characters is still one file)."""
    path = Path(spec)
    return spec.startswith("@") or path.is_dir() or (
        bool(GLOB_CHARACTERS & set(spec)) and not path.is_file())


def fleet_of(args: argparse.Namespace, *, plan: bool) -> Fleet:
    """The fleet the flags name: planned from --source (``plan``: migrate writes the fleet
    file), or read from --fleet (or from the fleet file in --export-dir)."""
    export_dir = args.export_dir or default_fleet_dir()
    if plan and args.sources:
        return fleet_ops.plan(fleet_ops.FleetPlanRequest(
            tuple(str(s) for s in args.sources), export_dir,
            thread_prefix=args.thread_prefix, thread_map=args.thread_map))
    return fleet_ops.open_fleet(args.fleet or export_dir / FLEET_FILE_NAME)


def fleet_settings(settings: Settings, fleet: Fleet) -> Settings:
    """The settings of a run over ``fleet`` (its sources replace source and export)."""
    return replace(settings, source=None, export=None, fleet=str(fleet.path))


def fleet_evidence_path(fleet: Fleet) -> Path:
    """Where the fleet's evidence report is written (beside the fleet file)."""
    assert fleet.path is not None
    return fleet.path.with_name(fleet_ops.FLEET_EVIDENCE_NAME)


def plan_text(fleet: Fleet) -> str:
    """The plan, as migrate prints it before it starts: each source's label, file, export
    and thread names."""
    lines = [f"Fleet of {len(fleet.members)} source(s) ({fleet.path}):"]
    for member in fleet.members:
        names = member.names.to_json()
        lines.append(f"  {member.label}: {member.source} -> {member.export}"
                     + (f" (threads {names})" if names else ""))
    return "\n".join(lines)
