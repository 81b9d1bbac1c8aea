"""Train: QLoRA on a 4-bit NF4 base, packed batches, resume after a kill, loss normalisation, tracking.

Golden losses: ``tests/golden/train_losses.json`` holds the first logged losses of a short QLoRA run
(params/smoke.yaml with GOLDEN_OVERRIDES) from the tiny base's shape and tokenizer with weights
drawn from a fixed seed, and the versions they were recorded under; they are compared only under the
same versions. Not the pretrained base: its 1,200 steps carry each CPU's rounding (AVX2 and AVX-512
kernels sum in different orders) into different weights, where a seeded draw is the same everywhere.
To re-record them after an intended change or an upgrade:
``TUNEBOOK_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_train.py -k golden``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from kit.core import tracking
from kit.core.formats import IGNORE_INDEX
from kit.core.hardware import Machine, environment_warnings, this_machine, training_setup
from kit.core.models import load_tokenizer
from kit.core.params import load_params
from kit.prepare.stage import run_prepare
from kit.tiny.tasks import instruction_rows
from kit.train.stage import PackedRowsCollator, _build_model, announced_setup, run_train

from .conftest import ROOT, SMOKE, TINY_MODEL, TINY_SPEC, logged_losses
from .conftest import smoke_at as smoke

pytestmark = pytest.mark.slow

# The smoke run on 200 of its rows, made 30 steps long, checkpointing every 5: its training rows pack
# into about 15 steps of 4, so a run killed after step 25 resumes inside its second epoch, whose order
# the resume must reproduce.
STEPS = 30
REFERENCE = ["save_strategy=steps", "save_steps=5", f"max_steps={STEPS}", "eval_steps=10"]
# The rows: 200 of the tiny family's, drawn as `kit tiny build` draws its 600 (from the seed 42).
ROWS = 200
KILL_AFTER_STEP = 25
GOLDEN = Path(__file__).parent / "golden" / "train_losses.json"
GOLDEN_STEPS = 5
GOLDEN_OVERRIDES = [f"max_steps={GOLDEN_STEPS}", "eval_steps=null", "lora_dropout=0"]
GOLDEN_TOLERANCE = 1e-4
GOLDEN_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")


class KillAfterCheckpoint(TrainerCallback):
    """SIGKILLs the training process right after the checkpoint of ``step`` is written: no cleanup runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WeightSnapshots(TrainerCallback):
    """The model's state dict (4-bit base weights and their quantization state included) before and after training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def rows(folder) -> list[str]:
    """The override that trains on the ROWS rows."""
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in instruction_rows(ROWS, seed=42)))
    return [f"datasets=[{{path: {path}, type: alpaca}}]"]


@pytest.fixture(scope="module")
def prepared(folder, rows):
    # The overrides used in this file change no other preparation key, so every run trains on these rows.
    return run_prepare(smoke(folder, rows), None, folder / "prepare")


@pytest.fixture(scope="module")
def reference(folder, prepared):
    """The uninterrupted reference run, in an MLflow run, with the model's weights before and after."""
    params = smoke(folder, REFERENCE)
    tracking.configure(params)
    snapshots = WeightSnapshots()
    with mlflow.start_run() as run:
        trained = run_train(params, {"prepare": prepared}, folder / "reference", callbacks=[snapshots])
    return trained, snapshots, run.info.run_id


def test_qlora_puts_lora_on_a_4bit_base_and_trains_only_the_adapter(smoke_params):
    from kit.core.models import resolve_base_model

    base = resolve_base_model(smoke_params)
    model = _build_model(smoke_params, base, load_tokenizer(base, smoke_params))
    four_bit = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * TINY_SPEC.num_layers  # q k v o gate up down
    assert four_bit[0].weight.quant_type == "nf4"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_dora_and_modules_to_save_reach_peft(tmp_path):
    from kit.core.models import resolve_base_model

    params = load_params(SMOKE, [f"output_dir={tmp_path}", "peft_use_dora=true", "lora_modules_to_save=[lm_head]"])
    base = resolve_base_model(params)
    model = _build_model(params, base, load_tokenizer(base, params))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any("lora_magnitude_vector" in name for name in trainable)  # DoRA's learned magnitudes
    assert any("lm_head.modules_to_save" in name for name in trainable)
    assert all("lora_" in name or "modules_to_save" in name for name in trainable)


def test_the_smoke_run_lowers_the_loss_and_saves_the_adapter(reference):
    trained, _, _ = reference
    losses = logged_losses(trained)
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] <= 0.95 * losses[0]
    assert trained["metrics"]["train/final_loss"] == losses[-1]
    adapter = Path(trained["outputs"]["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tokenizer.model").exists()
    history = json.loads(Path(trained["outputs"]["log_history"]).read_text())
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [0, 10, 20, 30]  # 0: the base
    assert trained["outputs"]["resumed_from"] is None


def test_qlora_changes_only_the_adapter_weights(reference):
    _, snapshots, _ = reference
    before, after = snapshots.before, snapshots.after
    assert before.keys() == after.keys()
    adapter = {name for name in before if "lora_" in name}
    base = before.keys() - adapter
    assert any(tensor.dtype == torch.uint8 for name, tensor in before.items() if name in base)  # packed NF4
    assert [name for name in sorted(base) if not torch.equal(before[name], after[name])] == []
    # LoRA's B starts at zero, so every adapter pair must have moved.
    assert all(not torch.equal(before[name], after[name]) for name in adapter if "lora_B" in name)


def test_the_run_is_tracked_with_throughput_memory_and_artifacts(reference, prepared):
    from datasets import load_from_disk

    trained, _, run_id = reference
    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    assert metrics["train/runtime_seconds"] > 0 and metrics["train/peak_memory_mb"] > 100
    # Each row counted by its length before padding: all of them in epoch 1, then 4 per step of epoch 2.
    lengths = sorted(len(row) for row in load_from_disk(prepared["outputs"]["dataset_dir"])["train"]["input_ids"])
    steps_per_epoch = math.ceil(len(lengths) / 4)
    second_epoch_rows = (STEPS - steps_per_epoch) * 4
    assert steps_per_epoch < KILL_AFTER_STEP < STEPS
    assert (sum(lengths) + sum(lengths[:second_epoch_rows]) <= metrics["train/total_tokens"]
            <= sum(lengths) + sum(lengths[-second_epoch_rows:]))
    assert metrics["train/total_tokens"] == trained["metrics"]["train/total_tokens"]
    throughput = client.get_metric_history(run_id, "train/tokens_per_second")
    assert [point.step for point in throughput] == list(range(1, STEPS + 1))
    assert all(point.value > 0 for point in throughput)
    artifacts = {entry.path for folder in ("adapter", "figures") for entry in client.list_artifacts(run_id, folder)}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "figures/loss.png"} <= artifacts
    tags = client.get_run(run_id).data.tags
    assert {key: tags[key] for key in tags if key.startswith("train.")} == {
        "train.device": "cpu", "train.attention": "sdpa", "train.compute_dtype": "float32",
        "train.optimizer": "adamw_torch", "train.liger_kernels": "none",
    }


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_adapter_and_curve(folder, prepared, reference):
    trained, _, _ = reference
    out_dir = folder / "killed"
    manifest = folder / "prepared.json"
    manifest.write_text(json.dumps({"prepare": prepared}))
    script = (
        "import json, sys; from pathlib import Path; from kit.core.params import load_params;"
        " from kit.train.stage import run_train; from tests.test_train import KillAfterCheckpoint;"
        " params = load_params(sys.argv[1], json.loads(sys.argv[2]));"
        " run_train(params, json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4]),"
        " callbacks=[KillAfterCheckpoint(int(sys.argv[5]))])"
    )
    overrides = [f"output_dir={folder}", *REFERENCE]
    killed = subprocess.run(
        [sys.executable, "-c", script, str(SMOKE), json.dumps(overrides), str(manifest), str(out_dir),
         str(KILL_AFTER_STEP)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out_dir / "adapter").exists()

    resumed = run_train(smoke(folder, [*REFERENCE, "resume_from_checkpoint=auto"]), {"prepare": prepared}, out_dir)
    checkpoint = out_dir / "checkpoints" / f"checkpoint-{KILL_AFTER_STEP}"
    assert resumed["outputs"]["resumed_from"] == str(checkpoint.resolve())
    torch.testing.assert_close(logged_losses(resumed), logged_losses(trained), rtol=0, atol=1e-4)
    assert abs(resumed["metrics"]["train/final_loss"] - trained["metrics"]["train/final_loss"]) < 1e-4
    assert resumed["metrics"]["train/total_tokens"] == trained["metrics"]["train/total_tokens"]
    resumed_weights, trained_weights = (
        load_file(Path(run["outputs"]["adapter_dir"]) / "adapter_model.safetensors") for run in (resumed, trained)
    )
    at_checkpoint = load_file(checkpoint / "adapter_model.safetensors")
    assert resumed_weights.keys() == trained_weights.keys() == at_checkpoint.keys()
    # Measured against how far the last steps moved each tensor: float32 sums can round one Adam
    # element apart (seen: 4e-6 of 2,048), where a lost optimizer state or data order moves them all.
    for name, weight in resumed_weights.items():
        moved = (trained_weights[name] - at_checkpoint[name]).norm()
        assert moved > 0, name
        assert (weight - trained_weights[name]).norm() <= 1e-2 * moved, name


def test_auto_resume_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    from kit.train.stage import resume_checkpoint

    params = smoke(tmp_path, ["resume_from_checkpoint=auto"])
    assert resume_checkpoint(params, tmp_path / "checkpoints") is None
    assert "starting fresh" in capsys.readouterr().out
    complete = tmp_path / "checkpoints" / "checkpoint-4"
    (tmp_path / "checkpoints" / "checkpoint-9").mkdir(parents=True)  # cut short: no trainer_state.json
    complete.mkdir()
    (complete / "trainer_state.json").write_text("{}")
    assert resume_checkpoint(params, tmp_path / "checkpoints") == str(complete.resolve())


class FirstStepReached(Exception):
    pass


class StopAtTheFirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise FirstStepReached


def test_a_micro_batch_beyond_the_training_rows_is_warned_of(folder, prepared, capsys):
    rows = prepared["metrics"]["prepare/num_packed_rows"]
    params = smoke(folder, ["micro_batch_size=100000", "max_steps=1", "eval_steps=null"])
    with pytest.raises(FirstStepReached):  # the warning comes before it; the step of every row is not needed
        run_train(params, {"prepare": prepared}, folder / "huge-batch", callbacks=[StopAtTheFirstStep()])
    assert (f"warning: micro_batch_size 100000 is more than the {int(rows)} training rows: each step takes all "
            f"{int(rows)} at once") in capsys.readouterr().err


def test_accumulated_micro_batches_train_as_one_batch(folder, prepared):
    """Loss is normalised by the trained tokens of the whole batch, not averaged over micro-batches."""
    shared = ["max_steps=4", "logging_steps=1", "lora_dropout=0", "eval_steps=null", "warmup_steps=0"]
    runs = {
        shape: logged_losses(run_train(smoke(folder, [*shared, *shape]), {"prepare": prepared},
                                       folder / "-".join(shape)))
        for shape in (("micro_batch_size=2", "gradient_accumulation_steps=1"),
                      ("micro_batch_size=1", "gradient_accumulation_steps=2"))
    }
    one_batch, accumulated = runs.values()
    assert len(one_batch) == 4
    torch.testing.assert_close(accumulated, one_batch, rtol=0, atol=1e-5)


def golden_environment() -> dict:
    return {
        "python": platform.python_version(),
        **{name: importlib.metadata.version(name) for name in GOLDEN_PACKAGES},
        "seed": 42,
        "params": str(SMOKE.relative_to(ROOT)),
        "overrides": [f"datasets: {ROWS} rows of the tiny family, seed 42", *GOLDEN_OVERRIDES],
        "base": "the tiny base's config and tokenizer, weights from torch.manual_seed(0)",
    }


@pytest.fixture(scope="module")
def seeded_base(folder) -> Path:
    """The tiny base's config and tokenizer with untrained weights drawn from a fixed seed."""
    pretrained = TINY_MODEL
    base = folder / "seeded-base"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig.from_pretrained(pretrained)).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(pretrained / name, base / name)
    return base


def test_the_first_losses_match_the_golden_ones(folder, rows, seeded_base):
    params = smoke(folder / "golden", [f"base_model={seeded_base}", *rows, *GOLDEN_OVERRIDES])
    prepared = run_prepare(params, None, folder / "golden" / "prepare")
    losses = logged_losses(run_train(params, {"prepare": prepared}, folder / "golden" / "train"))
    environment = golden_environment()
    if os.environ.get("TUNEBOOK_RECORD_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"environment": environment, "losses": losses}, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    # Compared under any versions: where they moved, the message says which (re-record if that was expected).
    moved = {key: f"{value} -> {environment[key]}" for key, value in golden["environment"].items()
             if environment.get(key) != value}
    torch.testing.assert_close(losses, golden["losses"], rtol=0, atol=GOLDEN_TOLERANCE, msg=lambda message: (
        f"{message}\nsince the golden losses were recorded: {moved or 'nothing changed'}; "
        "TUNEBOOK_RECORD_GOLDEN=1 records them again"))


def test_a_packed_batch_has_the_loss_of_its_samples_unpacked():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    samples = [torch.randint(3, 64, (length,)).tolist() for length in (6, 9, 4)]
    labels = [[IGNORE_INDEX] + sample[1:] for sample in samples]
    packed = PackedRowsCollator(pad_token_id=0, packed=True)([
        {"input_ids": samples[0] + samples[1], "labels": labels[0] + labels[1],
         "position_ids": list(range(6)) + list(range(9))},
        {"input_ids": samples[2], "labels": labels[2], "position_ids": list(range(4))},
    ])
    assert "attention_mask" not in packed and packed.pop("num_real_tokens").tolist() == [15, 4]
    unpacked = PackedRowsCollator(pad_token_id=0, packed=False)(
        [{"input_ids": sample, "labels": label} for sample, label in zip(samples, labels)]
    )
    assert unpacked.pop("num_real_tokens").tolist() == [6, 9, 4]
    with torch.no_grad():
        packed_loss = model(**packed, use_cache=False).loss
        unpacked_loss = model(**unpacked, use_cache=False).loss
    torch.testing.assert_close(packed_loss, unpacked_loss)


CPU = Machine(cuda_devices=0, device_name="cpu", bf16=False, flash_attn=False, liger_kernel=False, deepspeed=False)
H100 = Machine(cuda_devices=2, device_name="NVIDIA H100", bf16=True, flash_attn=True, liger_kernel=True,
               deepspeed=False)
V100 = Machine(cuda_devices=1, device_name="Tesla V100", bf16=False, flash_attn=False, liger_kernel=False,
               deepspeed=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine picks")
def test_a_cpu_runs_unpaged_unfused_without_liger_and_says_so(capsys):
    params = load_params(SMOKE, ["optimizer=paged_adamw_32bit", "liger_fused_linear_cross_entropy=true", "bf16=true",
                                 "flash_attention=true"])
    assert announced_setup(params)[1] == {
        "train.device": "cpu", "train.attention": "sdpa", "train.compute_dtype": "float32",
        "train.optimizer": "adamw_torch (instead of paged_adamw_32bit)", "train.liger_kernels": "none",
    }
    assert "optimizer: adamw_torch (instead of paged_adamw_32bit)\n" in capsys.readouterr().out
    warned = {warning.split(":")[0] for warning in environment_warnings(params)}
    assert {"optimizer", "liger_fused_linear_cross_entropy", "bf16", "flash_attention"} <= warned
    assert training_setup(params) == training_setup(params, CPU)


def test_the_machine_decides_what_the_same_params_train_with():
    params = load_params(SMOKE, ["optimizer=adamw_torch", "bf16=auto", "liger_rope=false", "flash_attention=true",
                                 "fsdp=[full_shard]", "train_num_processes=2"])
    on_h100, on_v100, on_cpu = (training_setup(params, machine) for machine in (H100, V100, CPU))
    assert (on_h100.optimizer, on_h100.compute_dtype, on_h100.attention, on_h100.fsdp) == (
        "adamw_torch_fused", "bfloat16", "flash_attention_2", True)
    assert on_h100.liger_kernels == {"rope": False, "rms_norm": True, "swiglu": True,
                                     "fused_linear_cross_entropy": True, "cross_entropy": False}
    assert (on_v100.compute_dtype, on_v100.attention, on_v100.liger_kernels) == ("float32", "sdpa", {})
    assert (on_cpu.optimizer, on_cpu.compute_dtype, on_cpu.attention, on_cpu.fsdp, on_cpu.tf32) == (
        "adamw_torch", "float32", "sdpa", False, None)
    paged = load_params(SMOKE, ["optimizer=paged_adamw_32bit"])
    assert (training_setup(paged, H100).optimizer, training_setup(paged, CPU).optimizer) == (
        "paged_adamw_32bit", "adamw_torch")
    warned = {machine.device_name: {warning.split(":")[0] for warning in environment_warnings(params, machine)}
              for machine in (H100, V100, CPU)}
    assert "flash_attention" not in warned["NVIDIA H100"] and "fsdp" not in warned["NVIDIA H100"]
    assert {"flash_attention", "optimizer"} <= warned["Tesla V100"]
    assert {"flash_attention", "fsdp"} <= warned["cpu"] and "optimizer" not in warned["cpu"]


def test_this_machine_is_probed_once():
    assert this_machine() is this_machine()
    assert this_machine().cuda == torch.cuda.is_available()
