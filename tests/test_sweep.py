"""`kit sweep`: the grid, the sweep's id, and a real 2-combination sweep on the tiny default, rerun
to skip what finished and extended by a value to run only the new combination."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from kit.cli import main
from kit.core.params import ParamsError
from kit.pipeline.compare import PIPELINE_FILTER
from kit.pipeline.sweep import combinations, parse_grid, sweep_id

from .conftest import SMOKE

pytestmark = pytest.mark.slow


def test_grid_values_become_combinations_in_key_order_whatever_the_option_order():
    grid = parse_grid(["seed=1, 2", "learning_rate=1e-3,2e-4"])
    assert grid == {"seed": ["1", "2"], "learning_rate": ["1e-3", "2e-4"]}
    assert combinations(grid) == [
        ["learning_rate=1e-3", "seed=1"], ["learning_rate=1e-3", "seed=2"],
        ["learning_rate=2e-4", "seed=1"], ["learning_rate=2e-4", "seed=2"],
    ]
    assert combinations(parse_grid(["learning_rate=1e-3,2e-4", "seed=1,2"])) == combinations(grid)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "name at least one key"),
        (["lora_r"], "--grid `lora_r`: expected key=v1,v2"),
        (["=4,8"], "expected key=v1,v2"),
        (["lora_r=4,,8"], "an empty value"),
        (["lora_r="], "an empty value"),
        (["lora_rr=4,8"], "unknown key `lora_rr`; did you mean `lora_r`?"),
        (["lora_r=4", "lora_r=8"], "`lora_r` is swept twice"),
        (["lora_r=4,4"], "a value is listed twice"),
        (["mlflow_experiment_name=a,b"], "cannot be swept"),
    ],
)
def test_malformed_grids_are_refused_with_the_reason(items, message):
    with pytest.raises(ParamsError, match=message.replace("?", r"\?").replace("[", r"\[")):
        parse_grid(items)


def test_the_id_is_stable_keeps_to_the_keys_and_changes_with_them_the_set_and_the_file(tmp_path):
    stages = ["prepare", "train"]
    one = sweep_id(SMOKE, parse_grid(["lora_r=4,8"]), ["max_steps=2"], stages)
    assert one == sweep_id(SMOKE, parse_grid(["lora_r=4,8"]), ["max_steps=2"], stages)
    # A value added extends the same sweep; its finished combinations stay finished.
    assert one == sweep_id(SMOKE, parse_grid(["lora_r=4,8,16"]), ["max_steps=2"], stages)
    assert one != sweep_id(SMOKE, parse_grid(["lora_r=4,8", "seed=1,2"]), ["max_steps=2"], stages)
    assert one != sweep_id(SMOKE, parse_grid(["lora_r=4,8"]), ["max_steps=3"], stages)
    assert one != sweep_id(SMOKE, parse_grid(["lora_r=4,8"]), ["max_steps=2"], ["prepare", "train", "merge"])
    edited = tmp_path / "smoke.yaml"
    edited.write_text(SMOKE.read_text() + "\nseed: 7\n")
    assert one != sweep_id(edited, parse_grid(["lora_r=4,8"]), ["max_steps=2"], stages)


def test_a_combination_that_does_not_validate_stops_the_sweep_before_any_run(tmp_path, capsys):
    assert main(["sweep", str(SMOKE), "--grid", "lora_r=4,-1", "--set", f"output_dir={tmp_path}"]) == 2
    assert "combination lora_r=-1: " in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _sweep_runs(experiment: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client, client.search_runs([experiment_id], PIPELINE_FILTER)


def test_a_sweep_runs_each_combination_once_and_a_rerun_only_what_is_new(tmp_path, capsys):
    experiment = "sweep-test"
    common = [
        "--stages", "prepare", "--out", str(tmp_path / "report"),
        "--set", f"output_dir={tmp_path / 'out'}", "--set", f"dataset_prepared_path={tmp_path / 'prepared'}",
        "--set", "max_steps=2", "--set", f"mlflow_experiment_name={experiment}",
    ]
    assert main(["sweep", str(SMOKE), "--grid", "lora_r=4,8", *common]) == 0
    out = capsys.readouterr().out
    client, runs = _sweep_runs(experiment)
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    [identity] = {run.data.tags["kit.sweep"] for run in runs}
    assert sorted(run.data.tags["kit.sweep_combination"] for run in runs) == ["lora_r=4", "lora_r=8"]
    assert sorted(run.data.params["lora_r"] for run in runs) == ["4", "8"]
    assert {run.data.params["max_steps"] for run in runs} == {"2"}
    for run in runs:
        assert f"FINISHED          lora_r={run.data.params['lora_r']}  {run.info.run_id}" in out
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "2 pipeline run(s)" in summary and "lora_r=4" in summary and "lora_r=8" in summary
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
    [compare_run] = client.search_runs(
        [runs[0].info.experiment_id], "tags.`kit.kind` = 'compare'"
    )
    assert set(compare_run.data.tags["kit.compared_runs"].split(",")) == {run.info.run_id for run in runs}

    assert main(["sweep", str(SMOKE), "--grid", "lora_r=4,8", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 2
    assert len(_sweep_runs(experiment)[1]) == 2

    assert main(["sweep", str(SMOKE), "--grid", "lora_r=4,8,16", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 2 and "[3/3] lora_r=16\n" in out
    runs = _sweep_runs(experiment)[1]
    assert len(runs) == 3 and {run.data.tags["kit.sweep"] for run in runs} == {identity}
    [new] = [run for run in runs if run.data.tags["kit.sweep_combination"] == "lora_r=16"]
    assert new.info.status == "FINISHED" and new.data.params["lora_r"] == "16"
    assert "3 pipeline run(s)" in (tmp_path / "report" / "summary.md").read_text()


def test_a_failed_combination_runs_again_and_a_shard_runs_only_its_own(tmp_path, capsys):
    experiment = "sweep-shard-test"
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"dataset_prepared_path={tmp_path / 'prepared'}",
        f"mlflow_experiment_name={experiment}",
    ]
    identity = sweep_id(SMOKE, parse_grid(["lora_r=4,8"]), overrides, ["prepare"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment(experiment)
    made = {}
    for combination, status in (("lora_r=4", "FAILED"), ("lora_r=8", "FINISHED")):
        tags = {"kit.kind": "pipeline", "kit.sweep": identity, "kit.sweep_combination": combination}
        made[combination] = client.create_run(experiment_id, run_name=combination, tags=tags).info.run_id
        client.set_terminated(made[combination], status)
    command = ["sweep", str(SMOKE), "--grid", "lora_r=4,8", "--stages", "prepare", "--out", str(tmp_path / "report")]
    command += [item for override in overrides for item in ("--set", override)]

    # Index 0 (lora_r=4) is shard 0's, and lora_r=8 finished: shard 1 runs nothing, and says lora_r=4 failed.
    assert main([*command, "--shard", "1/2"]) == 1
    out = capsys.readouterr().out
    assert "[1/2] lora_r=4: shard 0/2's, not this one's" in out and "[2/2] lora_r=8: finished before, skipped" in out
    assert f"FAILED            lora_r=4  {made['lora_r=4']}" in out
    assert f"FINISHED (before) lora_r=8  {made['lora_r=8']}" in out

    assert main([*command, "--shard", "0/2"]) == 0
    out = capsys.readouterr().out
    [again] = client.search_runs(
        [experiment_id], "tags.`kit.sweep_combination` = 'lora_r=4' and attributes.status = 'FINISHED'"
    )
    assert again.info.run_id != made["lora_r=4"] and again.data.params["lora_r"] == "4"
    assert f"FINISHED          lora_r=4  {again.info.run_id}" in out
    with pytest.raises(SystemExit, match="2"):
        main(["sweep", str(SMOKE), "--grid", "lora_r=4,8", "--shard", "2/2"])
    assert "expected i/n with 0 <= i < n" in capsys.readouterr().err
