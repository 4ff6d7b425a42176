"""A batch of a ranged run that hits transient database errors: the rest of the run still
loads, Dagster retries the step, and the retry loads only what is still missing.

The errors are real: the batch's loader connection is terminated with
pg_terminate_backend while it waits for the batch's advisory lock, as many times as the
engine retries by itself, so the engine gives up and Dagster's RetryPolicy takes over.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from checkpoint_assets.assets.imported_batches import materialized_partitions
from checkpoint_assets.check_results import partition_statuses
from checkpoint_assets.engine.export.reader import read_manifest
from checkpoint_assets.engine.load.loader import batch_lock_id as _lock_id
from checkpoint_assets.engine.load.target import Target
from checkpoint_assets.engine.verify.comparison import compare_batch
from checkpoint_assets.partitions import (
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    ENGINE_ATTEMPTS,
    EXPORT_ASSET,
    partition_keys_by_batch,
)
from checkpoint_assets.settings import TARGET_DSN_ENV
from checkpoint_assets_tests.dagster_support import (
    definitions,
    materialize,
    materialize_range,
    write_corpus,
)
from checkpoint_assets_tests.test_faults import _dbname, _wait_for_backend

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FLAKY_BATCH = "batch-00002"  # the export file's key of the batch that meets the errors


class _HoldAndTerminate(threading.Thread):
    """Holds FLAKY_BATCH's advisory lock and terminates the loader's backend each time it waits
    for it, ``times`` times; then lets the batch through."""

    def __init__(self, dsn: str, lock_id: int, times: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.lock_id, self.times = dsn, lock_id, times
        self.terminated = 0
        self.error: BaseException | None = None
        self.holding = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as gate, \
                    psycopg.connect(self.dsn, autocommit=True) as watch:
                gate.execute("SELECT pg_advisory_lock(%s)", (self.lock_id,))
                self.holding.set()
                while self.terminated < self.times:
                    pid = _wait_for_backend(watch, _dbname(self.dsn),
                                            "SELECT pg_advisory_xact_lock%", "advisory")
                    watch.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    self.terminated += 1
                gate.execute("SELECT pg_advisory_unlock_all()")
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.holding.set()


def test_transient_errors_retry_only_the_batches_still_missing(
        tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLAKY fails ENGINE_ATTEMPTS times inside one ranged run: the other batches of the run
    load and are recorded, Dagster retries the step, the retry loads FLAKY alone, and every
    partition ends MATERIALIZED with a passed check and rows equal to the export."""
    source = write_corpus(tmp_path / "support.sqlite", threads=6)
    export = tmp_path / "export.export"
    monkeypatch.setenv(TARGET_DSN_ENV, target_dsn)
    code = definitions(source, export, batch_size=12)
    with dg.instance_for_test() as instance:
        assert materialize(code, instance, EXPORT_ASSET).success
        keys = list(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
        manifest = read_manifest(export)
        flaky = partition_keys_by_batch(manifest)[FLAKY_BATCH]
        assert flaky in keys[1:-1], keys  # batches before and after it in the same run
        Target(target_dsn).setup()
        holder = _HoldAndTerminate(target_dsn, _lock_id(None, manifest.batch(FLAKY_BATCH).sha256),
                                   ENGINE_ATTEMPTS)
        holder.start()
        assert holder.holding.wait(30)

        run = materialize_range(code, instance, BATCHES_ASSET, keys[0], keys[-1])
        holder.join(30)

        assert holder.error is None, holder.error
        assert holder.terminated == ENGINE_ATTEMPTS
        assert run.success
        logs = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event]
        assert [e for e in logs if e.is_step_up_for_retry], "Dagster retried the step"
        # Every batch was materialized exactly once: the retry skipped those already loaded.
        loaded = Counter(e.event_specific_data.materialization.partition for e in logs
                         if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert loaded == Counter(keys)
        assert materialized_partitions(instance, run.run_id) == set(keys)
        # No failed result was recorded for an error Dagster was going to retry.
        evaluations = [e.event_specific_data for e in logs
                       if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
        assert {(v.partition, v.passed) for v in evaluations
                if v.check_name == BATCH_MATCHES_EXPORT} == {(k, True) for k in keys}
        assert set(partition_statuses(instance).values()) == {"MATERIALIZED"}
    target = Target(target_dsn)
    assert all(compare_batch(target, manifest, entry.key).passed for entry in manifest.batches)
