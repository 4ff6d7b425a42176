"""Typed Dagster metadata for check results and materializations, and the failure path.

Every check result carries what a reviewer needs to act: ``expected``, ``actual``,
``mismatch_count`` and the keys of the mismatches (``mismatch_keys``), plus notes.
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg

from checkpoint_assets.engine.core.errors import FailureKind
from checkpoint_assets.engine.operations.contract import without_secrets
from checkpoint_assets.engine.verify.check_table import CheckOutcome, CheckSpec

# The step failure's metadata entry naming its FailureKind (read by the runner).
FAILURE_KIND_METADATA = "failure_kind"


def plain(value: Any) -> Any:
    """``value`` as JSON-able data (bytes and other objects become strings)."""
    return json.loads(json.dumps(value, default=_fallback))


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def typed(value: Any) -> dg.MetadataValue:
    """The most specific MetadataValue for ``value``."""
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.json(plain(value))


def check_metadata(
    *,
    expected: Any,
    actual: Any,
    mismatches: Sequence[Mapping[str, Any]] = (),
    mismatch_count: int | None = None,
    notes: Sequence[str] = (),
    **extra: Any,
) -> dict[str, dg.MetadataValue]:
    """The metadata of one check result."""
    metadata = {
        "expected": typed(expected),
        "actual": typed(actual),
        "mismatch_count": dg.MetadataValue.int(
            len(mismatches) if mismatch_count is None else mismatch_count),
        "mismatch_keys": dg.MetadataValue.json(plain(list(mismatches))),
    }
    if notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in notes))
    metadata.update({key: typed(value) for key, value in extra.items()})
    return metadata


PARTITION_FIELD = "partition"  # a mismatch's batch as the UI names it (g<id>-b00003)
EXPORT_BATCH_FIELD = "export_batch"  # the same batch as the export file names it


def with_partition_keys(mismatches: Sequence[Mapping[str, Any]],
                        partitions: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """``mismatches`` with each ``batch`` (the export file's key, batch-00003) named by its
    partition key first, as the UI shows it, and the file's key kept as ``export_batch``."""
    labelled: list[Mapping[str, Any]] = []
    for mismatch in mismatches:
        batch = mismatch.get("batch") if isinstance(mismatch, Mapping) else None
        if not isinstance(batch, str) or batch not in partitions:
            labelled.append(mismatch)
            continue
        rest = {k: v for k, v in mismatch.items() if k != "batch"}
        labelled.append({PARTITION_FIELD: partitions[batch], EXPORT_BATCH_FIELD: batch,
                         **rest})
    return labelled


def outcome_check_result(outcome: CheckOutcome, *,
                         level: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
                         description: str | None = None,
                         partitions: Mapping[str, str] | None = None,
                         **extra: Any) -> dg.AssetCheckResult:
    """The asset check result of an engine check's outcome: expected, actual, every
    mismatch (up to the listed few; with ``partitions``, {export batch key: partition
    key}, each batch named by its partition key) and notes as typed metadata, plus
    ``extra``."""
    mismatches = with_partition_keys(outcome.mismatches, partitions or {})
    return dg.AssetCheckResult(
        check_name=outcome.name, passed=outcome.passed, severity=level,
        description=description,
        metadata=check_metadata(expected=outcome.expected, actual=outcome.actual,
                                mismatches=mismatches,
                                mismatch_count=outcome.mismatch_count, notes=outcome.notes,
                                **extra))


def severity(spec: CheckSpec) -> dg.AssetCheckSeverity:
    """The severity of a failed result of the verification check ``spec``."""
    return dg.AssetCheckSeverity.WARN if spec.warning else dg.AssetCheckSeverity.ERROR


def error_text(exc: BaseException, dsn: str | None) -> str:
    """The exception's message with any password removed."""
    text = str(exc) or type(exc).__name__
    return without_secrets(text, dsn) if dsn else text


def scrubbed_traceback(dsn: str | None) -> str:
    """The traceback being handled, password-free (Dagster stores failures verbatim)."""
    text = traceback.format_exc()
    return without_secrets(text, dsn) if dsn else text


def failure(
    description: str, metadata: Mapping[str, Any] | None = None, *,
    kind: FailureKind = FailureKind.BAD_INPUT,
) -> dg.Failure:
    """A step failure that Dagster does not retry (the cause will not go away by itself),
    with its kind in the ``failure_kind`` metadata entry."""
    entries = {**(metadata or {}), FAILURE_KIND_METADATA: kind.value}
    return dg.Failure(
        description=description,
        metadata={key: typed(value) for key, value in entries.items()},
        allow_retries=False,
    )


@contextmanager
def preview_silenced() -> Iterator[None]:
    """Silence Dagster's Preview warning for a feature this project uses on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        yield
