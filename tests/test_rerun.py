"""`kit rerun` on a short smoke run: the same params and stages again, warnings where the checkout
differs from the logged one, and the metrics compared."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from kit.cli import main
from kit.pipeline.rerun import recovered_overrides
from kit.pipeline.runner import run_pipeline

from .conftest import SMOKE

pytestmark = pytest.mark.slow


def test_overrides_are_the_keys_where_the_logged_params_differ_from_the_file():
    logged = {"lora_r": 16, "seed": 42, "datasets": [{"path": "a b", "type": "alpaca"}], "gone_key": 1}
    overrides = recovered_overrides(SMOKE, logged)
    assert overrides == ["lora_r=16", 'datasets=[{"path": "a b", "type": "alpaca"}]']


def test_rerun_repeats_a_smoke_run_and_warns_where_the_checkout_differs(tmp_path, capsys):
    overrides = [f"output_dir={tmp_path / 'out'}", f"dataset_prepared_path={tmp_path / 'prepared'}", "max_steps=3"]
    original = run_pipeline(SMOKE, ["prepare", "train"], overrides, echo=lambda *args, **kwargs: None)
    assert original.failed_stage is None
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    client.set_tag(original.parent_run_id, "kit.git_commit", "0000000")
    client.set_tag(original.parent_run_id, "kit.version.torch", "0.0.1")

    assert main(["rerun", original.parent_run_id]) == 0
    out, err = capsys.readouterr()
    assert "warning: git commit differs: the run had 0000000, this checkout is " in err
    assert "warning: torch differs: the run had 0.0.1, here " in err

    experiment_id = client.get_run(original.parent_run_id).info.experiment_id
    [again] = client.search_runs([experiment_id], f"tags.`kit.rerun_of` = '{original.parent_run_id}'")
    assert again.data.params == client.get_run(original.parent_run_id).data.params
    stages = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{again.info.run_id}'")
    assert sorted(run.data.tags["kit.stage"] for run in stages) == ["prepare", "train"]
    # Same params, versions and CPU: the training comes out bitwise the same.
    assert f"rerun {again.info.run_id} of {original.parent_run_id}: 3 of 3 metrics identical (differing: none)" in out
