"""The code location ``checkpoint_assets``: the one place that wires assets and resources.

``dagster dev``, ``dagster definitions validate`` and ``checkpoint-assets migrate`` all load
these definitions, so the UI and the command line share asset keys, checks and history.
Staging mode (CHECKPOINT_ASSETS_STAGING_SCHEMA set) adds the publish asset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from checkpoint_assets.assets import CORE_ASSETS, STAGING_ASSETS
from checkpoint_assets.partitions import STAGING_SCHEMA_ENV
from checkpoint_assets.resources import build_resources


def build_definitions(
    resources: Mapping[str, Any] | None = None, *, staging: bool | None = None
) -> dg.Definitions:
    """The definitions, with ``resources`` (default: from the environment).

    ``staging`` None means: staging mode if CHECKPOINT_ASSETS_STAGING_SCHEMA is set.
    """
    if staging is None:
        staging = bool(os.environ.get(STAGING_SCHEMA_ENV))
    assets = [*CORE_ASSETS, *(STAGING_ASSETS if staging else ())]
    return dg.Definitions(assets=assets, resources=dict(resources or build_resources()))


defs = build_definitions()
