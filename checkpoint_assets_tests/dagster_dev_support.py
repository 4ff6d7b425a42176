"""A headless ``dagster dev`` driven over GraphQL, for tests and benchmarks.

Started in its own process group, bound to 127.0.0.1 on a free port, polled on
/server_info, stopped with SIGINT to the group (as Ctrl-C would).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
LOCATION = "checkpoint_assets"
STARTUP_SECONDS = 60
GROUP_EXIT_SECONDS = 10  # for dagster dev's children to finish their own shutdown


class DagsterDev:
    """A headless ``dagster dev`` in its own process group, bound to 127.0.0.1."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_handle = log.open("wb")
        dagster = Path(sys.executable).with_name("dagster")
        self.process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_until_serving(self) -> None:
        """Poll /server_info, then wait until the code location has loaded."""
        wait_for(lambda: self._get("/server_info"), STARTUP_SECONDS, "webserver", self)
        query = ("{ workspaceOrError { ... on Workspace { locationEntries { name "
                 "loadStatus locationOrLoadError { __typename ... on PythonError { message } }"
                 " } } } }")

        def loaded() -> bool:
            entries = self.gql(query)["workspaceOrError"]["locationEntries"]
            entry = next(e for e in entries if e["name"] == LOCATION)
            error = entry["locationOrLoadError"]
            assert error is None or error["__typename"] != "PythonError", error
            return entry["loadStatus"] == "LOADED" and error is not None

        wait_for(loaded, STARTUP_SECONDS, "code location", self)

    def _get(self, path: str) -> bool:
        try:
            return requests.get(self.url + path, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one GraphQL operation; fail on transport or GraphQL errors."""
        response = requests.post(self.url + "/graphql",
                                 json={"query": query, "variables": variables or {}},
                                 timeout=30)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def stop(self) -> None:
        """SIGINT to the whole process group, as Ctrl-C in a terminal would; then nothing of
        the group may stay (a code server's gRPC child can outlive dagster dev itself)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if not _group_ends(self.process.pid, GROUP_EXIT_SECONDS):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log_handle.close()

    def tail(self) -> str:
        """The end of dagster dev's output, for failure messages."""
        return self.log.read_text(errors="replace")[-4000:]


def _group_ends(pgid: int, seconds: float) -> bool:
    """True once no process of group ``pgid`` is left, within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def wait_for(condition: Callable[[], Any], seconds: float, what: str,
             dev: DagsterDev | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {seconds} s waiting for {what}\n"
                       + (dev.tail() if dev else ""))


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""
REEXECUTE_BACKFILL = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs { runId status startTime endTime tags { key value } } }
  }
}"""
PARTITION_STATUSES = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetPartitionStatuses {
    ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
                                      unmaterializedPartitions materializingPartitions } } } }
}"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $name: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $name, partition: $partition, limit: 1) {
    runId status partition evaluation { success metadataEntries { label } }
  }
}"""
# What the check's Partitions view asks (the UI's AssetCheckPartitionHealthQuery).
CHECK_PARTITION_STATUSES = """
query($key: AssetKeyInput!, $name: String!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetCheckOrError(checkName: $name) {
    ... on AssetCheck { partitionKeysByDimension { partitionKeys }
      partitionStatuses { ... on AssetCheckDefaultPartitionStatuses {
        succeededPartitions failedPartitions inProgressPartitions skippedPartitions
        executionFailedPartitions } } } } } }
}"""
# What the asset's Checks tab and the graph node show per check: the result for the
# asset's latest materialization.
LATEST_CHECKS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError {
    ... on AssetChecks { checks { name executionForLatestMaterialization {
      runId status evaluation { success description } } } } } } }
}"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
  }
}"""
RUN_STATUS = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }
"""
RUN_TAGS = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }
"""
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def asset_key(key: Any) -> dict[str, Any]:
    """A GraphQL AssetKeyInput."""
    return {"path": list(key.path)}


def backfill(dev: DagsterDev, backfill_id: str) -> dict[str, Any]:
    """The backfill's status and runs."""
    return dev.gql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]


def finished_backfill(dev: DagsterDev, backfill_id: str) -> dict[str, Any] | None:
    """The backfill once it has reached a terminal status, else None."""
    data = backfill(dev, backfill_id)
    return data if data["status"] in TERMINAL_BACKFILL else None


def finished_runs(dev: DagsterDev, backfill_id: str) -> list[dict[str, Any]] | None:
    """The backfill's runs once there are some and all have finished, else None."""
    runs = backfill(dev, backfill_id)["runs"]
    return runs if runs and all(r["status"] in TERMINAL_RUN for r in runs) else None


def run_status(dev: DagsterDev, run_id: str) -> str | None:
    """The run's status once terminal, else None."""
    status = dev.gql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
    return status if status in TERMINAL_RUN else None


def check_partition_statuses(dev: DagsterDev, asset: Any, check: str) -> dict[str, Any]:
    """The per-partition statuses of a partitioned check, and its partition keys, as the
    check's Partitions view reads them."""
    data = dev.gql(CHECK_PARTITION_STATUSES, {"key": asset_key(asset), "name": check})
    node = data["assetNodeOrError"]["assetCheckOrError"]
    return {**(node["partitionStatuses"] or {}),
            "partitionKeys": node["partitionKeysByDimension"][0]["partitionKeys"]}


def latest_check_statuses(dev: DagsterDev, asset: Any) -> dict[str, dict[str, Any] | None]:
    """{check name: its execution for the asset's latest materialization, or None}."""
    data = dev.gql(LATEST_CHECKS, {"key": asset_key(asset)})["assetNodeOrError"]
    return {c["name"]: c["executionForLatestMaterialization"]
            for c in data["assetChecksOrError"]["checks"]}


def tag(run: dict[str, Any], key: str) -> str | None:
    """A tag of a GraphQL run."""
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def partition_span(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """(first, last) partition key a GraphQL run covers: a range from a multi-run
    backfill, or one partition as (key, key)."""
    single = tag(run, "dagster/partition")
    if single is not None:
        return single, single
    return (tag(run, "dagster/asset_partition_range_start"),
            tag(run, "dagster/asset_partition_range_end"))
