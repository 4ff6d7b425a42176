"""What the instance records about a migration: check results, partition statuses, evidence.

Reads (never runs) the latest evaluation of every asset check as :class:`CheckRow`s and
renders them as a table (``checkpoint-assets checks``, and the end of ``migrate``'s summary),
the status of every batch partition, and the evidence report a verification run carried.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from checkpoint_assets.assets import STAGING_ASSETS
from checkpoint_assets.assets.imported_batches import (
    BATCH_CHECK,
    TARGET_IDENTITY_METADATA,
)
from checkpoint_assets.assets.verification import EVIDENCE_METADATA
from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.engine.verify.check_table import COUNT_MATCH
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    CUTOVER_ASSET,
    EXPORT_ASSET,
    GROUP_NAME,
    LIVE_GROUP_NAME,
    PUBLISH_ASSET,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_GROUP_NAME,
    ROLLBACK_PARTITIONS_NAME,
    ROLLBACK_VERIFICATION_ASSET,
    SYNC_ASSET,
    VERIFICATION_ASSET,
    batch_partitions,
    batches_with_a_passed_check,
)

# A command's runs are looked for in check records created after its start, less this
# margin (the records' timestamps come from the storage's clock).
CLOCK_MARGIN_SECONDS = 60.0


@dataclass
class CheckRow:
    """The latest evaluation of one asset check, as a row of the checks table.

    ``passed`` None: never evaluated (or in progress). ``ok``: passed, or a failed
    warning (nothing to block on). ``partitions``: for the per-batch check, how many
    current batches passed. ``summary``: expected / actual / mismatches, short.
    """

    asset: str
    check: str
    passed: bool | None = None
    severity: str = "ERROR"  # or WARN
    ok: bool = False
    partitions: str = ""
    summary: str = "never evaluated"
    when: str = ""  # UTC, ISO 8601
    run_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-able row."""
        return asdict(self)


def partition_statuses(instance: dg.DagsterInstance) -> dict[str, str]:
    """Every current batch partition and its status: MATERIALIZED, FAILED, IN_PROGRESS or
    MISSING (never materialized)."""
    keys = sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    if not keys:
        return {}
    statuses = instance.get_status_by_partition(BATCHES_ASSET, keys, batch_partitions) or {}
    return {key: statuses[key].value if statuses.get(key) else "MISSING" for key in keys}


def partitions_without_a_passed_check(instance: dg.DagsterInstance) -> set[str]:
    """Current batch partitions whose latest materialization has no passed
    ``batch_matches_export`` result.

    A run stopped between a batch's materialization and its check result (Ctrl-C lands
    there now and then: Dagster delivers it as the step resumes) leaves the partition
    MATERIALIZED but unproven; ``backfill`` loads and checks such a batch again (safe: its
    rows are already there and are compared).
    """
    current = set(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    return current - batches_with_a_passed_check(instance, BATCH_CHECK.key)


def partitions_loaded_elsewhere(instance: dg.DagsterInstance,
                                identity: str | None) -> set[str]:
    """Current batch partitions whose latest materialization did not load them into the
    target with ``identity`` (Target.identity; None: the target has no tables).

    A target database dropped and created again under the same name has another identity,
    so ``backfill`` loads those batches again instead of trusting the record of a load into
    a database that is gone. A materialization that names no identity (recorded before
    issue 21) counts as loaded elsewhere: loading it again is safe (rows already there are
    compared, not duplicated). Partitions never materialized are left out (MISSING already).
    """
    out = set()
    for key in sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME)):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=BATCHES_ASSET, asset_partitions=[key]),
            limit=1).records
        if not records or records[0].asset_materialization is None:
            continue
        recorded = records[0].asset_materialization.metadata.get(TARGET_IDENTITY_METADATA)
        if identity is None or recorded is None or recorded.value != identity:
            out.add(key)
    return out


def verification_evidence(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The evidence report (Markdown) that this run's materialization of the verification
    asset carries, or None if the run did not materialize it."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in reversed(records):
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == VERIFICATION_ASSET \
                and EVIDENCE_METADATA in materialization.metadata:
            return str(materialization.metadata[EVIDENCE_METADATA].value)
    return None


def declared_check_keys(defs: dg.Definitions | None = None, *,
                        group: str = GROUP_NAME) -> list[dg.AssetCheckKey]:
    """Every asset check the definitions declare for ``group`` (the migration's, the live
    migration's or the rollback's), in lineage order."""
    defs = defs or build_definitions()
    order = [EXPORT_ASSET, BATCHES_ASSET, VERIFICATION_ASSET, PUBLISH_ASSET,
             SYNC_ASSET, CUTOVER_ASSET, ROLLBACK_EXPORT_ASSET, RESTORED_BATCHES_ASSET, ROLLBACK_VERIFICATION_ASSET]
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.asset_check_keys if graph.get(k.asset_key).group_name == group]
    return sorted(keys, key=lambda k: (order.index(k.asset_key) if k.asset_key in order
                                       else len(order), k.name))


def latest_check_evaluations(
    instance: dg.DagsterInstance, defs: dg.Definitions | None = None, *,
    run_ids: Collection[str] | None = None, since: float = 0.0,
) -> list[CheckRow]:
    """The latest evaluation of every declared asset check, one CheckRow each. The
    publish check is listed when the definitions are in staging mode
    or the instance has a result for it; the live migration's checks (sync, cutover) and
    the rollback group's when the instance has a result for them (one ran).

    With ``run_ids`` (the runs of one command, started at or after ``since``, a Unix time),
    each check's row is its latest evaluation in those runs; a check or batch those runs did
    not evaluate (a backfill's batches loaded earlier) shows its latest finished
    evaluation, never another command's evaluation still in progress.
    """
    defs = defs or build_definitions()  # built once: both groups' keys come from it
    keys = declared_check_keys(defs)
    publish_keys = sorted((key for asset in STAGING_ASSETS for key in asset.check_keys),
                          key=lambda k: k.name)
    live_keys = declared_check_keys(defs, group=LIVE_GROUP_NAME)
    rollback_keys = declared_check_keys(defs, group=ROLLBACK_GROUP_NAME)
    for key in (*publish_keys, *live_keys, *rollback_keys):
        if key not in keys and instance.get_latest_asset_check_evaluation_record(key):
            keys.append(key)
    evaluations = _Evaluations(instance, run_ids, since)
    return [_check_row(instance, key, evaluations) for key in keys]


_FINISHED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
_HISTORY_PAGE = 500


class _Evaluations:
    """Which evaluation of a check a row shows: the instance's latest, or, given the run ids
    of one command, that command's own."""

    def __init__(self, instance: dg.DagsterInstance, run_ids: Collection[str] | None,
                 since: float) -> None:
        self.instance = instance
        self.storage = instance.event_log_storage
        self.run_ids = None if run_ids is None else set(run_ids)
        self.since = since
        self._own: dict[dg.AssetCheckKey, dict[str | None, AssetCheckExecutionRecord]] = {}

    def record(self, key: dg.AssetCheckKey,
               partition: str | None = None) -> AssetCheckExecutionRecord | None:
        """The evaluation of ``key`` (for one partition of a partitioned check) to show."""
        partitions = PartitionKeyFilter(key=partition) if partition else None
        if self.run_ids is None:
            return self.storage.get_latest_asset_check_execution_by_key(
                [key], partition_filter=partitions).get(key)
        own = self._own_records(key).get(partition)
        if own is not None:
            return own
        finished = self.storage.get_asset_check_execution_history(
            key, limit=1, status=_FINISHED, partition_filter=partitions)
        return finished[0] if finished else None

    def passed_partitions(self, key: dg.AssetCheckKey,
                          partitions_name: str = BATCH_PARTITIONS_NAME) -> set[str]:
        """The current partitions (of ``partitions_name``) of ``key`` whose evaluation to
        show passed.

        Without run ids: :func:`batches_with_a_passed_check` (one query). With them: the
        command's own result where it evaluated the partition, else the same current
        passed result; only a partition whose latest evaluation is still in progress
        (another command) is looked up on its own, for its latest finished one.
        """
        passed = batches_with_a_passed_check(self.instance, key, partitions_name)
        if self.run_ids is None:
            return passed
        own = self._own_records(key)
        in_progress = {info.partition_key for info in
                       self.storage.get_asset_check_partition_info([key])
                       if info.latest_execution_status
                       == AssetCheckExecutionRecordStatus.PLANNED}
        current = set(self.instance.get_dynamic_partitions(partitions_name))
        result = set()
        for partition in current:
            record = own.get(partition)
            if record is None and partition in in_progress:
                record = self.record(key, partition)
            if record is not None:
                if record.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
                    result.add(partition)
            elif partition in passed:
                result.add(partition)
        return result

    def _own_records(self, key: dg.AssetCheckKey
                     ) -> dict[str | None, AssetCheckExecutionRecord]:
        """{partition: latest record of the command's runs}, and under None the latest of
        all; reads the check's history back to the command's start."""
        if key not in self._own:
            own: dict[str | None, AssetCheckExecutionRecord] = {}
            cursor = None
            while True:
                page = self.storage.get_asset_check_execution_history(
                    key, limit=_HISTORY_PAGE, cursor=cursor)
                for record in page:
                    if record.run_id in (self.run_ids or ()):
                        own.setdefault(record.partition, record)
                        own.setdefault(None, record)  # the newest of any partition
                if len(page) < _HISTORY_PAGE or page[-1].create_timestamp < self.since:
                    break
                cursor = page[-1].id
            self._own[key] = own
        return self._own[key]


# The partitioned assets and the name of their dynamic partitions.
PARTITIONS_OF = {BATCHES_ASSET: BATCH_PARTITIONS_NAME,
                 RESTORED_BATCHES_ASSET: ROLLBACK_PARTITIONS_NAME}


def _check_row(instance: dg.DagsterInstance, key: dg.AssetCheckKey,
               evaluations: _Evaluations) -> CheckRow:
    row = CheckRow(asset=key.asset_key.to_user_string(), check=key.name)
    record = evaluations.record(key)
    prefix = ""
    if key.asset_key in PARTITIONS_OF:
        # Per-batch check: it passes when the latest result of every current batch passed;
        # otherwise show the first batch that did not pass.
        partitions_name = PARTITIONS_OF[key.asset_key]
        current = set(instance.get_dynamic_partitions(partitions_name))
        passed = evaluations.passed_partitions(key, partitions_name)
        row.partitions = f"{len(current & passed)}/{len(current)} passed"
        failing = sorted(current - passed)
        if failing:
            prefix = f"{failing[0]}: "
            record = evaluations.record(key, failing[0])
            if record is None:
                row.passed, row.summary = False, f"{failing[0]}: never evaluated"
                return row
            if record.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
                # A pass of an earlier load: the latest load was never checked.
                row.passed, row.summary = False, (
                    f"{failing[0]}: its latest load has no check result (backfill loads "
                    "and checks it again)")
                return row
    if record is None:
        return row
    row.when = dt.datetime.fromtimestamp(record.create_timestamp, dt.UTC).isoformat(
        timespec="seconds")
    row.run_id = record.run_id
    row.passed = record.status == AssetCheckExecutionRecordStatus.SUCCEEDED
    if record.status == AssetCheckExecutionRecordStatus.PLANNED:
        row.passed, row.summary = None, "in progress"
    evaluation = record.event.asset_check_evaluation if record.event else None
    if evaluation is not None:
        row.summary = prefix + _summary(key.name, evaluation.metadata)
        row.severity = evaluation.severity.value
    row.ok = row.passed is True or (row.passed is False and row.severity == "WARN")
    return row


def _summary(check: str, metadata: dict[str, Any]) -> str:
    """expected / actual / mismatches of a result of ``check``, short enough for a table
    cell."""
    def raw(name: str) -> Any:
        value = metadata.get(name)
        return getattr(value, "value", value)

    expected, actual, count = raw("expected"), raw("actual"), raw("mismatch_count")
    counts = raw("counts")
    if check == COUNT_MATCH and isinstance(counts, dict):
        text = "; ".join(
            f"{table}: sqlite {counts.get('sqlite', {}).get(table, '-')}, export "
            f"{counts['export'].get(table, '-')}, postgres {counts['target'].get(table, '-')}"
            for table in ("checkpoints", "checkpoint_writes"))
    elif check == BATCH_MATCHES_EXPORT and isinstance(expected, dict) \
            and isinstance(actual, dict):
        same = expected == actual
        text = (f"counts {_compact(actual['counts'])}, digest {str(actual['digest'])[:12]}"
                + (" (= export)" if same else f"; export: {_compact(expected['counts'])}, "
                   f"digest {str(expected['digest'])[:12]}"))
    elif expected == actual:
        text = f"expected = actual = {_compact(actual)}"
    else:
        text = f"expected {_compact(expected)}; actual {_compact(actual)}"
    if count:
        keys = raw("mismatch_keys") or []
        text += f"; {count} mismatch(es)" + (f", first {_compact(keys[0], 80)}" if keys else "")
    return text


def _compact(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           separators=(",", ":"))
    if len(text) <= limit:
        return text
    if isinstance(value, dict):
        return f"{{{len(value)} entries}}"
    return text[:limit - 3] + "..."


TABLE_COLUMNS = ("asset", "check", "passed", "severity", "partitions", "when", "run_id",
                 "summary")


def render_check_rows(rows: list[CheckRow]) -> str:
    """The check rows as a plain-text table."""
    if not rows:
        return "(no asset checks)"
    cells = [[_cell(column, getattr(row, column)) for column in TABLE_COLUMNS] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(header: str, value: Any) -> str:
    if header == "passed":
        return {True: "PASS", False: "FAIL", None: "-"}[value]
    if header == "run_id" and value:
        return str(value)[:8]
    return str(value)
