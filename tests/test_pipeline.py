"""`kit run` on the embedded default: the stage graph, the whole pipeline, and the MLflow record it leaves."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from kit.params import load_params
from kit.stage import NOTEBOOKS, STAGES, stage_inputs, upstream_stages, write_manifest

from . import benchmark_smoke
from .conftest import SMOKE


def _kit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], capture_output=True, text=True, cwd=cwd)


def _runs(experiment: str):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, runs


def test_evaluate_runs_last_and_reads_the_stages_its_variants_come_from(tmp_path):
    assert STAGES == ("prepare", "train", "merge", "quantize", "evaluate")
    assert NOTEBOOKS["evaluate"] == "03_evaluate.ipynb" and NOTEBOOKS["quantize"] == "05_quantize.ipynb"
    every = load_params(SMOKE)
    assert upstream_stages("evaluate", every) == ("train", "merge", "quantize")
    assert upstream_stages("evaluate", load_params(SMOKE, ["eval_variants=[base, adapter]"])) == ("train",)
    assert upstream_stages("evaluate", load_params(SMOKE, ["eval_variants=[gguf_q8_0]"])) == ("train", "quantize")

    for stage in ("train", "merge", "quantize"):
        write_manifest(tmp_path / stage, stage, inputs={}, outputs={"made_by": stage}, metrics={})
    # Evaluate takes its upstream manifests by stage; a stage with one upstream takes that manifest.
    inputs = stage_inputs("evaluate", every, tmp_path, None, [])
    assert {stage: manifest["outputs"]["made_by"] for stage, manifest in inputs.items()} == {
        "train": "train", "merge": "merge", "quantize": "quantize"}
    assert set(stage_inputs("evaluate", load_params(SMOKE, ["eval_variants=[merged]"]), tmp_path, None, [])) == {
        "train", "merge"}
    assert stage_inputs("quantize", every, tmp_path, None, [])["outputs"] == {"made_by": "merge"}


def test_kit_run_smoke_learns_keeps_what_it_learned_and_leaves_its_mlflow_record(tmp_path):
    """The smoke pipeline as a user runs it: its quality ledger meets the issue's relations (a broken
    mask, packing, merge or conversion shows up as a number here), and MLflow holds a parent run and
    five finished stage runs."""
    experiment = "pipeline-test"
    result = benchmark_smoke.measure(tmp_path, fresh_cache=False, experiment=experiment)
    for number, stage in enumerate(STAGES, start=1):
        assert f"[{number}/5] {stage} done in" in result["stdout"]
    # Progress from inside the stages' kernels, the ledger, the run folder and how to see it in MLflow.
    for shown in ("[2/5] train · training: 0/", "[3/5] merge · checking the merged model's logits",
                  "[4/5] quantize · writing GGUF files: ", "[5/5] evaluate · adapter on embedded, generating: ",
                  "quality ledger, pass@1:\n", "\nadapter ", "run folder ", " ui --backend-store-uri sqlite:///"):
        assert shown in result["stdout"], shown
    assert not result["stderr"].strip(), result["stderr"]  # nothing on the terminal that asks nothing of the user
    # Time goes to reports/smoke.md, not into an assertion; every quality relation must hold.
    unmet = [(goal, measured) for goal, measured, met in benchmark_smoke.quality_goals(result) if not met]
    assert not unmet, f"{unmet}\n{result['ledger']}"
    assert "| adapter | " in benchmark_smoke.render_report(result)

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
        assert run.data.params["lora_r"] == "8" and run.data.params["base_model"] == "embedded:tiny-llama"
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
        for benchmark in result["params"].eval_benchmarks:
            assert f"{variant}/{benchmark}/pass_at_1" in metrics["evaluate"]
        assert metrics["evaluate"][f"{variant}/embedded/generation_seconds"] > 0
    evaluate_artifacts = {artifact.path for artifact in client.list_artifacts(children["evaluate"].info.run_id)}
    assert {"problems.json", "samples", "figures"} <= evaluate_artifacts
    assert metrics["merge"]["merge/top1_agreement"] == 1.0
    assert metrics["quantize"]["gguf/q8_0/top1_agreement"] > 0.9
    assert "pipeline/seconds" in parent.data.metrics


def test_a_failing_stage_stops_the_pipeline_and_is_left_failed(tmp_path):
    experiment = "failing-test"
    process = _kit("run", str(SMOKE), "--stages", "prepare,train", "--set", f"output_dir={tmp_path}",
                   "--set", "datasets=[{path: /nonexistent/data.jsonl, type: alpaca}]",
                   "--set", f"mlflow_experiment_name={experiment}", cwd=tmp_path)
    assert process.returncode == 1
    assert "stage prepare failed" in process.stderr and "nonexistent" in process.stderr
    _, runs = _runs(experiment)
    statuses = {run.data.tags.get("kit.stage", "pipeline"): run.info.status for run in runs}
    assert statuses == {"pipeline": "FAILED", "prepare": "FAILED"}


def test_unknown_stage_is_refused():
    process = _kit("run", str(SMOKE), "--stages", "prepare,trian", cwd=None)
    assert process.returncode == 2 and "trian" in process.stderr
