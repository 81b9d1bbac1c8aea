"""Scale-out: the train stage in 2 CPU processes (DDP over gloo), started with `accelerate launch`.

One 2-process epoch over the smoke rows is compared with a 1-process run of the same global batch
(micro batch 8 against 2 x 4): the same rows in the same steps, so the same loss curve.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import mlflow
import pytest
import torch
from datasets import load_from_disk
from mlflow.tracking import MlflowClient

from kit import cli
from kit.core import tracking
from kit.core.params import ParamsError
from kit.prepare.stage import run_prepare
from kit.train import distributed
from kit.train.stage import run_train

from .conftest import SMOKE, logged_losses
from .conftest import smoke_at as smoke
from .ddp_rows_recorder import rows_seen_file

pytestmark = pytest.mark.slow

# One epoch, no dropout (each rank would draw its own masks), evaluated before the first step and
# during training as the smoke params say: evaluating must not change what is trained (an evaluation
# before train() once did, in 2 processes).
EPOCH = ["max_steps=null", "num_epochs=1", "lora_dropout=0"]
MICRO_BATCH = 4
PROCESSES = 2
# fp32 sums taken in another order (per rank, then all-reduced) differ in the last bits.
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def prepared(folder):
    return run_prepare(smoke(folder, []), None, folder / "prepare")


@pytest.fixture(scope="module")
def two_processes(folder, prepared):
    """One epoch in 2 launched processes, in an MLflow run, each rank writing down the rows it trained on."""
    params = smoke(folder, [*EPOCH, f"micro_batch_size={MICRO_BATCH}", f"train_num_processes={PROCESSES}"])
    tracking.configure(params)
    with mlflow.start_run() as run:
        trained = distributed.launch_train(params, prepared, folder / "two", worker="tests.ddp_rows_recorder")
    return trained, run.info.run_id


@pytest.fixture(scope="module")
def one_process(folder, prepared):
    params = smoke(folder, [*EPOCH, f"micro_batch_size={MICRO_BATCH * PROCESSES}"])
    return run_train(params, {"prepare": prepared}, folder / "one")


def test_each_row_is_trained_on_once_per_epoch_across_the_ranks(folder, prepared, two_processes):
    train_rows = [tuple(ids) for ids in load_from_disk(prepared["outputs"]["dataset_dir"])["train"]["input_ids"]]
    spec = folder / "two" / distributed.LAUNCH_SPEC
    batches = {
        rank: [json.loads(line) for line in rows_seen_file(spec, rank).read_text().splitlines()]
        for rank in range(PROCESSES)
    }
    seen = collections.Counter(tuple(row) for rank in batches for batch in batches[rank] for row in batch)
    seen = collections.Counter({row: count for row, count in seen.items() if row in set(train_rows)})
    assert set(seen) == set(train_rows)
    # accelerate evens out the epoch's last step by repeating rows from its start, so that every rank
    # takes the same number of steps (else DDP would wait forever on a rank with no batch left).
    global_batch = MICRO_BATCH * PROCESSES
    repeated = -len(train_rows) % global_batch
    assert sorted(seen.values(), reverse=True) == [2] * repeated + [1] * (len(train_rows) - repeated)
    steps = -(-len(train_rows) // global_batch)
    train_batches = {rank: [batch for batch in batches[rank] if tuple(batch[0]) in seen] for rank in batches}
    assert [len(train_batches[rank]) for rank in range(PROCESSES)] == [steps] * PROCESSES
    trained, _ = two_processes
    assert trained["metrics"]["train/steps"] == steps
    # Real tokens are counted on every rank and summed: the run's total, repeated rows included.
    assert trained["metrics"]["train/total_tokens"] == sum(len(row) * count for row, count in seen.items())


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(two_processes, one_process):
    trained, _ = two_processes
    assert trained["outputs"]["processes"] == PROCESSES and one_process["outputs"]["processes"] == 1
    two, one = logged_losses(trained), logged_losses(one_process)
    assert len(two) == len(one)
    # Every step but the epoch's last trains on the same rows; the last holds the repeated rows in 2 processes.
    torch.testing.assert_close(two[:-1], one[:-1], rtol=0, atol=LOSS_TOLERANCE)
    assert two[-1] == pytest.approx(one[-1], abs=0.05)
    # Evaluated before the first step too (not compared: the trainer's eval loss is a mean of batch
    # means, so it depends on the eval batch, 4 rows per process here against 8).
    assert trained["metrics"]["eval/base_loss"] > trained["metrics"]["eval/final_loss"]


def test_rank_zero_alone_logs_and_writes_the_adapter(folder, two_processes):
    trained, run_id = two_processes
    client = MlflowClient()
    losses = client.get_metric_history(run_id, "train/loss")
    steps = trained["metrics"]["train/steps"]
    assert sorted(point.step for point in losses) == list(range(1, steps + 1))  # one point per step: one writer
    assert client.get_run(run_id).data.metrics["train/total_tokens"] == trained["metrics"]["train/total_tokens"]
    artifacts = {entry.path for entry in client.list_artifacts(run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
    adapter = Path(trained["outputs"]["adapter_dir"])
    assert adapter == (folder / "two" / "adapter").resolve() and (adapter / "adapter_config.json").is_file()
    assert json.loads((folder / "two" / "manifest.json").read_text()) == trained


def test_run_train_launches_processes_when_the_params_ask(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr("kit.train.stage.launch_train", lambda *args: launched.append(args) or {"stage": "train"})
    params = smoke(tmp_path, ["train_num_processes=2"])
    assert run_train(params, {"prepare": {"outputs": {}}}, tmp_path / "train") == {"stage": "train"}
    assert launched == [(params, {"outputs": {}}, tmp_path / "train")]


def test_the_process_count_comes_from_the_params_or_an_accelerate_config(tmp_path):
    assert smoke(tmp_path, []).num_train_processes == 1
    config = tmp_path / "accelerate.yaml"
    config.write_text("distributed_type: MULTI_GPU\nnum_processes: 3\n")
    from_config = smoke(tmp_path, [f"train_accelerate_config={config}"])
    assert from_config.num_train_processes == 3
    assert smoke(tmp_path, [f"train_accelerate_config={config}", "train_num_processes=2"]).num_train_processes == 2
    command = distributed.launch_command(from_config, tmp_path / "launch.json")
    assert command[command.index("--config_file") + 1] == str(config)
    assert command[command.index("--num_processes") + 1] == "3"
    assert command[-3:] == ["-m", "kit.train.worker", str(tmp_path / "launch.json")]
    with pytest.raises(ParamsError, match="train_accelerate_config"):
        smoke(tmp_path, [f"train_accelerate_config={tmp_path / 'missing.yaml'}"])


def test_kit_train_prepares_and_trains_into_the_run_folder(tmp_path, capsys):
    overrides = [f"output_dir={tmp_path}", f"dataset_prepared_path={tmp_path / 'prepared'}", "max_steps=2",
                 "eval_steps=null"]
    assert cli.main(["train", str(SMOKE), *[f"--set={item}" for item in overrides]]) == 0
    run_dir = tmp_path / "interactive"
    assert (run_dir / "prepare" / "manifest.json").is_file()
    trained = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert trained["metrics"]["train/steps"] == 2 and trained["outputs"]["processes"] == 1
    assert "trained 2 steps in 1 process(es)" in capsys.readouterr().out


def test_kit_run_trains_the_notebook_stage_in_two_processes(tmp_path):
    from kit.pipeline.runner import run_pipeline

    experiment = "distributed-pipeline"
    overrides = [f"output_dir={tmp_path}", f"dataset_prepared_path={tmp_path / 'prepared'}", "max_steps=2",
                 "eval_steps=null", f"train_num_processes={PROCESSES}", f"mlflow_experiment_name={experiment}"]
    result = run_pipeline(SMOKE, ["prepare", "train"], overrides, echo=lambda *args, **kwargs: None)
    assert result.failed_stage is None, result.error
    assert json.loads((result.run_dir / "train" / "manifest.json").read_text())["outputs"]["processes"] == PROCESSES
    # The launched processes' output is relayed into the executed notebook's cell.
    assert f"training in {PROCESSES} processes" in (result.run_dir / "notebooks" / "02_train.ipynb").read_text()
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.`kit.stage` = 'train'")
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert [point.step for point in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [1, 2]
