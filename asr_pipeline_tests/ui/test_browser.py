"""The Dagster UI in a real browser: `dagster dev -w workspace.yaml` on a free port against a temporary instance that
holds a real run, driven by Playwright through Debian's Chromium (headless). Screenshots are kept in
test-artifacts/ (ASR_TEST_ARTIFACTS)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from asr_pipeline import cli

pytestmark = [pytest.mark.mysql, pytest.mark.slow, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
ASSETS = ["raw_manifest", "resampled_dataset", "featurized_shards", "finetuned_checkpoint", "evaluation_report"]
LINEAGE = {("training_datas", "raw_manifest"), ("raw_manifest", "resampled_dataset"),
           ("resampled_dataset", "featurized_shards"), ("featurized_shards", "finetuned_checkpoint"),
           ("finetuned_checkpoint", "evaluation_report"), ("featurized_shards", "evaluation_report"),
           ("evaluation_report", "champion_model")}


def _chromium() -> str:
    path = os.environ.get("ASR_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = "Chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("ASR_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _wait_for_location(base: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { " \
            "__typename ... on PythonError { message } } } } } }"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {process.returncode}")
        try:
            entries = _graphql(base, query)["workspaceOrError"]["locationEntries"]
            location = {e["name"]: e for e in entries}.get("asr_pipeline")
            if location and location["loadStatus"] == "LOADED":
                assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("the code location did not load in time")


@pytest.fixture()
def artifacts() -> Path:
    path = Path(os.environ.get("ASR_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture()
def dagster_ui(pipeline_env):
    """A real run first (so the asset pages have metadata), then the UI on that instance."""
    cli.main(["run", "--max-steps", "2", "--batch-size", "4", "--eval-steps", "2", "--warmup-steps", "0"])
    port = _free_port()
    log = open(pipeline_env.parent / "dagster-dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p",
         str(port)], cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_location(base, process)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # dagster dev, its webserver, daemon and code server
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _dismiss_community_dialog(page) -> None:
    """A fresh browser profile gets Dagster's "Join the Dagster community" dialog over the first page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.get_by_text("Join the Dagster community")
    try:
        dialog.wait_for(state="visible", timeout=15_000)
    except PlaywrightTimeout:
        return
    page.get_by_text("Skip", exact=True).click()
    dialog.wait_for(state="hidden")


def _label(asset: str) -> re.Pattern:
    # the graph shortens long names in the middle (finetu…_checkpoint)
    return re.compile(rf"{asset[:3]}\S*{asset.rsplit('_', 1)[-1]}")


def test_the_ui_shows_lineage_automation_and_report_metadata(dagster_ui, artifacts):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        expect.set_options(timeout=60_000)

        # the asset graph: every asset is a node of the group's lineage graph
        page.goto(f"{dagster_ui}/locations/asr_pipeline/asset-groups/asr/lineage")
        for asset in ASSETS + ["champion_model", "training_datas"]:
            expect(page.locator("body")).to_contain_text(_label(asset))
        _dismiss_community_dialog(page)
        page.screenshot(path=str(artifacts / "ui-asset-graph.png"))
        # its edges, as the UI loaded them
        nodes = page.evaluate("""async () => {
            const r = await fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({query: '{ assetNodes { assetKey { path } dependencyKeys { path } } }'})});
            return (await r.json()).data.assetNodes; }""")
        edges = {(d["path"][-1], n["assetKey"]["path"][-1]) for n in nodes for d in n["dependencyKeys"]}
        assert LINEAGE <= edges, edges

        # the sensor and the schedule are listed
        page.goto(f"{dagster_ui}/automation")
        expect(page.get_by_text("new_transcripts_sensor").first).to_be_visible()
        expect(page.get_by_text("nightly_retraining").first).to_be_visible()
        expect(page.get_by_text("asr_alerts").first).to_be_visible()
        page.screenshot(path=str(artifacts / "ui-automation.png"))

        # the report asset's page shows the metadata the pipeline attached: the report table and its plot
        page.goto(f"{dagster_ui}/assets/evaluation_report")
        expect(page.get_by_text("html_path").first).to_be_visible()
        page.get_by_text("[Show Markdown]").first.click()
        expect(page.get_by_text("CER [95% CI]").first).to_be_visible()
        expect(page.get_by_text("fine-tuned (challenger)").first).to_be_visible()
        expect(page.locator("img[alt='training curves']")).to_be_visible()
        page.wait_for_timeout(800)  # the dialog fades in; let it settle before the screenshot
        page.screenshot(path=str(artifacts / "ui-evaluation-report.png"))

        # the freshness checks are on their assets' pages (defs/alerts), next to the blocking checks
        page.goto(f"{dagster_ui}/assets/featurized_shards?view=checks")
        expect(page.get_by_text("batches_done_in_time").first).to_be_visible()
        page.screenshot(path=str(artifacts / "ui-freshness-checks.png"))

        _materialize_the_report_from_its_page(page, dagster_ui, artifacts)
        browser.close()


RUNS_QUERY = "{ runsOrError(limit: 10) { ... on Runs { results { runId status assetSelection { path } } } } }"


def _runs(page) -> list[dict]:
    return page.evaluate("""async (query) => {
        const r = await fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({query})});
        return (await r.json()).data.runsOrError.results; }""", RUNS_QUERY)


def _materialize_the_report_from_its_page(page, base: str, artifacts: Path) -> None:
    """What a user does to re-evaluate: Materialize on evaluation_report's page. The challenger does not beat the
    base model here (there is no champion), and that must be a green run with the decision in the check, not a red
    run that Dagster's run retry repeats."""
    from playwright.sync_api import expect

    before = {r["runId"] for r in _runs(page)}
    page.goto(f"{base}/assets/evaluation_report")
    button = page.get_by_role("button", name=re.compile(r"(^|\s)Materialize$")).first  # icon name, then label
    expect(button).to_be_enabled()
    button.click()
    deadline = time.monotonic() + 600
    run = None
    while time.monotonic() < deadline:
        new = [r for r in _runs(page) if r["runId"] not in before]
        run = new[0] if new else None
        if run and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert run is not None, "no run was launched from the asset page"
    page.goto(f"{base}/runs/{run['runId']}")
    assert run["status"] == "SUCCESS", run
    assert run["assetSelection"] == [{"path": ["evaluation_report"]}], run
    expect(page.get_by_text("Success").first).to_be_visible()
    page.wait_for_timeout(5000)  # the event log streams in after the header
    page.screenshot(path=str(artifacts / "ui-evaluation-report-run.png"))
    runs = _runs(page)
    assert [r for r in runs if r["runId"] not in before] == [run]  # nothing retried
    report = json.loads((Path(os.environ["ASR_HOME"]) / "storage/evaluation_report/report.json").read_text())
    assert report["promotion"]["promote"] is False and report["promotion"]["blocked_by"], report["promotion"]
