"""The stage graph and a stage's lifecycle: which manifests it reads, and the MLflow run it executes in.

Data flows one way: params -> prepare -> train -> merge -> quantize, and evaluate scores what train,
merge and quantize made (base, adapter, merged model, GGUF files), so it runs last. Each stage writes
``<run_dir>/<stage>/manifest.json`` naming its inputs, outputs, metrics and params hash
(kit.core.manifest); the stages downstream read it. Every ``run_<stage>(params, upstream, out_dir)``
takes the manifests it reads by stage: none for prepare, train's always and merge's and quantize's
for evaluate when ``eval_variants`` scores their artifacts, its one upstream stage's for the others.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import mlflow

from kit.core import tracking
from kit.core.hardware import environment_warnings
from kit.core.manifest import params_hash, read_manifest
from kit.core.params import Params, load_params, parse_overrides

STAGES = ("prepare", "train", "merge", "quantize", "evaluate")
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "train": ("prepare",),
    "merge": ("train",),
    "quantize": ("merge",),
    "evaluate": ("train", "merge", "quantize"),
}
# Numbered in pipeline order; 06_compare, over many runs, is no stage.
NOTEBOOKS = {
    "prepare": "01_prepare.ipynb",
    "train": "02_train.ipynb",
    "merge": "03_merge.ipynb",
    "quantize": "04_quantize.ipynb",
    "evaluate": "05_evaluate.ipynb",
}
PROJECT_DIR = Path(__file__).resolve().parents[2]


WORK_DIR_MARKER = ".kit-work-dir.json"


def enter_work_dir() -> None:
    """Relative paths in params (output_dir, the MLflow store, reports/) resolve from where a command
    runs. JupyterLab starts a kernel in its notebook's folder instead: the tracked notebooks' kernels
    move to the project root, and `kit lab`'s working copies' to the folder it ran in (their marker)."""
    marker = Path.cwd() / WORK_DIR_MARKER
    if marker.exists():
        os.chdir(json.loads(marker.read_text())["work_dir"])
    elif Path.cwd() == PROJECT_DIR / "notebooks":
        os.chdir(PROJECT_DIR)


def resolve_run_dir(params: Params, run_dir: str | Path = "") -> Path:
    """A notebook run on its own works in ``<output_dir>/interactive``; `kit run` names its own."""
    return Path(run_dir) if run_dir else Path(params.output_dir) / "interactive"


def _shown(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return f"{int(value):,}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def metrics_table(manifest: dict[str, Any], headline: dict[str, str]):
    """A stage's few numbers that matter as a small table (``headline``: metric -> what it says), every
    metric a click away in a collapsed table below (and in the stage's MLflow run)."""
    from html import escape

    from IPython.display import HTML

    metrics = manifest["metrics"]

    def table(rows) -> str:
        cells = "".join(f"<tr><td style='text-align:left'>{escape(name)}</td><td>{_shown(value)}</td></tr>"
                        for name, value in rows)
        return f"<table>{cells}</table>"

    shown = table((label, metrics[key]) for key, label in headline.items() if key in metrics)
    every = table(sorted(metrics.items()))
    return HTML(f"{shown}<details><summary>all {len(metrics)} metrics</summary>{every}</details>")


def upstream_stages(stage: str, params: Params) -> tuple[str, ...]:
    """The upstream stages ``stage`` reads under ``params``: evaluate reads merge's and quantize's
    manifests only when it scores the merged model or a GGUF file."""
    if stage != "evaluate":
        return UPSTREAM[stage]
    # Imported here: evaluate pulls in torch and transformers, which compare and sweep never need.
    from kit.evaluate.stage import upstream_needed

    return upstream_needed(params)


def stage_module(stage: str):
    """``kit.<stage>.stage``, imported when needed (each pulls in heavy libraries)."""
    return importlib.import_module(f"kit.{stage}.stage")


def stage_inputs(
    stage: str, params: Params, run_dir: Path, parent_run_id: str | None, overrides: list[str]
) -> dict[str, dict[str, Any]]:
    """What ``run_<stage>`` takes: the manifests of the upstream stages it reads, by stage, each made
    under ``params``; a missing one, or one made under other params, is run (again) first."""
    return {upstream: current_manifest(upstream, params, run_dir, parent_run_id, overrides)
            for upstream in upstream_stages(stage, params)}


def current_manifest(
    stage: str, params: Params, run_dir: Path, parent_run_id: str | None, overrides: list[str]
) -> dict[str, Any]:
    """``stage``'s manifest in ``run_dir`` where its params hash is the one ``params`` give it; else the
    stage run again, in this process, so that no stage reads another configuration's outputs."""
    upstream = stage_inputs(stage, params, run_dir, parent_run_id, overrides)
    manifest = read_manifest(run_dir, stage)
    if manifest and manifest.get("params_hash") == params_hash(stage_module(stage).params_read(params), upstream):
        return manifest
    if manifest:
        print(f"{stage}: {run_dir / stage} was made under other params; running {stage} again")
    return run_inline(stage, params, run_dir, parent_run_id, overrides, upstream)


def run_inline(
    stage: str,
    params: Params,
    run_dir: Path,
    parent_run_id: str | None,
    overrides: list[str],
    inputs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a stage (and any missing or stale upstream stage) in this process, each in its own MLflow run."""
    if inputs is None:
        inputs = stage_inputs(stage, params, run_dir, parent_run_id, overrides)
    run_id = tracking.start_stage_run(params, stage, parent_run_id, overrides)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        started = time.perf_counter()
        manifest = getattr(stage_module(stage), f"run_{stage}")(params, inputs, run_dir / stage)
        tracking.log_metrics({f"{stage}/seconds": time.perf_counter() - started})
        mlflow.log_dict(manifest, "manifest.json")
    return manifest


def notebook_provenance(stage: str) -> dict[str, str]:
    """For a notebook run in JupyterLab, which tells its kernel the notebook's path: that path, and whether
    its saved cells, the parameters cell aside, are the tracked notebook's ("as committed") or "edited"."""
    path = os.environ.get("JPY_SESSION_NAME", "")
    if not path.endswith(".ipynb") or not Path(path).is_file():
        return {}
    # Here, not at the top: nbformat's schema checks import a grammar that takes a second to build, and
    # every stage's kernel imports this module while only one run from JupyterLab reads a notebook.
    import nbformat

    def cells(notebook: Path) -> list[tuple[str, str]]:
        return [(cell.cell_type, cell.source) for cell in nbformat.read(notebook, as_version=4).cells
                if "parameters" not in cell.metadata.get("tags", [])]

    same = cells(Path(path)) == cells(PROJECT_DIR / "notebooks" / NOTEBOOKS[stage])
    return {"kit.notebook": path, "kit.notebook_cells": "as committed" if same else "edited"}


class StageRun:
    """A stage's MLflow run, as a notebook opens it in its first cell and closes it in its last.

    Under `kit run` the runner created the run (``mlflow_run_id``) and closes it after logging the
    executed notebook; a notebook run on its own creates and closes its own. A notebook that stops
    on an error leaves its run FAILED.
    """

    def __init__(
        self,
        stage: str,
        params_file: str,
        overrides: list[str] | str | None = None,
        run_dir: str = "",
        parent_run_id: str = "",
        mlflow_run_id: str = "",
    ) -> None:
        enter_work_dir()
        self.stage = stage
        # Values written back as JSON, which YAML reads as they were (a Python None would come back as "None").
        self.overrides = [f"{key}={json.dumps(value)}" for key, value in parse_overrides(overrides).items()]
        self.params = load_params(params_file, self.overrides)
        for warning in environment_warnings(self.params):
            print(f"warning: {warning}", file=sys.stderr)
        self.run_dir = resolve_run_dir(self.params, run_dir).resolve()
        self.out_dir = self.run_dir / stage
        self.parent_run_id = parent_run_id or None
        tracking.configure(self.params)
        self.run_id = mlflow_run_id or tracking.start_stage_run(
            self.params, stage, self.parent_run_id, self.overrides
        )
        mlflow.start_run(run_id=self.run_id)
        if not mlflow_run_id:
            tracking.set_tags(notebook_provenance(stage))
        self._started = time.perf_counter()
        self._open = True
        atexit.register(self._fail_if_open)

    def inputs(self) -> dict[str, Any] | None:
        """The upstream manifest(s) the stage takes; a missing upstream stage is run first, in this process."""
        return stage_inputs(self.stage, self.params, self.run_dir, self.parent_run_id or self.run_id, self.overrides)

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        tracking.log_metrics({f"{self.stage}/seconds": time.perf_counter() - self._started})
        mlflow.log_dict(manifest, "manifest.json")
        mlflow.end_run()
        self._open = False
        return manifest

    def _fail_if_open(self) -> None:
        if self._open:
            mlflow.end_run(status="FAILED")
