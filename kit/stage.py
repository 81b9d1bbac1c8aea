"""What every stage shares: the stage graph, manifests, and the MLflow run a stage executes in.

Data flows one way: params -> prepare -> train -> (evaluate, merge) -> quantize. Each stage writes
``<run_dir>/<stage>/manifest.json`` naming its inputs, outputs and metrics; the next stage reads it.
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

from kit import tracking
from kit.params import Params, environment_warnings, load_params, parse_overrides

STAGES = ("prepare", "train", "evaluate", "merge", "quantize")
UPSTREAM: dict[str, str | None] = {
    "prepare": None,
    "train": "prepare",
    "evaluate": "train",
    "merge": "train",
    "quantize": "merge",
}
NOTEBOOKS = {stage: f"{index:02d}_{stage}.ipynb" for index, stage in enumerate(STAGES, start=1)}
MANIFEST = "manifest.json"
PROJECT_DIR = Path(__file__).resolve().parent.parent


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


def run_inline(
    stage: str, params: Params, run_dir: Path, parent_run_id: str | None, overrides: list[str]
) -> dict[str, Any]:
    """Run a stage (and any missing upstream stage) in this process, each in its own MLflow run."""
    upstream = UPSTREAM[stage]
    inputs = None
    if upstream:
        inputs = read_manifest(run_dir, upstream) or run_inline(upstream, params, run_dir, parent_run_id, overrides)
    run_id = tracking.start_stage_run(params, stage, parent_run_id, overrides)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        started = time.perf_counter()
        manifest = stage_function(stage)(params, inputs, run_dir / stage)
        tracking.log_metrics({f"{stage}/seconds": time.perf_counter() - started})
        mlflow.log_dict(manifest, "manifest.json")
    return manifest


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
        # JupyterLab starts a notebook's kernel in notebooks/; relative paths in params (output_dir,
        # the MLflow store) mean the same as from the CLI only when resolved from the project root.
        if Path.cwd() == PROJECT_DIR / "notebooks":
            os.chdir(PROJECT_DIR)
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
        self._started = time.perf_counter()
        self._open = True
        atexit.register(self._fail_if_open)

    def inputs(self) -> dict[str, Any] | None:
        """The upstream stage's manifest; a missing upstream stage is run first, in this process."""
        upstream = UPSTREAM[self.stage]
        if upstream is None:
            return None
        return read_manifest(self.run_dir, upstream) or run_inline(
            upstream, self.params, self.run_dir, self.parent_run_id or self.run_id, self.overrides
        )

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        tracking.log_metrics({f"{self.stage}/seconds": time.perf_counter() - self._started})
        mlflow.log_dict(manifest, "manifest.json")
        mlflow.end_run()
        self._open = False
        return manifest

    def _fail_if_open(self) -> None:
        if self._open:
            mlflow.end_run(status="FAILED")
