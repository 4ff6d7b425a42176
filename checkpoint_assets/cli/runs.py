"""Commands that run the Dagster assets in-process: ``migrate``, ``backfill``; and
``checks``, which reads their check results from the instance.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from checkpoint_assets.cli.arguments import (
    migration_evidence_path,
)
from checkpoint_assets.cli.exit_status import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_MISMATCH,
    EXIT_OK,
)
from checkpoint_assets.cli.fleet import (
    fleet_evidence_path,
    fleet_of,
    fleet_settings,
    plan_text,
    wants_fleet,
)
from checkpoint_assets.cli.output import (
    emit,
    print_evidence_path,
)
from checkpoint_assets.engine.core.errors import FailureKind
from checkpoint_assets.engine.operations import contract
from checkpoint_assets.settings import (
    Settings,
)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """migrate: export + import + verify, run as the Dagster assets against the instance;
    the verification's evidence report is written beside the export (or to --evidence).
    Several sources (a fleet): planned, then the same assets over every source."""
    if wants_fleet(args, settings):
        return _fleet_run(args, settings, plan=True)
    status = run_migration(args, settings)
    print_evidence_path(args, migration_evidence_path(args))
    return status


def run_migration(args: argparse.Namespace, settings: Settings) -> int:
    """Run the migration, write its evidence report, print its summary; the exit status."""
    from checkpoint_assets.runner import migrate_in_process

    return _migration_status(args, migrate_in_process(_runner_settings(args, settings)))


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """backfill: only the FAILED and missing batch partitions, then the verification (and
    its evidence report, as for migrate)."""
    from checkpoint_assets.runner import backfill_in_process

    if wants_fleet(args, settings):
        return _fleet_run(args, settings, plan=False)
    status = _migration_status(args, backfill_in_process(_runner_settings(args, settings)))
    print_evidence_path(args, migration_evidence_path(args))
    return status


def _fleet_run(args: argparse.Namespace, settings: Settings, *, plan: bool) -> int:
    """migrate (``plan``: the fleet is planned from --source first) or backfill of a
    fleet: the runs, the fleet's evidence report beside its fleet file (or --evidence)."""
    from checkpoint_assets.runner import backfill_in_process, migrate_in_process

    fleet = fleet_of(args, plan=plan)
    if not args.json:
        print(plan_text(fleet), flush=True)
    runner_settings = fleet_settings(_runner_settings(args, settings), fleet)
    args.evidence = args.evidence or fleet_evidence_path(fleet)
    if plan:
        result = migrate_in_process(runner_settings)
    else:  # a fleet's backfill, of one source's partitions with --fleet-source
        label = getattr(args, "fleet_source", None)
        if label is not None:
            fleet.member(label)  # a label the fleet does not have is refused by name
        result = backfill_in_process(runner_settings, only_source=label)
    status = _migration_status(args, result)
    print_evidence_path(args, args.evidence)
    return status


def _runner_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """What migrate and backfill pass to the in-process runner: the flags over
    ``settings``."""
    return replace(settings, source=args.source, export=args.export,
                   target_schema=args.schema, batch_size=args.batch_size,
                   threads=args.threads or settings.threads,
                   readback_threads=None if args.readback_all else settings.readback_threads,
                   verify_every_batch=args.verify_every_batch or settings.verify_every_batch,
                   strict_versions=args.strict_versions or settings.strict_versions)


def _migration_status(args: argparse.Namespace, result: Any) -> int:
    """Write the run's evidence report, print the summary, return the exit status."""
    evidence = contract.write_evidence(migration_evidence_path(args), result.evidence
                              or _unverified_evidence(result))
    emit(args, {**result.to_json(), "evidence": str(evidence)}, result.render())
    if result.passed:
        return EXIT_OK
    if any(r.step == "export" and r.failure is FailureKind.BAD_INPUT for r in result.runs):
        return EXIT_BAD_INPUT  # the export refused its input: nothing was loaded
    return EXIT_CONFLICT if result.conflicted_batches else EXIT_MISMATCH


def _unverified_evidence(result: Any) -> str:
    """The evidence file of a migration whose verification did not materialize: why,
    instead of a previous run's report."""
    return (f"# Migration evidence: FAILED\n\nMigration {result.migration_id} has no "
            "verification: it did not run to the end. What happened:\n\n"
            "```\n" + result.render() + "\n```\n")


def cmd_checks(args: argparse.Namespace, settings: Settings) -> int:
    """checks: the latest evaluation of every asset check, from the Dagster instance."""
    from checkpoint_assets.check_results import (
        latest_check_evaluations,
        render_check_rows,
    )
    from checkpoint_assets.run_steps import project_instance

    with project_instance() as instance:
        rows = latest_check_evaluations(instance)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2, default=str))
    else:
        print(render_check_rows(rows))
    # "ok": passed, or a warning-severity check (a reported risk, not a failure).
    all_ok = bool(rows) and all(row.ok for row in rows)
    return EXIT_OK if all_ok else EXIT_MISMATCH
