"""`kit run` on the tiny default: the stage graph, the whole pipeline, and the MLflow record it leaves."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from kit.core.manifest import params_hash, write_manifest
from kit.core.params import load_params
from kit.pipeline.runner import write_run_params
from kit.pipeline.stage import NOTEBOOKS, STAGES, stage_inputs, stage_module, upstream_stages

from .benchmarks import smoke as smoke_benchmark
from .conftest import ROOT, SMOKE, TINY_MODEL
from .mounts import run_over

pytestmark = pytest.mark.slow


def _kit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], capture_output=True, text=True, cwd=cwd)


def _runs(experiment: str):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, runs


def test_evaluate_runs_last_and_reads_the_stages_its_variants_come_from(tmp_path):
    assert STAGES == ("prepare", "train", "merge", "quantize", "evaluate")
    assert [NOTEBOOKS[stage] for stage in STAGES] == sorted(NOTEBOOKS.values())  # numbered in pipeline order
    assert NOTEBOOKS["evaluate"] == "05_evaluate.ipynb" and NOTEBOOKS["quantize"] == "04_quantize.ipynb"
    every = load_params(SMOKE)
    assert upstream_stages("evaluate", every) == ("train", "merge", "quantize")
    assert upstream_stages("evaluate", load_params(SMOKE, ["eval_variants=[base, adapter]"])) == ("train",)
    assert upstream_stages("evaluate", load_params(SMOKE, ["eval_variants=[gguf_q8_0]"])) == ("train", "quantize")

    made = {}
    for stage in ("prepare", "train", "merge", "quantize"):
        upstream = {name: made[name] for name in upstream_stages(stage, every)}
        read = stage_module(stage).params_read(every)
        made[stage] = write_manifest(tmp_path / stage, stage, inputs={}, outputs={"made_by": stage}, metrics={},
                                     params_hash=params_hash(read, upstream))
    # Every stage takes its upstream manifests by stage, those made under these params found as they are.
    inputs = stage_inputs("evaluate", every, tmp_path, None, [])
    assert {stage: manifest["outputs"]["made_by"] for stage, manifest in inputs.items()} == {
        "train": "train", "merge": "merge", "quantize": "quantize"}
    assert set(stage_inputs("evaluate", load_params(SMOKE, ["eval_variants=[merged]"]), tmp_path, None, [])) == {
        "train", "merge"}
    assert stage_inputs("quantize", every, tmp_path, None, [])["merge"]["outputs"] == {"made_by": "merge"}


def test_a_stage_made_under_other_params_is_run_again_with_those_downstream_of_it(tmp_path, monkeypatch):
    params = load_params(SMOKE)
    made = {}
    for stage in ("prepare", "train", "merge"):
        upstream = {name: made[name] for name in upstream_stages(stage, params)}
        made[stage] = write_manifest(tmp_path / stage, stage, inputs={}, outputs={}, metrics={},
                                     params_hash=params_hash(stage_module(stage).params_read(params), upstream))
    ran = []

    def run_inline(stage, params, run_dir, parent_run_id, overrides, inputs):
        ran.append(stage)
        return write_manifest(run_dir / stage, stage, inputs={}, outputs={}, metrics={},
                              params_hash=params_hash(stage_module(stage).params_read(params), inputs))

    monkeypatch.setattr("kit.pipeline.stage.run_inline", run_inline)
    assert set(stage_inputs("quantize", params, tmp_path, None, [])) == {"merge"} and ran == []
    # An evaluate-only key leaves every upstream stage as it is; a training key re-runs train and merge.
    stage_inputs("quantize", load_params(SMOKE, ["eval_max_new_tokens=8"]), tmp_path, None, [])
    assert ran == []
    stage_inputs("quantize", load_params(SMOKE, ["lora_r=4"]), tmp_path, None, [])
    assert ran == ["train", "merge"]
    ran.clear()
    stage_inputs("quantize", load_params(SMOKE, ["sequence_len=256", "lora_r=4"]), tmp_path, None, [])
    assert ran == ["prepare", "train", "merge"]


def test_kit_run_smoke_learns_keeps_what_it_learned_and_leaves_its_mlflow_record(tmp_path):
    """The smoke pipeline as a user runs it: its quality ledger meets the issue's relations (a broken
    mask, packing, merge or conversion shows up as a number here), and MLflow holds a parent run and
    five finished stage runs."""
    experiment = "pipeline-test"
    result = smoke_benchmark.measure(tmp_path, fresh_cache=False, experiment=experiment)
    for number, stage in enumerate(STAGES, start=1):
        assert f"[{number}/5] {stage} done in" in result["stdout"]
    # Progress from inside the stages' kernels, the ledger, the run folder and how to see it in MLflow.
    for shown in ("[2/5] train · training: 0/", "[3/5] merge · checking the merged model's logits",
                  "[4/5] quantize · writing GGUF files: ", "[5/5] evaluate · adapter on tiny, generating: ",
                  "quality ledger, pass@1:\n", "\nadapter ", "run folder ", " ui --backend-store-uri sqlite:///"):
        assert shown in result["stdout"], shown
    assert not result["stderr"].strip(), result["stderr"]  # nothing on the terminal that asks nothing of the user
    # Time goes to reports/smoke.md, not into an assertion; every quality relation must hold.
    unmet = [(goal, measured) for goal, measured, met in smoke_benchmark.quality_goals(result) if not met]
    assert not unmet, f"{unmet}\n{result['ledger']}"
    assert "| adapter | " in smoke_benchmark.render_report(result)

    client, runs = _runs(experiment)
    parents = [run for run in runs if run.data.tags.get("kit.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {
        run.data.tags["kit.stage"]: run
        for run in runs
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == set(STAGES)
    for stage, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["lora_r"] == "8" and run.data.params["base_model"] == str(TINY_MODEL)
        assert run.data.tags["kit.git_commit"] and run.data.tags["kit.version.torch"].startswith("2.")
        artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "notebook")}
        assert artifacts == {f"notebook/{NOTEBOOKS[stage]}"}
        assert {artifact.path for artifact in client.list_artifacts(run.info.run_id, "params")} >= {
            "params/smoke.yaml", "params/resolved.yaml"}
    metrics = {stage: run.data.metrics for stage, run in children.items()}
    assert 0 < metrics["prepare"]["prepare/packing_efficiency"] <= 1
    steps = metrics["train"]["train/steps"]
    assert len(client.get_metric_history(children["train"].info.run_id, "train/loss")) == steps
    for variant in ("base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m"):
        for benchmark in result["params"].benchmark_names:
            assert f"{variant}/{benchmark}/pass_at_1" in metrics["evaluate"]
        assert metrics["evaluate"][f"{variant}/tiny/generation_seconds"] > 0
    evaluate_artifacts = {artifact.path for artifact in client.list_artifacts(children["evaluate"].info.run_id)}
    assert {"problems.json", "samples", "figures"} <= evaluate_artifacts
    assert metrics["merge"]["merge/top1_agreement"] == 1.0
    assert metrics["quantize"]["gguf/q8_0/top1_agreement"] > 0.9
    assert "pipeline/seconds" in parent.data.metrics


def test_a_failing_stage_stops_the_pipeline_and_is_left_failed(tmp_path):
    experiment = "failing-test"
    notebooks = tmp_path / "again" / "notebooks"
    notebooks.mkdir(parents=True)
    (notebooks / "01_prepare.ipynb").write_text("{}")  # an earlier run's, in the same run folder
    process = _kit("run", str(SMOKE), "--stages", "prepare,train", "--set", f"output_dir={tmp_path}",
                   "--set", "datasets=[{path: /nonexistent/data.jsonl, type: alpaca}]",
                   "--set", "mlflow_run_name=again", "--set", f"mlflow_experiment_name={experiment}", cwd=tmp_path)
    assert process.returncode == 1
    # One line for the error, once, and where its traceback is.
    error = "stage prepare failed: ValueError: datasets: /nonexistent/data.jsonl: no such file"
    assert process.stderr.splitlines() == [
        error, f"the executed notebook, with the traceback: {notebooks / '01_prepare.failed.ipynb'}"]
    # Named for how it ended; the earlier run's finished notebook is gone, not mistaken for this run's.
    assert sorted(path.name for path in notebooks.iterdir()) == ["01_prepare.failed.ipynb"]
    _, runs = _runs(experiment)
    statuses = {run.data.tags.get("kit.stage", "pipeline"): run.info.status for run in runs}
    assert statuses == {"pipeline": "FAILED", "prepare": "FAILED"}


def _run_on_a_terminal_until(command: list[str], cwd, shown: bytes) -> tuple[int, str]:
    """Run ``command`` on a pseudo-terminal, press Ctrl-C there once the pattern ``shown`` appeared: the
    exit code and everything the terminal showed."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command, with this terminal as its controlling one
        os.chdir(cwd)
        # As a user's shell starts it: a suite started in the background (`&` without job control)
        # ignores SIGINT, and the command would inherit that and never see the Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(command[0], command)
    output, pressed = b"", False
    while True:
        if select.select([terminal], [], [], 1.0)[0]:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not pressed and re.search(shown, output):
            os.write(terminal, b"\x03")  # the terminal turns it into SIGINT for its foreground processes
            pressed = True
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_ctrl_c_during_training_ends_in_one_line_with_exit_130_and_its_runs_killed(tmp_path):
    experiment = "interrupt-test"
    command = [sys.executable, "-m", "kit.cli", "run", str(SMOKE), "--stages", "prepare,train",
               "--set", f"output_dir={tmp_path}", "--set", f"dataset_prepared_path={tmp_path / 'prepared'}",
               "--set", "save_strategy=steps", "--set", "save_steps=2", "--set", "max_steps=400",
               "--set", "eval_steps=null", "--set", f"mlflow_experiment_name={experiment}"]
    # The line redraws twice a second, so not every step shows: any step from the 4th on (2 checkpoints).
    code, shown = _run_on_a_terminal_until(command, tmp_path, rb"training: ([4-9]|\d{2,3})/400 steps")
    assert code == 130, shown[-2000:]
    assert "Traceback" not in shown and "KeyboardInterrupt" not in shown
    [message] = [line for line in shown.splitlines() if "interrupted during" in line]
    assert message.startswith("interrupted during train (runs marked KILLED); kept: prepare in ")
    assert "checkpoint(s) under" in message and message.endswith("--set resume_from_checkpoint=auto")
    [notebooks] = tmp_path.glob("*/notebooks")
    assert sorted(path.name for path in notebooks.iterdir()) == ["01_prepare.ipynb", "02_train.interrupted.ipynb"]
    _, runs = _runs(experiment)
    statuses = {run.data.tags.get("kit.stage", "pipeline"): run.info.status for run in runs}
    assert statuses == {"pipeline": "KILLED", "prepare": "FINISHED", "train": "KILLED"}


def test_a_run_folder_another_run_holds_is_refused_before_anything_starts(tmp_path, capsys):
    from kit.cli import main
    from kit.pipeline.runner import owned

    experiment = "locked-test"
    held = tmp_path / "shared"
    held.mkdir()
    with owned(held):
        code = main(["run", str(SMOKE), "--stages", "prepare", "--set", f"output_dir={tmp_path}",
                     "--set", "mlflow_run_name=shared", "--set", f"mlflow_experiment_name={experiment}"])
    assert code == 2
    error = capsys.readouterr().err
    assert f"error: run folder {held} is in use by another kit run (process {os.getpid()}, since " in error
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name(experiment) is None


def test_a_run_folder_on_a_read_only_filesystem_is_named_in_one_line_before_anything_runs(tmp_path):
    folder = tmp_path / "read-only"
    done = run_over("read-only", folder, [sys.executable, "-m", "kit.cli", "run", str(SMOKE), "--stages", "prepare",
                                          "--set", f"output_dir={folder / 'runs'}", "--set", "mlflow_run_name=blocked"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: Read-only file system: {folder / 'runs'}; point output_dir or "
                                        "dataset_prepared_path to a writable folder"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    assert client.search_runs(experiments, "tags.mlflow.runName = 'blocked'") == []


def test_unknown_stage_is_refused():
    process = _kit("run", str(SMOKE), "--stages", "prepare,trian", cwd=None)
    assert process.returncode == 2 and "trian" in process.stderr


def test_runs_a_killed_process_left_running_are_shown_so_and_closed_by_the_next_run(tmp_path, capsys):
    from kit.cli import main
    from kit.core.tracking import OWNER_TAG
    from kit.pipeline.compare import load_comparison

    experiment = "abandoned-test"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment(experiment)
    # As a SIGKILLed `kit run` leaves its parent run: RUNNING, owned by a process that is gone.
    left = client.create_run(experiment_id, tags={"kit.kind": "pipeline",
                                                  OWNER_TAG: f"{socket.gethostname()}:{gone.stdout.strip()}"})
    runs = load_comparison(os.environ["MLFLOW_TRACKING_URI"], experiment).runs
    assert list(runs["status"]) == ["KILLED (process gone)"]

    assert main(["run", str(SMOKE), "--stages", "prepare", "--set", f"output_dir={tmp_path}",
                 "--set", f"dataset_prepared_path={tmp_path / 'prepared'}",
                 "--set", f"mlflow_experiment_name={experiment}"]) == 0
    assert f"marked KILLED 1 run(s) that a process now gone left RUNNING: {left.info.run_id}" in capsys.readouterr().out
    assert client.get_run(left.info.run_id).info.status == "KILLED"


def test_an_executed_notebook_cut_short_is_not_logged_as_the_stages_record(tmp_path):
    from kit.core import tracking

    params = load_params(SMOKE, ["mlflow_experiment_name=cut-notebook-test"])
    run_id = tracking.start_stage_run(params, "quantize", None, [])
    notebook = tmp_path / "04_quantize.ipynb"
    notebook.write_text('{"cells": [{"cell_type": "code", "sou')  # a full disk stopped papermill mid-write
    tracking.end_run(params, run_id, "FAILED", notebook=notebook)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.list_artifacts(run_id, "notebook") == []


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda path: path.name)
def test_the_run_folders_params_file_loads_as_the_params_it_was_written_from(path, tmp_path):
    """`kit run` hands every notebook its run folder's params.yaml rather than the file and overrides."""
    params = load_params(path, ["lora_r=4"] if "smoke" in path.name else [])
    again = load_params(write_run_params(params, tmp_path))
    assert again.resolved() == {**params.resolved(), "mlflow_experiment_name": params.experiment_name}
    assert again.experiment_name == params.experiment_name
