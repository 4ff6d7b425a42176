"""The fleet file: which SQLite files migrate together into one PostgreSQL, and how.

Written by ``checkpoint-assets migrate`` when it is given several sources (``fleet.json``
in the fleet's export directory) and read by every later command and by the Dagster assets
(``CHECKPOINT_ASSETS_FLEET``), so a backfill, a sync or a rollback months later finds the
same labels, exports and thread names. One member per source::

    {"format": "checkpoint-assets-fleet", "version": 1,
     "members": [{"label": "replica-1", "source": "/data/replica-1.sqlite",
                  "export": "/exports/replica-1.export",
                  "thread_names": {"prefix": "replica-1:"}}, ...]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.core.private_files import write_private_text
from checkpoint_assets.engine.core.thread_names import (
    KEPT,
    ThreadNames,
    prefix_for,
    read_thread_map,
)
from checkpoint_assets.engine.fleet.sources import expand_sources, source_labels

FLEET_FORMAT = "checkpoint-assets-fleet"
FLEET_VERSION = 1
FLEET_FILE_NAME = "fleet.json"
EXPORT_SUFFIX = ".export"


@dataclass(frozen=True)
class FleetMember:
    """One source of a fleet: its label, its SQLite file, its export and what its threads
    are called in the target."""

    label: str
    source: Path
    export: Path
    names: ThreadNames = KEPT

    def to_json(self) -> dict[str, Any]:
        """The fleet file's form."""
        return {"label": self.label, "source": str(self.source), "export": str(self.export),
                "thread_names": self.names.to_json()}


@dataclass(frozen=True)
class Fleet:
    """The sources of one migration into one PostgreSQL, in the order given."""

    members: tuple[FleetMember, ...]
    path: Path | None = None  # the fleet file it was read from or written to

    def member(self, label: str) -> FleetMember:
        """The member labelled ``label``; MigrationError naming the labels there are."""
        for member in self.members:
            if member.label == label:
                return member
        raise MigrationError(
            f"The fleet {self.path or ''} has no source labelled {label!r} (it has "
            f"{', '.join(m.label for m in self.members[:20])}).",
            "Use a label the fleet's plan lists (checkpoint-assets migrate prints them).")

    @property
    def paths(self) -> dict[str, str]:
        """{label: source file} (how messages name a member)."""
        return {m.label: str(m.source) for m in self.members}

    def to_json(self) -> dict[str, Any]:
        """The fleet file's content."""
        return {"format": FLEET_FORMAT, "version": FLEET_VERSION,
                "members": [m.to_json() for m in self.members]}


def plan_fleet(sources: Sequence[str | Path], export_dir: Path, *,
               thread_prefix: str | None = None, thread_map: Path | None = None) -> Fleet:
    """The fleet of ``sources`` (files, @LIST, globs, directories; see sources.py): a label
    per file, its export in ``export_dir`` (``<label>.export``), and its thread names (the
    ``thread_prefix`` template, or its entry in the ``thread_map`` file, by label or file
    name). Nothing is read from the sources here."""
    if thread_prefix and thread_map:
        raise MigrationError("--thread-prefix and --thread-map were both given.",
                             "Choose one way to tell the sources' threads apart.")
    # Absolute (links kept, as given): a later command may run from another directory.
    paths = [Path(os.path.abspath(path)) for path in expand_sources(sources)]
    export_dir = Path(os.path.abspath(export_dir))
    labels = source_labels(paths)
    renames = read_thread_map(thread_map) if thread_map else {}
    known = set(labels) | {p.name for p in paths}
    unknown = sorted(set(renames) - known)
    if unknown:
        raise MigrationError(
            f"The thread mapping {thread_map} names source(s) the fleet does not have: "
            f"{', '.join(repr(u) for u in unknown[:10])} (its labels: "
            f"{', '.join(labels[:20])}).",
            "Key the mapping by a source's label or file name.")
    members = []
    for label, path in zip(labels, paths):
        if thread_prefix:
            names = ThreadNames(prefix=prefix_for(thread_prefix, label))
        else:
            names = ThreadNames(renamed=renames.get(label) or renames.get(path.name) or {})
        members.append(FleetMember(label, path, export_dir / f"{label}{EXPORT_SUFFIX}", names))
    return Fleet(tuple(members))


def write_fleet(fleet: Fleet, path: Path) -> Fleet:
    """Write the fleet file at ``path`` (owner-only) and return the fleet with its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_private_text(path, json.dumps(fleet.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise MigrationError(f"Cannot write the fleet file {path}: {exc.strerror or exc}.",
                             "Pass --export-dir in a writable directory.") from None
    return Fleet(fleet.members, path)


def read_fleet(path: Path) -> Fleet:
    """The fleet file at ``path``; MigrationError naming it when it is missing or is not
    one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MigrationError(f"Cannot read the fleet file {path}: {exc.strerror or exc}.",
                             "Run checkpoint-assets migrate with every --source first; it "
                             "writes the fleet file.") from None
    except ValueError:
        value = None
    if not isinstance(value, Mapping) or value.get("format") != FLEET_FORMAT:
        raise MigrationError(f"{path} is not a fleet file of this tool.",
                             "Point --fleet (CHECKPOINT_ASSETS_FLEET) at the fleet.json "
                             "checkpoint-assets migrate wrote.")
    members = tuple(
        FleetMember(m["label"], Path(m["source"]), Path(m["export"]),
                    ThreadNames.from_json(m.get("thread_names")))
        for m in value.get("members") or [])
    return Fleet(members, Path(path))
