"""Train: QLoRA / LoRA / full fine-tuning on the prepared rows with transformers' Trainer."""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kit.core import nf4
from kit.core.formats import IGNORE_INDEX
from kit.core.hardware import TrainingSetup, training_setup
from kit.core.manifest import params_hash, upstream_manifest, write_manifest
from kit.core.models import fit_embeddings_to_tokenizer, load_causal_lm, load_tokenizer, save_tokenizer
from kit.core.params import Params
from kit.core.progress import show_training_progress
from kit.core.tracking import log_artifact, log_metrics, set_tags
from kit.train.distributed import in_launched_process, launch_train, scale_out_arguments

CHECKPOINTS = "checkpoints"
# Written last into a checkpoint folder: a folder without it was cut short while saving.
CHECKPOINT_COMPLETE = "trainer_state.json"
REAL_TOKENS = "num_real_tokens"


class PackedRowsCollator:
    """Pads a batch of rows. Packed rows get no attention mask at all.

    ``num_real_tokens`` (tokens before padding, per row) is for counting; the trainer takes it out
    before the model sees the batch.

    Samples in a packed row are kept apart by position_ids restarting at each sample; SDPA and
    eager attention honour that only when attention_mask is None (an all-ones mask silently lets
    samples attend to each other), so none is built. Padding after the last sample is its own
    "sample" (positions from 0) with labels masked, and causal attention keeps real tokens blind to it.
    """

    def __init__(self, pad_token_id: int, packed: bool) -> None:
        self.pad_token_id = pad_token_id
        self.packed = packed

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        batch: dict[str, list] = {"input_ids": [], "labels": [], REAL_TOKENS: []}
        batch["position_ids" if self.packed else "attention_mask"] = []
        for row in rows:
            batch[REAL_TOKENS].append(len(row["input_ids"]))
            padding = width - len(row["input_ids"])
            batch["input_ids"].append(row["input_ids"] + [self.pad_token_id] * padding)
            batch["labels"].append(row["labels"] + [IGNORE_INDEX] * padding)
            if self.packed:
                batch["position_ids"].append(row["position_ids"] + list(range(padding)))
            else:
                batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * padding)
        return {key: torch.tensor(value) for key, value in batch.items()}


def announced_setup(params: Params) -> tuple[TrainingSetup, dict[str, str]]:
    """What training runs with on this machine, printed for the log; with the picks as the train run's tags."""
    setup = training_setup(params)
    choices = setup.choices(params)
    for tag, choice in choices.items():
        print(f"{tag.removeprefix('train.')}: {choice}")
    return setup, choices


def _build_model(params: Params, base_model: str, tokenizer):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = params.load_in_4bit or params.load_in_8bit
    model = load_causal_lm(base_model, params, quantize=quantized)
    model.config.use_cache = False
    base_vocabulary = model.get_input_embeddings().num_embeddings
    fit_embeddings_to_tokenizer(model, tokenizer)
    vocabulary_grew = model.get_input_embeddings().num_embeddings > base_vocabulary
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=params.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if params.adapter is None:
        return model
    config = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_targets,
        fan_in_fan_out=bool(params.lora_fan_in_fan_out),
        modules_to_save=_modules_to_save(params, model, vocabulary_grew),
        use_dora=params.peft_use_dora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _modules_to_save(params: Params, model, vocabulary_grew: bool) -> list[str] | None:
    """``lora_modules_to_save``, plus the input embeddings and the head where the tokenizer added tokens.

    The new tokens' rows start random: unless they are trained and saved with the adapter, a base loaded
    later grows other random rows for them. Axolotl stops and asks for ``lora_modules_to_save:
    [embed_tokens, lm_head]``; kit adds them, and says so.
    """
    modules = list(params.lora_modules_to_save or [])
    if not vocabulary_grew:
        return modules or None
    short_names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    added = [short_names[layer] for layer in layers if short_names[layer] not in modules]
    if added:
        print(f"lora_modules_to_save: adding {added}: the tokenizer has new tokens, whose rows must be trained "
              "and saved with the adapter")
    return modules + added


def nf4_guard(model):
    """A callback that stops training where the frozen 4-bit base stops being the one loaded: checked
    once now, then after every evaluation and checkpoint save and at the end (kit.core.nf4)."""
    from transformers import TrainerCallback

    reference = nf4.snapshot(model)
    nf4.check_nf4_base(model, reference, "after loading")

    class NF4Guard(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            nf4.check_nf4_base(model, reference, f"after the evaluation at step {state.global_step}")

        def on_save(self, args, state, control, **kwargs):
            nf4.check_nf4_base(model, reference, f"after saving checkpoint-{state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            nf4.check_nf4_base(model, reference, "at the end of training")

    return NF4Guard()


def newest_checkpoint(folder: Path) -> str | None:
    """The complete checkpoint of the highest step under ``folder``, if any."""
    steps = {}
    for path in folder.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / CHECKPOINT_COMPLETE).is_file():
            steps[int(match.group(1))] = path
    return str(steps[max(steps)].resolve()) if steps else None


def resume_checkpoint(params: Params, checkpoints: Path) -> str | None:
    """The checkpoint the run continues from: the params' path, the newest one for ``auto``, or none."""
    if params.resume_from_checkpoint != "auto":
        return params.resume_from_checkpoint
    newest = newest_checkpoint(checkpoints)
    if newest is None:
        print(f"resume_from_checkpoint: auto: no checkpoint under {checkpoints}; starting fresh")
    return newest


def peak_memory_mb() -> float:
    """CUDA's peak allocation where training ran on a GPU, else this process's peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _make_trainer(**kwargs):
    from transformers import Trainer, TrainerCallback

    class CountingTrainer(Trainer):
        """Counts real (unpadded) tokens into the trainer state, which checkpoints keep across a resume."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            inputs = dict(inputs)
            real_tokens = inputs.pop(REAL_TOKENS).sum().to(self.args.device)
            # Summed over every process, so throughput and the total are the run's, not one rank's.
            self.state.num_input_tokens_seen += int(self.accelerator.reduce(real_tokens, reduction="sum"))
            return super().training_step(model, inputs, num_items_in_batch)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = {key: value for key, value in inputs.items() if key != REAL_TOKENS}
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    class MlflowLogging(TrainerCallback):
        """train/* and eval/* metrics at their step, into the stage's MLflow run, with throughput."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.tokens, self.time = state.num_input_tokens_seen, time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            renamed = {}
            for key, value in (logs or {}).items():
                if key in ("loss", "learning_rate", "grad_norm"):
                    renamed[f"train/{key}"] = value
                elif key == "eval_loss":
                    renamed["eval/loss"] = value
            if "loss" in (logs or {}):
                now = time.perf_counter()
                renamed["train/tokens_per_second"] = (state.num_input_tokens_seen - self.tokens) / (now - self.time)
                self.tokens, self.time = state.num_input_tokens_seen, now
            log_metrics(renamed, step=state.global_step)

    trainer = CountingTrainer(**kwargs)
    trainer.add_callback(MlflowLogging())
    return trainer


# What the train notebook shows first (kit.pipeline.stage.metrics_table).
# The keys train reads itself; prepare's (the model, the rows) reach its hash through prepare's.
TRAINING_KEYS = (
    "load_in_8bit", "load_in_4bit", "adapter", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "lora_target_linear", "lora_fan_in_fan_out", "lora_modules_to_save", "peft_use_dora",
    "gradient_accumulation_steps", "micro_batch_size", "num_epochs", "max_steps", "optimizer", "lr_scheduler",
    "learning_rate", "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "bf16", "fp16", "tf32",
    "gradient_checkpointing", "eval_steps", "save_strategy", "save_steps", "seed",
    "flash_attention", "xformers_attention", "deepspeed", "fsdp", "fsdp_config", "liger_rope", "liger_rms_norm",
    "liger_glu_activation", "liger_fused_linear_cross_entropy", "train_num_processes", "train_accelerate_config",
)


def params_read(params: Params) -> dict[str, Any]:
    """The resolved params train depends on (its manifest's params hash)."""
    resolved = params.resolved()
    return {key: resolved[key] for key in TRAINING_KEYS}


SUMMARY_METRICS = {
    "train/steps": "optimizer steps",
    "eval/base_loss": "eval loss before training",
    "eval/final_loss": "eval loss after training",
    "train/final_loss": "last train loss",
    "train/runtime_seconds": "training time (s)",
    "train/peak_memory_mb": "peak memory (MB)",
}


def run_train(
    params: Params, upstream: dict[str, dict[str, Any]] | None, out_dir: Path, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train on the rows of prepare's manifest (``upstream["prepare"]``); ``callbacks`` are extra
    transformers TrainerCallbacks.

    Where the params ask for several processes, this process launches them (kit.train.distributed) and
    returns the manifest their rank 0 wrote; in each of them this function trains its share.
    """
    from datasets import load_from_disk
    from transformers import TrainingArguments, set_seed

    prepared = upstream_manifest(upstream, "prepare", "train")
    if params.num_train_processes > 1 and not in_launched_process():
        return launch_train(params, prepared, out_dir)
    set_seed(params.seed)
    outputs = prepared["outputs"]
    tokenizer = load_tokenizer(outputs["tokenizer_dir"], params)
    splits = load_from_disk(outputs["dataset_dir"])
    model = _build_model(params, outputs["base_model"], tokenizer)
    guards = [nf4_guard(model)] if params.load_in_4bit else []
    checkpoints = out_dir / CHECKPOINTS
    resumed_from = resume_checkpoint(params, checkpoints)

    has_validation = "validation" in splits
    rows = len(splits["train"])
    if params.micro_batch_size > rows:
        print(f"warning: micro_batch_size {params.micro_batch_size} is more than the {rows} training rows: each "
              f"step takes all {rows} at once, in memory together; lower micro_batch_size to {rows} or less",
              file=sys.stderr)
    setup, choices = announced_setup(params)
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=params.micro_batch_size,
        per_device_eval_batch_size=params.micro_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        num_train_epochs=params.num_epochs,
        max_steps=params.max_steps or -1,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        # transformers reads a value below 1 as a fraction of the run, as Axolotl's warmup_ratio.
        warmup_steps=params.warmup_steps or params.warmup_ratio or 0,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        optim=setup.optimizer,
        bf16=setup.compute_dtype == "bfloat16",
        fp16=setup.compute_dtype == "float16",
        tf32=setup.tf32,
        logging_steps=params.logging_steps or 10,
        # Counts, or fractions of the run (0.01 = every 1%), read the same way by transformers and Axolotl.
        eval_strategy="steps" if has_validation and params.eval_steps else "no",
        eval_steps=params.eval_steps,
        # The model before its first step (a new adapter changes nothing yet): the loss training must
        # beat. Evaluated inside the training loop: a trainer.evaluate() before train() changed the
        # rows each process then trained on (tests/test_distributed.py).
        eval_on_start=bool(has_validation and params.eval_steps and not resumed_from),
        save_strategy=params.save_strategy or "epoch",
        save_steps=params.save_steps or 500,
        # On a quantized base prepare_model_for_kbit_training has already switched it on (non-reentrant).
        activation_checkpointing=params.gradient_checkpointing and not (params.load_in_4bit or params.load_in_8bit),
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=setup.device == "cpu",
        dataloader_num_workers=0,
        # Every LoRA (or full) parameter takes part in each step; searching for unused ones costs a graph walk.
        ddp_find_unused_parameters=False,
        use_liger_kernel=bool(setup.liger_kernels),
        liger_kernel_config=setup.liger_kernels or None,
        **scale_out_arguments(params, setup),
    )
    trainer = _make_trainer(
        model=model,
        args=arguments,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"] if has_validation else None,
        data_collator=PackedRowsCollator(tokenizer.pad_token_id, packed=outputs["packed"]),
        callbacks=[*guards, *callbacks],
    )
    show_training_progress(trainer, "training")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resumed_from)
    seconds = time.perf_counter() - started

    history = trainer.state.log_history
    metrics = {
        # The last logged loss: the log history comes back with a checkpoint, so a resumed run has it too.
        "train/final_loss": [entry["loss"] for entry in history if "loss" in entry][-1],
        "train/steps": trainer.state.global_step,
        "train/runtime_seconds": seconds,
        "train/total_tokens": trainer.state.num_input_tokens_seen,
        "train/peak_memory_mb": peak_memory_mb(),
    }
    if has_validation:
        evaluated = [entry for entry in history if "eval_loss" in entry]
        # No second pass over the validation split when the last step already evaluated it.
        if evaluated and evaluated[-1]["step"] == trainer.state.global_step:
            metrics["eval/final_loss"] = evaluated[-1]["eval_loss"]
        else:
            metrics["eval/final_loss"] = trainer.evaluate()["eval_loss"]
        if arguments.eval_on_start:
            metrics["eval/base_loss"] = evaluated[0]["eval_loss"]
    if not trainer.is_world_process_zero():
        return {}  # rank 0 logs and writes the outputs; the launching process returns its manifest
    log_metrics(metrics)
    set_tags(choices)

    log_history = out_dir / "log_history.json"
    log_history.write_text(json.dumps(history, indent=1))
    weights_dir = out_dir / ("adapter" if params.adapter else "model")
    if params.adapter:
        # The trained embeddings and head travel as modules_to_save; peft would add two more copies of each.
        trainer.model.save_pretrained(str(weights_dir), save_embedding_layers=False)
    else:
        trainer.model.save_pretrained(str(weights_dir))
    save_tokenizer(tokenizer, outputs["tokenizer_dir"], weights_dir)
    figure = plot_losses(_loss_table(history), out_dir / "loss.png")
    log_artifact(figure, "figures")
    if params.adapter:  # a fully fine-tuned model is too big to copy into the tracking store
        log_artifact(weights_dir, "adapter")
    return write_manifest(
        out_dir,
        "train",
        inputs={"dataset_dir": outputs["dataset_dir"], "base_model": outputs["base_model"]},
        outputs={
            "base_model": outputs["base_model"],
            "adapter_dir": str(weights_dir.resolve()) if params.adapter else None,
            "model_dir": None if params.adapter else str(weights_dir.resolve()),
            "tokenizer_dir": str(weights_dir.resolve()),
            "adapter": params.adapter,
            "log_history": str(log_history.resolve()),
            "resumed_from": resumed_from,
            "processes": arguments.world_size,
        },
        metrics=metrics,
        params_hash=params_hash(params_read(params), upstream),
    )


def _loss_table(history: list[dict[str, Any]]):
    import pandas as pd

    train = {entry["step"]: entry["loss"] for entry in history if "loss" in entry}
    evaluation = {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}
    return pd.DataFrame({"train/loss": pd.Series(train), "eval/loss": pd.Series(evaluation)}).rename_axis("step")


def plot_losses(curves, path: Path) -> Path:
    """The loss curves as a PNG, drawn without pyplot so no GUI backend or global figure state is involved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for column in curves.columns:
        points = curves[column].dropna()
        axes.plot(points.index, points.values, marker=".", label=column)
    axes.set(xlabel="step", ylabel="loss")
    axes.grid(True)
    axes.legend()
    figure.savefig(path, dpi=100)
    return path
