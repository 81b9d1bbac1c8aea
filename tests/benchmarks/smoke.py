"""The tiny default's quality ledger, measured by `kit tiny build` and `kit run params/smoke.yaml` themselves.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.smoke`` (about 25 minutes on 2
cores: the tiny default's files are built first into an empty folder and timed on their own, then the
whole pipeline runs as a user runs it, once per fine-tune seed 0-4 on that one base); it writes
reports/smoke.md. ``--cached`` uses the files where params/smoke.yaml names them and reports the build
time recorded when they were built.

tests/test_pipeline.py runs the same measurement and asserts the same goals, so a broken mask,
packing, merge or conversion fails CI as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from kit.core.manifest import read_manifest
from kit.core.params import load_params
from kit.evaluate.stage import ledger_from_results
from kit.pipeline.stage import STAGES
from kit.tiny import DEFAULT_FOLDER, SPEC_FILE
from kit.tiny.model import BUILD_TIME

from .common import ROOT, machine, measure_offline_and_report, versions

SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "smoke.md"
RUN_NAME = "smoke-benchmark"
REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "trl", "llama_cpp_python", "mlflow")

# The goals for the tiny benchmark's pass@1 and the run's time.
MIN_FINE_TUNE_GAIN = 0.30
MAX_MERGE_DROP = 0.02
MAX_Q8_0_DROP = 0.05
MAX_RUN_SECONDS = 600
MAX_BUILD_SECONDS = 600
# Reproducible across fine-tune seeds, on one base: the adapter's tiny pass@1 for each, and the mean.
SWEEP_SEEDS = (0, 1, 2, 3, 4)
MIN_ADAPTER_PER_SEED = 0.45
MIN_ADAPTER_MEAN = 0.55


def measure(
    work: Path, fresh_cache: bool = True, experiment: str = "smoke-benchmark", seed: int | None = None
) -> dict[str, Any]:
    """Time ``kit tiny build`` (into an empty folder and cache under ``work`` unless ``fresh_cache`` is False,
    then into the folder params/smoke.yaml names; a later call with the same ``work`` finds it built), then
    ``kit run params/smoke.yaml`` on those files (with the fine-tune's ``seed`` when given), and read what
    its stages left."""
    environment = dict(os.environ)
    if fresh_cache:
        environment["TUNEBOOK_CACHE"] = str(work / "cache")
    environment.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    environment["HF_HUB_OFFLINE"] = "1"
    run_name = RUN_NAME if seed is None else f"{RUN_NAME}-seed{seed}"
    overrides = [f"output_dir={work / 'runs'}", f"dataset_prepared_path={work / 'prepared'}",
                 f"mlflow_run_name={run_name}", f"mlflow_experiment_name={experiment}"]
    overrides += [] if seed is None else [f"seed={seed}"]
    folder = work / "tiny" if fresh_cache else DEFAULT_FOLDER.expanduser()
    if fresh_cache:  # the files of this build, not those params/smoke.yaml names
        overrides += [f"base_model={folder / 'model'}", f"datasets=[{{path: {folder / 'train.jsonl'}, type: alpaca}}]",
                      f"eval_benchmarks=[{{name: tiny, path: {folder / 'tasks.jsonl'}}}, humaneval, mbpp]"]

    started = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "kit.cli", "tiny", "build", "--out", str(folder)], cwd=work,
                           env=environment, capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"kit tiny build failed:\n{built.stderr[-4000:]}")
    build_seconds = time.perf_counter() - started
    build = {**json.loads((folder / "model" / "build.json").read_text()),
             **json.loads((folder / SPEC_FILE).read_text())}
    recorded_seconds = json.loads((folder / "model" / BUILD_TIME).read_text())["build_seconds"]
    params = load_params(SMOKE, overrides)

    command = [sys.executable, "-m", "kit.cli", "run", str(SMOKE)]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
    run_seconds = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"kit run failed:\n{process.stdout[-2000:]}\n{process.stderr[-4000:]}")
    stage_seconds = {stage: float(seconds) for stage, seconds in
                     re.findall(r"\] (\w+) done in ([\d.]+) s", process.stdout)}

    run_dir = work / "runs" / run_name
    manifests = {stage: read_manifest(run_dir, stage) for stage in STAGES}
    results = json.loads(Path(manifests["evaluate"]["outputs"]["results"]).read_text())
    return {
        "params": params,
        "stdout": process.stdout,
        "stderr": process.stderr,
        "build": build,
        # Built now, or found in the cache: then the time recorded when it was built.
        "build_seconds": build_seconds if fresh_cache else recorded_seconds,
        "fresh_cache": fresh_cache,
        "run_seconds": run_seconds,
        "stage_seconds": stage_seconds,
        "metrics": {stage: manifest["metrics"] for stage, manifest in manifests.items()},
        "ledger": ledger_from_results(results),
        "problems": {name: len(problems) for name, problems in _problem_counts(manifests["evaluate"]).items()},
    }


def _problem_counts(evaluated: dict[str, Any]) -> dict[str, set[str]]:
    counts: dict[str, set[str]] = {}
    for line in Path(evaluated["outputs"]["problems"]).read_text().splitlines():
        row = json.loads(line)
        counts.setdefault(row["benchmark"], set()).add(row["task_id"])
    return counts


def goals(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each of the issue's numbers: the quality relations, then the times."""
    return quality_goals(result) + time_goals(result)


def quality_goals(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The ledger's relations and the eval loss: what a broken mask, packing, merge or conversion breaks."""
    tiny = result["ledger"]["tiny"]
    train = result["metrics"]["train"]
    gain = tiny["adapter"] - tiny["base"]
    merge_drop = abs(tiny["merged"] - tiny["adapter"])
    q8_drop = abs(tiny["gguf_q8_0"] - tiny["merged"])
    return [
        (f"tiny pass@1: adapter >= base + {MIN_FINE_TUNE_GAIN:.2f}",
         f"{tiny['adapter']:.3f} vs {tiny['base']:.3f} (+{gain:.3f})", gain >= MIN_FINE_TUNE_GAIN),
        (f"merged within {MAX_MERGE_DROP} of the adapter", f"{tiny['merged']:.3f} ({merge_drop:.3f} apart)",
         merge_drop <= MAX_MERGE_DROP),
        (f"q8_0 GGUF within {MAX_Q8_0_DROP} of merged", f"{tiny['gguf_q8_0']:.3f} ({q8_drop:.3f} apart)",
         q8_drop <= MAX_Q8_0_DROP),
        ("q4_k_m GGUF reported", f"{tiny['gguf_q4_k_m']:.3f}", True),
        ("adapter's eval loss below the base's (held-out split)",
         f"{train['eval/final_loss']:.3f} vs {train['eval/base_loss']:.3f}",
         train["eval/final_loss"] < train["eval/base_loss"]),
    ]


def time_goals(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [
        (f"`kit run params/smoke.yaml` <= {MAX_RUN_SECONDS // 60} min", f"{result['run_seconds']:.0f} s",
         result["run_seconds"] <= MAX_RUN_SECONDS),
        (f"one-time base build <= {MAX_BUILD_SECONDS // 60} min more", f"{result['build_seconds']:.0f} s",
         result["build_seconds"] <= MAX_BUILD_SECONDS),
    ]


def measure_seeds(work: Path, seeds: tuple[int, ...], fresh_cache: bool = True) -> list[dict[str, Any]]:
    """One ``measure`` per fine-tune seed in one folder: the first builds the base (in an empty cache
    unless ``fresh_cache`` is False), the others find it there."""
    return [measure(work, fresh_cache, seed=seed) for seed in seeds]


def seed_goals(runs: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    adapter = [run["ledger"]["tiny"]["adapter"] for run in runs]
    mean = sum(adapter) / len(adapter)
    unmet = [f"seed {run['params'].seed}: {goal}" for run in runs for goal, _, met in quality_goals(run) if not met]
    return [
        (f"tiny pass@1 of the adapter >= {MIN_ADAPTER_PER_SEED} for every seed", f"min {min(adapter):.3f}",
         min(adapter) >= MIN_ADAPTER_PER_SEED),
        (f"... and >= {MIN_ADAPTER_MEAN} on average", f"mean {mean:.3f}", mean >= MIN_ADAPTER_MEAN),
        ("every seed's ledger relations (below) hold", "; ".join(unmet) or "all hold", not unmet),
    ]


def render_seeds(runs: list[dict[str, Any]]) -> list[str]:
    """The section of the report that compares fine-tune seeds: a ledger row per seed, then the goals."""
    variants = list(runs[0]["ledger"].index)
    rows = []
    for run in runs:
        tiny, train = run["ledger"]["tiny"], run["metrics"]["train"]
        scores = " | ".join(f"{tiny[variant]:.3f}" for variant in variants)
        losses = f"{train['eval/base_loss']:.3f} -> {train['eval/final_loss']:.3f}"
        rows.append(f"| {run['params'].seed} | {scores} | {losses} | {run['run_seconds']:.0f} |")
    mean = {variant: sum(run["ledger"]["tiny"][variant] for run in runs) / len(runs) for variant in variants}
    goal_rows = [f"| {goal} | {measured} | {'met' if met else '**not met**'} |"
                 for goal, measured, met in seed_goals(runs)]
    return [
        "## Across fine-tune seeds (tiny pass@1, greedy)",
        "",
        f"The same base (built once) fine-tuned with `seed` {', '.join(str(run['params'].seed) for run in runs)}: "
        "the seed draws the training rows, the adapter's initialisation, dropout and the data order.",
        "",
        "| seed | " + " | ".join(variants) + " | eval loss before -> after | `kit run` s |",
        "| ---: |" + " ---: |" * (len(variants) + 2),
        *rows,
        "| **mean** | " + " | ".join(f"**{mean[variant]:.3f}**" for variant in variants) + " | | |",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        *goal_rows,
        "",
        f"The rest of this report is the run with seed {runs[0]['params'].seed}.",
        "",
    ]


def render_report(result: dict[str, Any], seeds: list[dict[str, Any]] | None = None) -> str:
    params, metrics, build = result["params"], result["metrics"], result["build"]
    ledger = result["ledger"]
    ledger_rows = [f"| {variant} | " + " | ".join(f"{ledger.loc[variant, name]:.3f}" for name in ledger.columns)
                   + " |" for variant in ledger.index]
    header = "| variant | " + " | ".join(f"{name} ({result['problems'][name]})" for name in ledger.columns) + " |"
    goal_rows = [f"| {goal} | {measured} | {'met' if met else '**not met**'} |"
                 for goal, measured, met in goals(result)]
    stage_rows = [f"| {stage} | {seconds:.0f} |" for stage, seconds in result["stage_seconds"].items()]
    quantize, prepare = metrics["quantize"], metrics["prepare"]
    built = ("built into an empty folder by this run" if result["fresh_cache"]
             else f"found in the cache; its build time is the one {BUILD_TIME} recorded")
    return "\n".join([
        "# `kit run params/smoke.yaml`: the quality ledger of the tiny default",
        "",
        "The tiny default end to end: a tiny Llama (vocabulary "
        f"{build['vocab_size']}, hidden size {build['hidden_size']}, {build['num_layers']} "
        f"layers) pretrained by `kit tiny build` for {build['pretrain_steps']} steps on the standard library's sources "
        "and the task family's style (other operations than the benchmark's), QLoRA-trained "
        f"{metrics['train']['train/steps']} steps ({params.num_epochs:g} epochs of {build['num_samples']} "
        "alpaca rows from the family's training pool), merged, converted to GGUF and quantized, and every "
        "artifact scored: on the `tiny` benchmark (the family's held-out tasks, in HumanEval's format, "
        "scored by the same sandbox and pass@k code), and on the first problems of HumanEval and MBPP, "
        "which a model this small honestly fails: they exercise the machinery.",
        "",
        f"Measured {date.today().isoformat()} by `.venv/bin/python -m tests.benchmarks.smoke` on {machine()}; "
        f"{versions(REPORTED_PACKAGES)}. The tiny default's files were {built}.",
        "",
        *(render_seeds(seeds) if seeds else []),
        "## Quality ledger (pass@1, greedy)",
        "",
        header,
        "| --- |" + " ---: |" * len(ledger.columns),
        *ledger_rows,
        "",
        "The base is scored in the base format (the benchmark's prompt continued); the fine-tunes in the "
        "instruct format they were trained on (`eval_prompt_format: auto`).",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        *goal_rows,
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *stage_rows,
        f"| **`time kit run`** (with start-up and the MLflow store) | **{result['run_seconds']:.0f}** |",
        f"| one-time `kit tiny build` (tokenizer, {build['pretrain_steps']} pretraining steps) "
        f"| {result['build_seconds']:.0f} |",
        "",
        "About 10 s of every stage is its notebook kernel starting and importing torch and transformers.",
        "",
        "## What else the run left",
        "",
        f"- pretraining: final loss {build['pretrain_final_loss']:.3f}",
        f"- prepare: packing efficiency {prepare['prepare/packing_efficiency']:.3f}; no training sample shares "
        f"a task with the tiny benchmark or HumanEval ({prepare['prepare/num_contaminated']:.0f} "
        "contaminated samples)",
        f"- train: final train loss {metrics['train']['train/final_loss']:.3f}; eval loss "
        f"{metrics['train']['eval/base_loss']:.3f} before training, {metrics['train']['eval/final_loss']:.3f} "
        f"after; {metrics['train']['train/runtime_seconds']:.0f} s of steps",
        f"- merge: max abs logit difference {metrics['merge']['merge/max_abs_logit_diff']:.2e}, top-1 agreement "
        f"{metrics['merge']['merge/top1_agreement']:.3f}",
        "- quantize: " + ", ".join(
            f"{kind} {quantize[f'gguf/{kind}/size_mb']:.1f} MB, perplexity {quantize[f'gguf/{kind}/perplexity']:.2f}, "
            f"top-1 agreement {quantize[f'gguf/{kind}/top1_agreement']:.3f}"
            for kind in ("f16", *params.gguf_quantizations)
        ) + f" (merged model perplexity {quantize['merged/perplexity']:.2f})",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", action="store_true", help="reuse the cached base model")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SWEEP_SEEDS),
                        help=f"fine-tune seeds, one kit run each (default {' '.join(map(str, SWEEP_SEEDS))})")
    arguments = parser.parse_args()
    measure_offline_and_report(
        lambda work: measure_seeds(work, tuple(arguments.seeds), fresh_cache=not arguments.cached),
        lambda runs: render_report(runs[0], runs),
        REPORT,
    )


if __name__ == "__main__":
    main()
