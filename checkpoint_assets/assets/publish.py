"""Staging mode's last step: publish the verified staging schema into the target schema."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
)

from checkpoint_assets.assets.dagster_metadata import (
    check_metadata,
    error_text,
    failure,
    scrubbed_traceback,
)
from checkpoint_assets.engine.core.errors import ConflictError, FailureKind
from checkpoint_assets.engine.operations import migration
from checkpoint_assets.engine.operations.contract import failure_kind_of
from checkpoint_assets.partitions import (
    ASSET_TAGS,
    BATCH_MATCHES_EXPORT,
    BATCH_PARTITIONS_NAME,
    BATCHES_ASSET,
    EXPORT_ASSET,
    EXPORT_CHECK_NAMES,
    GROUP_NAME,
    OWNERS,
    POSTGRES_KIND,
    PUBLISH_ASSET,
    PUBLISHED_MATCHES_EXPORT,
    TARGET_POOL,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_NAMES,
    VERIFICATION_WARNING_CHECKS,
    batches_with_a_passed_check,
)
from checkpoint_assets.resources import (
    ExportFileResource,
    PostgresTargetResource,
    SqliteSourceResource,
)


@dg.asset(
    key=PUBLISH_ASSET,
    group_name=GROUP_NAME,
    kinds={POSTGRES_KIND},
    deps=[VERIFICATION_ASSET],
    owners=OWNERS,
    tags=ASSET_TAGS,
    pool=TARGET_POOL,
    check_specs=[dg.AssetCheckSpec(
        PUBLISHED_MATCHES_EXPORT, asset=PUBLISH_ASSET, blocking=True,
        description="Every batch in the target schema has the export's counts and content "
                    "digest after publishing.")],
)
def published_checkpoints(
    context: dg.AssetExecutionContext,
    source: SqliteSourceResource,
    export_file: ExportFileResource,
    target: PostgresTargetResource,
) -> Iterator[Any]:
    """Staging mode: every staged checkpoint moved into the target schema in one transaction.

    Runs only after every check on the staged data has passed: the latest result of each
    export, batch and verification check must be a pass (warnings aside), and no batch may
    have been loaded since the verification ran. Rows already in the target are handled by
    the loader's conflict rules (same content: skipped; different content: nothing is
    published).
    Publishing again is safe and inserts nothing. The staging schema is left in place;
    drop it once you no longer need it.
    """
    final_display = target.display(target.final_schema())
    problems = unpassed_checks(context.instance)
    if problems:
        yield dg.AssetCheckResult(
            check_name=PUBLISHED_MATCHES_EXPORT, passed=False,
            metadata=check_metadata(expected="every check on the staged data passed",
                                    actual="not published", mismatches=problems))
        raise failure("Not published: not every check on the staged data has passed.",
                      {"problems": problems}, kind=FailureKind.MISMATCH)
    staging_schema = target.load_schema()
    try:
        done = migration.publish(migration.PublishRequest(
            export=export_file.resolve_path(source.path), target_dsn=target.dsn,
            staging_schema=staging_schema, final_schema=target.final_schema(),
            aes_key=source.aes_key))
    except ConflictError as exc:
        yield dg.AssetCheckResult(
            check_name=PUBLISHED_MATCHES_EXPORT, passed=False,
            metadata=check_metadata(expected="no conflicting rows in the target",
                                    actual=error_text(exc, target.dsn),
                                    mismatches=exc.keys[:50], mismatch_count=len(exc.keys)))
        raise failure(f"Not published: conflict in {final_display}.",
                      kind=FailureKind.CONFLICT) from None
    except Exception as exc:
        yield dg.AssetCheckResult(
            check_name=PUBLISHED_MATCHES_EXPORT, passed=False,
            metadata=check_metadata(expected="published", actual=error_text(exc, target.dsn)))
        raise failure(f"Publishing into {final_display} failed: "
                      f"{error_text(exc, target.dsn)}",
                      {"traceback": scrubbed_traceback(target.dsn)},
                      kind=failure_kind_of(exc)) from None
    result, manifest, comparisons = done.result, done.manifest, done.comparisons
    bad = [{"batch": c.key, "expected": c.expected_counts, "actual": c.actual_counts,
            "expected_digest": c.expected_digest, "actual_digest": c.actual_digest}
           for c in comparisons if not c.passed]
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(sum(result.rows.values())),
            "rows": dg.MetadataValue.json(result.rows),
            "inserted": dg.MetadataValue.json(result.inserted),
            "already_present": dg.MetadataValue.json(result.already_present),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "staging": dg.MetadataValue.text(done.staging_display),
            "target": dg.MetadataValue.text(done.final_display),
        },
        check_results=[dg.AssetCheckResult(
            check_name=PUBLISHED_MATCHES_EXPORT, passed=not bad,
            metadata=check_metadata(
                expected={"batches": len(comparisons), "checkpoints": manifest.checkpoints},
                actual={"batches_equal": len(comparisons) - len(bad)},
                mismatches=bad))],
    )


def unpassed_checks(instance: dg.DagsterInstance) -> list[dict[str, str]]:
    """Why the staged data may not be published yet (empty when it may)."""
    problems: list[dict[str, str]] = []
    verification = instance.fetch_materializations(VERIFICATION_ASSET, limit=1).records
    if not verification:
        return [{"problem": "the verification asset has never been materialized"}]
    batches = instance.fetch_materializations(BATCHES_ASSET, limit=1).records
    if batches and batches[0].storage_id > verification[0].storage_id:
        problems.append({"problem": "a batch was loaded after the last verification; "
                                    "materialize the verification again"})
    keys = [dg.AssetCheckKey(EXPORT_ASSET, name) for name in EXPORT_CHECK_NAMES]
    keys += [dg.AssetCheckKey(VERIFICATION_ASSET, name) for name in VERIFICATION_CHECK_NAMES
             if name not in VERIFICATION_WARNING_CHECKS]
    for key in keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None or record.status != AssetCheckExecutionRecordStatus.SUCCEEDED:
            problems.append({"check": key.to_user_string(),
                             "problem": "not passed" if record else "never evaluated"})
        elif (key.asset_key == VERIFICATION_ASSET
              and record.run_id != verification[0].run_id):
            problems.append({"check": key.to_user_string(),
                             "problem": "not evaluated on the latest verification"})
    batch_check = dg.AssetCheckKey(BATCHES_ASSET, BATCH_MATCHES_EXPORT)
    current = set(instance.get_dynamic_partitions(BATCH_PARTITIONS_NAME))
    passed = batches_with_a_passed_check(instance, batch_check)
    problems += [{"check": f"{batch_check.to_user_string()}[{key}]",
                  "problem": "not passed on the batch's latest load"}
                 for key in sorted(current - passed)]
    return problems
