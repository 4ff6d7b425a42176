"""Run the migration's assets in-process against a Dagster instance (what the CLI calls).

``checkpoint-assets migrate`` materializes the same assets, with the same checks, that
``dagster dev`` shows, against the same persistent instance: one run for the export, one run
per range of up to BATCHES_PER_RUN consecutive batch partitions, as a UI backfill launches
them (each batch still has its own transaction, materialization and check result, and a
failure stays with its partition), and one run for the verification (plus publish in
staging mode). The runs appear in the UI with the tag
``checkpoint_assets/front_end=cli``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from checkpoint_assets.abandoned_runs import fail_abandoned_runs, process_tag
from checkpoint_assets.assets.batches import (
    BATCH_CHECK,
    CONFLICT_MARKER,
    FAILED_BATCHES_METADATA,
    materialized_partitions,
)
from checkpoint_assets.assets.verification import EVIDENCE_METADATA
from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.engine.errors import Interrupted
from checkpoint_assets.engine.interrupts import stop_requested
from checkpoint_assets.engine.target import scrub
from checkpoint_assets.engine.workers import (
    configured_workers,
    default_workers,
    process_pool,
)
from checkpoint_assets.partitions import (
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    BATCHES_PER_RUN,
    EXPORT_ASSET,
    FRONT_END_TAG,
    LOG_LEVEL_ENV,
    MIGRATION_ID_TAG,
    PUBLISH_ASSET,
    STAGING_SCHEMA_ENV,
    TARGET_DSN_ENV,
    VERIFICATION_ASSET,
    batch_partitions,
)
from checkpoint_assets.project import initialize_target_pool, open_project_instance
from checkpoint_assets.resources import build_resources


def project_instance() -> dg.DagsterInstance:
    """The project's persistent Dagster instance (use it as a context manager).

    DAGSTER_HOME defaults to ``<project root>/.dagster_home``, created with the shipped
    dagster.yaml (PostgreSQL storage when CHECKPOINT_ASSETS_DAGSTER_PG_HOST is set).
    """
    return open_project_instance()


@dataclass
class RunOutcome:
    """One run the migration started; for batches, one partition of a (ranged) run."""

    step: str
    run_id: str
    success: bool
    partition: str | None = None
    error: str | None = None
    seconds: float = 0.0  # a batch's share of its run's wall time


@dataclass
class MigrationResult:
    """What ``migrate_in_process`` did, and the latest result of every check afterwards."""

    migration_id: str
    command: str = "migrate"  # or "backfill"
    runs: list[RunOutcome] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    abandoned_runs: list[str] = field(default_factory=list)  # killed earlier, marked failed
    # The evidence report (Markdown) of this migration's verification run; None when the
    # verification did not run or did not get as far as materializing.
    evidence: str | None = None

    @property
    def failed_batches(self) -> list[str]:
        """Partition keys whose run failed."""
        return [r.partition for r in self.runs if r.step == "batch" and not r.success
                and r.partition]

    @property
    def conflicted_batches(self) -> list[str]:
        """Partition keys that failed because the target holds conflicting rows."""
        return [r.partition for r in self.runs if r.step == "batch" and not r.success
                and r.partition and r.error and CONFLICT_MARKER in r.error]

    @property
    def passed(self) -> bool:
        """Every run succeeded, nothing was skipped, and every check's latest result passed."""
        return (bool(self.runs) and all(r.success for r in self.runs) and not self.skipped
                and bool(self.checks) and all(c["ok"] for c in self.checks))

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (no secrets: errors are scrubbed)."""
        return {"command": self.command, "ok": self.passed, "migration_id": self.migration_id,
                "seconds": round(self.seconds, 3), "failed_batches": self.failed_batches,
                "conflicted_batches": self.conflicted_batches,
                "skipped": self.skipped, "abandoned_runs": self.abandoned_runs,
                "runs": [asdict(r) for r in self.runs],
                "checks": self.checks}

    def render(self) -> str:
        """Human-readable summary."""
        batches = [r for r in self.runs if r.step == "batch"]
        lines = [f"Migration {self.migration_id}: " + ("PASSED" if self.passed else "FAILED")
                 + f" in {self.seconds:.1f} s",
                 f"  batches: {sum(r.success for r in batches)}/{len(batches)} loaded"]
        if self.abandoned_runs:
            lines.append(f"  marked failed: {len(self.abandoned_runs)} earlier run(s) whose "
                         f"process had been killed ({', '.join(self.abandoned_runs)})")
        for run in self.runs:
            if not run.success:
                lines.append(f"  FAILED {run.step} {run.partition or ''} (run {run.run_id}): "
                             f"{run.error}")
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines.append("")
        lines.append(render_check_rows(self.checks))
        return "\n".join(lines)


def migrate_in_process(
    *,
    source: str | None = None,
    export: str | None = None,
    target_dsn: str | None = None,
    schema: str | None = None,
    staging_schema: str | None = None,
    batch_size: int | None = None,
    readback_all: bool = False,
    readback_threads: int | None = None,
    instance: dg.DagsterInstance | None = None,
    front_end: str = "cli",
) -> MigrationResult:
    """Export, load every batch and verify (and publish, in staging mode), as asset runs.

    Arguments left None come from the environment (see resources.build_resources).
    ``target_dsn``, if given, is exported as CHECKPOINT_ASSETS_TARGET_DSN for the duration
    (the resources read the DSN only through dg.EnvVar). Without ``instance`` the project's
    persistent instance is used. Every batch is loaded again even if it was loaded before
    (safe: rows already present are skipped and compared). Failures do not raise: they are
    in the result, and in the instance as failed runs, FAILED partitions and failed checks.
    """
    return _run(locals(), export_first=True, only_failed_and_missing=False)


def backfill_in_process(
    *,
    source: str | None = None,
    export: str | None = None,
    target_dsn: str | None = None,
    schema: str | None = None,
    staging_schema: str | None = None,
    batch_size: int | None = None,
    readback_all: bool = False,
    readback_threads: int | None = None,
    instance: dg.DagsterInstance | None = None,
    front_end: str = "cli",
) -> MigrationResult:
    """Load only the FAILED and missing batch partitions of the current export (and any
    whose latest load has no passed check), then verify.

    The in-process equivalent of the UI's "Backfill only failed and missing partitions
    within selection"; arguments as for ``migrate_in_process`` (the export is not re-run).
    """
    return _run(locals(), export_first=False, only_failed_and_missing=True)


def _run(settings: dict[str, Any], *, export_first: bool,
         only_failed_and_missing: bool) -> MigrationResult:
    started, started_at = time.perf_counter(), time.time() - CLOCK_MARGIN_SECONDS
    result = MigrationResult(migration_id=uuid.uuid4().hex[:12],
                             command="migrate" if export_first else "backfill")
    tags = {FRONT_END_TAG: settings["front_end"], MIGRATION_ID_TAG: result.migration_id}
    staging_schema = settings["staging_schema"]
    resources = build_resources(
        source=settings["source"], export=settings["export"], target_schema=settings["schema"],
        staging_schema=staging_schema, batch_size=settings["batch_size"],
        readback_threads=0 if settings["readback_all"] else settings["readback_threads"])
    defs = build_definitions(
        resources, staging=bool(staging_schema) if staging_schema is not None else None)
    job = defs.resolve_implicit_global_asset_job_def()
    with _dsn_in_environment(settings["target_dsn"]), _instance(settings["instance"]) as inst:
        dsn = os.environ.get(TARGET_DSN_ENV, "")

        def run(step: str, assets: Sequence[dg.AssetKey]) -> bool:
            outcome = _execute(job, inst, step, assets, tags, dsn)
            result.runs.append(outcome)
            _raise_if_stop_requested()
            return outcome.success

        try:
            result.abandoned_runs = fail_abandoned_runs(inst)
            if export_first and not run("export", [EXPORT_ASSET]):
                result.skipped.append("batches and verification: the export failed")
            else:
                statuses = partition_statuses(inst)
                unchecked = partitions_without_a_passed_check(inst)
                keys = sorted(k for k, status in statuses.items()
                              if not only_failed_and_missing or k in unchecked
                              or status in ("FAILED", "MISSING"))
                initialize_target_pool(inst)
                outcomes = _load_batches(settings, job, inst, keys, tags, dsn)
                result.runs.extend(outcomes)
                loaded = [o.success for o in outcomes]
                if not statuses:
                    result.skipped.append("batches and verification: no batch partitions "
                                          "(materialize the export first)")
                elif all(loaded):
                    final = [VERIFICATION_ASSET]
                    if PUBLISH_ASSET in defs.resolve_asset_graph().get_all_asset_keys():
                        final.append(PUBLISH_ASSET)
                    run("verification", final)
                    # Read even when the run failed: a failed blocking check fails the step
                    # after the materialization, with its evidence, was recorded.
                    result.evidence = verification_evidence(inst, result.runs[-1].run_id)
                else:
                    result.skipped.append(
                        f"verification: {loaded.count(False)} of {len(keys)} batches failed; "
                        "remove the cause, then backfill the failed partitions")
        except KeyboardInterrupt:  # Ctrl-C; the workers, if any, have stopped
            raise _interrupted(inst, result, export_first) from None
        # This command's own results: another migration on the same instance may be
        # evaluating the same checks right now.
        result.checks = latest_check_evaluations(
            inst, defs, run_ids={r.run_id for r in result.runs}, since=started_at)
    result.seconds = time.perf_counter() - started
    return result


def _raise_if_stop_requested() -> None:
    """Stop between runs after a Ctrl-C that Dagster turned into the failure of the run in
    this process (it then returns normally)."""
    if stop_requested():
        raise KeyboardInterrupt


def _interrupted(instance: dg.DagsterInstance, result: MigrationResult,
                 export_first: bool) -> Interrupted:
    """What a Ctrl-C left behind, and how to go on. Runs of workers that had to be killed
    are marked failed now, so their partitions show FAILED rather than in progress."""
    fail_abandoned_runs(instance)
    what = f"{result.command.capitalize()} {result.migration_id} stopped (Ctrl-C)"
    if export_first and not any(r.step == "export" and r.success for r in result.runs):
        return Interrupted(f"{what} before the export was complete; nothing was loaded.",
                           "Run the same `checkpoint-assets migrate` again.")
    statuses = partition_statuses(instance)
    loaded = sum(status == "MATERIALIZED" for status in statuses.values())
    return Interrupted(
        f"{what}: {loaded} of {len(statuses)} batches are loaded, each whole (the batches "
        "being loaded were rolled back); the verification did not finish.",
        "Run `checkpoint-assets backfill` with the same settings: it loads the batches "
        "that are FAILED or missing and then verifies.")


def batch_workers() -> int:
    """How many batch runs ``migrate`` runs at once (env CHECKPOINT_ASSETS_WORKERS).

    Loading a batch is mostly Python work (parsing, converting, digesting), so two worker
    processes on a two-core machine load batches nearly twice as fast (benchmarks: 1 / 2 / 4
    loaders). The pool ``checkpoint_assets_postgres`` still bounds what reaches the
    database.
    """
    return configured_workers() or default_workers()


def _load_batches(settings: dict[str, Any], job: dg.JobDefinition,
                  instance: dg.DagsterInstance, keys: Sequence[str], tags: dict[str, str],
                  dsn: str) -> list[RunOutcome]:
    """Runs of consecutive batch partitions: here, or in worker processes sharing the
    instance. One outcome per partition."""
    workers = min(batch_workers(), len(keys))
    runs = batch_runs(keys, instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME), workers)
    if workers <= 1 or instance.is_ephemeral:
        outcomes = []
        for run in runs:
            outcomes.append(_execute_batches(job, instance, run, tags, dsn))
            _raise_if_stop_requested()
    else:
        with process_pool(workers) as pool:
            outcomes = list(pool.map(_batches_in_worker, repeat(_worker_settings(settings)),
                                     repeat(instance.get_ref()), runs, repeat(tags),
                                     repeat(dsn)))
    return [outcome for run in outcomes for outcome in run]


def batch_runs(keys: Sequence[str], partitions: Sequence[str],
               workers: int = 1) -> list[list[str]]:
    """``keys`` cut into runs as a multi-run backfill cuts them: each run a contiguous range
    of ``partitions`` (so it covers no batch outside ``keys``), at most BATCHES_PER_RUN long,
    and short enough that ``workers`` processes all get a share."""
    wanted = set(keys)
    per_run = max(1, min(BATCHES_PER_RUN, -(-len(wanted) // max(1, workers))))
    runs: list[list[str]] = []
    current: list[str] = []
    for key in partitions:
        if key in wanted and len(current) < per_run:
            current.append(key)
            continue
        if current:
            runs.append(current)
        current = [key] if key in wanted else []
    if current:
        runs.append(current)
    return runs


def _worker_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in ("source", "export", "schema", "staging_schema",
                                     "batch_size", "readback_all", "readback_threads")}


_WORKER_STATE: dict[str, Any] = {}


def _batches_in_worker(settings: dict[str, Any], instance_ref: Any, keys: list[str],
                       tags: dict[str, str], dsn: str) -> list[RunOutcome]:
    """Run one range of batch partitions in a worker process (the DSN arrives via the
    environment)."""
    if "job" not in _WORKER_STATE:
        resources = build_resources(
            source=settings["source"], export=settings["export"],
            target_schema=settings["schema"], staging_schema=settings["staging_schema"],
            batch_size=settings["batch_size"],
            readback_threads=0 if settings["readback_all"] else settings["readback_threads"])
        staging = settings["staging_schema"]
        defs = build_definitions(resources,
                                 staging=bool(staging) if staging is not None else None)
        _WORKER_STATE["job"] = defs.resolve_implicit_global_asset_job_def()
        _WORKER_STATE["instance"] = dg.DagsterInstance.from_ref(instance_ref)
    return _execute_batches(_WORKER_STATE["job"], _WORKER_STATE["instance"], keys, tags, dsn)


def _execute_batches(job: dg.JobDefinition, instance: dg.DagsterInstance, keys: list[str],
                     tags: dict[str, str], dsn: str) -> list[RunOutcome]:
    """One run for the consecutive partitions ``keys`` (a partition range when more than
    one, as the UI's backfill launches it); an outcome per partition, failed where the run
    recorded no materialization of it."""
    started = time.perf_counter()
    range_tags = {} if len(keys) == 1 else {ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                            ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    run = job.execute_in_process(instance=instance, asset_selection=[BATCHES_ASSET],
                                 partition_key=keys[0] if len(keys) == 1 else None,
                                 tags={**tags, **range_tags, **process_tag()},
                                 raise_on_error=False, run_config=_console_log_level())
    seconds = round((time.perf_counter() - started) / len(keys), 3)
    loaded = materialized_partitions(instance, run.run_id)
    reasons = {} if run.success else _failed_batches(run)
    run_error = None if run.success else _failure_message(run)
    return [RunOutcome("batch", run.run_id, key in loaded, key,
                       None if key in loaded else scrub(reasons.get(key) or run_error
                                                        or "not loaded", dsn), seconds)
            for key in keys]


def _failed_batches(run: dg.ExecuteInProcessResult) -> dict[str, str]:
    """{partition key: why} from the step failure of a batch run."""
    for event in run.all_events:
        if event.is_step_failure and event.step_failure_data.user_failure_data:
            value = event.step_failure_data.user_failure_data.metadata.get(
                FAILED_BATCHES_METADATA)
            if value is not None and isinstance(value.value, dict):
                return {str(k): str(v) for k, v in value.value.items()}
    return {}


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
    infos = {info.partition_key: info for info in
             instance.event_log_storage.get_asset_check_partition_info([BATCH_CHECK.key])}
    return {key for key in current
            if (info := infos.get(key)) is None or not info.is_current
            or info.latest_execution_status != AssetCheckExecutionRecordStatus.SUCCEEDED}


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, step: str,
             assets: Sequence[dg.AssetKey], tags: dict[str, str], dsn: str) -> RunOutcome:
    """One run of the unpartitioned ``assets`` (export, verification, publish)."""
    started = time.perf_counter()
    run = job.execute_in_process(instance=instance, asset_selection=list(assets),
                                 tags={**tags, **process_tag()}, raise_on_error=False,
                                 run_config=_console_log_level())
    error = None if run.success else scrub(_failure_message(run), dsn)
    return RunOutcome(step, run.run_id, run.success, None, error,
                      round(time.perf_counter() - started, 3))


def _failure_message(run: dg.ExecuteInProcessResult) -> str:
    for event in run.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            if data.error:
                return data.error.message.strip()
    return "the run failed (see its events in the Dagster UI)"


def _console_log_level() -> dict[str, Any]:
    """Console logging for in-process runs: the assets' own messages (INFO), not every
    Dagster event (DEBUG). Every event is stored in the instance either way. Override with
    CHECKPOINT_ASSETS_LOG_LEVEL."""
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    return {"loggers": {"console": {"config": {"log_level": level}}}}


@contextmanager
def _dsn_in_environment(dsn: str | None) -> Iterator[None]:
    previous = os.environ.get(TARGET_DSN_ENV)
    if dsn:
        os.environ[TARGET_DSN_ENV] = dsn
    try:
        yield
    finally:
        if dsn:
            if previous is None:
                os.environ.pop(TARGET_DSN_ENV, None)
            else:
                os.environ[TARGET_DSN_ENV] = previous


@contextmanager
def _instance(instance: dg.DagsterInstance | None) -> Iterator[dg.DagsterInstance]:
    if instance is not None:
        yield instance
        return
    with project_instance() as own:
        yield own


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


# --------------------------------------------------------------------------- check evidence


def declared_check_keys(defs: dg.Definitions | None = None) -> list[dg.AssetCheckKey]:
    """Every asset check the definitions declare, in lineage order."""
    defs = defs or build_definitions()
    order = [EXPORT_ASSET, BATCHES_ASSET, VERIFICATION_ASSET, PUBLISH_ASSET]
    keys = defs.resolve_asset_graph().asset_check_keys
    return sorted(keys, key=lambda k: (order.index(k.asset_key) if k.asset_key in order
                                       else len(order), k.name))


def latest_check_evaluations(
    instance: dg.DagsterInstance, defs: dg.Definitions | None = None, *,
    run_ids: Collection[str] | None = None, since: float = 0.0,
) -> list[dict[str, Any]]:
    """The latest evaluation of every declared asset check, as rows for a table.

    Row keys: asset, check, passed (None: never evaluated), severity (ERROR or WARN), ok
    (passed, or a failed warning: nothing to block on), partitions (for the per-batch
    check: how many current batches passed), summary (expected/actual/mismatches), when
    (UTC), run_id. The publish check is listed when the definitions are in staging mode
    or the instance has a result for it.

    With ``run_ids`` (the runs of one command, started at or after ``since``, a Unix time),
    each check's row is its latest evaluation in those runs; a check or batch those runs did
    not evaluate (a backfill's batches loaded earlier) shows its latest finished
    evaluation, never another command's evaluation still in progress.
    """
    if defs is None:
        defs = build_definitions(staging=bool(os.environ.get(STAGING_SCHEMA_ENV)))
    keys = declared_check_keys(defs)
    publish_keys = declared_check_keys(build_definitions(staging=True))
    for key in publish_keys:
        if key not in keys and instance.get_latest_asset_check_evaluation_record(key):
            keys.append(key)
    evaluations = _Evaluations(instance, run_ids, since)
    return [_check_row(instance, key, evaluations) for key in keys]


_FINISHED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
_HISTORY_PAGE = 500
# A command's runs are looked for in check records created after its start, less this
# margin (the records' timestamps come from the storage's clock).
CLOCK_MARGIN_SECONDS = 60.0


class _Evaluations:
    """Which evaluation of a check a row shows: the instance's latest, or, given the run ids
    of one command, that command's own."""

    def __init__(self, instance: dg.DagsterInstance, run_ids: Collection[str] | None,
                 since: float) -> None:
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

    def passed_partitions(self, key: dg.AssetCheckKey, partitions: Collection[str]) -> set[str]:
        """The partitions of ``key`` whose evaluation to show passed."""
        if self.run_ids is None:
            infos = self.storage.get_asset_check_partition_info([key])
            return {i.partition_key for i in infos if i.partition_key in partitions
                    and i.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED}
        return {p for p in partitions if (record := self.record(key, p)) is not None
                and record.status == AssetCheckExecutionRecordStatus.SUCCEEDED}

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


def _check_row(instance: dg.DagsterInstance, key: dg.AssetCheckKey,
               evaluations: _Evaluations) -> dict[str, Any]:
    row: dict[str, Any] = {"asset": key.asset_key.to_user_string(), "check": key.name,
                           "passed": None, "severity": "ERROR", "ok": False, "partitions": "",
                           "summary": "never evaluated", "when": "", "run_id": ""}
    record = evaluations.record(key)
    prefix = ""
    if key.asset_key == BATCHES_ASSET:
        # Per-batch check: it passes when the latest result of every current batch passed;
        # otherwise show the first batch that did not pass.
        current = set(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
        passed = evaluations.passed_partitions(key, current)
        row["partitions"] = f"{len(current & passed)}/{len(current)} passed"
        failing = sorted(current - passed)
        if failing:
            prefix = f"{failing[0]}: "
            record = evaluations.record(key, failing[0])
            if record is None:
                row["passed"], row["summary"] = False, f"{failing[0]}: never evaluated"
                return row
    if record is None:
        return row
    row["when"] = dt.datetime.fromtimestamp(record.create_timestamp, dt.UTC).isoformat(
        timespec="seconds")
    row["run_id"] = record.run_id
    row["passed"] = record.status == AssetCheckExecutionRecordStatus.SUCCEEDED
    if record.status == AssetCheckExecutionRecordStatus.PLANNED:
        row["passed"], row["summary"] = None, "in progress"
    evaluation = record.event.asset_check_evaluation if record.event else None
    if evaluation is not None:
        row["summary"] = prefix + _summary(evaluation.metadata)
        row["severity"] = evaluation.severity.value
    row["ok"] = row["passed"] is True or (row["passed"] is False and row["severity"] == "WARN")
    return row


def _summary(metadata: dict[str, Any]) -> str:
    """expected / actual / mismatches of a check result, short enough for a table cell."""
    def raw(name: str) -> Any:
        value = metadata.get(name)
        return getattr(value, "value", value)

    expected, actual, count = raw("expected"), raw("actual"), raw("mismatch_count")
    counts = raw("counts")
    if isinstance(counts, dict) and "export" in counts:  # checkpoint_count_match
        text = "; ".join(
            f"{table}: sqlite {counts.get('sqlite', {}).get(table, '-')}, export "
            f"{counts['export'].get(table, '-')}, postgres {counts['target'].get(table, '-')}"
            for table in ("checkpoints", "checkpoint_writes"))
    elif isinstance(expected, dict) and isinstance(actual, dict) and "counts" in expected:
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


def render_check_rows(rows: list[dict[str, Any]]) -> str:
    """The check rows as a plain-text table."""
    if not rows:
        return "(no asset checks)"
    headers = ["asset", "check", "passed", "severity", "partitions", "when", "run_id",
               "summary"]
    cells = [[_cell(h, r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(header: str, value: Any) -> str:
    if header == "passed":
        return {True: "PASS", False: "FAIL", None: "-"}[value]
    if header == "run_id" and value:
        return str(value)[:8]
    return str(value)
