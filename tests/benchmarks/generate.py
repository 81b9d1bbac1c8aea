"""Benchmark of the evaluate stage's generation: tokens per second of greedy HumanEval completions on the
tiny default's model, ``eval_batch_size`` prompts at a time against one prompt at a time.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.generate`` (under 2 minutes on 2
cores); it writes reports/generate.md. Every batch size completes the same prompts through
``kit.evaluate.stage.generate_texts``, the stage's own function, with its stop sequences and
sanitizing; the batch sizes take turns in each repeat, in an order that rotates, so load from other
processes falls on all. Left padding can change a row's float32 sums slightly, so the completions of
each batch size are compared with those of one prompt at a time and the agreement reported.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import date
from typing import Any

import torch

from kit.core.benchmarks import load_benchmark
from kit.core.models import inference_device, load_causal_lm, load_tokenizer, resolve_base_model
from kit.core.params import Params, load_params
from kit.evaluate.stage import generate_texts

from .common import ROOT, machine, model_shape, versions

SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "generate.md"

NUM_PROBLEMS = 32
MAX_NEW_TOKENS = 128
BATCH_SIZES = (1, 8, 16)
REPEATS = 3
# Other sessions share the cores; one torch thread slows only in proportion when another process
# holds a core, where two stall at every operation (see reports/train.md).
TORCH_THREADS = 1
REPORTED_PACKAGES = ("torch", "transformers")


def benchmark_params(num_problems: int, max_new_tokens: int) -> Params:
    """The tiny default's params, greedy, on the first ``num_problems`` HumanEval problems."""
    return load_params(
        SMOKE, [f"eval_limit={num_problems}", f"eval_max_new_tokens={max_new_tokens}", "eval_num_samples=1"]
    )


def first_difference(tokenizer, ours: str, reference: str) -> int:
    """The index of the first token where two completions part."""
    mine, theirs = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (ours, reference))
    return next((index for index, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))


def counting_generated_tokens(model, pad_token_id: int, counts: list[int]):
    """``model.generate`` that appends to ``counts`` the tokens each row generated: up to its last
    non-pad token, as a row that has stopped is padded while the rest of its batch goes on."""
    generate = model.generate

    def counted(**kwargs):
        output = generate(**kwargs)
        generated = output[:, kwargs["input_ids"].shape[1] :] != pad_token_id
        positions = torch.arange(1, generated.shape[1] + 1)
        counts.extend((generated * positions).max(dim=1).values.tolist())
        return output

    return counted


def timed_generation(model, tokenizer, problems, params: Params) -> dict[str, Any]:
    counts: list[int] = []
    model.generate = counting_generated_tokens(model, tokenizer.pad_token_id, counts)
    try:
        started = time.perf_counter()
        texts = generate_texts(model, tokenizer, problems, params)
        completions = [problem.completion_from(samples[0]) for problem, samples in zip(problems, texts)]
        seconds = time.perf_counter() - started
    finally:
        del model.generate  # the model's own method again
    tokens = sum(counts)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds, "completions": completions,
            "full_length": sum(count == params.eval_max_new_tokens for count in counts)}


def measure(
    num_problems: int = NUM_PROBLEMS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """Every batch size ``repeats`` times over the same prompts; their completions compared with batch size 1's."""
    torch.set_num_threads(TORCH_THREADS)
    params = benchmark_params(num_problems, max_new_tokens)
    path = resolve_base_model(params)
    model = load_causal_lm(path, params, quantize=False, dtype="float32").to(inference_device()).eval()
    tokenizer = load_tokenizer(path, params)
    problems = load_benchmark("humaneval", params)
    timed_generation(model, tokenizer, problems[:2], params)  # warm-up: first calls allocate and dispatch

    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in batch_sizes}
    for repeat in range(repeats):
        shift = repeat % len(batch_sizes)
        for size in batch_sizes[shift:] + batch_sizes[:shift]:
            sized = params.model_copy(update={"eval_batch_size": size})
            runs[size].append(timed_generation(model, tokenizer, problems, sized))

    reference = runs[batch_sizes[0]][0]["completions"]
    measured = []
    for size in batch_sizes:
        completions = runs[size][0]["completions"]
        differing = {
            problem.task_id: first_difference(tokenizer, ours, theirs)
            for problem, ours, theirs in zip(problems, completions, reference)
            if ours != theirs
        }
        measured.append({
            "batch_size": size,
            "seconds": [run["seconds"] for run in runs[size]],
            "tokens": runs[size][0]["tokens"],
            "tokens_per_second": statistics.median(run["tokens_per_second"] for run in runs[size]),
            "repeatable": all(run["completions"] == completions for run in runs[size]),
            "identical": len(problems) - len(differing),
            "differing": differing,
        })
    return {
        "problems": len(problems),
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "device": inference_device(),
        "reference_batch_size": batch_sizes[0],
        "full_length": runs[batch_sizes[0]][0]["full_length"],
        "prompt_tokens": statistics.median(len(tokenizer(problem.prompt)["input_ids"]) for problem in problems),
        "params": params,
        "measured": measured,
    }


def stopping_note(result: dict[str, Any]) -> str:
    full, problems = result["full_length"], result["problems"]
    if full < problems:
        return f"{problems - full} of the {problems} completions end at a stop sequence, the rest at the token limit."
    # Said, because it flatters batching: no row of a batch waits for the others.
    return (
        f"All {problems} completions run to the token limit, so no batch carries rows that have stopped; with a "
        "model whose completions end at different lengths, a batch runs until its longest finishes, and "
        "batching gains less."
    )


def render_report(result: dict[str, Any]) -> str:
    params: Params = result["params"]
    baseline = result["measured"][0]
    device = "CPU" if result["device"] == "cpu" else result["device"]
    lines = [
        "# Generate: batched against one prompt at a time",
        "",
        "Written by `.venv/bin/python -m tests.benchmarks.generate` (from the repository root, under 2 minutes);",
        "rerun it to refresh every number here.",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; torch on {TORCH_THREADS} thread, {device}; "
        f"{versions(REPORTED_PACKAGES)}.",
        "",
        "## Setup",
        "",
        f"The first {result['problems']} HumanEval prompts in the base format (median {result['prompt_tokens']:.0f} "
        f"tokens), completed greedily by `kit.evaluate.stage.generate_texts` with `eval_max_new_tokens: "
        f"{result['max_new_tokens']}` and HumanEval's stop sequences, as the evaluate stage runs them; only "
        "`eval_batch_size` changes. The model is the tiny default's base, as params/smoke.yaml names it "
        f"({model_shape(params.base_model)}, float32): each token costs "
        "what a real one does. Tokens are those each prompt generated, up to its stop; a batch goes on until its "
        "last row stops, and the padding its stopped rows get meanwhile is not counted. "
        f"{stopping_note(result)} Medians of {result['repeats']} runs per batch size, the sizes taking turns.",
        "",
        "## Throughput",
        "",
        f"| eval_batch_size | tokens | seconds (median) | tokens/s | vs batch size {baseline['batch_size']} | "
        f"completions identical to batch size {baseline['batch_size']}'s | repeatable |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["measured"]:
        ratio = row["tokens_per_second"] / baseline["tokens_per_second"]
        lines.append(
            f"| {row['batch_size']} | {row['tokens']:,} | {statistics.median(row['seconds']):.1f} | "
            f"{row['tokens_per_second']:.0f} | **{ratio:.2f}x** | {row['identical']}/{result['problems']} | "
            f"{'yes' if row['repeatable'] else '**no**'} |"
        )
    lines += ["", "Every run, in seconds:", ""]
    lines += [
        f"- batch size {row['batch_size']}: " + ", ".join(f"{seconds:.1f}" for seconds in row["seconds"])
        for row in result["measured"]
    ]
    lines += ["", "## Agreement", ""]
    for row in result["measured"][1:]:
        if not row["differing"]:
            lines.append(f"- batch size {row['batch_size']}: every completion equals batch size 1's, to the character.")
            continue
        parts = ", ".join(f"{task} (from token {index})" for task, index in row["differing"].items())
        lines.append(f"- batch size {row['batch_size']}: {len(row['differing'])} differ from batch size 1's: {parts}.")
    lines += [
        "",
        "Left padding changes the shapes, and so the rounding, of a row's float32 sums; where the two likeliest",
        "tokens are nearly tied that can tip greedy decoding, and the texts part from there. The count above is",
        "how often it happened in this run, for this model and these prompts.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure()
    REPORT.write_text(render_report(result))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
