"""The contract of the Dagster layer: partitions, asset keys, check names, pool.

Everything another module (assets, runner, CLI, tests) needs to agree on lives here and is
imported, never repeated as a literal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
)

from checkpoint_assets.engine.core.errors import MigrationError
from checkpoint_assets.engine.export.file_format import ExportManifest
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.engine.verify.certificates import BatchCertificate
from checkpoint_assets.engine.verify.check_table import CHECK_NAMES, CHECKS

# --------------------------------------------------------------------------- partitions

# One dynamic partition per export batch (whole threads, DEFAULT_BATCH_SIZE checkpoints).
BATCH_PARTITIONS_NAME = "checkpoint_batches"
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS_NAME)
# A partition key names the export it belongs to and the batch's place in it:
# "g<export id>-b00001", where the export id is a short digest of the export's batches
# (their content and their cut). The same source and batch size give the same keys; any
# other export (the source changed, another batch size) gives new keys, so an old
# materialization never poses as the load of a batch whose content changed. A later sync
# can add generations of its own keys in the same form. Letters, digits and "-" only.
EXPORT_ID_LENGTH = 8
PARTITION_KEY_PREFIX = "g"
PARTITION_BATCH_MARK = "-b"


def export_id(batch_digests: Sequence[str]) -> str:
    """The short identity of an export: a digest of its batch digests, in order."""
    return hashlib.sha256("\n".join(batch_digests).encode("ascii")).hexdigest()[
        :EXPORT_ID_LENGTH]


def manifest_export_id(manifest: ExportManifest) -> str:
    """``export_id`` of an ExportManifest (its footer's batch digests)."""
    return export_id([entry.sha256 for entry in manifest.batches])


# A fleet's member (several SQLite files into one PostgreSQL) puts its source's label in
# front: "replica-1-g<export id>-b00001", so the partitions of every source of the fleet
# live side by side in the one partition set, each source's together.
_FLEET_KEY = re.compile(r"^(?P<label>[A-Za-z0-9-]+)-g[0-9a-f]{%d}(-s[0-9]{4})?-b[0-9]{5}$"
                        % EXPORT_ID_LENGTH)


def _key_base(manifest: ExportManifest) -> str:
    """``g<export id>`` (``<label>-g<export id>`` for a fleet's member): what every
    partition key of this export and its syncs starts with."""
    label = manifest.fleet_label
    return f"{label + '-' if label else ''}{PARTITION_KEY_PREFIX}{manifest_export_id(manifest)}"


def _key_prefix(manifest: ExportManifest) -> str:
    """``g<export id>-b``: what every partition key of this export's own batches starts
    with."""
    return f"{_key_base(manifest)}{PARTITION_BATCH_MARK}"


def fleet_label_of(partition_key: str) -> str | None:
    """The source label of a fleet member's partition key; None for any other key."""
    found = _FLEET_KEY.match(partition_key)
    return found.group("label") if found else None


def partition_keys_by_batch(manifest: ExportManifest) -> dict[str, str]:
    """{the export file's batch key (batch-00001): its partition key (g<id>-b00001)}, in
    the export's order."""
    prefix = _key_prefix(manifest)
    return {entry.key: f"{prefix}{index:05d}"
            for index, entry in enumerate(manifest.batches, start=1)}


# A sync generation's batches (checkpoint-assets sync, the source_changed_sync sensor) add
# partitions "g<export id>-s0001-b00001": the export they follow, the generation, the batch.
# The export's own partitions stay: the verification covers the union.
PARTITION_SYNC_MARK = "-s"


def chain_partition_keys(chain: ExportChain) -> dict[tuple[int, str], str]:
    """{(generation, batch key): partition key} for the export and every sync generation."""
    keys = {(0, batch): key for batch, key in partition_keys_by_batch(chain.export).items()}
    base = _key_base(chain.export)
    for manifest in chain.generations[1:]:
        prefix = f"{base}{PARTITION_SYNC_MARK}{manifest.generation:04d}{PARTITION_BATCH_MARK}"
        keys.update({(manifest.generation, entry.key): f"{prefix}{index:05d}"
                     for index, entry in enumerate(manifest.batches, start=1)})
    return keys


def chain_batch_for(chain: ExportChain, partition_key: str) -> tuple[ExportManifest, str]:
    """(the generation, its batch key) of a batch partition of the export or of a sync;
    a MigrationError when the partition belongs to no generation of this chain."""
    if not partition_key.startswith(f"{_key_base(chain.export)}{PARTITION_SYNC_MARK}"):
        return chain.export, batch_key_for(chain.export, partition_key)
    for (generation, batch), key in chain_partition_keys(chain).items():
        if key == partition_key:
            return chain.generations[generation], batch
    raise MigrationError(
        f"Export {chain.export.path} and its {len(chain.generations) - 1} sync "
        f"generation(s) have no batch partition {partition_key!r}.",
        "The export was re-taken after this sync; its partitions replace the sync's. Load "
        "the current export's partitions (backfill failed and missing), then sync again.")


def partition_keys(manifest: ExportManifest) -> list[str]:
    """The export's batch partition keys, in order."""
    return list(partition_keys_by_batch(manifest).values())


def batch_key_for(manifest: ExportManifest, partition_key: str) -> str:
    """The export file's batch key of ``partition_key``; a MigrationError when the partition
    belongs to another export (it was re-taken since the run was launched)."""
    prefix = _key_prefix(manifest)
    place = partition_key.removeprefix(prefix)
    if place.isdigit() and 1 <= int(place) <= len(manifest.batches) \
            and partition_key == f"{prefix}{int(place):05d}":
        return manifest.batches[int(place) - 1].key
    raise MigrationError(
        f"Export {manifest.path} has no batch partition {partition_key!r} (its partitions "
        f"are {prefix}...).",
        "The export was re-taken (another source state or batch size) after this run was "
        "launched; load the current export's partitions (backfill failed and missing).")


def batches_with_a_passed_check(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey,
                                partitions_name: str = BATCH_PARTITIONS_NAME) -> set[str]:
    """Current batch partitions whose latest ``batch_matches_export`` result passed and is
    current: it belongs to the partition's latest materialization.

    The one definition of "this batch is proven" that ``backfill`` (what to load again),
    ``checkpoint-assets checks`` (n/m passed) and the publish gate share. A result of an
    earlier materialization does not count: a run stopped between a batch's
    materialization and its check result leaves the partition materialized but unproven.
    One query for all partitions. ``partitions_name``: the migration's batches, or the
    rollback's.
    """
    current = set(instance.get_dynamic_partitions(partitions_name))
    return {info.partition_key for info in
            instance.event_log_storage.get_asset_check_partition_info([check_key])
            if info.partition_key in current and info.is_current
            and info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED}


# The batch check's metadata entry holding its certificate (engine/verify/certificates.py).
CERTIFICATE_METADATA = "certificate"
_HISTORY_PAGE = 500


def batch_certificates(instance: dg.DagsterInstance,
                       check_key: dg.AssetCheckKey) -> dict[str, BatchCertificate]:
    """The certificates of the proven batches (:func:`batches_with_a_passed_check`), by
    export batch SHA-256: each read from the partition's current passed result, the newest
    passed result of that partition. Reads the check's passed results newest first, a page
    of them per query, until every proven batch has its own."""
    proven = batches_with_a_passed_check(instance, check_key)
    found: dict[str, BatchCertificate] = {}
    seen: set[str] = set()
    cursor = None
    while len(seen) < len(proven):
        page = instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=_HISTORY_PAGE, cursor=cursor,
            status={AssetCheckExecutionRecordStatus.SUCCEEDED})
        for record in page:
            if record.partition not in proven or record.partition in seen:
                continue
            seen.add(record.partition)
            evaluation = record.evaluation
            entry = evaluation.metadata.get(CERTIFICATE_METADATA) if evaluation else None
            certificate = BatchCertificate.from_json(
                getattr(entry, "value", None),
                recorded_by=f"run {record.run_id[:8]}")
            if certificate is not None:
                found[certificate.batch_sha256] = certificate
        if len(page) < _HISTORY_PAGE:
            break
        cursor = page[-1].id
    return found


# A backfill (UI or `checkpoint-assets migrate`) loads up to this many consecutive batches
# per Dagster run, each batch still in its own transaction with its own materialization and
# check result: a run costs about half a second in-process and seconds under dagster dev.
# Measured on 100K checkpoints (101 batches), dagster dev backfill: 10 per run 74.6 s,
# 25 per run 63.1 s (benchmarks/run.py --dagster-sizes 100000).
BATCHES_PER_RUN = 25

# --------------------------------------------------------------------------- assets

GROUP_NAME = "checkpoint_migration"
SQLITE_KIND = "sqlite"
POSTGRES_KIND = "postgres"

EXPORT_ASSET = dg.AssetKey("checkpoint_export")
BATCHES_ASSET = dg.AssetKey("imported_checkpoint_batches")
VERIFICATION_ASSET = dg.AssetKey("migration_verification")
PUBLISH_ASSET = dg.AssetKey("published_checkpoints")

# Who answers for the assets in the UI (Dagster's owners: a team or an e-mail address),
# and the tags to find them by.
OWNERS = ["team:checkpoint-migration"]
ASSET_TAGS = {"migration": "langgraph-checkpoints"}

# The verification re-runs on its own when a batch changes (AutomationCondition.eager on
# the asset), evaluated by this sensor, running by default so `dagster dev` needs no click.
# Evaluated every AUTOMATION_INTERVAL_SECONDS by the daemon.
AUTOMATION_SENSOR = "verification_follows_batches"
AUTOMATION_INTERVAL_SECONDS = 10

# --------------------------------------------------------------------------- checks

EXPORT_COUNTS_MATCH_SOURCE = "export_counts_match_source"
EXPORT_FILE_VERIFIES = "export_file_verifies"
BATCH_MATCHES_EXPORT = "batch_matches_export"
PUBLISHED_MATCHES_EXPORT = "published_matches_export"

EXPORT_CHECK_NAMES = (EXPORT_COUNTS_MATCH_SOURCE, EXPORT_FILE_VERIFIES)
# The verification's checks: the engine's specs (name, description, severity) are the
# contract. A spec with ``warning`` reports a risk with severity WARN: it never blocks and
# never fails a migration.
VERIFICATION_CHECK_SPECS = CHECKS
VERIFICATION_CHECK_NAMES = CHECK_NAMES
VERIFICATION_WARNING_CHECKS = tuple(spec.name for spec in CHECKS if spec.warning)

# --------------------------------------------------------------------------- concurrency

# Every step that talks to the target PostgreSQL claims a slot in this pool, whichever front
# end started it (dagster dev, a backfill, `checkpoint-assets migrate`). The shipped
# dagster.yaml limits pools to DEFAULT_POOL_LIMIT; change it per deployment with
# `dagster instance concurrency set checkpoint_assets_postgres N`.
TARGET_POOL = "checkpoint_assets_postgres"
DEFAULT_POOL_LIMIT = 4

# --------------------------------------------------------------------------- retries

# Two layers, on purpose. The engine retries a transient error (connection lost, deadlock,
# serialization failure) ENGINE_ATTEMPTS times within seconds, reusing the batch it already
# read and converted. If that is not enough (a server restart, a failover), Dagster retries
# the step BATCH_MAX_RETRIES more times after BATCH_RETRY_DELAY_SECONDS, doubling each time.
# Every other failure (conflict, digest mismatch, bad input) is not retried.
ENGINE_ATTEMPTS = 3
ENGINE_BACKOFF_SECONDS = 1.0
BATCH_MAX_RETRIES = 2
BATCH_RETRY_DELAY_SECONDS = 10.0
batch_retry_policy = dg.RetryPolicy(
    max_retries=BATCH_MAX_RETRIES,
    delay=BATCH_RETRY_DELAY_SECONDS,
    backoff=dg.Backoff.EXPONENTIAL,
)

# --------------------------------------------------------------------------- run tags

FRONT_END_TAG = "checkpoint_assets/front_end"
MIGRATION_ID_TAG = "checkpoint_assets/migration_id"
# "<host>:<pid>:<process start time>" of the process that executes an in-process run, so a
# later command can tell a run whose process was killed from one still going.
PROCESS_TAG = "checkpoint_assets/process"

# --------------------------------------------------------------------------- the way back

# The rollback group (PostgreSQL -> SQLite): a snapshot export of PostgresSaver's tables,
# one dynamic partition per batch restored into SQLite (keys in the same g<id>-bNNNNN
# form), and the verification that publishes a new SQLite file once every check passed.
ROLLBACK_GROUP_NAME = "checkpoint_rollback"
ROLLBACK_PARTITIONS_NAME = "rollback_batches"
rollback_partitions = dg.DynamicPartitionsDefinition(name=ROLLBACK_PARTITIONS_NAME)
ROLLBACK_EXPORT_ASSET = dg.AssetKey("rollback_export")
RESTORED_BATCHES_ASSET = dg.AssetKey("restored_checkpoint_batches")
ROLLBACK_VERIFICATION_ASSET = dg.AssetKey("rollback_verification")
RESTORED_BATCH_MATCHES_EXPORT = "restored_batch_matches_export"

# --------------------------------------------------------------------------- live migration

# A source still written (group checkpoint_live): each sync generation moved into the
# target (`target_synced`), and the cutover that proves the target equal once the writers
# stopped (`checkpoint_cutover`). Unpartitioned: one materialization per sync, per cutover.
LIVE_GROUP_NAME = "checkpoint_live"
SYNC_ASSET = dg.AssetKey("target_synced")
CUTOVER_ASSET = dg.AssetKey("checkpoint_cutover")
SYNC_MOVED_EVERY_CHANGED_THREAD = "sync_moved_every_changed_thread"
CUTOVER_WINDOW = "cutover_window"
CUTOVER_WRITERS_QUIET = "writers_quiet_during_cutover"
CUTOVER_EVERY_THREAD_PROVEN_EQUAL = "every_thread_proven_equal"
CUTOVER_CHECK_NAMES = (CUTOVER_WINDOW, CUTOVER_WRITERS_QUIET, CUTOVER_EVERY_THREAD_PROVEN_EQUAL)
