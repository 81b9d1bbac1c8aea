"""The compare report and the MLflow UI in a real browser: Debian's headless Chromium, driven by
playwright (its driver only: no browser is downloaded). `.ci/run` installs Chromium and sets
TUNEBOOK_REQUIRE_BROWSER, so there a missing browser fails rather than skips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kit.pipeline.compare import load_comparison
from kit.pipeline.report import write_report
from kit.pipeline.runner import run_pipeline

from .conftest import ROOT, SMOKE
from .mlflow_runs import log_pipeline_run

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
SERVER_START_SECONDS = 120
RUN_ALL_SECONDS = 240
JUPYTER_TOKEN = "tunebook-browser-test"
STDERR = "application/vnd.jupyter.stderr"  # JupyterLab renders error outputs (tracebacks) as stderr too
NOISE = ("Warning", "warn(", "Traceback", "ERROR")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        reason = "no chromium here (apt-get install chromium); .ci/run installs it"
        if os.environ.get("TUNEBOOK_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium's own sandbox needs user namespaces a CI container (running as root) may not give.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_html_report_renders_its_tables_and_figures_from_disk(browser, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("browser")
    for number, (rate, quality) in enumerate([(1e-3, 0.5), (2e-4, 0.3), (5e-4, 0.4)]):
        log_pipeline_run(client, experiment_id, f"run-{number}", {"learning_rate": rate, "lora_r": 8},
                         quality=quality, started_ms=1_700_000_000_000 + number)
    files = write_report(load_comparison(uri, "browser"), tmp_path / "report")

    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(files.html.resolve().as_uri())
    page.wait_for_load_state("load")
    # Self-contained: nothing is fetched but the page itself and its data: figures.
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert page.title() == "tunebook: browser"

    tables = page.locator("table")
    assert tables.count() >= 4  # runs, params that differ, metrics, quality ledger
    for index in range(tables.count()):
        table = tables.nth(index)
        assert table.is_visible() and table.locator("tr").count() >= 2
        assert table.bounding_box()["height"] > 20
    assert page.locator("table", has_text="learning_rate").count() >= 1  # the param that differs
    for run_name in ("run-0", "run-1", "run-2"):
        assert page.get_by_text(run_name).count() >= 1

    figures = page.locator("img")
    assert figures.count() == 2
    for index in range(figures.count()):
        figure = figures.nth(index)
        # Decoded and drawn: a broken data URI leaves naturalWidth 0.
        assert figure.evaluate("image => image.complete && image.naturalWidth") > 200
        assert figure.bounding_box()["width"] > 200
    assert len(page.screenshot(full_page=True)) > 10_000
    page.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_until_answering(url: str, server: subprocess.Popen, name: str, output) -> None:
    """Until ``url`` answers 200; ``output()`` is what the server printed, quoted if it exits or never answers."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{name} exited: {output()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{name} not answering after {SERVER_START_SECONDS} s: {output()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def test_an_mlflow_server_lists_a_smoke_runs_parent_and_stages_and_its_ui_loads(
    browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    experiment, run_name = "browser-smoke", "smoke-for-the-ui"
    overrides = [f"output_dir={tmp_path / 'out'}", f"dataset_prepared_path={tmp_path / 'prepared'}",
                 "max_steps=2", f"mlflow_experiment_name={experiment}", f"mlflow_run_name={run_name}"]
    # Two stages: the listing is under test here; tests/test_pipeline.py checks all five runs in the store.
    result = run_pipeline(SMOKE, ["prepare", "train"], overrides, echo=lambda *args, **kwargs: None)
    assert result.failed_stage is None, result.error

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        # Its output is read only once it has exited: reading a running server's pipe would block.
        _wait_until_answering(f"{base}/health", server, "mlflow server",
                              lambda: server.stdout.read() if server.poll() is not None else "")
        found = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
        experiment_id = found["experiment"]["experiment_id"]
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        tags = {run["info"]["run_id"]: {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
                for run in runs}
        assert result.parent_run_id in tags and tags[result.parent_run_id]["kit.kind"] == "pipeline"
        stages = {tag["kit.stage"] for tag in tags.values() if tag.get("mlflow.parentRunId") == result.parent_run_id}
        assert stages == {"prepare", "train"}

        page = browser.new_page()
        page.goto(f"{base}/#/experiments/{experiment_id}/runs")
        # The UI is a single-page app: the runs show once its JavaScript has fetched them; the stage
        # runs are nested under the parent, which the table names.
        page.get_by_text(run_name).first.wait_for(timeout=90_000)
        page.get_by_text(f"{len(tags)} matching runs").wait_for(timeout=30_000)
        assert "MLflow" in page.title()
        page.close()
    finally:
        _stop(server)


def _tracked_notebooks() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (ROOT / "notebooks").glob("*.ipynb")}


def test_the_train_notebook_runs_all_its_cells_in_kit_lab_without_errors_warnings_or_a_dirty_tree(
    browser, tmp_path: Path
) -> None:
    """What a user sees running the train notebook in JupyterLab, opened by `kit lab` (which prepares the
    data first): every cell runs, no output is an error, stderr or a warning, and the save lands in the
    working copy, never in the tracked notebook."""
    tracked = _tracked_notebooks()
    jupyter = tmp_path / "jupyter"  # its config, data and runtime files, out of the user's and the work tree
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
           "JUPYTER_DATA_DIR": str(jupyter / "data"), "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
           "IPYTHONDIR": str(jupyter / "ipython")}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = jupyter / "lab.log"
    log.parent.mkdir()
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "kit.cli", "lab", str(SMOKE), "--set", "output_dir=out",
             "--set", "dataset_prepared_path=prepared", "--set", "max_steps=4",
             "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={JUPYTER_TOKEN}", "--LabApp.expose_app_in_browser=True"],
            stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )
    notebook = tmp_path / "out" / "interactive" / "notebooks" / "02_train.ipynb"
    try:
        _wait_until_answering(f"{base}/api/status?token={JUPYTER_TOKEN}", server, "jupyter lab", log.read_text)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/{notebook.name}?token={JUPYTER_TOKEN}")
        page.wait_for_function(
            """name => {
                const widget = window.jupyterapp?.shell.currentWidget;
                return widget?.context?.path === name && widget.sessionContext.session?.kernel?.status === "idle";
            }""", arg=notebook.name, timeout=SERVER_START_SECONDS * 1000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        # Run All marks every code cell [*] at once: the run is over once none is, whether every cell ran
        # or an error stopped the rest.
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt")]
                    .map(prompt => prompt.textContent);
                return prompts.some(prompt => /\\d/.test(prompt)) && !prompts.some(prompt => prompt.includes("*"));
            }""", timeout=RUN_ALL_SECONDS * 1000)
        cells = page.evaluate(
            """() => [...document.querySelectorAll(".jp-Notebook .jp-CodeCell")].map(cell => ({
                prompt: cell.querySelector(".jp-InputArea-prompt").textContent,
                outputs: [...cell.querySelectorAll(".jp-OutputArea-output")]
                    .map(output => ({mime: output.dataset.mimeType, text: output.textContent})),
            }))""")
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
        page.close()
    finally:
        _stop(server)

    assert log.read_text().startswith(f"JupyterLab on working copies of the notebooks in {notebook.parent}; ")
    assert _tracked_notebooks() == tracked  # the save went to the working copy
    saved = json.loads(notebook.read_text())
    assert any(cell.get("outputs") for cell in saved["cells"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [train] = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                 f"tags.`kit.notebook` = '{notebook}'")
    assert train.data.tags["kit.stage"] == "train" and train.data.tags["kit.notebook_cells"] == "as committed"

    code_cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    assert len(cells) == len(code_cells)
    noisy = [f"cell {number} {cell['prompt']} ({output['mime']}): {output['text'][:500]}"
             for number, cell in enumerate(cells, 1) for output in cell["outputs"]
             if output["mime"] == STDERR or any(word in output["text"] for word in NOISE)]
    assert not noisy, "noisy outputs:\n" + "\n\n".join(noisy)
    unrun = [number for number, cell in enumerate(cells, 1) if not any(char.isdigit() for char in cell["prompt"])]
    assert not unrun, f"code cells {unrun} did not run"
