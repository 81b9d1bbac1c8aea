"""What every stage shares: the stage graph, manifests, and the MLflow run a stage executes in.

Data flows one way: params -> prepare -> train -> merge -> quantize, and evaluate scores what train,
merge and quantize made (base, adapter, merged model, GGUF files), so it runs last. Each stage writes
``<run_dir>/<stage>/manifest.json`` naming its inputs, outputs and metrics; the stages downstream
read it. ``run_<stage>`` takes its one upstream stage's manifest, or, for evaluate, which reads
several, a dict of their manifests by stage: train's always, merge's and quantize's when
``eval_variants`` scores their artifacts.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import nbformat

from kit import tracking
from kit.params import GGUF_VARIANT_PREFIX, Params, environment_warnings, load_params, parse_overrides

STAGES = ("prepare", "train", "merge", "quantize", "evaluate")
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "train": ("prepare",),
    "merge": ("train",),
    "quantize": ("merge",),
    "evaluate": ("train", "merge", "quantize"),
}
# The notebooks keep the numbers they were published under, whatever order the stages run in.
NOTEBOOKS = {
    "prepare": "01_prepare.ipynb",
    "train": "02_train.ipynb",
    "evaluate": "03_evaluate.ipynb",
    "merge": "04_merge.ipynb",
    "quantize": "05_quantize.ipynb",
}
MANIFEST = "manifest.json"
PROJECT_DIR = Path(__file__).resolve().parent.parent


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


def stage_function(stage: str) -> Callable[[Params, dict[str, Any] | None, Path], dict[str, Any]]:
    """``kit.<stage>.run_<stage>``, imported when needed (each pulls in heavy libraries)."""
    return getattr(importlib.import_module(f"kit.{stage}"), f"run_{stage}")


def resolve_run_dir(params: Params, run_dir: str | Path = "") -> Path:
    """A notebook run on its own works in ``<output_dir>/interactive``; `kit run` names its own."""
    return Path(run_dir) if run_dir else Path(params.output_dir) / "interactive"


def write_manifest(
    out_dir: Path, stage: str, inputs: dict[str, Any], outputs: dict[str, Any], metrics: dict[str, float]
) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "inputs": inputs,
        "outputs": outputs,
        "metrics": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


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
    variants = params.evaluated_variants
    reads = {
        "train": True,
        "merge": "merged" in variants,
        "quantize": any(variant.startswith(GGUF_VARIANT_PREFIX) for variant in variants),
    }
    return tuple(upstream for upstream in UPSTREAM[stage] if reads[upstream])


def stage_inputs(
    stage: str, params: Params, run_dir: Path, parent_run_id: str | None, overrides: list[str]
) -> dict[str, Any] | None:
    """What ``run_<stage>`` takes (see the module's docstring); a missing upstream stage is run first."""
    manifests = {
        upstream: read_manifest(run_dir, upstream) or run_inline(upstream, params, run_dir, parent_run_id, overrides)
        for upstream in upstream_stages(stage, params)
    }
    if len(UPSTREAM[stage]) > 1:
        return manifests
    return next(iter(manifests.values()), None)


def run_inline(
    stage: str, params: Params, run_dir: Path, parent_run_id: str | None, overrides: list[str]
) -> dict[str, Any]:
    """Run a stage (and any missing upstream stage) in this process, each in its own MLflow run."""
    inputs = stage_inputs(stage, params, run_dir, parent_run_id, overrides)
    run_id = tracking.start_stage_run(params, stage, parent_run_id, overrides)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        started = time.perf_counter()
        manifest = stage_function(stage)(params, inputs, run_dir / stage)
        tracking.log_metrics({f"{stage}/seconds": time.perf_counter() - started})
        mlflow.log_dict(manifest, "manifest.json")
    return manifest


def notebook_provenance(stage: str) -> dict[str, str]:
    """For a notebook run in JupyterLab, which tells its kernel the notebook's path: that path, and whether
    its saved cells, the parameters cell aside, are the tracked notebook's ("as committed") or "edited"."""
    path = os.environ.get("JPY_SESSION_NAME", "")
    if not path.endswith(".ipynb") or not Path(path).is_file():
        return {}

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
