"""Benchmark of the train stage: packing against padding, and the kit against a plain Trainer + peft loop.

Run from the repository root with ``.venv/bin/python -m tests.benchmark_train``; it writes
reports/train.md. Every variant trains the embedded tiny model (params/smoke.yaml: QLoRA, seed 42,
CPU) for one epoch over the same samples, made into rows by the real prepare stage, so each one
trains on exactly the same real tokens; throughput is those tokens over the seconds of
``Trainer.train``. The variants take turns in each repeat, so load from other processes falls on all.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from kit.formats import IGNORE_INDEX
from kit.params import Params, load_params
from kit.prepare import run_prepare
from kit.train import run_train

from .benchmark_prepare import machine, verdict

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "train.md"

# 64 samples: 8 packed steps, 16 padded ones at micro_batch_size 4; a full run stays near 3 minutes.
NUM_SAMPLES = 64
REPEATS = 3
PACKING_TARGET = 1.5
OVERHEAD_TARGET = 0.95
REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets")


def benchmark_params(work_dir: Path, packing: bool, **overrides: Any) -> Params:
    """params/smoke.yaml for one epoch over NUM_SAMPLES samples, no validation split, writing under ``work_dir``."""
    return load_params(SMOKE, {
        "output_dir": str(work_dir / "out"),
        "dataset_prepared_path": str(work_dir / "prepared"),
        "embedded_num_samples": NUM_SAMPLES,
        "sample_packing": packing,
        "val_set_size": 0,
        "max_steps": None,
        **overrides,
    })


def pad_packed_rows(rows: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The plain loop's collator: rows padded to the longest, positions running on into the padding, no mask."""
    width = max(len(row["input_ids"]) for row in rows)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([row[key] + [fill] * (width - len(row[key])) for row in rows])

    return {
        "input_ids": padded("input_ids", pad_token_id),
        "labels": padded("labels", IGNORE_INDEX),
        "position_ids": torch.tensor([
            row["position_ids"] + list(range(width - len(row["position_ids"]))) for row in rows
        ]),
    }


def plain_train(params: Params, prepared: dict[str, Any], out_dir: Path) -> float:
    """QLoRA with transformers and peft alone, as their documentation writes it; returns train() seconds."""
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(params.seed)
    outputs = prepared["outputs"]
    tokenizer = AutoTokenizer.from_pretrained(outputs["tokenizer_dir"])
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        outputs["base_model"], dtype=torch.float32, quantization_config=quantization, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=params.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    arguments = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=params.micro_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        num_train_epochs=params.num_epochs,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        optim=params.optimizer,
        logging_steps=params.logging_steps,
        save_strategy="no",
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=load_from_disk(outputs["dataset_dir"])["train"],
        data_collator=lambda rows: pad_packed_rows(rows, pad_token_id),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save_pretrained(str(out_dir / "adapter"))
    return seconds


def measure(work_dir: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """Seconds of Trainer.train per repeat for kit packed, kit padded and the plain loop, and their rows."""
    packed_params = benchmark_params(work_dir, packing=True)
    padded_params = benchmark_params(work_dir, packing=False)
    packed = run_prepare(packed_params, None, work_dir / "prepare-packed")
    padded = run_prepare(padded_params, None, work_dir / "prepare-padded")
    if packed["metrics"]["prepare/train_tokens"] != padded["metrics"]["prepare/train_tokens"]:
        raise RuntimeError("packed and padded rows hold different samples")
    # The first training of a process pays for imports and first-call setup; it is not timed.
    run_train(benchmark_params(work_dir, packing=True, max_steps=1), packed, work_dir / "warm-up")
    seconds: dict[str, list[float]] = {"kit packed": [], "kit padded": [], "plain packed": []}
    steps: dict[str, float] = {}
    for repeat in range(repeats):
        for name, params, prepared in (("kit packed", packed_params, packed), ("kit padded", padded_params, padded)):
            trained = run_train(params, prepared, work_dir / f"{name}-{repeat}".replace(" ", "-"))
            seconds[name].append(trained["metrics"]["train/runtime_seconds"])
            steps[name] = trained["metrics"]["train/steps"]
        seconds["plain packed"].append(plain_train(packed_params, packed, work_dir / f"plain-{repeat}"))
    steps["plain packed"] = steps["kit packed"]
    return {
        "seconds": seconds,
        "steps": steps,
        "tokens": packed["metrics"]["prepare/train_tokens"],
        "samples": packed["metrics"]["prepare/num_train"],
        "packed_rows": packed["metrics"]["prepare/num_packed_rows"],
        "packing_efficiency": packed["metrics"]["prepare/packing_efficiency"],
    }


def versions() -> str:
    listed = [f"Python {platform.python_version()}"]
    listed += [f"{name} {importlib.metadata.version(name)}" for name in REPORTED_PACKAGES]
    return ", ".join(listed)


def render_report(result: dict[str, Any]) -> str:
    tokens = result["tokens"]
    median = {name: statistics.median(runs) for name, runs in result["seconds"].items()}
    packing_ratio = median["kit padded"] / median["kit packed"]
    overhead_ratio = median["plain packed"] / median["kit packed"]
    lines = [
        "# Train: packing and overhead",
        "",
        "Written by `.venv/bin/python -m tests.benchmark_train` (from the repository root); rerun it to",
        "refresh every number here.",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; {versions()}.",
        "",
        f"The embedded tiny model with params/smoke.yaml (QLoRA on the 4-bit NF4 base, LoRA r "
        f"{load_params(SMOKE).lora_r} on every linear layer, micro batch 4, adamw_torch, seed 42, CPU) and "
        f"`embedded_num_samples: {NUM_SAMPLES}`, `val_set_size: 0`: every variant trains one epoch over the same "
        f"{result['samples']} samples, {tokens:,} real tokens, rows made by `kit.prepare.run_prepare`. Packed, "
        f"they fill {result['packed_rows']} rows of 256 (efficiency {result['packing_efficiency']:.3f}); padded, "
        "each batch of 4 samples is padded to its longest. Seconds are those of `Trainer.train` (model "
        "loading and saving excluded), the median of "
        f"{len(result['seconds']['kit packed'])} repeats in which the variants take turns, after one untimed "
        "warm-up step; throughput is real tokens per second.",
        "",
        "| variant | steps | seconds per repeat | median seconds | real tokens per second |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for name, runs in result["seconds"].items():
        lines.append(
            f"| {name} | {result['steps'][name]:.0f} | {', '.join(f'{run:.1f}' for run in runs)} | "
            f"{median[name]:.1f} | {tokens / median[name]:,.0f} |"
        )
    lines += [
        "",
        "| ratio (same real tokens, one run) | value | target |",
        "| --- | ---: | --- |",
        f"| packing: kit packed / kit padded throughput | **{packing_ratio:.2f}x** | >= {PACKING_TARGET}x "
        f"{verdict(packing_ratio, PACKING_TARGET)} |",
        f"| overhead: kit packed / plain Trainer + peft packed throughput | **{overhead_ratio:.2f}x** | "
        f">= {OVERHEAD_TARGET}x {verdict(overhead_ratio, OVERHEAD_TARGET)} |",
        "",
        "The plain loop (`plain_train` in the benchmark) is transformers' Trainer with peft as their",
        "documentation writes it: BitsAndBytesConfig NF4 with double quantization, prepare_model_for_kbit_training,",
        "LoraConfig on all linear layers, the same TrainingArguments values, and a ten-line collator that pads",
        "the packed rows and passes their position ids. It trains on the very rows the kit trains on.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="benchmark-train-") as scratch:
        result = measure(Path(scratch))
    REPORT.write_text(render_report(result))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
