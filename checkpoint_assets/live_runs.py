"""Sync, cutover and rollback from the command line as Dagster asset runs in-process, so
each is in the instance's audit trail (runs, materializations, check results) like a run
the UI starts; the operation's typed report comes back through the caller channel."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import dagster as dg
from dagster._core.storage.tags import USER_TAG

from checkpoint_assets.abandoned_runs import process_tag
from checkpoint_assets.definitions import build_definitions
from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.operations import contract, way_back
from checkpoint_assets.engine.operations import live as live_operations
from checkpoint_assets.engine.sync.sync_target import SyncReport
from checkpoint_assets.partitions import (
    CUTOVER_ASSET,
    FRONT_END_TAG,
    RESTORED_BATCHES_ASSET,
    ROLLBACK_EXPORT_ASSET,
    ROLLBACK_VERIFICATION_ASSET,
    SYNC_ASSET,
    partition_keys,
)
from checkpoint_assets.resources import (
    CallerChannel,
    LiveMigrationResource,
    RollbackResource,
    build_resources,
)
from checkpoint_assets.run_steps import (
    StepFailure,
    console_log,
    instance_or_project,
    raise_if_stop_requested,
)
from checkpoint_assets.settings import AES_KEY_ENV, Settings, target_dsn_in_environment


def sync_in_process(settings: Settings, request: live_operations.SyncRequest, *,
                    aes_key_env: str = AES_KEY_ENV,
                    instance: dg.DagsterInstance | None = None,
                    front_end: str = "cli") -> SyncReport:
    """One sync as a run of the ``target_synced`` asset against the instance (default the
    project's): its materialization and check result are in the audit trail. Returns the
    operation's report; raises its MigrationError (a conflict, a refused source) as the
    operation raised it, after the run recorded the failure."""
    live = LiveMigrationResource(propagate_deletes=request.propagate_deletes,
                                 allow_mass_deletion=request.allow_mass_deletion)
    caller = CallerChannel(keep=True)
    return _live_run(settings, request, live, caller, SYNC_ASSET, "sync", aes_key_env,
                     instance, front_end)


def cutover_in_process(settings: Settings, request: live_operations.CutoverRequest, *,
                       say_to: Any = None, progress: Any = None,
                       aes_key_env: str = AES_KEY_ENV,
                       instance: dg.DagsterInstance | None = None,
                       front_end: str = "cli") -> live_operations.CutoverReport:
    """The cutover as a run of the ``checkpoint_cutover`` asset against the instance: its
    window, quiet and proof are check results in the audit trail. What the cutover says
    is printed to ``say_to`` (default stdout) as it happens, as is ``progress``. Returns
    the operation's report; raises its MigrationError (TimedOut: not quiet in time)."""
    sync = request.sync
    live = LiveMigrationResource(
        propagate_deletes=sync.propagate_deletes, allow_mass_deletion=sync.allow_mass_deletion,
        quiet_seconds=request.quiet_seconds, timeout_seconds=request.timeout_seconds,
        evidence_path=str(request.evidence) if request.evidence else None)
    caller = CallerChannel.printing(say_to, progress)
    return _live_run(replace(settings, workers=request.workers), sync, live, caller,
                     CUTOVER_ASSET, "cutover", aes_key_env, instance, front_end)


def _live_run(settings: Settings, sync: live_operations.SyncRequest,
              live: LiveMigrationResource, caller: CallerChannel, asset: dg.AssetKey,
              command: str, aes_key_env: str, instance: dg.DagsterInstance | None,
              front_end: str) -> Any:
    """Run ``asset`` in-process with the request's values as resource values; the report
    the operation handed to ``caller``, or its error raised again."""
    settings = replace(settings, source=str(sync.source), export=str(sync.export),
                       target_schema=sync.schema, threads=sync.threads,
                       strict_versions=sync.strict_versions)
    resources = build_resources(settings, aes_key_env=aes_key_env, live=live, caller=caller)
    job = build_definitions(resources, staging=settings.staging
                            ).resolve_implicit_global_asset_job_def()
    tags = {FRONT_END_TAG: front_end, USER_TAG: f"checkpoint-assets {command}",
            **process_tag()}
    with target_dsn_in_environment(settings.target_dsn), instance_or_project(instance) as inst:
        # The command prints its own summary and errors; every event is in the instance.
        run = job.execute_in_process(instance=inst, asset_selection=[asset], tags=tags,
                                     raise_on_error=False, run_config=console_log("CRITICAL"))
    if caller.error is not None:
        raise caller.error
    if caller.report is not None:
        return caller.report
    raise_if_stop_requested()
    raise MigrationError(
        f"The {command} run {run.run_id} failed: "
        f"{contract.without_secrets(StepFailure.of(run).message, settings.target_dsn)}",
        "Open the run in the Dagster UI (checkpoint-assets ui) for its events.")


def rollback_in_process(settings: Settings, request: way_back.RollbackRequest, *,
                        aes_key_env: str = AES_KEY_ENV, flags: dict[str, str] | None = None,
                        instance: dg.DagsterInstance | None = None,
                        front_end: str = "cli") -> way_back.RollbackReport:
    """The way back as runs of the ``checkpoint_rollback`` assets against the instance: the
    export, one run per restored batch partition, the verification (which publishes a new
    file once verified), with the request's values as resource values. Returns the report
    a whole rollback returns (its evidence written); raises the first step's
    MigrationError as the operation raised it. ``flags``: how the verification's notes
    name the settings (the CLI's flags)."""
    resources = build_resources(
        replace(settings, target_dsn=request.source_dsn, target_schema=request.schema,
                readback_threads=request.readback_threads, batch_size=request.batch_size),
        aes_key_env=aes_key_env, caller=CallerChannel(keep=True, flags=flags))
    caller: CallerChannel = resources["caller"]
    resources["rollback"] = RollbackResource(
        to_path=str(request.to), export_path=str(request.export) if request.export else None,
        threads=request.threads,
        original_export=str(request.original_export) if request.original_export else None,
        batch_size=request.batch_size, remove_deleted_threads=request.remove_deleted_threads,
        aes_key=resources["source"].aes_key)
    rollback: RollbackResource = resources["rollback"]
    job = build_definitions(resources, staging=False).resolve_implicit_global_asset_job_def()
    tags = {FRONT_END_TAG: front_end, USER_TAG: "checkpoint-assets rollback",
            **process_tag()}
    new_file = not request.to.exists()
    with target_dsn_in_environment(request.source_dsn), instance_or_project(instance) as inst:

        def run(asset: dg.AssetKey, partition: str | None = None) -> Any:
            before = len(caller.reports)
            result = job.execute_in_process(
                instance=inst, asset_selection=[asset], partition_key=partition, tags=tags,
                raise_on_error=False, run_config=console_log("CRITICAL"))
            if caller.error is not None:
                raise caller.error
            if len(caller.reports) == before or not result.success and \
                    asset != ROLLBACK_VERIFICATION_ASSET:
                raise_if_stop_requested()
                why = contract.without_secrets(StepFailure.of(result).message,
                                               request.source_dsn)
                raise MigrationError(
                    f"The rollback run {result.run_id} failed: {why}",
                    "Open the run in the Dagster UI (checkpoint-assets ui) for its events.")
            return caller.report

        exported: way_back.PostgresExportReport = run(ROLLBACK_EXPORT_ASSET)
        keys = partition_keys(exported.manifest)
        batches = [run(RESTORED_BATCHES_ASSET, key) for key in keys]
        verified = run(ROLLBACK_VERIFICATION_ASSET)
    kept = [] if new_file or request.remove_deleted_threads else \
        verified.threads_not_in_postgres
    totals = way_back.restore_totals(batches, request.to, new_file, kept)
    if verified.removed_threads and not totals["removed_threads"]:
        totals["removed_threads"] = verified.removed_threads  # removed by the verification
    return way_back.rollback_report(
        verified.report, exported.manifest, request.source_dsn, request.schema, request.to,
        rollback.export(), request.evidence, totals, exported.original_bytes, new_file)
