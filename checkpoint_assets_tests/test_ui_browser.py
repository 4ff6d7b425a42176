"""The Dagster UI in a real browser: what a user sees and clicks in ``dagster dev``.

``dagster dev`` is started as the README says (the code location from workspace.yaml, the
configuration only in the environment: CHECKPOINT_ASSETS_SOURCE, ..._TARGET_DSN, a
persistent DAGSTER_HOME with the shipped dagster.yaml), and headless Chromium (Debian's
``chromium`` package at /usr/bin/chromium, driven by Playwright; never a browser downloaded
by a test tool) is pointed at it. Launches in the UI are clicks on buttons found by their
visible text, and every result is read from the rendered page, not from the API:

- on the asset graph, a user materializes the export, then backfills every batch partition
  from the partition dialog (the daemon of ``dagster dev`` runs the backfill); the
  verification runs by itself, and the graph ends with every asset check passed;
- a migration walked through a break, a repair and a new export (see that test): the
  check's Partitions view, the partition pages, the verification's checks and the graph
  say at each step what is true (an out-of-date verification says to backfill the failed
  partition first);
- a new user's first minutes (see that test): what to click first, the batch check's own
  action, the rollback's setting, a partition key added by hand.

Screenshots go to the test's tmp_path and to ``.checkpoint_assets/screenshots/`` in the
repository (git-ignored). Without /usr/bin/chromium the tests are skipped (scripts/test.sh
installs Debian's chromium when it runs as root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checkpoint_assets.assets.imported_batches import (
    CONFLICT_MARKER,
    STRAY_PARTITION,
)
from checkpoint_assets.assets.staleness import BACKFILL_FIRST, OUT_OF_DATE
from checkpoint_assets.engine.export.reader import read_batch, read_manifest
from checkpoint_assets.partitions import (
    BATCHES_ASSET,
    EXPORT_ASSET,
    EXPORT_CHECK_NAMES,
    GROUP_NAME,
    ROLLBACK_EXPORT_ASSET,
    VERIFICATION_ASSET,
    VERIFICATION_CHECK_NAMES,
    partition_keys,
    partition_keys_by_batch,
)
from checkpoint_assets.run_steps import project_instance
from checkpoint_assets.runner import migrate_in_process
from checkpoint_assets.settings import ROLLBACK_TO_ENV
from checkpoint_assets_tests.dagster_dev_support import (
    LOCATION,
    REPO,
    DagsterDev,
    partition_span,
    wait_for,
)
from checkpoint_assets_tests.dagster_support import (
    dagster_dev_project,
    definitions,
    materialize,
)
from checkpoint_assets_tests.test_dagster_backfill import plant_conflict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium misbehaves on a closed network; a fresh,
# empty profile directory is given by launch_persistent_context.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
SCREENSHOTS = REPO / ".checkpoint_assets" / "screenshots"

# The migration group's lineage (the global graph shows each group as one box once the
# code location has two groups: the migration and the rollback).
GRAPH = f"/locations/__repository__@{LOCATION}/asset-groups/{GROUP_NAME}"
ASSET_NODE = "[class*='assetNodeContainer']"  # one box of the graph, its text starts with the name
EXPECTED_CHECKS = {EXPORT_ASSET: len(EXPORT_CHECK_NAMES), BATCHES_ASSET: 1,
                   VERIFICATION_ASSET: len(VERIFICATION_CHECK_NAMES)}
RUN_SECONDS = 90        # one run: queued, a process, a step subprocess, the work
# (and for the verification, the automation sensor's interval before it)
BACKFILL_SECONDS = 150  # the daemon's backfill tick (30 s) plus the partitions' runs
RELOAD_EVERY_SECONDS = 20  # the graph updates itself; a reload now and then is a safety net


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium with a fresh, empty profile; skipped when not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package "
                    "(scripts/test.sh does, when it runs as root with apt-get)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A new tab for one test; what it showed last is kept in tmp_path (for a failure)."""
    tab = browser.new_page()
    yield tab
    with suppress(Exception):  # only a debugging aid: never an error of its own
        tab.screenshot(path=str(tmp_path / "last-page.png"))
    tab.close()


@dataclass
class Project:
    """A fresh corpus, export path, target database and DAGSTER_HOME (the shipped
    dagster.yaml), and the environment that configures them, as the README says."""

    tmp: Path
    source: Path
    export: Path
    dsn: str
    settings: dict[str, str]


def new_project(tmp_path: Path, target_dsn: str, *, threads: int, batch_size: int) -> Project:
    """A corpus of ``threads`` threads (10 checkpoints each, written by the sample graph)
    cut into batches of ``batch_size`` checkpoints, over an empty target and a new home."""
    source, export, settings = dagster_dev_project(tmp_path, target_dsn, threads=threads,
                                                   batch_size=batch_size)
    return Project(tmp=tmp_path, source=source, export=export, dsn=target_dsn,
                   settings=settings)


@contextmanager
def running_dagster_dev(project: Project) -> Iterator[DagsterDev]:
    """``dagster dev`` (webserver + daemon) on the project, serving its code location."""
    started = time.monotonic()
    dev = DagsterDev(project.tmp, {**os.environ, **project.settings}, project.tmp / "dev.log")
    try:
        dev.wait_until_serving()
        print(f"\ndagster dev serving after {time.monotonic() - started:.1f} s")
        yield dev
    finally:
        dev.stop()


# --------------------------------------------------------------------------- tests

def test_materialize_everything_from_the_asset_graph_until_every_check_passes(
    page: Any, tmp_path: Path, target_dsn: str
) -> None:
    """On the asset graph: select the export, "Materialize selected"; select the batches,
    "Materialize selected…", All partitions, "Launch backfill". The verification then runs
    by itself (its automation condition), and the graph shows every asset materialized
    (every partition filled) and every asset check of every asset passed."""
    project = new_project(tmp_path, target_dsn, threads=4, batch_size=20)
    with running_dagster_dev(project) as dev:
        batches = materialize_export(page, dev, project)
        assert len(batches) >= 2, "the corpus is meant to give several partitions"

        open_graph(page, dev)
        select_node(page, BATCHES_ASSET)
        page.get_by_role("button", name="Materialize selected").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="All", exact=True).click()
        dialog.get_by_text(f"{len(batches)} partitions", exact=True).wait_for()
        dialog.get_by_role("button", name="Launch backfill").click()
        page.get_by_text("Created backfill").wait_for()

        def batches_loaded() -> bool:
            node = asset_nodes(page).get(BATCHES_ASSET.to_user_string(), "")
            assert_no_failure(node)
            return "100% filled" in node and passed_checks(node) == (1, 1)

        open_graph(page, dev)
        wait_on_page(page, dev, batches_loaded, BACKFILL_SECONDS,
                     "every batch partition loaded with its check passed", tmp_path)

        # No click for the verification: it runs by itself once the batches are loaded.
        def all_green() -> dict[str, str] | None:
            nodes = asset_nodes(page)
            for node in nodes.values():
                assert_no_failure(node)
            for key, count in EXPECTED_CHECKS.items():
                if passed_checks(nodes.get(key.to_user_string(), "")) != (count, count):
                    return None
            done = ("Materialized" in nodes[EXPORT_ASSET.to_user_string()]
                    and "100% filled" in nodes[BATCHES_ASSET.to_user_string()]
                    and "Materialized" in nodes[VERIFICATION_ASSET.to_user_string()])
            return nodes if done else None

        open_graph(page, dev)
        nodes = wait_on_page(page, dev, all_green, RUN_SECONDS,
                             "every asset materialized with every check passed", tmp_path)
        save_screenshot(page, tmp_path, "ui-every-check-passed.png")
    assert set(nodes) == {key.to_user_string() for key in EXPECTED_CHECKS}
    assert f"{len(batches)} partitions" in nodes[BATCHES_ASSET.to_user_string()]


def test_the_ui_tells_the_truth_from_migration_through_a_repair_and_a_new_export(
    page: Any, tmp_path: Path, target_dsn: str, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The walk of a migration as the UI shows it, each step read from the rendered page:

    1. migrated by the command line: the check's Partitions view counts every batch passed;
    2. one batch broken (a conflicting row in the target, the batch loaded again): its
       partition and its check show failed, the conflict is in its logs, and the
       verification's checks read "Out of date" instead of passed, saying to backfill
       the failed partition first and naming it;
    3. repaired by a backfill of the failed and missing partitions launched in the UI: the
       verification runs again by itself (automation) and every check passes;
    4. exported again with another batch size: no partition shows as materialized, no
       batch check as passed, and the verification is out of date again.
    """
    project = new_project(tmp_path, target_dsn, threads=4, batch_size=20)
    request.addfinalizer(lambda: stop_log_tails(project.settings["DAGSTER_HOME"]))
    for name, value in project.settings.items():
        monkeypatch.setenv(name, value)
    migrated = without_event_loop(migrate_in_process)
    assert migrated.passed, migrated.render()
    keys = partition_keys(read_manifest(project.export))
    assert len(keys) == 2

    with running_dagster_dev(project) as dev:
        # 1. Every batch check passed, per partition.
        open_check_partitions(page, dev)
        wait_on_page(page, dev, lambda: check_counts(page) == {
            "Passed": 2, "Failed": 0, "Missing": 0}, RUN_SECONDS,
            "every batch check passed", tmp_path)
        save_screenshot(page, tmp_path, "walk-1-every-batch-check-passed.png")

        # 2. Break one batch: a row with other content under one of its keys, then load it.
        broken = keys[1]
        planted = without_event_loop(lambda: break_batch(project, broken))
        open_check_partitions(page, dev)
        wait_on_page(page, dev, lambda: check_counts(page) == {
            "Passed": 1, "Failed": 1, "Missing": 0}, RUN_SECONDS,
            "the broken batch's check failed", tmp_path)
        save_screenshot(page, tmp_path, "walk-2-broken-batch-check-failed.png")

        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}"
                  f"?view=partitions&partition={broken}")
        banner = page.get_by_text("failed, and did not materialize this asset")
        wait_on_page(page, dev, banner.is_visible, RUN_SECONDS,
                     f"partition {broken} shown as failed", tmp_path)
        save_screenshot(page, tmp_path, "walk-2-broken-partition.png")
        page.get_by_role("button", name="View logs").click()
        reason = page.get_by_role("dialog").get_by_text(f"Batch {broken} {CONFLICT_MARKER}")
        reason.last.wait_for()
        assert planted["checkpoint_id"] in reason.last.inner_text()
        save_screenshot(page, tmp_path, "walk-2-broken-partition-logs.png")

        open_checks(page, dev, VERIFICATION_ASSET)
        wait_on_page(page, dev, lambda: page.get_by_text(OUT_OF_DATE).first.is_visible(),
                     RUN_SECONDS, "the verification out of date", tmp_path)
        # ... saying what will happen: not "by itself" while a partition is failed.
        assert page.get_by_text(BACKFILL_FIRST).first.is_visible()
        assert page.get_by_text(broken).first.is_visible()
        save_screenshot(page, tmp_path, "walk-2-verification-out-of-date-backfill-first.png")
        open_graph(page, dev)
        verification = asset_nodes(page)[VERIFICATION_ASSET.to_user_string()]
        assert passed_checks(verification) != (len(VERIFICATION_CHECK_NAMES),) * 2, verification
        save_screenshot(page, tmp_path, "walk-2-verification-not-passed.png")

        # 3. Repair: remove the cause, backfill failed and missing partitions in the UI.
        without_event_loop(lambda: remove_planted(project.dsn, planted))
        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}")
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Failed and missing", exact=True).click()
        dialog.get_by_text("1 partition", exact=True).wait_for()
        # One partition selected: the dialog launches it as one run ("Launch 1 run").
        dialog.get_by_role("button", name=re.compile(r"^Launch (backfill|1 run)$")).click()
        page.get_by_text(re.compile(r"^(Created backfill|Launched run)")).first.wait_for()

        def repaired_and_verified() -> bool:
            nodes = asset_nodes(page)
            return ("100% filled" in nodes.get(BATCHES_ASSET.to_user_string(), "")
                    and all(passed_checks(nodes.get(key.to_user_string(), "")) ==
                            (count, count) for key, count in EXPECTED_CHECKS.items()))

        open_graph(page, dev)
        wait_on_page(page, dev, repaired_and_verified, BACKFILL_SECONDS + RUN_SECONDS,
                     "the repair and a verification run by itself", tmp_path)
        save_screenshot(page, tmp_path, "walk-3-repaired-and-verified-again.png")

        # 4. A new export with another batch size: nothing old poses as done.
        without_event_loop(lambda: reexport(project, batch_size=10))
        new_keys = partition_keys(read_manifest(project.export))
        assert len(new_keys) == 4 and not set(new_keys) & set(keys)
        open_check_partitions(page, dev)
        wait_on_page(page, dev, lambda: check_counts(page) == {
            "Passed": 0, "Failed": 0, "Missing": 4}, RUN_SECONDS,
            "the new export's batches unchecked", tmp_path)
        save_screenshot(page, tmp_path, "walk-4-new-export-checks-missing.png")
        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}?view=partitions")
        wait_on_page(page, dev, lambda: asset_partition_counts(page) == {
            "Materialized": 0, "Failed": 0, "Missing": 4}, RUN_SECONDS,
            "the new export's partitions missing", tmp_path)
        save_screenshot(page, tmp_path, "walk-4-new-export-partitions-missing.png")
        open_graph(page, dev)
        verification = asset_nodes(page)[VERIFICATION_ASSET.to_user_string()]
        assert passed_checks(verification) != (len(VERIFICATION_CHECK_NAMES),) * 2, verification
        save_screenshot(page, tmp_path, "walk-4-graph-after-new-export.png")


def test_a_new_user_is_told_what_to_do_and_no_action_leads_nowhere(
    page: Any, tmp_path: Path, target_dsn: str
) -> None:
    """The first minutes of a new user, each step read from the rendered page:

    1. first screen: the export's page says to start there; the batches' page (0
       partitions) says to materialize checkpoint_export first;
    2. the batch check's "Execute all" is disabled, saying the check cannot execute
       without materializing the asset (it would launch an unpartitioned run);
    3. the rollback group's page names CHECKPOINT_ASSETS_ROLLBACK_TO, and materializing
       it without that setting fails naming it;
    4. after the export, "Add a partition" with ``batch-00001`` in the Materialize
       dialog: the run refuses the key, and the key is gone from the partitions.
    """
    project = new_project(tmp_path, target_dsn, threads=4, batch_size=20)
    with running_dagster_dev(project) as dev:
        # 1. What to click first.
        page.goto(f"{dev.url}/assets/{EXPORT_ASSET.to_user_string()}")
        page.get_by_text(re.compile(r"^Start here: materialize this first")).first.wait_for()
        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}")
        page.get_by_text(re.compile(r"empty \(0 partitions\) until checkpoint_export is "
                                    r"materialized")).first.wait_for()
        save_screenshot(page, tmp_path, "new-user-1-batches-say-export-first.png")

        # 2. The check's own action launches nothing bound to fail: it is disabled, and
        # says why.
        open_checks(page, dev, BATCHES_ASSET)
        execute = page.get_by_role("button", name="Execute all")
        execute.wait_for()
        assert execute.is_disabled()
        execute.hover(force=True)
        page.get_by_text(CHECK_NEEDS_ITS_LOAD).first.wait_for()
        save_screenshot(page, tmp_path, "new-user-2-check-execute-disabled.png")

        # 3. The rollback group names its setting, and says so when it is missing.
        page.goto(f"{dev.url}/assets/{ROLLBACK_EXPORT_ASSET.to_user_string()}")
        page.get_by_text(re.compile(ROLLBACK_TO_ENV)).first.wait_for()
        before = latest_run_id(dev)
        page.get_by_text("Materialize", exact=True).first.click()
        run_id = wait_for(lambda: (r := latest_run_id(dev)) != before and r, RUN_SECONDS,
                          "the rollback export's run", dev)
        show_run_failure(page, dev, run_id, f"Set {ROLLBACK_TO_ENV}", tmp_path,
                         "new-user-3-rollback-setting-named.png")

        # 4. A partition key added by hand is refused and removed.
        materialize_export(page, dev, project)
        keys = partition_keys(read_manifest(project.export))
        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}")
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Add a partition").click()
        page.get_by_placeholder("name").fill("batch-00001")
        page.get_by_role("button", name="Save").click()
        page.get_by_placeholder("name").wait_for(state="detached")
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="All", exact=True).click()
        dialog.get_by_text(f"{len(keys) + 1} partitions", exact=True).wait_for()
        before = latest_run_id(dev)
        dialog.get_by_role("button", name=re.compile(r"^Launch (backfill|\d+ runs?)$")).click()
        page.get_by_text(re.compile(r"^(Created backfill|Launched run)")).first.wait_for()
        refused = wait_for(lambda: stray_run(dev, before), BACKFILL_SECONDS,
                           "the run of batch-00001", dev)
        show_run_failure(page, dev, refused, f"'batch-00001' {STRAY_PARTITION}", tmp_path,
                         "new-user-4-stray-key-refused.png")
        page.goto(f"{dev.url}/assets/{BATCHES_ASSET.to_user_string()}?view=partitions")
        wait_on_page(page, dev, lambda: sum(asset_partition_counts(page).values()) == len(keys),
                     BACKFILL_SECONDS, "only the export's partitions left", tmp_path)
        assert "batch-00001" not in page.inner_text("body")


# Dagster's tooltip on a check that cannot be subset from its asset.
CHECK_NEEDS_ITS_LOAD = "This check cannot execute without materializing the asset."
LATEST_RUN = "{ runsOrError(limit: 1) { ... on Runs { results { runId } } } }"
RUNS = "{ runsOrError(limit: 50) { ... on Runs { results { runId status tags { key value } } } } }"


def latest_run_id(dev: DagsterDev) -> str | None:
    """The newest run's id (to find the run a click launched)."""
    results = dev.gql(LATEST_RUN)["runsOrError"]["results"]
    return results[0]["runId"] if results else None


def stray_run(dev: DagsterDev, before: str | None) -> str | None:
    """A finished run started after ``before`` that covered batch-00001, failed."""
    for run in dev.gql(RUNS)["runsOrError"]["results"]:
        if run["runId"] == before:
            return None
        first, last = partition_span(run)
        if run["status"] == "FAILURE" and "batch-00001" in (first, last):
            return run["runId"]
    return None


def show_run_failure(page: Any, dev: DagsterDev, run_id: str, text: str, tmp_path: Path,
                     screenshot: str) -> None:
    """Open the run's page and wait until its log shows the failure ``text``."""
    page.goto(f"{dev.url}/runs/{run_id}")
    wait_on_page(page, dev, lambda: page.get_by_text(text).first.is_visible(), RUN_SECONDS,
                 f"run {run_id[:8]} failing with {text!r}", tmp_path)
    save_screenshot(page, tmp_path, screenshot)


def break_batch(project: Project, key: str) -> dict[str, str]:
    """Replace one checkpoint of partition ``key`` in the target with other content, then
    load the batch again as the command line would: it fails on the conflict."""
    manifest = read_manifest(project.export)
    batch = next(b for b, p in partition_keys_by_batch(manifest).items() if p == key)
    thread = next(read_batch(manifest, batch))
    row = thread.checkpoints[0]
    with psycopg.connect(project.dsn) as conn:
        conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s "
                     "AND checkpoint_id = %s",
                     (row.thread_id, row.checkpoint_ns, row.checkpoint_id))
    planted = plant_conflict(project.dsn, project.export, batch)
    with project_instance() as instance:
        code = definitions(project.source, project.export, batch_size=20)
        assert not materialize(code, instance, BATCHES_ASSET, partition=key).success
    return planted


def remove_planted(dsn: str, planted: dict[str, str]) -> None:
    """Delete the planted row (the cause of the conflict)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s "
                     "AND checkpoint_id = %s", (planted["thread_id"],
                                                planted["checkpoint_ns"],
                                                planted["checkpoint_id"]))


def reexport(project: Project, *, batch_size: int) -> None:
    """Materialize the export again with another batch size (in-process, same instance)."""
    with project_instance() as instance:
        code = definitions(project.source, project.export, batch_size=batch_size)
        assert materialize(code, instance, EXPORT_ASSET).success


def stop_log_tails(home: str) -> None:
    """Stop the ``tail -F`` processes Dagster's compute-log capture started for runs under
    ``home``: runs executed in a worker thread leave them behind when the test ends."""
    subprocess.run(["pkill", "-f", f"^tail -F .*{home}/"], check=False)  # a regex


def without_event_loop(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a thread of its own: Playwright's sync API keeps an asyncio loop in
    this one, and Dagster's in-process runs want to manage their own."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


# --------------------------------------------------------------------------- page helpers

def open_checks(page: Any, dev: DagsterDev, asset: Any) -> None:
    """The asset's Checks tab."""
    page.goto(f"{dev.url}/assets/{asset.to_user_string()}?view=checks")
    page.get_by_role("tab", name="Overview").last.wait_for()


def open_check_partitions(page: Any, dev: DagsterDev) -> None:
    """The batch check's own Partitions view: Checks tab -> batch_matches_export ->
    Partitions (the second "Partitions" tab on the page; the first is the asset's)."""
    open_checks(page, dev, BATCHES_ASSET)
    page.get_by_role("tab", name="Partitions").nth(1).click()
    page.get_by_text(re.compile(r"^Passed \(\d+\)$")).wait_for()


def status_counts(page: Any, names: tuple[str, ...]) -> dict[str, int]:
    """{"Passed": n, ...} from the status filters of a partitions view ("Passed (2)")."""
    text = page.inner_text("body")
    return {name: int(found[1]) for name in names
            if (found := re.search(rf"(?m)^{name} \((\d+)\)$", text))}


def check_counts(page: Any) -> dict[str, int]:
    """The check's Partitions view: how many batches passed, failed, are missing."""
    return status_counts(page, ("Passed", "Failed", "Missing"))


def asset_partition_counts(page: Any) -> dict[str, int]:
    """The asset's Partitions view: how many batches are materialized, failed, missing."""
    return status_counts(page, ("Materialized", "Failed", "Missing"))


def open_graph(page: Any, dev: DagsterDev) -> None:
    """The global asset graph, with every asset's node loaded."""
    page.goto(dev.url + GRAPH)
    page.locator(ASSET_NODE).nth(len(EXPECTED_CHECKS) - 1).wait_for()
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every("
        "n => !n.innerText.includes('Loading...'))", arg=ASSET_NODE)


def select_node(page: Any, key: Any) -> None:
    """Click the asset's node in the graph (selects it; the launch button follows)."""
    page.locator(f"{ASSET_NODE} [data-tooltip='{key.to_user_string()}']").click()


def asset_nodes(page: Any) -> dict[str, str]:
    """The rendered text of every asset node on the graph, by asset name."""
    return {text.split("\n", 1)[0]: text for text in page.locator(ASSET_NODE).all_inner_texts()}


def passed_checks(node_text: str) -> tuple[int, int] | None:
    """(passed, total) from a node's "Asset checks  N / M Passed" row."""
    found = re.search(r"Asset checks\s+(\d+) / (\d+) Passed", node_text)
    return (int(found[1]), int(found[2])) if found else None


def assert_no_failure(node_text: str) -> None:
    """Fail at once (not after the timeout) when a node shows a failure."""
    assert not re.search(r"\bfailed\b", node_text, re.IGNORECASE), node_text


def materialize_export(page: Any, dev: DagsterDev, project: Project) -> list[str]:
    """Graph -> select the export -> "Materialize selected"; wait until the page shows it
    materialized with its checks passed and the batches' partitions; return their keys."""
    open_graph(page, dev)
    select_node(page, EXPORT_ASSET)
    page.get_by_role("button", name="Materialize selected").click()
    page.get_by_text("Launched run").wait_for()
    count = EXPECTED_CHECKS[EXPORT_ASSET]

    def exported() -> bool:
        node = asset_nodes(page).get(EXPORT_ASSET.to_user_string(), "")
        assert_no_failure(node)
        return "Materialized" in node and passed_checks(node) == (count, count)

    open_graph(page, dev)
    wait_on_page(page, dev, exported, RUN_SECONDS, "the export materialized", project.tmp)
    keys = [batch.key for batch in read_manifest(project.export).batches]
    wait_on_page(page, dev, lambda: f"{len(keys)} partition" in asset_nodes(page).get(
        BATCHES_ASSET.to_user_string(), ""), RUN_SECONDS, "the batch partitions", project.tmp)
    return keys


def wait_on_page(page: Any, dev: DagsterDev, condition: Callable[[], Any], seconds: float,
                 what: str, tmp_path: Path) -> Any:
    """Poll ``condition`` (which reads the rendered page) until it returns something truthy.

    The UI refreshes itself; the page is reloaded every RELOAD_EVERY_SECONDS as a safety
    net. On timeout the error carries the page's text and dagster dev's log, and a
    screenshot is saved."""
    started = time.monotonic()
    deadline = started + seconds
    reloaded = started
    while time.monotonic() < deadline:
        value = condition()
        if value:
            print(f"\n{what}: shown after {time.monotonic() - started:.1f} s")
            return value
        if time.monotonic() - reloaded > RELOAD_EVERY_SECONDS:
            page.reload()
            page.wait_for_load_state()
            reloaded = time.monotonic()
        page.wait_for_timeout(1000)
    save_screenshot(page, tmp_path, "ui-timeout.png")
    raise TimeoutError(f"timed out after {seconds} s waiting for {what}; the page shows:\n"
                       f"{page.inner_text('body')[:3000]}\n--- dagster dev:\n{dev.tail()}")


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot to tmp_path and copy it to <repo>/.checkpoint_assets/screenshots/."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)
    return path
