"""The three assets when the code location holds a fleet (CHECKPOINT_ASSETS_FLEET).

The same assets, checks and partition set as for one source: the export asset exports
every source of the fleet and registers the batch partitions of each (its label in front,
``replica-1-g<export id>-b00001``, so a source's batches sit together in the UI and a
range selects them); a batch partition is loaded from the export of the source its key
names; the verification verifies every source and passes only when every source passes,
its checks naming the sources that failed and its evidence holding the per-source table.
"""

from pathlib import Path
from typing import Any

import dagster as dg

from checkpoint_assets.assets.dagster_metadata import check_metadata, severity
from checkpoint_assets.engine.fleet.fleet_file import Fleet
from checkpoint_assets.engine.operations import fleet as fleet_ops
from checkpoint_assets.engine.operations import migration
from checkpoint_assets.engine.operations.fleet import FleetExportReport, FleetVerifyReport
from checkpoint_assets.engine.sync.export_chain import ExportChain
from checkpoint_assets.partitions import (
    EXPORT_COUNTS_MATCH_SOURCE,
    EXPORT_FILE_VERIFIES,
    VERIFICATION_CHECK_SPECS,
    chain_partition_keys,
    fleet_label_of,
    partition_keys,
)

SOURCES_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("source", "string"), dg.TableColumn("file", "string"),
    dg.TableColumn("threads", "int"), dg.TableColumn("checkpoints", "int"),
    dg.TableColumn("batches", "int"), dg.TableColumn("result", "string"),
    dg.TableColumn("problem", "string")])


def open_fleet(path: str) -> Fleet:
    """The fleet file the source resource names."""
    return fleet_ops.open_fleet(Path(path))


# --- the export asset -------------------------------------------------------------------


def export_failed_checks(message: str) -> list[dg.AssetCheckResult]:
    """Both export checks failed with ``message`` (the fleet could not be exported, e.g.
    thread ids two files hold with different content)."""
    return [dg.AssetCheckResult(check_name=name, passed=False, metadata=check_metadata(
        expected="an export of every source of the fleet", actual=message))
        for name in (EXPORT_COUNTS_MATCH_SOURCE, EXPORT_FILE_VERIFIES)]


def exported_keys(exported: FleetExportReport) -> list[str]:
    """The batch partition keys of every source that was exported, source by source."""
    return [key for e in exported.exports if e.manifest is not None
            for key in partition_keys(e.manifest)]


def export_result(exported: FleetExportReport, files: dict[str, dg.AssetCheckResult],
                  fleet_path: str, added: list[str], removed: list[str],
                  ) -> dg.MaterializeResult:
    """The export asset's materialization of a fleet: a table of the sources (or why one
    failed) and both checks over every source (``files``: each exported source's
    export_file_verifies result, by label)."""
    keys = exported_keys(exported)
    return dg.MaterializeResult(
        metadata={
            "fleet": dg.MetadataValue.path(fleet_path),
            "sources": dg.MetadataValue.int(len(exported.exports)),
            "sources_failed": dg.MetadataValue.json([e.member.label for e in exported.failed]),
            "dagster/row_count": dg.MetadataValue.int(sum(
                e.manifest.checkpoints for e in exported.exports if e.manifest)),
            "batches": dg.MetadataValue.int(len(keys)),
            "partitions_added": dg.MetadataValue.int(len(added)),
            "partitions_removed": dg.MetadataValue.int(len(removed)),
            "shared_thread_ids": dg.MetadataValue.json(
                [s.to_json() for s in exported.shared.copies[:50]]),
            "copied_sources": dg.MetadataValue.json(exported.shared.copied),
            "source_table": _sources_table(exported),
        },
        check_results=[_fleet_counts_check(exported), _fleet_file_check(exported, files)])


def _sources_table(exported: FleetExportReport) -> dg.MetadataValue:
    rows = [dg.TableRecord({
        "source": e.member.label, "file": str(e.member.source),
        "threads": e.manifest.threads if e.manifest else 0,
        "checkpoints": e.manifest.checkpoints if e.manifest else 0,
        "batches": len(e.manifest.batches) if e.manifest else 0,
        "result": "exported" if e.manifest else "FAILED", "problem": e.error or ""})
        for e in exported.exports[:500]]
    return dg.MetadataValue.table(rows, schema=SOURCES_TABLE)


def _fleet_counts_check(exported: FleetExportReport) -> dg.AssetCheckResult:
    differing = []
    for e in exported.exports:
        if e.manifest is None or e.counts is None:
            differing.append({"source": e.member.label, "problem": e.error})
            continue
        ours = [e.manifest.checkpoints, e.manifest.writes, e.manifest.threads]
        theirs = [e.counts.checkpoints, e.counts.writes, e.counts.threads]
        if ours != theirs:
            differing.append({"source": e.member.label, "export": ours, "sqlite": theirs})
    return dg.AssetCheckResult(
        check_name=EXPORT_COUNTS_MATCH_SOURCE, passed=not differing,
        metadata=check_metadata(
            expected="each source's checkpoints, writes and threads in its export",
            actual=f"{len(differing)} of {len(exported.exports)} source(s) differ or "
                   "failed" if differing else f"{len(exported.exports)} source(s) equal",
            mismatches=differing[:50]))


def _fleet_file_check(exported: FleetExportReport,
                      files: dict[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    failing = [{"source": e.member.label, "problem": e.error} for e in exported.failed]
    failing += [{"source": label, "file": str(check.metadata.get("mismatches"))}
                for label, check in files.items() if not check.passed]
    return dg.AssetCheckResult(
        check_name=EXPORT_FILE_VERIFIES, passed=not failing,
        metadata=check_metadata(
            expected="every source's export matches the digests in its own footer",
            actual=f"{len(failing)} source(s) failed" if failing
            else f"{len(files)} export file(s) verified", mismatches=failing[:50]))


# --- the batches asset ------------------------------------------------------------------


def fleet_chains_for(fleet_path: str, keys: list[str], target_dsn: str, schema: str | None,
                     aes_key: str | None) -> tuple[dict[str, ExportChain], set[str], str]:
    """({partition key: its source's export chain} for ``keys``, every partition key the
    fleet's exports and syncs made, the target's identity): each source the keys name is
    prepared as one source's load is (its export taken from it; PostgresSaver's tables set
    up once). A key naming no source of the fleet maps to nothing (a stray key)."""
    fleet = open_fleet(fleet_path)
    chains = fleet_ops.fleet_chains(fleet)
    known = {key for chain in chains.values() for key in chain_partition_keys(chain).values()}
    by_key: dict[str, ExportChain] = {}
    identity = ""
    for label in sorted({fleet_label_of(key) for key in keys} - {None}):
        if label not in chains:
            continue
        member = fleet.member(label)
        ready = migration.prepare_load(migration.PrepareLoadRequest(
            source=member.source, export=member.export, target_dsn=target_dsn,
            schema=schema, aes_key=aes_key))
        identity = ready.identity
        by_key.update({key: ready.chain for key in keys if fleet_label_of(key) == label})
    return by_key, known, identity


# --- the verification asset -------------------------------------------------------------


def fleet_check_results(report: FleetVerifyReport) -> list[dg.AssetCheckResult]:
    """One result per verification check: passed when it passed for every source; the
    sources it failed for (or that could not be verified) are its mismatches."""
    results = []
    for spec in VERIFICATION_CHECK_SPECS:
        failing = []
        for r in report.results:
            if r.report is None:
                failing.append({"source": r.member.label, "problem": r.error})
                continue
            outcome = r.report.checks.get(spec.name)
            if outcome is not None and not outcome.passed:
                failing.append({"source": r.member.label, "actual": str(outcome.actual)[:300]})
        results.append(dg.AssetCheckResult(
            check_name=spec.name, passed=not failing,
            severity=severity(spec),
            description=spec.description,
            metadata=check_metadata(
                expected=f"passed for each of the {len(report.results)} source(s)",
                actual=f"failed for {len(failing)} source(s)" if failing
                else f"passed for all {len(report.results)} source(s)",
                mismatches=failing[:50])))
    return results


def fleet_verification_metadata(report: FleetVerifyReport) -> dict[str, dg.MetadataValue]:
    """The materialization's metadata: the result per source and the totals."""
    def side(r: Any, name: str) -> int:
        return ((r.report.counts.get(name) or {}).get("checkpoints") or 0) if r.report else 0
    rows = [dg.TableRecord({
        "source": r.member.label, "file": str(r.member.source),
        "threads": sum(len(b.thread_ids) for b in r.report.batches) if r.report else 0,
        "checkpoints": side(r, "target"), "batches": len(r.report.batches) if r.report else 0,
        "result": "PASSED" if r.passed else "FAILED",
        "problem": r.error or ", ".join(r.failing_checks())}) for r in report.results[:500]]
    return {
        "passed": dg.MetadataValue.bool(report.passed),
        "sources": dg.MetadataValue.int(len(report.results)),
        "sources_failed": dg.MetadataValue.json(
            [r.member.label for r in report.results if not r.passed]),
        "dagster/row_count": dg.MetadataValue.int(sum(side(r, "target")
                                                      for r in report.results)),
        "sqlite_checkpoints": dg.MetadataValue.int(sum(side(r, "sqlite")
                                                       for r in report.results)),
        "export_checkpoints": dg.MetadataValue.int(sum(side(r, "export")
                                                       for r in report.results)),
        "source_table": dg.MetadataValue.table(rows, schema=SOURCES_TABLE),
        "target": dg.MetadataValue.text(report.target_display),
    }
