"""GPU check: the article's Code Llama 7B QLoRA step, measured on this machine's GPU, then the smoke pipeline there.

    kit gpu-check --out reports/gpu.md      (or: python -m kit.pipeline.gpu_check --out reports/gpu.md)

Needs no network. A Llama with Code Llama 7B's shape and random bf16 weights is built on the GPU and
saved; kit's own train stage (run_train: NF4 base as QLoRA loads it, LoRA r=32 on every linear layer,
packed rows of sequence_len 2048, micro_batch_size 10, the article's optimizer) trains it for a few
steps with and without gradient checkpointing. Reported: tokens/s, step time, peak GPU memory and
model FLOPs utilisation, and the article's job (1,000 samples x 3 epochs) projected to wall time.
Then the smoke pipeline (params/smoke.yaml, where kit runs from a checkout) runs every stage on the GPU.

Without a CUDA GPU it says so, runs the same measurement on a tiny Llama on the CPU (a dry run of
its own logic), and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from kit.core.hardware import training_setup
from kit.core.tracking import package_versions

# The models' config.json values, written out: the check downloads nothing.
CODE_LLAMA_7B = {  # codellama/CodeLlama-7b-hf
    "model_type": "llama",
    "vocab_size": 32016,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 16384,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-5,
}
QWEN25_CODER_1_5B = {  # Qwen/Qwen2.5-Coder-1.5B, the cheaper run's model
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# The article's model first: its settings are the ones compared; the others get kit's picks alone.
MODELS = {"Code Llama 7B": CODE_LLAMA_7B, "Qwen2.5-Coder 1.5B": QWEN25_CODER_1_5B}
# Both architectures, small enough for a CPU dry run.
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4}
DRY_RUN_MODELS = {
    "a tiny Llama (dry run)": {**CODE_LLAMA_7B, **TINY, "num_key_value_heads": 4},
    "a tiny Qwen2 (dry run)": {**QWEN25_CODER_1_5B, **TINY, "num_key_value_heads": 2},
}

# The article's job: mlabonne/Evol-Instruct-Python-1k, 3 epochs, on one RTX 3090 in 71 min 44 s.
ARTICLE_SAMPLES = 1000
ARTICLE_EPOCHS = 3
ARTICLE_MINUTES = 71 + 44 / 60
# Mean tokens per sample (alpaca template, Code Llama tokenizer) assumed for the projection; the
# dataset is not downloaded here. Evol-Instruct answers are long (prose + a code block, none over
# 2,048 tokens), and tokens/s at this length is what the projection scales.
ASSUMED_MEAN_SAMPLE_TOKENS = 650

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, for MFU; other GPUs use the measured matmul rate.
DATASHEET_BF16_TFLOPS = {
    "H100 80GB HBM3": 989.4,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "RTX 3090": 71.0,
    "RTX 4090": 165.2,
}
REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "datasets", "flash-attn",
                     "liger-kernel")


@dataclass
class Setting:
    gradient_checkpointing: bool
    micro_batch_size: int
    liger: bool = True  # False turns every liger_* key off; True leaves kit's pick (on where installed)

    @property
    def name(self) -> str:
        return ("gradient checkpointing" if self.gradient_checkpointing else "no checkpointing") + (
            "" if self.liger else ", Liger off")


@dataclass
class Measurement:
    setting: Setting
    out_of_memory: bool = False
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_allocated_gib: float = 0.0
    peak_reserved_gib: float = 0.0
    mfu: float | None = None
    choices: dict[str, str] | None = None
    error: str = ""


def linear_parameters(shape: dict) -> int:
    """Weights the matrix multiplies read per token: every decoder linear layer plus the LM head."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    kv_width = hidden * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * shape["intermediate_size"]
    return layers * per_layer + hidden * shape["vocab_size"]


def training_flops_per_token(shape: dict, attended_positions: float) -> float:
    """Model FLOPs per trained token of a QLoRA step (recomputation not counted, as MFU is defined).

    Forward 2N; backward 2N, not the usual 4N: the frozen base weights take no gradient, only the
    activations do (LoRA's own weights add under 2%). Attention: 4 * hidden * positions attended per
    layer forward (QK^T and AV), three times that with its backward; a packed sample attends only to
    itself, so positions come from the sample lengths, not the row's.
    """
    attention_forward = 4 * shape["hidden_size"] * attended_positions * shape["num_hidden_layers"]
    return 4 * linear_parameters(shape) + 3 * attention_forward


def mean_attended_positions(lengths: list[int]) -> float:
    """Positions a token attends to on average under causal attention within its own sample."""
    return sum(length * (length + 1) / 2 for length in lengths) / sum(lengths)


def sample_lengths(count: int, mean: float, longest: int, seed: int) -> list[int]:
    """Long-tailed lengths (a gamma distribution, shape 2) with about the given mean, clipped to fit a row."""
    draws = random.Random(seed)
    return [min(longest, max(32, round(draws.gammavariate(2.0, mean / 2.0)))) for _ in range(count)]


def build_tokenizer(vocab_size: int, folder: Path) -> None:
    """A word-level tokenizer over the model's vocabulary: training sees token ids only."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{index}": index for index in range(3, vocab_size)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>")),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )
    tokenizer.save_pretrained(str(folder))


def total_parameters(shape: dict) -> int:
    embeddings = shape["hidden_size"] * shape["vocab_size"]
    return linear_parameters(shape) + (0 if shape.get("tie_word_embeddings") else embeddings)


def build_random_model(shape: dict, folder: Path, device: str) -> float:
    """Save a model of ``shape`` with random bf16 weights (made on ``device``); returns seconds taken."""
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    torch.manual_seed(0)
    config = AutoConfig.for_model(**shape, dtype="bfloat16")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    _free_memory()
    return time.perf_counter() - started


def build_packed_dataset(shape: dict, sequence_len: int, lengths: list[int], folder: Path) -> int:
    """Random-token samples of ``lengths`` (first quarter as an unlearned prompt), packed by kit; row count."""
    from datasets import Dataset, DatasetDict

    from kit.core.formats import IGNORE_INDEX
    from kit.prepare.stage import pack_splits

    generator = torch.Generator().manual_seed(1)
    rows = {"input_ids": [], "labels": []}
    for length in lengths:
        tokens = torch.randint(3, shape["vocab_size"], (length,), generator=generator).tolist()
        rows["input_ids"].append(tokens)
        rows["labels"].append([IGNORE_INDEX] * (length // 4) + tokens[length // 4 :])
    packed = pack_splits(DatasetDict({"train": Dataset.from_dict(rows)}), sequence_len)
    packed.save_to_disk(str(folder))
    return len(packed["train"])


class StepTimer:
    """Wall time and trained tokens of every optimizer step, the device synchronised at both ends."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                _synchronize()
                timer.started, timer.tokens_before = time.perf_counter(), state.num_input_tokens_seen

            def on_step_end(self, args, state, control, **kwargs):
                _synchronize()
                tokens = state.num_input_tokens_seen - timer.tokens_before
                timer.steps.append((time.perf_counter() - timer.started, tokens))

        self.callback = Callback()
        self.steps: list[tuple[float, int]] = []
        self.started = 0.0
        self.tokens_before = 0


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_params(model_dir: Path, setting: Setting, sequence_len: int, steps: int, output_dir: Path):
    """The article's training keys (params/codellama-7b-evol-qlora.yaml) on the random model."""
    from kit.core.params import LIGER_KERNELS, validate_params

    liger_off = {} if setting.liger else dict.fromkeys(LIGER_KERNELS, False)
    return validate_params({
        **liger_off,
        "base_model": str(model_dir),
        "load_in_4bit": True,
        "adapter": "qlora",
        "datasets": [{"path": "unused: the rows are packed here", "type": "completion"}],
        "output_dir": str(output_dir),
        "sequence_len": sequence_len,
        "sample_packing": True,
        "lora_r": 32,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target_linear": True,
        "micro_batch_size": setting.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "optimizer": "paged_adamw_32bit",
        "lr_scheduler": "cosine",
        "learning_rate": 0.0002,
        "warmup_steps": 100,
        "bf16": "auto",
        "tf32": False,
        "gradient_checkpointing": setting.gradient_checkpointing,
        "flash_attention": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 42,
    })


def measure(setting: Setting, folders: dict[str, Path], sequence_len: int, steps: int,
            warmup_steps: int, flops_per_token: float, peak_tflops: float | None) -> Measurement:
    """Train ``steps`` steps through run_train; the first ``warmup_steps`` are left out of the rates."""
    from kit.train.stage import announced_setup, run_train

    out_dir = folders["runs"] / f"{len(list(folders['runs'].glob('*')))}"
    params = train_params(folders["model"], setting, sequence_len, steps, out_dir)
    prepared = {"outputs": {"tokenizer_dir": str(folders["tokenizer"]), "dataset_dir": str(folders["dataset"]),
                            "base_model": str(folders["model"]), "packed": True}}
    result = Measurement(setting, choices=announced_setup(params)[1])
    timer = StepTimer()
    # What an earlier setting may have left allocated is not this setting's to count.
    left_over = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    if left_over > 2**28:
        print(f"{left_over / 2**30:.2f} GiB still allocated from before; not counted", flush=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        run_train(params, {"prepare": prepared}, out_dir, callbacks=[timer.callback])
    except torch.OutOfMemoryError:
        result.out_of_memory = True
    except Exception as error:  # one setting failing must not lose the others' numbers
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        traceback.print_exc()
    finally:
        if torch.cuda.is_available():
            result.peak_allocated_gib = (torch.cuda.max_memory_allocated() - left_over) / 2**30
            result.peak_reserved_gib = (torch.cuda.max_memory_reserved() - left_over) / 2**30
        _free_memory()
    if result.out_of_memory or result.error:
        return result
    timed = timer.steps[warmup_steps:] or timer.steps
    seconds, tokens = sum(step[0] for step in timed), sum(step[1] for step in timed)
    result.step_seconds = statistics.median(step[0] for step in timed)
    result.tokens_per_second = tokens / seconds
    if peak_tflops:
        result.mfu = result.tokens_per_second * flops_per_token / (peak_tflops * 1e12)
    return result


def matmul_tflops() -> float:
    """The bf16 rate of an 8192^3 matrix product on this GPU (mean of 10 after 3 warm-ups), random data."""
    size = 8192
    left, right = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        left @ right
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        left @ right
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * size**3 / (start.elapsed_time(end) / 1000) / 1e12


def datasheet_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in DATASHEET_BF16_TFLOPS.items() if name in device_name), None)


def run_smoke_pipeline(folder: Path) -> dict | None:
    """Every stage of params/smoke.yaml in this process (kit's inline runner), on whatever device is here."""
    import os

    from kit.core.params import load_params
    from kit.pipeline.stage import PROJECT_DIR, STAGES, run_inline

    smoke_params = PROJECT_DIR / "params" / "smoke.yaml"
    if not smoke_params.is_file():  # an installed kit has no checkout's params/ beside it
        print(f"no {smoke_params}: kit runs from an installed package, not a checkout; the smoke pipeline is skipped")
        return None
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    overrides = [f"output_dir={folder / 'runs'}", f"dataset_prepared_path={folder / 'prepared'}"]
    if importlib.util.find_spec("llama_cpp") is None:
        overrides.append("eval_variants=[base, adapter, merged]")
    params = load_params(smoke_params, overrides)
    started = time.perf_counter()
    try:
        run_inline(STAGES[-1], params, folder / "runs" / "smoke", None, overrides)
        error = ""
    except Exception as failure:  # the stages that finished still report
        traceback.print_exc()
        error = f"{type(failure).__name__}: {str(failure).splitlines()[0][:200] if str(failure) else ''}"
    stages = {}
    for stage in STAGES:
        path = folder / "runs" / "smoke" / stage / "manifest.json"
        if path.exists():
            stages[stage] = json.loads(path.read_text())["metrics"]
    return {"seconds": time.perf_counter() - started, "stages": stages, "error": error, "overrides": overrides}


@dataclass
class ModelResults:
    name: str
    shape: dict
    build_seconds: float
    lengths: list[int]
    num_rows: int
    flops_per_token: float
    measurements: list[Measurement]


def measure_model(name: str, shape: dict, compare: bool, scratch: Path, sequence_len: int, micro_batch: int,
                  args: argparse.Namespace, peak_tflops: float | None) -> ModelResults:
    """kit's picks at the article's settings; with ``compare``, also without Liger and without checkpointing."""
    on_gpu = torch.cuda.is_available()
    lengths = sample_lengths(
        max(80, micro_batch * args.steps * sequence_len * 3 // 2 // args.mean_sample_tokens),
        args.mean_sample_tokens if on_gpu else sequence_len // 4, sequence_len, seed=0,
    )
    flops_per_token = training_flops_per_token(shape, mean_attended_positions(lengths))
    folders = {part: scratch / name / part for part in ("model", "tokenizer", "dataset", "runs")}
    print(f"building {name}", flush=True)
    build_seconds = build_random_model(shape, folders["model"], "cuda" if on_gpu else "cpu")
    build_tokenizer(shape["vocab_size"], folders["tokenizer"])
    num_rows = build_packed_dataset(shape, sequence_len, lengths, folders["dataset"])
    measurements = []

    def run(setting: Setting) -> Measurement:
        print(f"measuring {name}: {setting.name}, micro batch {setting.micro_batch_size}", flush=True)
        measurements.append(measure(setting, folders, sequence_len, args.steps, args.warmup_steps,
                                    flops_per_token, peak_tflops))
        return measurements[-1]

    kits_pick = Setting(True, micro_batch)
    picked = train_params(folders["model"], kits_pick, sequence_len, args.steps, folders["runs"])
    if training_setup(picked).liger_kernels:
        # What Liger's kernels are worth; first, because Liger patches some functions process-wide.
        run(Setting(True, micro_batch, liger=False))
    liger = not run(kits_pick).error  # where Liger's kernels fail here, the other settings go without them
    if compare and run(Setting(False, micro_batch, liger)).out_of_memory:
        # Without checkpointing every layer keeps its activations; a smaller batch gives the speed comparison.
        run(Setting(False, max(1, micro_batch // 5), liger))
        run(Setting(True, max(1, micro_batch // 5), liger))
    shutil.rmtree(folders["model"])  # the next model needs the disk
    return ModelResults(name, shape, build_seconds, lengths, num_rows, flops_per_token, measurements)


def _table(measurements: list[Measurement]) -> list[str]:
    lines = [
        "| setting | micro batch | tokens/s | step (s) | peak allocated (GiB) | peak reserved (GiB) | MFU | "
        "optimizer | attention | dtype | Liger kernels |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for result in measurements:
        setting, choices = result.setting, result.choices or {}
        picked = " | ".join(choices.get(f"train.{key}", "") for key in ("optimizer", "attention", "compute_dtype",
                                                                          "liger_kernels"))
        memory = f"{result.peak_allocated_gib:.1f} | {result.peak_reserved_gib:.1f}"
        if result.out_of_memory or result.error:
            outcome = "out of memory" if result.out_of_memory else f"failed: {result.error}"
            lines.append(f"| {setting.name} | {setting.micro_batch_size} | {outcome} | | {memory} | | {picked} |")
            continue
        mfu = f"{result.mfu:.1%}" if result.mfu is not None else "n/a"
        lines.append(f"| {setting.name} | {setting.micro_batch_size} | {result.tokens_per_second:,.0f} | "
                     f"{result.step_seconds:.2f} | {memory} | {mfu} | {picked} |")
    return lines


def _projection(model: ModelResults, mean_tokens: int) -> list[str]:
    """The article's job at the article's settings (checkpointing, micro batch 10; kit's picks where they ran)."""
    candidates = [m for m in model.measurements if m.setting in (Setting(True, 10), Setting(True, 10, liger=False))]
    article = next((m for m in candidates if m.tokens_per_second and m.setting.liger), None) or next(
        (m for m in candidates if m.tokens_per_second), None)
    if article is None:
        return []
    tokens = ARTICLE_SAMPLES * ARTICLE_EPOCHS * mean_tokens
    minutes = tokens / article.tokens_per_second / 60
    return [
        "",
        f"Projection: the article's job ({ARTICLE_SAMPLES:,} samples x {ARTICLE_EPOCHS} epochs, assuming "
        f"{mean_tokens} tokens per sample: {tokens / 1e6:.2f} M tokens) with {model.name} at the article's settings "
        f"({article.setting.name}, micro batch 10) takes **{minutes:.1f} min** of training steps here "
        f"(the article: {ARTICLE_MINUTES:.0f} min with Code Llama 7B on one RTX 3090), at a peak of "
        f"{article.peak_allocated_gib:.1f} GiB allocated, {article.peak_reserved_gib:.1f} GiB reserved. Each 100 "
        f"tokens of mean sample length move it by {minutes * 100 / mean_tokens:.1f} min.",
    ]


def format_report(context: dict, models: list[ModelResults], smoke: dict | None) -> str:
    mean_tokens = context["mean_sample_tokens"]
    lines = [
        "# GPU check: the article's QLoRA step on one GPU",
        "",
        f"Measured {context['date']} on {context['device']} by `kit gpu-check` "
        f"({context['seconds']:.0f} s in all). Versions: "
        + ", ".join(f"{name} {version}" for name, version in context["versions"].items()) + ".",
        "",
        "Each model has its real shape and random bf16 weights, saved and then loaded by kit's train stage "
        "(run_train) in NF4 with double quantization, LoRA r=32 alpha=16 dropout 0.05 on every linear layer, "
        "the article's optimizer and schedule. Data: random-token samples of long-tailed lengths (gamma, clipped to "
        f"32..{context['sequence_len']}), packed by kit into rows of sequence_len {context['sequence_len']}. Each "
        f"setting trains {context['steps']} steps; the first {context['warmup_steps']} are left out of the rates.",
        "",
        "MFU counts model FLOPs per token as 4N (the frozen base's forward and activation backward; its weights "
        "take no gradient) plus attention within each packed sample, recomputation not counted, against "
        + (f"the datasheet's dense bf16 peak, {context['peak_tflops']:.0f} TFLOP/s" if context["peak_from_datasheet"]
           else "the measured matmul rate" if context["matmul_tflops"] else "a GPU's peak: none here, so no MFU")
        + (f"; an 8192^3 bf16 matmul measured {context['matmul_tflops']:.0f} TFLOP/s here." if context[
            "matmul_tflops"] else "."),
    ]
    for model in models:
        lines += [
            "",
            f"## {model.name}",
            "",
            f"{total_parameters(model.shape) / 1e9:.2f} B parameters (saved in {model.build_seconds:.0f} s); "
            f"{len(model.lengths)} samples of mean length {statistics.mean(model.lengths):.0f} in {model.num_rows} "
            f"rows; {model.flops_per_token / 1e9:.2f} GFLOP per token.",
            "",
            *_table(model.measurements),
            *_projection(model, mean_tokens),
        ]
    if smoke:
        lines += ["", "## Smoke pipeline", "",
                  f"params/smoke.yaml, every stage in one process (overrides {smoke['overrides'][2:] or 'none'}): "
                  f"{smoke['seconds']:.0f} s" + (f", then failed: {smoke['error']}" if smoke["error"] else "") + ".",
                  "", "| stage | metrics |", "| --- | --- |"]
        for stage, metrics in smoke["stages"].items():
            shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics.items() if isinstance(value, int | float))
            lines.append(f"| {stage} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kit gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the report here (markdown)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per setting")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the rates")
    parser.add_argument("--mean-sample-tokens", type=int, default=ASSUMED_MEAN_SAMPLE_TOKENS,
                        help="the article's mean sample length assumed for the projection")
    parser.add_argument("--skip-smoke", action="store_true", help="measure only; do not run the smoke pipeline")
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available()
    started = time.perf_counter()
    peak, from_datasheet, measured_rate = None, False, None
    if on_gpu:
        models, sequence_len, micro_batch, device = MODELS, 2048, 10, torch.cuda.get_device_name()
        measured_rate = matmul_tflops()
        peak = datasheet_tflops(device)
        from_datasheet = peak is not None
        peak = peak or measured_rate
    else:
        print("no CUDA GPU here: a dry run of the check on a tiny Llama on the CPU; nothing is measured for real")
        models, sequence_len, micro_batch = DRY_RUN_MODELS, 256, 2
        device = f"CPU ({platform.processor() or platform.machine()})"

    def report(results: list[ModelResults], smoke: dict | None) -> str:
        """The report so far, written out at once: a run cut short keeps what it measured."""
        context = {
            "date": time.strftime("%Y-%m-%d"), "device": device,
            "versions": {"python": platform.python_version(), **package_versions(REPORTED_PACKAGES)},
            "sequence_len": sequence_len, "steps": args.steps, "warmup_steps": args.warmup_steps,
            "peak_tflops": peak or 0.0, "peak_from_datasheet": from_datasheet, "matmul_tflops": measured_rate,
            "mean_sample_tokens": args.mean_sample_tokens, "seconds": time.perf_counter() - started,
        }
        text = format_report(context, results, smoke)
        if args.out:
            args.out.write_text(text)
        return text

    results, smoke = [], None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for index, (name, shape) in enumerate(models.items()):
            results.append(measure_model(name, shape, index == 0, Path(scratch), sequence_len, micro_batch, args,
                                         peak))
            if index == 0 and on_gpu and not args.skip_smoke:  # the pipeline before the other models' numbers
                smoke = run_smoke_pipeline(Path(scratch) / "smoke")
            report(results, smoke)
    print(report(results, smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
