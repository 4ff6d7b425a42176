"""The code location ``checkpoint_assets``: the one place that wires assets and resources.

``dagster dev``, ``dagster definitions validate`` and ``checkpoint-assets migrate`` all load
these definitions, so the UI and the command line share asset keys, checks and history:
the migration (export, batches, verification), the live migration (sync, cutover) and the
way back. Staging mode (CHECKPOINT_ASSETS_STAGING_SCHEMA set) adds the publish asset.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from checkpoint_assets.assets import CORE_ASSETS, STAGING_ASSETS
from checkpoint_assets.assets.live import LIVE_ASSETS
from checkpoint_assets.assets.rollback import ROLLBACK_ASSETS
from checkpoint_assets.partitions import (
    AUTOMATION_INTERVAL_SECONDS,
    AUTOMATION_SENSOR,
    ROLLBACK_VERIFICATION_ASSET,
    VERIFICATION_ASSET,
)
from checkpoint_assets.resources import build_resources
from checkpoint_assets.settings import Settings
from checkpoint_assets.sync_sensor import (
    source_changed_sync,
    sync_batches_job,
    sync_job,
)

# Runs the verification again by itself when batches change (its automation condition).
# Running by default: under `dagster dev` nobody has to remember to switch it on, and a
# stale verification never waits for a click. Stop it on the Automation page if needed.
verification_automation = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    # The way back's verification follows its batches the same way.
    target=dg.AssetSelection.assets(VERIFICATION_ASSET, ROLLBACK_VERIFICATION_ASSET),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description="Materializes migration_verification (and rollback_verification) once "
                "their batches were loaded after their last run, as soon as none is "
                "missing or in progress: backfill failed and missing partitions first.",
)


def build_definitions(
    resources: Mapping[str, Any] | None = None, *, staging: bool | None = None
) -> dg.Definitions:
    """The definitions, with ``resources`` (default: from the environment).

    ``staging`` None means: staging mode if CHECKPOINT_ASSETS_STAGING_SCHEMA is set.
    """
    if staging is None:
        staging = Settings.from_env().staging
    assets = [*CORE_ASSETS, *(STAGING_ASSETS if staging else ()), *LIVE_ASSETS,
              *ROLLBACK_ASSETS]
    with warnings.catch_warnings():  # code references are Beta in Dagster 1.13
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        # The UI links each asset to its source file and line.
        assets = dg.with_source_code_references(assets)
    return dg.Definitions(
        assets=assets,
        sensors=[verification_automation, source_changed_sync],
        jobs=[sync_job, sync_batches_job],
        resources=dict(resources or build_resources()))


defs = build_definitions()
