"""Benchmark of the train stage: packing against padding, and the kit against a plain Trainer + peft loop.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.train``; it writes
reports/train.md in about 5 minutes on 2 cores (the first run also builds the benchmark's tiny model,
once, into ~/.cache/tunebook/tiny-train-benchmark). Every variant trains one epoch, QLoRA as
params/smoke.yaml has it, over the same samples with long-tailed lengths, made into rows by the real
prepare stage, so each one trains on exactly the same real tokens; throughput is those tokens over the
seconds of the training loop, timed the same way for every variant (``TrainingClock``). The variants
take turns in each repeat, in an order that rotates, so load from other processes falls on all.
"""

from __future__ import annotations

import cProfile
import itertools
import json
import math
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from kit.core.formats import IGNORE_INDEX, render, tokenize
from kit.core.params import Params, load_params
from kit.prepare.stage import run_prepare
from kit.tiny import DEFAULT_FOLDER, TinySpec, build_tiny
from kit.train.stage import run_train

from .common import ROOT, load_average, machine, verdict, versions, write_jsonl
from .prepare import mbpp_train_rows

SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "train.md"

# The article's setup scaled down by 4 (sequence_len 2048 -> 512) to fit a CPU: its micro batch of 10
# rows, and a model wide enough that a step is seconds of compute, not per-step overhead, while attention
# over a packed row stays a minor share of a token's work (see attention_share).
SEQUENCE_LEN = 512
MICRO_BATCH_SIZE = 10
MODEL = TinySpec(hidden_size=384, num_layers=2, num_heads=6, intermediate_size=1024)
MODEL_FOLDER = DEFAULT_FOLDER.parent / "tiny-train-benchmark"
# Other sessions share the 2 cores. Torch's two threads meet at every operation, so while another
# process holds a core a step stalls, measured 3 to 5 times slower; one thread only slows in proportion.
TORCH_THREADS = 1
CODE_LLAMA_7B = {"hidden": 4096, "intermediate": 11008, "sequence_len": 2048}
# Sample lengths, in tokens of the rendered alpaca prompt and answer: log-normal with its median at
# this share of sequence_len, drawn again above sequence_len. At the article's 2048 that is a median of
# 328 and a mean of about 435 tokens, the mean of Evol-Instruct-Python-26k, the set the article's 1k
# subset was cut from (about 1,480 characters a row, at about 3.4 characters per Llama token).
MEDIAN_LENGTH_SHARE = 0.16
LENGTH_SIGMA = 0.75
# About 25,000 real tokens: 6 steps of 10 packed rows, 20 of 10 samples; runs of 15 to 30 seconds, and
# five repeats, so that the median shrugs off a run that other processes slowed.
NUM_SAMPLES = 200
REPEATS = 5
VARIANTS = ("kit packed", "kit padded", "plain packed")
PACKING_TARGET = 1.5
OVERHEAD_TARGET = 0.95
# Untimed steps of each collator before the timed runs; the packed ones are profiled.
WARM_UP_STEPS = 2
# Random batch orders averaged for the expected real-token share of padded batches.
SHARE_SHUFFLES = 500
REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "datasets")


# --- data ------------------------------------------------------------------------------------------

def target_lengths(count: int, sequence_len: int, seed: int) -> list[int]:
    """``count`` sample lengths from the long-tailed distribution above, none over ``sequence_len``."""
    rng = random.Random(seed)
    median = MEDIAN_LENGTH_SHARE * sequence_len
    lengths = []
    while len(lengths) < count:
        length = round(rng.lognormvariate(math.log(median), LENGTH_SIGMA))
        if length <= sequence_len:
            lengths.append(length)
    return lengths


def sized_rows(
    targets: Sequence[int], tasks: Sequence[dict[str, str]], count_tokens: Callable[[dict[str, str]], int]
) -> list[dict[str, str]]:
    """One alpaca row per target length, as long as it can be without passing it.

    Row ``n`` asks task ``n``'s question and answers with its code, cut short or run on into the code
    of the tasks after it, line by line; at least one line, so no answer is empty.
    """
    if len(targets) > len(tasks):
        raise ValueError(f"{len(targets)} rows from {len(tasks)} tasks would repeat questions")
    task_lines = [[line for line in task["output"].splitlines() if line.strip()] for task in tasks]
    lines = list(itertools.chain.from_iterable(task_lines))
    starts = list(itertools.accumulate(map(len, task_lines), initial=0))
    rows = []
    for number, target in enumerate(targets):
        answer = itertools.cycle(lines[starts[number]:] + lines[:starts[number]])
        row = {"instruction": tasks[number]["instruction"], "input": "", "output": next(answer) + "\n"}
        for line in answer:
            longer = {**row, "output": row["output"] + line + "\n"}
            if count_tokens(longer) > target:
                break
            row = longer
        rows.append(row)
    return rows


def alpaca_token_counter(params: Params) -> Callable[[dict[str, str]], int]:
    """A row's length as the prepare stage will count it: rendered, tokenized, with BOS and EOS."""
    from kit.core.models import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model(params), params)
    spec = params.datasets[0]
    return lambda row: len(tokenize(render(row, spec), tokenizer)["input_ids"])


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p90": ordered[math.ceil(0.9 * len(ordered)) - 1],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def padded_batches_share(lengths: Sequence[int], batch_size: int, shuffles: int = SHARE_SHUFFLES,
                         seed: int = 0) -> float:
    """Real tokens over tokens computed when rows in random order go in batches padded to their longest.

    The Trainer shuffles rows every epoch, so this is the expectation over ``shuffles`` random orders.
    """
    rng = random.Random(seed)
    order = list(lengths)
    computed = 0
    for _ in range(shuffles):
        rng.shuffle(order)
        computed += sum(
            max(order[start:start + batch_size]) * len(order[start:start + batch_size])
            for start in range(0, len(order), batch_size)
        )
    return sum(lengths) * shuffles / computed


def attention_share(hidden: int, intermediate: int, sequence_len: int) -> float:
    """Attention scores' work over the layer's projections' work, per token of a full row.

    Per token and layer, scores and their weighted sum take 4 * sequence_len * hidden multiply-adds
    (SDPA computes the whole masked row); the q, k, v, o projections and the gated MLP take
    2 * (4 * hidden**2 + 3 * hidden * intermediate).
    """
    return 4 * sequence_len * hidden / (2 * (4 * hidden**2 + 3 * hidden * intermediate))


# --- training --------------------------------------------------------------------------------------

def benchmark_params(dataset: Path, work_dir: Path, packing: bool, **overrides: Any) -> Params:
    """params/smoke.yaml with the benchmark's model, data and micro batch, one epoch, no validation split."""
    return load_params(SMOKE, {
        "base_model": str(build_tiny(MODEL_FOLDER.expanduser(), MODEL).model),
        "datasets": [{"path": str(dataset), "type": "alpaca"}],
        "dataset_decontamination": "off",
        "output_dir": str(work_dir / "out"),
        "dataset_prepared_path": str(work_dir / "prepared"),
        "sequence_len": SEQUENCE_LEN,
        "micro_batch_size": MICRO_BATCH_SIZE,
        "sample_packing": packing,
        "val_set_size": 0,
        "max_steps": None,
        "num_epochs": 1,
        **overrides,
    })


class TrainingClock(TrainerCallback):
    """Wall and CPU seconds of the training loop, from the Trainer's own begin and end signals.

    One instrument for the kit and the plain loop alike. CPU seconds are this process's: with one
    thread, other processes lengthen them only through shared caches and memory, not by taking the core.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = (time.perf_counter(), time.process_time())

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started[0]
        self.cpu_seconds = time.process_time() - self.started[1]


class LoopProfile(TrainerCallback):
    """cProfile over the training loop only, from the Trainer's begin signal to its end signal."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.profile = cProfile.Profile()
        self.profile.enable()

    def on_train_end(self, args, state, control, **kwargs):
        self.profile.disable()


def own_seconds(profile: cProfile.Profile, folder: Path) -> float:
    """Seconds spent in the code of the functions defined under ``folder`` itself, callees elsewhere excluded."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return sum(own for (path, _, _), (_, _, own, *_) in stats.items() if Path(path).is_relative_to(folder))


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


def plain_train(params: Params, prepared: dict[str, Any], out_dir: Path) -> dict[str, float]:
    """QLoRA with transformers and peft alone, as their documentation writes it."""
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
    # The values kit.train.run_train sets that matter here; its others are the Trainer's defaults.
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
    clock = TrainingClock()
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=load_from_disk(outputs["dataset_dir"])["train"],
        data_collator=lambda rows: pad_packed_rows(rows, pad_token_id),
        callbacks=[clock],
    )
    trainer.train()
    model.save_pretrained(str(out_dir / "adapter"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "steps": trainer.state.global_step,
            "final_loss": losses[-1]}


def kit_train(params: Params, prepared: dict[str, Any], out_dir: Path) -> dict[str, float]:
    """kit.train.run_train, whole; it must have trained on every prepared real token once."""
    clock = TrainingClock()
    metrics = run_train(params, {"prepare": prepared}, out_dir, callbacks=[clock])["metrics"]
    if metrics["train/total_tokens"] != prepared["metrics"]["prepare/train_tokens"]:
        raise RuntimeError(f"{out_dir.name}: trained on {metrics['train/total_tokens']} real tokens, "
                           f"not the {prepared['metrics']['prepare/train_tokens']} prepared")
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "steps": metrics["train/steps"],
            "final_loss": metrics["train/final_loss"]}


def row_lengths(prepared: dict[str, Any]) -> list[int]:
    from datasets import load_from_disk

    return [len(ids) for ids in load_from_disk(prepared["outputs"]["dataset_dir"])["train"]["input_ids"]]


def rotated(names: Sequence[str], repeat: int) -> list[str]:
    """The variants in repeat ``repeat``'s order: each goes first, second and last in turn."""
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def measure(work_dir: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """Every variant ``repeats`` times, taking turns, on the same prepared samples; what the report needs."""
    load_at_start = load_average()
    torch.set_num_threads(TORCH_THREADS)
    dataset = work_dir / "samples.jsonl"
    count_tokens = alpaca_token_counter(benchmark_params(dataset, work_dir, packing=True))
    targets = target_lengths(NUM_SAMPLES, SEQUENCE_LEN, seed=42)
    rows = sized_rows(targets, mbpp_train_rows(), count_tokens)
    write_jsonl(rows, dataset)
    params = {packing: benchmark_params(dataset, work_dir, packing=packing) for packing in (True, False)}
    packed = run_prepare(params[True], None, work_dir / "prepare-packed")
    padded = run_prepare(params[False], None, work_dir / "prepare-padded")
    tokens = packed["metrics"]["prepare/train_tokens"]
    if padded["metrics"]["prepare/train_tokens"] != tokens or packed["metrics"]["prepare/num_train"] != len(rows):
        raise RuntimeError("the packed and padded rows do not hold every sample, the same ones")
    runners = {
        "kit packed": lambda out: kit_train(params[True], packed, out),
        "kit padded": lambda out: kit_train(params[False], padded, out),
        "plain packed": lambda out: plain_train(params[True], packed, out),
    }
    # A process's first training pays for imports and first calls (each collator's too). Not timed; the
    # packed one is profiled for the time the kit's own code takes in the loop.
    loop_profile = LoopProfile()
    run_train(benchmark_params(dataset, work_dir, packing=True, max_steps=WARM_UP_STEPS), {"prepare": packed},
              work_dir / "warm-up-packed", callbacks=[loop_profile])
    run_train(benchmark_params(dataset, work_dir, packing=False, max_steps=WARM_UP_STEPS), {"prepare": padded},
              work_dir / "warm-up-padded")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for repeat in range(repeats):
        for name in rotated(VARIANTS, repeat):
            runs[name].append(runners[name](work_dir / f"{name}-{repeat}".replace(" ", "-")))
            print(f"repeat {repeat + 1}/{repeats}: {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    sample_lengths = json.loads(Path(padded["outputs"]["summary"]).read_text())["sample_lengths"]
    packed_rows = row_lengths(packed)
    smoke_micro_batch_size = load_params(SMOKE).micro_batch_size
    return {
        "runs": runs,
        "tokens": tokens,
        "samples": len(sample_lengths),
        "lengths": length_summary(sample_lengths),
        "packed_rows": len(packed_rows),
        "packing_efficiency": packed["metrics"]["prepare/packing_efficiency"],
        "packed_share": padded_batches_share(packed_rows, MICRO_BATCH_SIZE),
        "padded_share": padded_batches_share(sample_lengths, MICRO_BATCH_SIZE),
        "smoke_micro_batch_size": smoke_micro_batch_size,
        "smoke_padded_share": padded_batches_share(sample_lengths, smoke_micro_batch_size),
        "drawn_lengths": length_summary(targets),
        "drawn_padded_share": padded_batches_share(targets, MICRO_BATCH_SIZE),
        "kit_loop_seconds": own_seconds(loop_profile.profile, ROOT / "kit"),
        "profiled_loop_seconds": pstats.Stats(loop_profile.profile).total_tt,  # type: ignore[attr-defined]
        "load_at_start": load_at_start,
    }


# --- report ----------------------------------------------------------------------------------------

def seconds_list(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


def render_report(result: dict[str, Any]) -> str:
    tokens, runs, lengths = result["tokens"], result["runs"], result["lengths"]
    wall = {name: [run["seconds"] for run in variant_runs] for name, variant_runs in runs.items()}
    cpu = {name: [run["cpu_seconds"] for run in variant_runs] for name, variant_runs in runs.items()}
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    packing_ratio = median["kit padded"] / median["kit packed"]
    overhead_ratio = median["plain packed"] / median["kit packed"]
    cpu_packing_ratio = median_cpu["kit padded"] / median_cpu["kit packed"]
    cpu_overhead_ratio = median_cpu["plain packed"] / median_cpu["kit packed"]
    paired_overhead = [plain / kit for plain, kit in zip(wall["plain packed"], wall["kit packed"])]
    packing_bound = result["packed_share"] / result["padded_share"]
    # Tokens computed (padding included) per second, packed over padded: what a token costs apart from padding.
    computed_speed = packing_ratio / packing_bound
    hidden, intermediate = MODEL.hidden_size, MODEL.intermediate_size
    here_attention = attention_share(hidden, intermediate, SEQUENCE_LEN)
    article_attention = attention_share(CODE_LLAMA_7B["hidden"], CODE_LLAMA_7B["intermediate"],
                                        CODE_LLAMA_7B["sequence_len"])
    smoke = load_params(SMOKE)
    kit_loss, plain_loss = runs["kit packed"][0]["final_loss"], runs["plain packed"][0]["final_loss"]
    lines = [
        "# Train: packing and overhead",
        "",
        "Written by `.venv/bin/python -m tests.benchmarks.train` (from the repository root, about 5 minutes);",
        "rerun it to refresh every number here.",
        "",
        f"Measured {date.today().isoformat()} on {machine()}, {result['load_at_start']:.1f} at the start; torch on "
        f"{TORCH_THREADS} thread; {versions(REPORTED_PACKAGES)}.",
        "",
        "## Setup",
        "",
        f"**Data.** {result['samples']} alpaca samples written by the benchmark (`sized_rows`), {tokens:,} real "
        "tokens, made into rows by `kit.prepare.run_prepare`. Each asks an MBPP train task "
        "(shared/data/mbpp.jsonl, ids 601-974, one task a sample) and answers with its code, cut short or run on "
        "into the next tasks' code line by line to reach a length drawn with seed 42 from a log-normal "
        f"distribution: median {MEDIAN_LENGTH_SHARE} x sequence_len, sigma {LENGTH_SIGMA}, none over sequence_len. "
        "The text is English and Python, as Evol-Instruct's is. No sample can be shorter than the alpaca preamble, "
        "its task and one line of code, so the lengths drawn under that come out longer:",
        "",
        "| tokens per sample | min | median | p90 | max | mean |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, summary in ((f"the {result['samples']} samples, as prepared", lengths),
                           ("the lengths drawn", result["drawn_lengths"])):
        lines.append(f"| {label} | {summary['min']} | {summary['median']:.0f} | {summary['p90']} | {summary['max']} | "
                     f"{summary['mean']:.0f} |")
    lines += [
        "",
        "Why it is representative: it is the article's setup scaled down by 4 (sequence_len 2048 to "
        f"{SEQUENCE_LEN}). Instruction sets for code have long-tailed lengths, most samples short and a few near "
        f"the limit; at 2048 this distribution has a median of {MEDIAN_LENGTH_SHARE * 2048:.0f} and a mean of "
        "about 435 tokens, the mean of Evol-Instruct-Python-26k (about 1,480 characters a row at about 3.4 "
        "characters per Llama token). The article's own 1k subset is not such a set: its card says it keeps the "
        "1,000 longest rows of the 26k under 2,048 tokens. By this distribution those run from about 1,250 "
        "tokens up, mean about 1,520 (some 5,200 characters, near the card's 5,466 bytes a row), so no two "
        "share a row of 2,048 and packing has nothing to combine there.",
        "",
        f"**Model.** The tiny Llama built by `kit.tiny.build_tiny` with hidden size {hidden}, "
        f"{MODEL.num_layers} layers, {MODEL.num_heads} heads, feed-forward {intermediate} "
        f"(vocabulary {MODEL.vocab_size}), "
        f"`sequence_len: {SEQUENCE_LEN}`, `micro_batch_size: {MICRO_BATCH_SIZE}` (the article's); otherwise "
        "params/smoke.yaml: QLoRA on the 4-bit NF4 base (double quantization), LoRA r "
        f"{smoke.lora_r} on every linear layer, {smoke.optimizer}, {smoke.lr_scheduler}, logging every step, "
        f"seed {smoke.seed}, CPU, one epoch, `val_set_size: 0`, decontamination off. A packed step is "
        f"{MICRO_BATCH_SIZE} x {SEQUENCE_LEN} tokens, seconds of compute, against per-step costs (optimizer, "
        "logging) of milliseconds. Attention over a full row is "
        f"{here_attention:.0%} of the projections' work per token here and {article_attention:.0%} for Code Llama "
        "7B at 2048 (`attention_share`); SDPA attends over the whole packed row, so packing pays for that "
        "more here than in the article. Torch runs on one thread: the machine is shared, and two threads "
        "stall at every operation while another process holds a core.",
        "",
        f"**Variants.** *kit packed*: `run_train` on the packed rows (`sample_packing: true`), {result['packed_rows']} "
        f"rows of up to {SEQUENCE_LEN} tokens (packing efficiency {result['packing_efficiency']:.3f}), "
        f"{MICRO_BATCH_SIZE} rows a step. *kit padded*: `run_train` on the same samples unpacked "
        f"(`sample_packing: false`), {MICRO_BATCH_SIZE} samples a step, the kit's collator padding each batch to its "
        "longest sample: what a practitioner gets without packing. A packed row holds several samples, so the "
        "packed runs take fewer steps over the same tokens; that is the point of packing. *plain packed*: the "
        "same packed rows through `plain_train` below.",
        "",
        "Seconds are the training loop's, from the Trainer's `on_train_begin` to its `on_train_end` (model "
        "loading and saving excluded), by one callback (`TrainingClock`) for every variant; CPU seconds are "
        "the process's over the same span, without the time other processes took from it (but with what they "
        "cost it in shared caches and memory). The variants take turns in each repeat, in an order rotated every "
        "repeat, after an untimed warm-up of "
        f"{WARM_UP_STEPS} steps with each collator. Throughput is real tokens over the median seconds.",
        "",
        "## Results",
        "",
        "| variant | steps | seconds per repeat | median seconds | real tokens per second | CPU seconds per "
        "repeat | median CPU seconds | final loss |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, variant_runs in runs.items():
        lines.append(
            f"| {name} | {variant_runs[0]['steps']:.0f} | {seconds_list(wall[name])} | {median[name]:.1f} | "
            f"{tokens / median[name]:,.0f} | {seconds_list(cpu[name])} | {median_cpu[name]:.1f} | "
            f"{variant_runs[0]['final_loss']:.4f} |"
        )
    lines += [
        "",
        "| ratio (same real tokens, one run) | value | target | in CPU seconds |",
        "| --- | ---: | --- | ---: |",
        f"| packing: kit packed / kit padded throughput | **{packing_ratio:.2f}x** | >= {PACKING_TARGET}x "
        f"{verdict(packing_ratio >= PACKING_TARGET)} | {cpu_packing_ratio:.2f}x |",
        f"| overhead: kit packed / plain Trainer + peft packed throughput | **{overhead_ratio:.2f}x** | "
        f">= {OVERHEAD_TARGET}x {verdict(overhead_ratio >= OVERHEAD_TARGET)} | {cpu_overhead_ratio:.2f}x |",
        "",
        f"Overhead, repeat by repeat (plain seconds / kit seconds): {', '.join(f'{r:.2f}' for r in paired_overhead)}. "
        f"The two do the same work: they end on the same loss ({kit_loss:.6f} and {plain_loss:.6f}), from the same "
        "seed over the same rows in the same order, so the spread of these ratios around 1 is the noise of a "
        "shared machine, not a difference between them. Where the kit could add time, its own code in the "
        "training loop (its collator, `CountingTrainer.training_step`, the `MlflowLogging` callback, which logs "
        f"nothing without an active MLflow run) ran {result['kit_loop_seconds'] * 1000:.1f} ms of "
        f"{result['profiled_loop_seconds']:.1f} s in the {WARM_UP_STEPS} packed warm-up steps under cProfile, "
        "callees outside the kit excluded.",
        "",
        f"The bound on packing: in random batches of {MICRO_BATCH_SIZE}, each padded to its longest, real tokens are "
        f"{result['padded_share']:.3f} of the tokens computed for the padded samples and {result['packed_share']:.3f} "
        f"for the packed rows (expected over {SHARE_SHUFFLES} shuffles, as the Trainer shuffles), so packing "
        f"computes {packing_bound:.2f}x fewer tokens for the same real ones. The measured {packing_ratio:.2f}x says a "
        f"computed token ran {computed_speed:.2f}x as fast packed as padded ("
        + (f"a packed row attends over all {SEQUENCE_LEN} positions, a padded batch only over its longest sample"
           if computed_speed < 1 else "fewer, fuller steps") + f"). At the kit's default micro batch of "
        f"{result['smoke_micro_batch_size']} (params/smoke.yaml) the padded share would be "
        f"{result['smoke_padded_share']:.3f} (bound {result['packed_share'] / result['smoke_padded_share']:.2f}x); "
        f"on the lengths as drawn, before the prompt's floor, {result['drawn_padded_share']:.3f} at "
        f"{MICRO_BATCH_SIZE}.",
        "",
        "The plain loop (`plain_train` in the benchmark) is transformers' Trainer with peft as their",
        "documentation writes it: BitsAndBytesConfig NF4 with double quantization, prepare_model_for_kbit_training,",
        "LoraConfig on all linear layers, the TrainingArguments values `run_train` sets, and a ten-line collator",
        "that pads the packed rows and passes their position ids. It trains on the very rows the kit trains on.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="benchmark-train-") as scratch:
        result = measure(Path(scratch))
    REPORT.write_text(render_report(result))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
