"""Train variants, each a short real run_train of the tiny default on the CPU.

LoRA on a 32-bit and on an 8-bit base, full fine-tuning, added tokens under LoRA, gradient checkpointing,
every optimizer name, learning-rate schedules, eval and checkpoint cadence, and attention.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.optimization import Adafactor

from kit.core.generate import generate_answers
from kit.core.hardware import environment_warnings, training_setup
from kit.core.models import load_causal_lm, load_tokenizer, resolve_base_model, with_adapter
from kit.core.params import OPTIMIZERS, ParamsError, load_params
from kit.merge.stage import run_merge
from kit.prepare.stage import run_prepare
from kit.train.stage import _build_model, run_train

from .conftest import SMOKE, TINY_SPEC, logged_losses
from .conftest import log_history as history
from .conftest import smoke_at as smoke

pytestmark = pytest.mark.slow

# Three steps, learning from the first (no warmup), deterministic (no dropout), no evaluation on the way, and a
# validation split of two samples (one packed row) so the evaluation at the end is cheap.
SHORT = ["max_steps=3", "warmup_steps=0", "lora_dropout=0", "eval_steps=null", "logging_steps=1", "val_set_size=2"]
# LoRA on the 32-bit base, on a list of modules unlike the default [q_proj, v_proj], so the key must reach peft.
LORA = ["load_in_4bit=false", "adapter=lora", "lora_target_linear=null", "lora_target_modules=[q_proj, up_proj]"]
LORA_8BIT = ["load_in_4bit=false", "adapter=lora", "load_in_8bit=true"]
FULL_FINE_TUNE = ["load_in_4bit=false", "adapter=null"]
# An overridden special token the training data ends every sample with, and a new plain token.
NEW_TOKENS = ['special_tokens={eos_token: "<|end|>"}', 'tokens=["<|fim_middle|>"]']
# Eight cheap steps (one packed row each), long enough for warmup, a schedule and a cadence of a quarter of the run.
EIGHT_STEPS = ["max_steps=8", "micro_batch_size=1", "warmup_steps=null"]
BASE_LEARNING_RATE = load_params(SMOKE).learning_rate


class RunRecorder(TrainerCallback):
    """What a run did: its arguments, optimizer and checkpointing, its weights before and after training, and
    how often training ran the first MLP (twice per micro-batch when checkpointing recomputes it in backward)."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.args = args
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        layer = next(module for name, module in model.named_modules() if name.endswith("layers.0"))
        self.checkpointing = layer._gradient_checkpointing_func.keywords if layer.gradient_checkpointing else None
        self.mlp_calls = 0
        # A pre-hook: checkpointing's recompute stops early, inside the MLP, so a forward hook would miss it.
        layer.mlp.register_forward_pre_hook(self._count_training_call)

    def _count_training_call(self, module, inputs):
        self.mlp_calls += module.training  # evaluation runs the model in eval mode

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def changed(self) -> set[str]:
        return {name for name in self.before if not torch.equal(self.before[name], self.after[name])}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this file's many tiny runs: their matrices gain little from a second thread, and two
    threads wait on each other at every matmul while another process holds the second of two cores (measured on
    the 2-core machine: a 2-step run takes 0.8 s on one thread, 12-15 s on two while another process was busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("variants")


@pytest.fixture(scope="module")
def prepared(folder):
    # Of the overrides in this file only SHORT's and NEW_TOKENS change preparation, so these rows serve every other run.
    return run_prepare(smoke(folder, SHORT), None, folder / "prepare")


@pytest.fixture(scope="module")
def train(folder, prepared):
    """Train SHORT plus the overrides (each set once per module): (train manifest, RunRecorder)."""
    runs = {}

    def run(*overrides: str):
        if overrides not in runs:
            recorder = RunRecorder()
            out_dir = folder / f"run-{len(runs)}"
            trained = run_train(smoke(folder, [*SHORT, *overrides]), {"prepare": prepared}, out_dir,
                                callbacks=[recorder])
            runs[overrides] = trained, recorder
        return runs[overrides]

    return run


def assert_the_loss_is_finite_and_falls(trained):
    losses = logged_losses(trained)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


def assert_only_lora_weights_changed(recorder: RunRecorder):
    lora = {name for name in recorder.before if "lora_" in name}
    assert recorder.changed() <= lora
    # LoRA's B starts at zero, so every adapter pair must have moved.
    assert {name for name in lora if "lora_B" in name} <= recorder.changed()


# --- adapters ---


def test_lora_on_a_32bit_base_trains_adapters_on_the_listed_modules_only(train):
    trained, recorder = train(*LORA)
    assert_the_loss_is_finite_and_falls(trained)
    assert all(tensor.dtype == torch.float32 for tensor in recorder.before.values())  # nothing quantized
    assert_only_lora_weights_changed(recorder)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in recorder.before if "lora_A" in name}
    assert adapted == {"q_proj", "up_proj"}
    adapter = Path(trained["outputs"]["adapter_dir"])
    assert set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == {"q_proj", "up_proj"}
    saved = load_file(adapter / "adapter_model.safetensors")
    assert len(saved) == 2 * 2 * 2  # A and B, on two modules, in two layers
    assert all(".q_proj.lora_" in name or ".up_proj.lora_" in name for name in saved)


def test_lora_on_an_8bit_base_trains_on_the_cpu(train):
    trained, recorder = train(*LORA_8BIT)
    assert_the_loss_is_finite_and_falls(trained)
    assert any(tensor.dtype == torch.int8 for tensor in recorder.before.values())  # bitsandbytes' int8 weights
    assert_only_lora_weights_changed(recorder)
    assert (Path(trained["outputs"]["adapter_dir"]) / "adapter_model.safetensors").is_file()


def test_an_8bit_base_cannot_be_fully_fine_tuned():
    with pytest.raises(ParamsError, match="load_in_8bit: true needs adapter: lora"):
        load_params(SMOKE, FULL_FINE_TUNE + ["load_in_8bit=true"])


def test_full_fine_tune_changes_every_weight_and_saves_the_model(train):
    trained, recorder = train(*FULL_FINE_TUNE)
    assert_the_loss_is_finite_and_falls(trained)
    assert recorder.changed() == recorder.before.keys()
    outputs = trained["outputs"]
    assert outputs["adapter_dir"] is None and outputs["tokenizer_dir"] == outputs["model_dir"]
    model_dir = Path(outputs["model_dir"])
    assert model_dir.name == "model" and (model_dir / "tokenizer.model").is_file()
    saved = load_file(model_dir / "model.safetensors")
    assert saved.keys() == recorder.after.keys()
    assert all(torch.equal(saved[name], recorder.after[name]) for name in saved)


def test_lora_fan_in_fan_out_reaches_peft(tmp_path):
    """peft reads the key, and sets it back to false for nn.Linear layers (it is for GPT-2's Conv1D)."""
    params = smoke(tmp_path, [*LORA, "lora_fan_in_fan_out=true"])
    base = resolve_base_model(params)
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to True"):
        _build_model(params, base, load_tokenizer(base, params))
    params = smoke(tmp_path, LORA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _build_model(params, base, load_tokenizer(base, params))
    assert not any("fan_in_fan_out" in str(warning.message) for warning in caught)


# --- added tokens ---


@pytest.fixture(scope="module")
def new_tokens_run(tmp_path_factory):
    """(params, train manifest, RunRecorder): three QLoRA steps after special_tokens and tokens added two tokens."""
    folder = tmp_path_factory.mktemp("tokens")
    params = smoke(folder, [*SHORT, *NEW_TOKENS])
    prepared = run_prepare(params, None, folder / "prepare")
    recorder = RunRecorder()
    trained = run_train(params, {"prepare": prepared}, folder / "train", callbacks=[recorder])
    return params, trained, recorder


def trained_rows(state: dict, layer: str, token_ids: list[int]) -> torch.Tensor:
    """The rows of ``layer``'s trained copy (peft's modules_to_save) for ``token_ids``."""
    [name] = [name for name in state if name.endswith(f"{layer}.modules_to_save.default.weight")]
    return state[name][token_ids]


def test_new_tokens_are_trained_and_saved_with_the_adapter(new_tokens_run):
    params, trained, recorder = new_tokens_run
    outputs = trained["outputs"]
    tokenizer = load_tokenizer(outputs["tokenizer_dir"], params)
    base_vocabulary = TINY_SPEC.vocab_size
    new_ids = tokenizer.convert_tokens_to_ids(["<|end|>", "<|fim_middle|>"])
    assert tokenizer.eos_token == "<|end|>" and sorted(new_ids) == [base_vocabulary, base_vocabulary + 1]
    assert_the_loss_is_finite_and_falls(trained)

    # Every sample ends with the new EOS, so the head's row for it is trained.
    eos = [tokenizer.eos_token_id]
    assert not torch.equal(trained_rows(recorder.before, "lm_head", eos), trained_rows(recorder.after, "lm_head", eos))
    saved = load_file(Path(outputs["adapter_dir"]) / "adapter_model.safetensors")
    for layer in ("embed_tokens", "lm_head"):
        shapes = {tuple(tensor.shape) for name, tensor in saved.items() if f"{layer}." in name}
        assert shapes == {(len(tokenizer), TINY_SPEC.hidden_size)}

    # A fresh base grows random rows for the new tokens; the adapter brings the trained ones, through the merge too.
    base = load_causal_lm(outputs["base_model"], params, quantize=False)
    merged = with_adapter(base, outputs["adapter_dir"], tokenizer).merge_and_unload()
    torch.testing.assert_close(
        merged.get_input_embeddings().weight[new_ids], trained_rows(recorder.after, "embed_tokens", new_ids)
    )
    torch.testing.assert_close(
        merged.get_output_embeddings().weight[new_ids], trained_rows(recorder.after, "lm_head", new_ids)
    )


def test_merge_and_generate_take_an_adapter_that_added_tokens(new_tokens_run, tmp_path):
    params, trained, _ = new_tokens_run
    merged = run_merge(params, {"train": trained}, tmp_path / "merge")
    assert merged["metrics"]["merge/max_abs_logit_diff"] < 1e-4
    config = json.loads((Path(merged["outputs"]["model_dir"]) / "config.json").read_text())
    assert config["vocab_size"] == TINY_SPEC.vocab_size + 2
    [answer] = generate_answers(params, trained, ["Reverse a string."], max_new_tokens=4)
    assert isinstance(answer, str)


# --- gradient checkpointing ---


@pytest.mark.parametrize("base", [[], LORA], ids=["qlora-4bit", "lora-32bit"])
def test_gradient_checkpointing_recomputes_without_changing_the_losses(train, base):
    plain_run, plain = train(*base)
    checkpointed_run, checkpointed = train(*base, "gradient_checkpointing=true")
    assert plain.checkpointing is None and checkpointed.checkpointing["use_reentrant"] is False
    assert checkpointed.mlp_calls == 2 * plain.mlp_calls > 0  # the backward pass ran each layer again
    torch.testing.assert_close(logged_losses(checkpointed_run), logged_losses(plain_run), rtol=0, atol=1e-5)
    assert_only_lora_weights_changed(checkpointed)


# --- optimizers ---

# What transformers builds for each name that runs: the class, and settings telling variants apart.
BUILT_OPTIMIZERS = {
    "adamw_torch": (torch.optim.AdamW, {"fused": None}),
    "adamw_torch_fused": (torch.optim.AdamW, {"fused": True}),
    "adamw_bnb_8bit": (bnb.optim.AdamW, {"optim_bits": 8}),
    "adamw_8bit": (bnb.optim.AdamW, {"optim_bits": 8}),
    "adafactor": (Adafactor, {}),
    "sgd": (torch.optim.SGD, {}),
    "lion_8bit": (bnb.optim.Lion, {"optim_bits": 8}),
    "lion_32bit": (bnb.optim.Lion, {"optim_bits": 32}),
    # Where CUDA is: paged bitsandbytes optimizers.
    "paged_adamw_32bit": (bnb.optim.AdamW, {"optim_bits": 32, "is_paged": True}),
    "paged_adamw_8bit": (bnb.optim.AdamW, {"optim_bits": 8, "is_paged": True}),
    "paged_lion_32bit": (bnb.optim.Lion, {"optim_bits": 32, "is_paged": True}),
    "paged_lion_8bit": (bnb.optim.Lion, {"optim_bits": 8, "is_paged": True}),
}


def optimizer_setting(optimizer, key: str):
    if key == "fused":
        return optimizer.defaults.get("fused")
    if key == "optim_bits":
        return optimizer.args.optim_bits
    return getattr(optimizer, key)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_runs_or_runs_a_stated_substitute(train, name, capsys):
    params = load_params(SMOKE, [f"optimizer={name}"])
    runs = training_setup(params).optimizer
    trained, recorder = train(f"optimizer={name}", "max_steps=2", "micro_batch_size=1")
    substitute = f" (instead of {name})" if runs != name else ""
    assert f"optimizer: {runs}{substitute}\n" in capsys.readouterr().out
    stated = [warning for warning in environment_warnings(params) if warning.startswith("optimizer:")]
    assert bool(stated) == (runs != name) and all(name in warning and runs in warning for warning in stated)
    cls, settings = BUILT_OPTIMIZERS[runs]
    assert type(recorder.optimizer) is cls
    assert {key: optimizer_setting(recorder.optimizer, key) for key in settings} == settings
    losses = logged_losses(trained)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert_only_lora_weights_changed(recorder)


# --- schedules, cadence, regularisation ---


def expected_learning_rate(scheduler: str, step: int, warmup: int, total: int) -> float:
    """transformers' schedules, written out: the factor of the base learning rate for update ``step`` (from 0)."""
    if scheduler != "constant" and step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "constant_with_warmup": 1.0,
        "constant": 1.0,
    }[scheduler]


def scheduled(scheduler: str) -> list[str]:
    """Eight steps on ``scheduler`` warming up for a quarter of them, with weight decay and a gradient-norm cap."""
    return [*EIGHT_STEPS, f"lr_scheduler={scheduler}", "warmup_ratio=0.25", "weight_decay=0.01", "max_grad_norm=0.5"]


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup", "constant"])
def test_learning_rate_schedules_warm_up_for_warmup_ratio(train, scheduler):
    trained, _ = train(*scheduled(scheduler))
    rates = [entry["learning_rate"] for entry in history(trained) if "learning_rate" in entry]
    # A quarter of 8 steps: 2 warmup steps; the rate logged at step k is the one its update used.
    expected = [BASE_LEARNING_RATE * expected_learning_rate(scheduler, step, 2, 8) for step in range(8)]
    torch.testing.assert_close(rates, expected, rtol=1e-6, atol=1e-12)
    ignored_warmup = [warning for warning in environment_warnings(load_params(SMOKE, scheduled(scheduler)))
                      if warning.startswith("lr_scheduler:")]
    assert bool(ignored_warmup) == (scheduler == "constant")


def test_weight_decay_and_max_grad_norm_reach_the_trainer(train):
    _, recorder = train(*scheduled("cosine"))  # the run the schedule test made
    assert recorder.args.weight_decay == 0.01 and recorder.args.max_grad_norm == 0.5
    # LoRA trains no biases or norms, which the trainer would exempt from decay.
    assert {group["weight_decay"] for group in recorder.optimizer.param_groups if group["params"]} == {0.01}


@pytest.mark.parametrize(
    ("save_strategy", "checkpoint_steps"), [("steps", [2, 4, 6, 8]), ("epoch", [8]), ("no", [])]
)
def test_eval_and_save_steps_as_fractions_of_the_run(train, save_strategy, checkpoint_steps):
    # A bare `no` is YAML's false; it still means save_strategy "no".
    trained, recorder = train(*EIGHT_STEPS, "eval_steps=0.25", "save_steps=0.25", f"save_strategy={save_strategy}")
    # Step 0: the base, evaluated before the first step (eval/base_loss).
    assert [entry["step"] for entry in history(trained) if "eval_loss" in entry] == [0, 2, 4, 6, 8]
    checkpoints = Path(recorder.args.output_dir)
    saved = sorted(int(path.name.removeprefix("checkpoint-")) for path in checkpoints.glob("checkpoint-*"))
    assert saved == checkpoint_steps


# --- attention ---


def test_flash_attention_uses_sdpa_with_a_warning_without_cuda(tmp_path):
    params = smoke(tmp_path, [*LORA, "flash_attention=true"])
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run FlashAttention-2")
    assert training_setup(params).attention == "sdpa"
    assert any(warning.startswith("flash_attention:") and "SDPA" in warning for warning in environment_warnings(params))
    base = resolve_base_model(params)
    model = _build_model(params, base, load_tokenizer(base, params))
    assert model.config._attn_implementation == "sdpa"
