"""Run the migration's assets in-process against a Dagster instance (what the CLI calls).

``checkpoint-assets migrate`` materializes the same assets, with the same checks, that
``dagster dev`` shows, against the same persistent instance: one run for the export, one run
per range of up to BATCHES_PER_RUN consecutive batch partitions, as a UI backfill launches
them (each batch still has its own transaction, materialization and check result, and a
failure stays with its partition), and one run for the verification (plus publish in
staging mode). The runs appear in the UI with the tag
``checkpoint_assets/front_end=cli``. Settings travel as one ``Settings`` object; what the
runs recorded is read back by check_results.py.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    USER_TAG,
)

from checkpoint_assets.abandoned_runs import fail_abandoned_runs, process_tag
from checkpoint_assets.assets.imported_batches import materialized_partitions
from checkpoint_assets.check_results import (
    CLOCK_MARGIN_SECONDS,
    CheckRow,
    latest_check_evaluations,
    partition_statuses,
    partitions_loaded_elsewhere,
    partitions_without_a_passed_check,
    render_check_rows,
    verification_evidence,
)
from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.engine.core.errors import FailureKind, Interrupted, MigrationError
from checkpoint_assets.engine.operations import contract, migration
from checkpoint_assets.partitions import (
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    BATCHES_PER_RUN,
    EXPORT_ASSET,
    FRONT_END_TAG,
    MIGRATION_ID_TAG,
    PUBLISH_ASSET,
    VERIFICATION_ASSET,
    fleet_label_of,
)
from checkpoint_assets.project import initialize_target_pool, one_migration_at_a_time
from checkpoint_assets.resources import build_resources
from checkpoint_assets.run_steps import (
    StepFailure,
    console_log,
    instance_or_project,
    raise_if_stop_requested,
)
from checkpoint_assets.settings import (
    TARGET_DSN_ENV,
    Settings,
    env_value,
    target_dsn_in_environment,
)


@dataclass
class RunOutcome:
    """One run the migration started; for batches, one partition of a (ranged) run."""

    step: str
    run_id: str
    success: bool
    partition: str | None = None
    error: str | None = None
    seconds: float = 0.0  # a batch's share of its run's wall time
    failure: FailureKind | None = None  # None when it succeeded


@dataclass
class MigrationResult:
    """What ``migrate_in_process`` did, and the latest result of every check afterwards."""

    migration_id: str
    command: str = "migrate"  # or "backfill"
    runs: list[RunOutcome] = field(default_factory=list)
    checks: list[CheckRow] = field(default_factory=list)
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
                and r.partition and r.failure is FailureKind.CONFLICT]

    @property
    def passed(self) -> bool:
        """Every run succeeded, nothing was skipped, and every check's latest result passed."""
        return (bool(self.runs) and all(r.success for r in self.runs) and not self.skipped
                and bool(self.checks) and all(c.ok for c in self.checks))

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (no secrets: errors are scrubbed)."""
        return {"command": self.command, "ok": self.passed, "migration_id": self.migration_id,
                "seconds": round(self.seconds, 3), "failed_batches": self.failed_batches,
                "conflicted_batches": self.conflicted_batches,
                "skipped": self.skipped, "abandoned_runs": self.abandoned_runs,
                "runs": [asdict(r) for r in self.runs],
                "checks": [c.to_json() for c in self.checks]}

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


def migrate_in_process(settings: Settings | None = None, *,
                       instance: dg.DagsterInstance | None = None, front_end: str = "cli",
                       **changes: Any) -> MigrationResult:
    """Export, load every batch and verify (and publish, in staging mode), as asset runs.

    ``settings`` default to Settings.from_env(); ``changes`` replace some of their fields
    (e.g. ``source=...``, ``readback_threads=None``). The target DSN is exported as
    CHECKPOINT_ASSETS_TARGET_DSN for the duration (the resources read it only through
    dg.EnvVar). Without ``instance`` the project's persistent instance is used. Every batch
    is loaded again even if it was loaded before (safe: rows already present are skipped
    and compared). Failures do not raise: they are in the result, and in the instance as
    failed runs, FAILED partitions and failed checks.
    """
    return _run(replace(settings or Settings.from_env(), **changes), instance, front_end,
                export_first=True)


def backfill_in_process(settings: Settings | None = None, *,
                        instance: dg.DagsterInstance | None = None, front_end: str = "cli",
                        only_source: str | None = None, **changes: Any) -> MigrationResult:
    """Load only the FAILED and missing batch partitions of the current export (and any
    whose latest load has no passed check), then verify.

    The in-process equivalent of the UI's "Backfill only failed and missing partitions
    within selection"; arguments as for ``migrate_in_process`` (the export is not re-run).
    ``only_source``: of a fleet, only the partitions of the source with this label.
    """
    return _run(replace(settings or Settings.from_env(), **changes), instance, front_end,
                export_first=False, only_source=only_source)


def _run(settings: Settings, instance: dg.DagsterInstance | None, front_end: str, *,
         export_first: bool, only_source: str | None = None) -> MigrationResult:
    """``export_first``: migrate (export, then every batch); else backfill (only the
    FAILED, missing and unproven batches of the current export)."""
    started, started_at = time.perf_counter(), time.time() - CLOCK_MARGIN_SECONDS
    result = MigrationResult(migration_id=uuid.uuid4().hex[:12],
                             command="migrate" if export_first else "backfill")
    # Dagster's "user" tag: the UI shows who launched a run ("Manually launched" without).
    tags = {FRONT_END_TAG: front_end, MIGRATION_ID_TAG: result.migration_id,
            USER_TAG: f"checkpoint-assets {result.command}"}
    defs = build_definitions(build_resources(settings), staging=settings.staging)
    job = defs.resolve_implicit_global_asset_job_def()
    with target_dsn_in_environment(settings.target_dsn), instance_or_project(instance) as inst, \
            one_migration_at_a_time(Path(inst.root_directory), _say_waiting):
        dsn = env_value(TARGET_DSN_ENV) or ""
        runs = _Runs(settings, job, inst, tags, dsn)

        def run(step: str, assets: Sequence[dg.AssetKey]) -> bool:
            outcome = runs.execute(step, assets)
            result.runs.append(outcome)
            raise_if_stop_requested()
            return outcome.success

        try:
            result.abandoned_runs = fail_abandoned_runs(inst)
            if export_first and not run("export", [EXPORT_ASSET]) \
                    and not _fleet_partly_exported(inst, settings, result.runs[-1]):
                result.skipped.append("batches and verification: the export failed")
            else:
                statuses = partition_statuses(inst)
                # migrate loads every batch; backfill the failed, missing and unproven, and
                # those loaded into another database (the target dropped and re-created).
                unchecked = set() if export_first else (
                    partitions_without_a_passed_check(inst)
                    | _loaded_elsewhere(inst, settings, dsn))
                keys = sorted(k for k, status in statuses.items()
                              if (export_first or k in unchecked
                                  or status in ("FAILED", "MISSING"))
                              and (only_source is None or fleet_label_of(k) == only_source))
                initialize_target_pool(inst)
                outcomes = runs.load_batches(keys)
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


def _fleet_partly_exported(instance: dg.DagsterInstance, settings: Settings,
                           export: RunOutcome) -> bool:
    """A fleet's export run that failed only its checks (a source could not be exported)
    after it materialized and registered the other sources' batches: those go on."""
    if not settings.fleet:
        return False
    records = instance.get_records_for_run(
        export.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return any(r.event_log_entry.asset_materialization is not None
               and r.event_log_entry.asset_materialization.asset_key == EXPORT_ASSET
               for r in records)


def _say_waiting() -> None:
    print("Another migrate or backfill is running in this Dagster home; this one starts when "
          "it has finished (one migration at a time per home: they share its batch "
          "partitions).", file=sys.stderr, flush=True)


def _loaded_elsewhere(instance: dg.DagsterInstance, settings: Settings,
                      dsn: str) -> set[str]:
    """The batch partitions last loaded into another database than the one they load into
    now (the staging schema in staging mode): check_results.partitions_loaded_elsewhere.
    None of them when the target cannot be reached: the runs then report its error."""
    schema = settings.staging_schema if settings.staging else settings.target_schema
    try:
        identity = migration.target_identity(dsn, schema)
    except MigrationError:
        return set()
    return partitions_loaded_elsewhere(instance, identity)


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


def batch_workers(settings: Settings) -> int:
    """How many batch runs ``migrate`` runs at once (CHECKPOINT_ASSETS_WORKERS).

    Loading a batch is mostly Python work (parsing, converting, digesting), so two worker
    processes on a two-core machine load batches nearly twice as fast (benchmarks: 1 / 2 / 4
    loaders). The pool ``checkpoint_assets_postgres`` still bounds what reaches the
    database.
    """
    return settings.workers or contract.workers_by_default()


class _Runs:
    """Runs of one command's job against one instance: unpartitioned steps here, ranges of
    batch partitions here or in worker processes sharing the instance."""

    def __init__(self, settings: Settings, job: dg.JobDefinition,
                 instance: dg.DagsterInstance, tags: dict[str, str], dsn: str) -> None:
        self.settings = settings
        self.job = job
        self.instance = instance
        self.tags = tags
        self.dsn = dsn

    def execute(self, step: str, assets: Sequence[dg.AssetKey]) -> RunOutcome:
        """One run of the unpartitioned ``assets`` (export, verification, publish)."""
        return _execute(self.job, self.instance, step, assets, self.tags, self.dsn,
                        self.settings.log_level)

    def load_batches(self, keys: Sequence[str]) -> list[RunOutcome]:
        """Runs of consecutive batch partitions: here, or in worker processes sharing the
        instance. One outcome per partition."""
        workers = min(batch_workers(self.settings), len(keys))
        runs = batch_runs(keys, self.instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME),
                          workers)
        if workers <= 1 or self.instance.is_ephemeral:
            outcomes = []
            for run in runs:
                outcomes.append(_execute_batches(self.job, self.instance, run, self.tags,
                                                 self.dsn, self.settings.log_level))
                raise_if_stop_requested()
        else:
            # The workers read the DSN from the environment they inherit, not from here.
            settings = replace(self.settings, target_dsn=None)
            with contract.worker_processes(workers) as pool:
                outcomes = list(pool.map(_batches_in_worker, repeat(settings),
                                         repeat(self.instance.get_ref()), runs,
                                         repeat(self.tags), repeat(self.dsn)))
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


_WORKER_STATE: dict[str, Any] = {}


def _batches_in_worker(settings: Settings, instance_ref: Any, keys: list[str],
                       tags: dict[str, str], dsn: str) -> list[RunOutcome]:
    """Run one range of batch partitions in a worker process (the DSN arrives via the
    environment)."""
    if "job" not in _WORKER_STATE:
        defs = build_definitions(build_resources(settings), staging=settings.staging)
        _WORKER_STATE["job"] = defs.resolve_implicit_global_asset_job_def()
        _WORKER_STATE["instance"] = dg.DagsterInstance.from_ref(instance_ref)
    return _execute_batches(_WORKER_STATE["job"], _WORKER_STATE["instance"], keys, tags, dsn,
                            settings.log_level)


def _execute_batches(job: dg.JobDefinition, instance: dg.DagsterInstance, keys: list[str],
                     tags: dict[str, str], dsn: str, log_level: str) -> list[RunOutcome]:
    """One run for the consecutive partitions ``keys`` (a partition range when more than
    one, as the UI's backfill launches it); an outcome per partition, failed where the run
    recorded no materialization of it."""
    started = time.perf_counter()
    range_tags = {} if len(keys) == 1 else {ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                            ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    run = job.execute_in_process(instance=instance, asset_selection=[BATCHES_ASSET],
                                 partition_key=keys[0] if len(keys) == 1 else None,
                                 tags={**tags, **range_tags, **process_tag()},
                                 raise_on_error=False, run_config=console_log(log_level))
    seconds = round((time.perf_counter() - started) / len(keys), 3)
    loaded = materialized_partitions(instance, run.run_id)
    failure = None if run.success else StepFailure.of(run)
    return [RunOutcome("batch", run.run_id, True, key, seconds=seconds) if key in loaded
            else RunOutcome("batch", run.run_id, False, key,
                            contract.without_secrets(failure.batch_reason(key) if failure
                                                     else "not loaded", dsn),
                            seconds, failure.batch_kind(key) if failure
                            else FailureKind.UNEXPECTED)
            for key in keys]


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, step: str,
             assets: Sequence[dg.AssetKey], tags: dict[str, str], dsn: str,
             log_level: str) -> RunOutcome:
    """One run of the unpartitioned ``assets`` (export, verification, publish)."""
    started = time.perf_counter()
    run = job.execute_in_process(instance=instance, asset_selection=list(assets),
                                 tags={**tags, **process_tag()}, raise_on_error=False,
                                 run_config=console_log(log_level))
    seconds = round(time.perf_counter() - started, 3)
    if run.success:
        return RunOutcome(step, run.run_id, True, seconds=seconds)
    failure = StepFailure.of(run)
    return RunOutcome(step, run.run_id, False, None,
                      contract.without_secrets(failure.message, dsn), seconds,
                      failure.kind)
