"""Tie check results to what they checked, and keep an old verification from looking current.

Dagster counts a check result for a materialization only when the result names it
(``target_materialization_data``); its per-partition check view and the asset graph read
that tie. The verification's checks describe the batches as they were when it ran: once a
batch is loaded again or fails, or the export is re-taken, they are recorded as failed
("out of date") until the verification has run again. The out-of-date result says what
happens next: the verification runs again by itself (its automation condition) only once no
batch partition is failed, missing or in progress, so while one is, it says to backfill
those first. It keeps the mismatches of the check's last real result (and names its run),
so a real mismatch is never hidden behind ``mismatch_count 0``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from checkpoint_assets.assets.dagster_metadata import check_metadata, severity
from checkpoint_assets.partitions import (
    AUTOMATION_SENSOR,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_SPECS,
    batch_partitions,
)

OUT_OF_DATE = "Out of date"  # how the verification's checks start while they are stale
# What an out-of-date result says while batches block the automation condition.
BACKFILL_FIRST = "backfill the failed and missing partitions first"
RUNS_BY_ITSELF = "runs again by itself"
# Metadata of an out-of-date result: the last real result it stands in front of.
LAST_RESULT_METADATA = "last_result"
LAST_RESULT_RUN_METADATA = "last_result_run"
_NAMED_KEYS = 5


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


def blocking_partitions(instance: dg.DagsterInstance, *, loaded: Collection[str] = (),
                        failing: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """(failed or missing, in progress): the current batch partitions that keep the
    verification's automation condition from running it. ``loaded`` and ``failing`` are
    the calling run's own partitions (still "in progress" to the instance) that it loaded,
    or failed for good."""
    keys = sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    if not keys:
        return [], []
    statuses = instance.get_status_by_partition(BATCHES_ASSET, keys, batch_partitions) or {}
    blocked, running = [], []
    for key in keys:
        status = statuses.get(key)
        if key in failing:
            blocked.append(key)
        elif key in loaded:
            continue
        elif status is None or status.value in ("FAILED", "MISSING"):
            blocked.append(key)
        elif status.value == "IN_PROGRESS":
            running.append(key)
    return blocked, running


def what_happens_next(blocked: list[str], running: list[str]) -> str:
    """The out-of-date text's second half: what will actually make the verification
    current again."""
    if blocked:
        named = ", ".join(blocked[:_NAMED_KEYS]) + (", ..." if len(blocked) > _NAMED_KEYS
                                                    else "")
        return (f"{len(blocked)} batch partition(s) of {BATCHES_ASSET.to_user_string()} "
                f"failed or missing ({named}): {BACKFILL_FIRST} (asset page -> Materialize "
                "-> Failed and missing -> Launch; a failed one's run says what to fix); "
                f"then {VERIFICATION_ASSET.to_user_string()} {RUNS_BY_ITSELF} "
                f"(automation condition, sensor {AUTOMATION_SENSOR}).")
    if running:
        return (f"{len(running)} batch partition(s) still loading; once they are done, "
                f"{VERIFICATION_ASSET.to_user_string()} {RUNS_BY_ITSELF} (automation "
                f"condition, sensor {AUTOMATION_SENSOR}), or materialize it.")
    return (f"{VERIFICATION_ASSET.to_user_string()} {RUNS_BY_ITSELF} (automation condition, "
            f"sensor {AUTOMATION_SENSOR}), or materialize it.")


def _last_result(instance: dg.DagsterInstance, check: dg.AssetCheckKey) -> dict[str, Any]:
    """The check's last real result (an out-of-date result carries it on): passed or
    failed, its run, its mismatches."""
    record = instance.get_latest_asset_check_evaluation_record(check)
    evaluation = record.event.asset_check_evaluation if record and record.event else None
    if evaluation is None:
        return {}
    metadata = evaluation.metadata

    def raw(name: str) -> Any:
        return getattr(metadata.get(name), "value", None)

    if (evaluation.description or "").startswith(OUT_OF_DATE):
        return {"result": raw(LAST_RESULT_METADATA), "run": raw(LAST_RESULT_RUN_METADATA),
                "count": raw("mismatch_count"), "keys": raw("mismatch_keys")}
    return {"result": "passed" if evaluation.passed else "failed", "run": record.run_id,
            "count": raw("mismatch_count"), "keys": raw("mismatch_keys")}


def verification_out_of_date(instance: dg.DagsterInstance, change: str, *,
                             loaded: Collection[str] = (),
                             failing: Collection[str] = ()) -> Iterator[dg.AssetCheckEvaluation]:
    """A failed result for each of the verification's checks, saying what changed since it
    ran and what happens next (see :func:`blocking_partitions` for ``loaded`` and
    ``failing``), with the mismatches of its last real result; nothing when the
    verification never ran (its checks show as not run)."""
    target = latest_materialization(instance, VERIFICATION_ASSET)
    if target is None:
        return
    next_step = what_happens_next(*blocking_partitions(instance, loaded=loaded,
                                                       failing=failing))
    for spec in VERIFICATION_CHECK_SPECS:
        last = _last_result(instance, dg.AssetCheckKey(VERIFICATION_ASSET, spec.name))
        keys = last.get("keys") if isinstance(last.get("keys"), list) else []
        count = last.get("count") if isinstance(last.get("count"), int) else len(keys)
        run = str(last.get("run") or "")
        kept = (f" The mismatches shown are those of its last result ({last.get('result')}"
                + (f", run {run[:8]}" if run else "") + ")." if last.get("result") else "")
        yield dg.AssetCheckEvaluation(
            asset_key=VERIFICATION_ASSET, check_name=spec.name, passed=False,
            severity=severity(spec), blocking=False, target_materialization_data=target,
            description=f"{OUT_OF_DATE}: {change} after this verification ran; "
                        f"{next_step}{kept}",
            metadata=check_metadata(
                expected=spec.description, actual=f"not checked since: {change}",
                mismatches=keys, mismatch_count=count,
                **{LAST_RESULT_METADATA: str(last.get("result") or "none"),
                   LAST_RESULT_RUN_METADATA: run}))
