"""Where runs are tracked: MLflow, with Axolotl's own ``mlflow_*`` keys; Axolotl's ``wandb_*`` keys are
accepted and warn."""

from __future__ import annotations

from pydantic import Field, field_validator

from kit.core.params.base import Strict

WANDB_INSTEAD = "not used; runs are tracked in MLflow instead (warns when set)"


class TrackingKeys(Strict):
    mlflow_tracking_uri: str | None = Field(
        None, description="the MLflow store or server; MLFLOW_TRACKING_URI wins; default .tunebook/mlflow.db (SQLite)"
    )
    mlflow_experiment_name: str | None = Field(
        None, description="the MLflow experiment; default the params file's name"
    )
    mlflow_run_name: str | None = Field(
        None, description="the run's name and its folder under output_dir; default the start time"
    )
    wandb_project: str | None = Field(None, description=f"Weights & Biases: {WANDB_INSTEAD}")
    wandb_entity: str | None = Field(None, description=f"Weights & Biases: {WANDB_INSTEAD}")
    wandb_watch: str | None = Field(None, description=f"Weights & Biases: {WANDB_INSTEAD}")
    wandb_run_id: str | None = Field(None, description=f"Weights & Biases: {WANDB_INSTEAD}")
    wandb_log_model: str | None = Field(None, description=f"Weights & Biases: {WANDB_INSTEAD}")

    @field_validator("mlflow_run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str | None) -> str | None:
        # The run folder is output_dir/<run name>: a path here would put it anywhere.
        if value is not None and (not value or value in (".", "..") or "/" in value or "\\" in value):
            raise ValueError(f"{value!r} is not a folder name; the run folder is output_dir/<mlflow_run_name>")
        return value
