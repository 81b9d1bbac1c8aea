"""Benchmark of the quantize stage: GGUF files against the Hugging Face model they were made from.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.quantize`` (about 4 minutes on 2
cores); it writes reports/quantize.md. The models go through ``kit.quantize.run_quantize`` as the stage
runs it: the tiny default's base (params/smoke.yaml) and a Llama of about 100M parameters built
here with the tiny tokenizer, large enough that the weights, not the metadata and vocabulary,
decide the file sizes; that one as initialised (random weights) and after a few training steps.
Every number is the stage's own metric on its held-out code.
"""

from __future__ import annotations

import math
import shutil
from datetime import date
from pathlib import Path
from typing import Any

from kit.core.logits import HELD_OUT_SNIPPETS
from kit.core.params import Params, load_params
from kit.quantize.stage import run_quantize
from kit.tiny.model import stdlib_corpus

from .common import ROOT, machine, measure_offline_and_report, model_shape, verdict, versions

SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "quantize.md"

# f16 is always written first; bf16 is exported from the weights like it, the rest quantized from f16.
GGUF_TYPES = ("bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
# About 100M parameters: 14 layers of 7.1M each and 3M in the embeddings and output.
LARGER_SHAPE = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 14, "num_attention_heads": 12}
# A random model predicts near-uniformly (perplexity about the vocabulary size), so which token is top-1
# is decided by tiny margins that any rounding flips. A few steps of training on the standard library's
# sources (not the held-out snippets) widen the larger model's margins, as a real model's are wider.
TRAIN_STEPS = 20
TRAIN_BATCH = 8
TRAIN_SEQUENCE = 128
TRAIN_LEARNING_RATE = 1e-3
# The goals.
F16_MIN_TOP1 = 0.99
F16_MAX_PERPLEXITY_CHANGE = 0.005
Q8_MAX_PERPLEXITY_CHANGE = 0.01
Q4_K_M_MAX_SIZE_RATIO = 0.35
REPORTED_PACKAGES = ("torch", "transformers", "gguf", "llama_cpp_python")


def benchmark_params(work: Path, gguf_types: tuple[str, ...]) -> Params:
    overrides = [f"output_dir={work}", f"dataset_prepared_path={work / 'prepared'}",
                 f"gguf_quantizations=[{', '.join(gguf_types)}]"]
    return load_params(SMOKE, overrides)


def build_larger_llama(tiny_dir: Path, folder: Path, shape: dict[str, int], seed: int, train_steps: int) -> Path:
    """A Llama of ``shape`` with random fp32 weights (seeded) and the tiny model's tokenizer, then
    trained for ``train_steps`` on the standard library's sources."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    folder.mkdir(parents=True)
    for tokenizer_file in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_dir / tokenizer_file).is_file():
            shutil.copy(tiny_dir / tokenizer_file, folder)
    config = AutoConfig.from_pretrained(tiny_dir)
    for key, value in shape.items():
        setattr(config, key, value)
    config.num_key_value_heads = shape["num_attention_heads"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    if train_steps:
        token_ids = AutoTokenizer.from_pretrained(folder)(stdlib_corpus(train_steps * 10_000))["input_ids"]
        rows = torch.tensor(token_ids[: len(token_ids) // TRAIN_SEQUENCE * TRAIN_SEQUENCE]).view(-1, TRAIN_SEQUENCE)
        optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LEARNING_RATE)
        for step in range(train_steps):
            batch = rows[step * TRAIN_BATCH: (step + 1) * TRAIN_BATCH]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return total


def measure(work: Path, gguf_types: tuple[str, ...] = GGUF_TYPES, larger_shape: dict[str, int] = LARGER_SHAPE,
            train_steps: int = TRAIN_STEPS) -> dict[str, Any]:
    """The quantize stage's metrics on the tiny default's base and on the larger Llama, random and trained."""
    params = benchmark_params(work, gguf_types)
    tiny_dir = Path(params.base_model)
    larger = {
        f"larger Llama, {steps} training steps": build_larger_llama(
            tiny_dir, work / f"larger-llama-{steps}", larger_shape, params.seed, steps
        )
        for steps in (0, train_steps)
    }
    models = {}
    for name, model_dir in (("tiny default", tiny_dir), *larger.items()):
        merged = {"stage": "merge", "outputs": {"model_dir": str(model_dir)}}
        manifest = run_quantize(params, {"merge": merged}, work / name.replace(" ", "-"))
        models[name] = {"parameters": parameter_count(model_dir), "metrics": manifest["metrics"],
                        "types": list(manifest["outputs"]["gguf"])}
    return {"params": params, "larger_shape": larger_shape, "train_steps": train_steps, "models": models}


def goals(metrics: dict[str, float], larger: bool) -> list[str]:
    """The issue's goals, each with what was measured and whether it was met."""
    merged = metrics["merged/perplexity"]
    f16_change = metrics["gguf/f16/perplexity"] / merged - 1
    q8_change = metrics["gguf/q8_0/perplexity"] / merged - 1
    lines = [
        f"- f16 top-1 agreement >= {F16_MIN_TOP1}: {metrics['gguf/f16/top1_agreement']:.3f}, "
        f"{verdict(metrics['gguf/f16/top1_agreement'] >= F16_MIN_TOP1)}",
        f"- f16 perplexity within {F16_MAX_PERPLEXITY_CHANGE:.1%} of the HF model's: {f16_change:+.3%}, "
        f"{verdict(abs(f16_change) <= F16_MAX_PERPLEXITY_CHANGE)}",
        f"- q8_0 perplexity within {Q8_MAX_PERPLEXITY_CHANGE:.0%}: {q8_change:+.3%}, "
        f"{verdict(abs(q8_change) <= Q8_MAX_PERPLEXITY_CHANGE)}",
    ]
    if larger:
        ratio = metrics["gguf/q4_k_m/size_mb"] / metrics["gguf/f16/size_mb"]
        lines.append(f"- q4_k_m file at most {Q4_K_M_MAX_SIZE_RATIO}x the f16 file: {ratio:.3f}x, "
                     f"{verdict(ratio <= Q4_K_M_MAX_SIZE_RATIO)}")
    return lines


def model_table(result: dict[str, Any]) -> list[str]:
    metrics = result["metrics"]
    merged = metrics["merged/perplexity"]
    f16_size = metrics["gguf/f16/size_mb"]
    lines = [
        "| type | size MB | size vs f16 | bits per weight | perplexity | vs HF | top-1 agreement | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| HF model (float32) | | | | {merged:.3f} | | | |",
    ]
    for gguf_type in result["types"]:
        prefix = f"gguf/{gguf_type}"
        lines.append(
            f"| {gguf_type} | {metrics[f'{prefix}/size_mb']:.2f} | {metrics[f'{prefix}/size_mb'] / f16_size:.3f} | "
            f"{metrics[f'{prefix}/bits_per_weight']:.2f} | {metrics[f'{prefix}/perplexity']:.3f} | "
            f"{metrics[f'{prefix}/perplexity'] / merged - 1:+.3%} | {metrics[f'{prefix}/top1_agreement']:.3f} | "
            f"{metrics[f'{prefix}/seconds']:.2f} |"
        )
    return lines


def render_report(result: dict[str, Any]) -> str:
    params: Params = result["params"]
    shape = result["larger_shape"]
    models = result["models"]
    steps = result["train_steps"]
    random_name = "larger Llama, 0 training steps"
    larger_parameters = models[random_name]["parameters"]
    lines = [
        "# Quantize: GGUF files against the Hugging Face model",
        "",
        "Written by `.venv/bin/python -m tests.benchmarks.quantize` (from the repository root, about 4 minutes on",
        "2 cores); rerun it to refresh every number here.",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; CPU; {versions(REPORTED_PACKAGES)}.",
        "",
        "## Setup",
        "",
        "Each model goes through `kit.quantize.run_quantize`, as the quantize stage runs it: llama.cpp's "
        "converter (`convert_hf_to_gguf.py`, run by `kit.quantize.gguf_export`) writes f16 (and bf16) from the "
        "safetensors, "
        "llama.cpp's own quantizer (`llama_model_quantize`) makes "
        "every other type from the f16 file, and each file is loaded in llama.cpp and run on the held-out code "
        f"(`kit.core.logits.HELD_OUT_SNIPPETS`, {len(HELD_OUT_SNIPPETS)} snippets no model here was trained on). "
        "Perplexity is over the next tokens of those snippets; top-1 agreement is the share of positions where "
        "the file's most likely next token is the float32 Hugging Face model's. `seconds` is the time of the "
        "conversion (f16, bf16) or of the quantization from f16 (the others). Sizes are the files' (MB = 10^6 "
        "bytes); bits per weight is llama.cpp's count (model bytes x 8 / parameters).",
        "",
        f"- **tiny default**: the base model of params/smoke.yaml ({model_shape(params.base_model)}, "
        f"{models['tiny default']['parameters'] / 1e6:.2f}M parameters, pretrained by `kit tiny build`), as the "
        "smoke run's merge stage hands it on for a full fine-tune.",
        f"- **larger Llama**: hidden size {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']} heads, feed-forward {shape['intermediate_size']}, the tiny tokenizer; "
        f"{larger_parameters / 1e6:.1f}M parameters, all but the norms "
        "in 2-D weights that llama.cpp quantizes. transformers' initialisation (normal, std 0.02) from seed "
        f"{params.seed}, measured twice: as initialised, and after {steps} steps of AdamW (learning rate "
        f"{TRAIN_LEARNING_RATE:g}, {TRAIN_BATCH} rows of {TRAIN_SEQUENCE} tokens) on the standard library's sources. "
        "Random weights predict near-uniformly (perplexity about the vocabulary size): the top-1 token wins by "
        "margins any rounding can flip, so top-1 agreement there says little about the file. The few training "
        "steps widen the margins, a crude stand-in for a real model; the goals are judged on the trained model, "
        "the random one is shown for comparison.",
    ]
    for name, result_of_model in models.items():
        lines += ["", f"## {name[0].upper()}{name[1:]}", "", *model_table(result_of_model)]
        if name != random_name:
            lines += ["", "Goals:", "", *goals(result_of_model["metrics"], larger=name != "tiny default")]
    lines += [
        "",
        "## Reading the numbers",
        "",
        f"{steps} steps teach the larger model little beyond which tokens are frequent (its perplexity falls from "
        "about the vocabulary size to a third of it), so its predictions are probably dominated by a few common "
        "tokens with wide margins: there, top-1 agreement stays high for every type and the perplexity change is "
        "the more telling measure. On the random models the margins are tiny and top-1 agreement falls with the "
        "bits (q8_0 about 0.95, q4_k_m about 0.6) while perplexity barely moves. Neither stands in for a trained "
        "7B model: the goals here check that conversion and quantization are faithful, not how much a real "
        "model loses.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    measure_offline_and_report(measure, render_report, REPORT)


if __name__ == "__main__":
    main()
