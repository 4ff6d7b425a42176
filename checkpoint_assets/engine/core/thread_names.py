"""What a source's thread ids are called in the target: kept, prefixed, or renamed.

A fleet of SQLite files often reuses thread ids (``"1"``, a user id). PostgreSQL holds one
thread per id, so two files with the same id would merge two conversations. The user
chooses how the ids are told apart: a prefix per source (``--thread-prefix "{source}:"``)
or a mapping file naming the new id of each thread to rename. The names are applied where
the source is read (every row's ``thread_id``: checkpoints, writes, and so the target's
blobs and parent links), recorded in the export header, and reversed by the way back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from checkpoint_assets.engine.core.errors import MigrationError

SOURCE_PLACEHOLDER = "{source}"


@dataclass(frozen=True)
class ThreadNames:
    """A source's thread id -> the target's: ``prefix`` + id, or ``renamed`` (the ids it
    names; every other id is kept). Both empty: ids are kept (the default)."""

    prefix: str = ""
    renamed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefix and self.renamed:
            raise ValueError("a prefix or a mapping, not both")

    @property
    def kept(self) -> bool:
        """Every id is the same in the target."""
        return not self.prefix and not self.renamed

    @property
    def keeps_order(self) -> bool:
        """Sorting target ids sorts the source ids the same way (a prefix, or nothing):
        the source can then be streamed in its own key order."""
        return not self.renamed

    def to_target(self, thread_id: str) -> str:
        """The target's id of the source's ``thread_id``."""
        if self.prefix:
            return self.prefix + thread_id
        return self.renamed.get(thread_id, thread_id)

    def to_source(self, thread_id: str) -> str | None:
        """The source's id of the target's ``thread_id``; None when no source id has it."""
        if self.prefix:
            return thread_id[len(self.prefix):] if thread_id.startswith(self.prefix) else None
        if thread_id in self._reverse:
            return self._reverse[thread_id]
        return None if thread_id in self.renamed else thread_id

    def in_source(self, thread_id: str) -> str:
        """The source's id of the target's ``thread_id``, or ``thread_id`` itself when no
        source id has it (a thread the target's own application wrote)."""
        found = self.to_source(thread_id)
        return thread_id if found is None else found

    @cached_property
    def _reverse(self) -> dict[str, str]:
        """{new id: the source's id} of the renamed threads."""
        return {new: old for old, new in self.renamed.items()}

    def to_json(self) -> dict[str, Any] | None:
        """The export header's form (None when every id is kept)."""
        if self.kept:
            return None
        return {"prefix": self.prefix} if self.prefix else {"renamed": dict(self.renamed)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> ThreadNames:
        """Read :meth:`to_json`'s form (None: ids kept)."""
        if not value:
            return KEPT
        return cls(prefix=str(value.get("prefix") or ""),
                   renamed={str(k): str(v) for k, v in (value.get("renamed") or {}).items()})


KEPT = ThreadNames()


def prefix_for(template: str, label: str) -> str:
    """The prefix of the source labelled ``label``: ``template`` with ``{source}`` replaced
    (``"{source}:"`` -> ``"replica-1:"``). A template without ``{source}`` would give every
    source the same prefix and tell nothing apart: refused."""
    if SOURCE_PLACEHOLDER not in template:
        raise MigrationError(
            f"--thread-prefix {template!r} does not contain {SOURCE_PLACEHOLDER}: every "
            "source would get the same prefix, and their thread ids would still collide.",
            'Use a template such as --thread-prefix "{source}:" (the source\'s label, '
            "shown by the fleet's plan).")
    return template.replace(SOURCE_PLACEHOLDER, label)


def read_thread_map(path: Path) -> dict[str, dict[str, str]]:
    """A mapping file: JSON ``{source label or file name: {old thread id: new id}}``.
    MigrationError naming the file when it cannot be read or has another shape."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise MigrationError(f"Cannot read the thread mapping {path}: {exc.strerror or exc}.",
                             "Pass --thread-map FILE (JSON).") from None
    except ValueError as exc:
        raise MigrationError(f"The thread mapping {path} is not JSON: {exc}.",
                             'Write {"<source label>": {"<old id>": "<new id>"}}.') from None
    if not isinstance(value, dict) or not all(
            isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in m.items()) for m in value.values()):
        raise MigrationError(
            f"The thread mapping {path} is not an object of objects of strings.",
            'Write {"<source label>": {"<old id>": "<new id>"}}.')
    return value
