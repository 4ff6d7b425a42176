"""Files that hold users' data (reports, caches) are created readable by the owner only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OWNER_ONLY = 0o600


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (the directory is created 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    os.fchmod(fd, OWNER_ONLY)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, mode 0600."""
    write_private_text(path, json.dumps(data, indent=2, default=str))
