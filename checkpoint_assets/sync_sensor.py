"""Keep PostgreSQL in step under ``dagster dev``: the ``source_changed_sync`` sensor.

Stopped by default (start it on the UI's Automation page once the export is loaded). Each
tick costs two ``stat`` calls and the chain's footers: when a sync generation has batch
partitions not loaded yet, it requests their runs (``checkpoint_sync_batches``) and waits
for them; otherwise, when the source file or its ``-wal`` changed since the last sync it
requested, it requests a sync run (``checkpoint_sync``: the export asset writing its next
generation). Never both at once: a generation is applied before the next one is written.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from checkpoint_assets.assets.export import ExportConfig
from checkpoint_assets.engine.operations import live, migration
from checkpoint_assets.partitions import (
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    batch_partitions,
    chain_partition_keys,
)
from checkpoint_assets.resources import ExportFileResource, SqliteSourceResource

SYNC_SENSOR = "source_changed_sync"
SYNC_JOB = "checkpoint_sync"
SYNC_BATCHES_JOB = "checkpoint_sync_batches"
SYNC_INTERVAL_SECONDS = 30

sync_job = dg.define_asset_job(
    SYNC_JOB, selection=[EXPORT_ASSET],
    config=dg.RunConfig(ops={EXPORT_ASSET.path[-1]: ExportConfig(sync=True)}),
    description="Write the export's next sync generation: only what changed in the source "
                "since the export or the last sync, as new batch partitions.")
sync_batches_job = dg.define_asset_job(
    SYNC_BATCHES_JOB, selection=[BATCHES_ASSET], partitions_def=batch_partitions,
    description="Load one batch partition of a sync generation (one transaction).")


def _failed_load(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun | None:
    """The latest run that loaded sync partition ``key``, when it failed."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=SYNC_BATCHES_JOB,
                                                   tags={"dagster/partition": key}), limit=1)
    return runs[0] if runs and runs[0].status == dg.DagsterRunStatus.FAILURE else None


@dg.sensor(name=SYNC_SENSOR, jobs=[sync_job, sync_batches_job],
           minimum_interval_seconds=SYNC_INTERVAL_SECONDS,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Notices that the SQLite source changed (size and mtime of the file "
                       "and its -wal) and requests a sync run, then the runs that load the "
                       "sync's batch partitions; keeps PostgreSQL in step until cutover.")
def source_changed_sync(context: dg.SensorEvaluationContext, source: SqliteSourceResource,
                        export_file: ExportFileResource) -> dg.SensorResult | dg.SkipReason:
    """Request the loads of sync partitions still missing, else a sync when the source's
    files changed since the last sync this sensor requested."""
    path = export_file.resolve_path(source.path)
    if not path.exists():
        return dg.SkipReason(f"No export at {path} yet: migrate first; this sensor then keeps "
                             "the target in step.")
    chain = migration.read_export_chain(path)
    # Partitions of syncs this sensor requested (a `checkpoint-assets sync` applies its
    # generations itself and registers none).
    registered = set(context.instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    loaded = context.instance.get_materialized_partitions(BATCHES_ASSET)
    missing = [key for (generation, _), key in chain_partition_keys(chain).items()
               if generation > 0 and key in registered and key not in loaded]
    failed = {key: run for key in missing if (run := _failed_load(context.instance, key))}
    if failed:
        # Requested once already (the run key would drop a second request silently): say
        # why nothing more moves, and what to do.
        shown = ", ".join(f"{key} (run {run.run_id[:8]})" for key, run in
                          list(failed.items())[:5])
        return dg.SkipReason(
            f"{len(failed)} sync batch partition(s) failed to load: {shown}. The sensor "
            "requests nothing more until they load, since a generation is applied before "
            "the next one is written. Open the failed run (or the partition's page) for the "
            "cause and what to do, remove it, then backfill the failed partitions, or run "
            "`checkpoint-assets sync`, which applies them again.")
    if missing:
        return dg.SensorResult(run_requests=[
            dg.RunRequest(run_key=key, job_name=SYNC_BATCHES_JOB, partition_key=key)
            for key in missing])
    state = json.dumps(live.source_files_state(source.path))
    if state == context.cursor:
        return dg.SkipReason("The source has not changed since the last sync.")
    run_key = f"sync-{chain.latest.footer_sha256[:12]}-" \
              f"{hashlib.sha256(state.encode()).hexdigest()[:12]}"
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, job_name=SYNC_JOB)],
                           cursor=state)
