"""Tie check results to what they checked, and keep an old verification from looking current.

Dagster counts a check result for a materialization only when the result names it
(``target_materialization_data``); its per-partition check view and the asset graph read
that tie. The verification's checks describe the batches as they were when it ran: once a
batch is loaded again or fails, or the export is re-taken, they are recorded as failed
("out of date") until the verification has run again, which its automation condition
makes happen by itself under ``dagster dev``.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from checkpoint_assets.assets.dagster_metadata import check_metadata, severity
from checkpoint_assets.partitions import VERIFICATION_ASSET, VERIFICATION_CHECK_SPECS

OUT_OF_DATE = "Out of date"  # how the verification's checks start while they are stale


def latest_materialization(
    instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str | None = None
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The latest materialization of ``asset`` (of one partition), as a check's target."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset,
                              asset_partitions=[partition] if partition else None),
        limit=1).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp)


def verification_out_of_date(instance: dg.DagsterInstance,
                             change: str) -> Iterator[dg.AssetCheckEvaluation]:
    """A failed result for each of the verification's checks, saying what changed since it
    ran; nothing when the verification never ran (its checks show as not run)."""
    target = latest_materialization(instance, VERIFICATION_ASSET)
    if target is None:
        return
    description = (f"{OUT_OF_DATE}: {change} after this verification ran; "
                   "migration_verification runs again by itself (automation condition), "
                   "or materialize it.")
    for spec in VERIFICATION_CHECK_SPECS:
        yield dg.AssetCheckEvaluation(
            asset_key=VERIFICATION_ASSET, check_name=spec.name, passed=False,
            severity=severity(spec), description=description, blocking=False,
            target_materialization_data=target,
            metadata=check_metadata(expected=spec.description,
                                    actual=f"not checked since: {change}"))
