"""What every in-process run of the assets shares: the project's instance, the console
log level, why a run failed (as its step failure recorded it), stopping after a Ctrl-C."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import FAILURE_KIND_METADATA
from checkpoint_assets.assets.imported_batches import (
    FAILED_BATCH_KINDS_METADATA,
    FAILED_BATCHES_METADATA,
)
from checkpoint_assets.engine.core.errors import FailureKind
from checkpoint_assets.engine.operations import contract
from checkpoint_assets.project import open_project_instance


def project_instance() -> dg.DagsterInstance:
    """The project's persistent Dagster instance (use it as a context manager).

    DAGSTER_HOME defaults to ``<project root>/.dagster_home``, created with the shipped
    dagster.yaml (PostgreSQL storage when CHECKPOINT_ASSETS_DAGSTER_PG_HOST is set).
    """
    return open_project_instance()


def raise_if_stop_requested() -> None:
    """Stop between runs after a Ctrl-C that Dagster turned into the failure of the run in
    this process (it then returns normally)."""
    if contract.stop_was_requested():
        raise KeyboardInterrupt


@dataclass
class StepFailure:
    """Why a run failed, as its step failure recorded it: the message and kind, and for a
    batch run each failed batch's reason and kind."""

    message: str
    kind: FailureKind
    batch_reasons: dict[str, str] = field(default_factory=dict)
    batch_kinds: dict[str, FailureKind] = field(default_factory=dict)

    @classmethod
    def of(cls, run: dg.ExecuteInProcessResult) -> StepFailure:
        """The first step failure of ``run``."""
        for event in run.all_events:
            if not event.is_step_failure:
                continue
            data = event.step_failure_data
            user = data.user_failure_data
            if user is None:  # not a dg.Failure: an error Dagster caught
                message = data.error.message.strip() if data.error else ""
                return cls(message or NO_MESSAGE, FailureKind.UNEXPECTED)
            metadata = {name: value.value for name, value in user.metadata.items()}
            reasons = metadata.get(FAILED_BATCHES_METADATA)
            kinds = metadata.get(FAILED_BATCH_KINDS_METADATA)
            return cls(user.description or (data.error.message.strip() if data.error
                                            else NO_MESSAGE),
                       FailureKind(metadata.get(FAILURE_KIND_METADATA,
                                                FailureKind.UNEXPECTED.value)),
                       {str(k): str(v) for k, v in (reasons or {}).items()},
                       {str(k): FailureKind(v) for k, v in (kinds or {}).items()})
        return cls(NO_MESSAGE, FailureKind.UNEXPECTED)

    def batch_reason(self, key: str) -> str:
        """Why batch ``key`` was not loaded."""
        return self.batch_reasons.get(key) or self.message

    def batch_kind(self, key: str) -> FailureKind:
        """The kind of batch ``key``'s failure."""
        return self.batch_kinds.get(key, self.kind)


NO_MESSAGE = "the run failed (see its events in the Dagster UI)"


def console_log(level: str) -> dict[str, Any]:
    """Console logging for in-process runs: the assets' own messages (INFO), not every
    Dagster event (DEBUG). Every event is stored in the instance either way. Override with
    CHECKPOINT_ASSETS_LOG_LEVEL."""
    return {"loggers": {"console": {"config": {"log_level": level}}}}


@contextmanager
def instance_or_project(instance: dg.DagsterInstance | None) -> Iterator[dg.DagsterInstance]:
    """``instance``, or the project's own, opened for the block and closed after it."""
    if instance is not None:
        yield instance
        return
    with project_instance() as own:
        yield own
