"""`kit rerun`: a past pipeline run again, from the params file it logged and its overrides, with a
warning for each way this checkout differs from the one that ran it.

The overrides are recovered from the logged resolved params (``params/resolved.yaml``) rather than the
``kit.overrides`` tag: the tag joins them with spaces, which a value holding a space would split,
whereas every key where the resolved params differ from the params file's own is an override, exactly.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from kit.core import tracking
from kit.core.params import load_params
from kit.pipeline.compare import CompareError, pipeline_run
from kit.pipeline.runner import PipelineResult, run_pipeline
from kit.pipeline.stage import STAGES

RESOLVED_PARAMS = "params/resolved.yaml"


def provenance_warnings(tags: dict[str, str]) -> list[str]:
    """Where this checkout's git commit or tracked package versions differ from those logged."""
    warnings = []
    logged_commit, commit = tags.get("kit.git_commit"), tracking.git_commit()
    if logged_commit and logged_commit != commit:
        warnings.append(f"git commit differs: the run had {logged_commit}, this checkout is {commit}")
    for name, version in tracking.package_versions().items():
        logged = tags.get(f"kit.version.{name}")
        if logged and logged != version:
            warnings.append(f"{name} differs: the run had {logged}, here {version}")
    return warnings


def ran_stages(metrics: dict[str, float]) -> list[str]:
    """The stages the run executed, in pipeline order, from the times `kit run` logged for each."""
    return [stage for stage in STAGES if f"pipeline/{stage}_seconds" in metrics]


def recovered_overrides(params_file: Path, logged: dict) -> list[str]:
    """``key=value`` (the value as JSON, which YAML reads back unchanged) for every key where the
    logged resolved params differ from ``params_file`` resolved alone."""
    own = load_params(params_file).resolved()
    return [f"{key}={json.dumps(value)}" for key, value in logged.items() if key in own and own[key] != value]


def rerun(run_id: str, tracking_uri: str, echo: Callable = print) -> PipelineResult:
    """Run ``run_id``'s pipeline again, the same stages, tagged ``kit.rerun_of``."""
    client = MlflowClient(tracking_uri)
    run = pipeline_run(client, run_id)
    with tempfile.TemporaryDirectory(prefix="kit-rerun-") as folder:
        logged_files = [item.path for item in client.list_artifacts(run_id, "params") if item.path != RESOLVED_PARAMS]
        if not logged_files:
            raise CompareError(f"run {run_id} logged no params file")
        # The file keeps its name, and so the experiment named after it.
        params_file = Path(client.download_artifacts(run_id, logged_files[0], folder))
        logged = yaml.safe_load(Path(client.download_artifacts(run_id, RESOLVED_PARAMS, folder)).read_text())
        overrides = recovered_overrides(params_file, logged)
        for warning in provenance_warnings(run.data.tags):
            print(f"warning: {warning}", file=sys.stderr)
        echo(f"rerunning {run_id}: {params_file.name} {' '.join(overrides) or '(no overrides)'}")
        result = run_pipeline(params_file, ran_stages(run.data.metrics), overrides, echo=echo)
        MlflowClient(load_params(params_file, overrides).tracking_uri).set_tag(
            result.parent_run_id, "kit.rerun_of", run_id
        )
    return result
