"""Decontamination: copied HumanEval and MBPP text is found whatever its layout; other text is not."""

from __future__ import annotations

import functools
import inspect
import json
import textwrap
import warnings

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kit.core.benchmarks import humaneval_problems, humaneval_task_file, mbpp_problems
from kit.core.params import Params, load_params
from kit.prepare.decontaminate import (
    ContaminationIndex,
    build_index,
    contamination_report,
    find_contaminated,
    task_file_texts,
    words,
)

from .conftest import MBPP, SMOKE

# Separators that are not word characters: any mix of them is only a change of layout.
LAYOUT = st.text(alphabet=" \t\n\r()[]{}:;,.=+-*/<>'\"#", min_size=1, max_size=4)
FILLER = "zzfiller"  # in no benchmark, so windows that reach into it never match


def _params(**overrides: object) -> Params:
    """The tiny default, checked against both benchmarks unless a test says otherwise."""
    overrides = {"dataset_decontamination_benchmarks": "[humaneval, mbpp]", **overrides}
    return load_params(SMOKE, [f"{key}={value}" for key, value in overrides.items()])


@functools.cache
def _humaneval_index(ngram: int) -> ContaminationIndex:
    return ContaminationIndex.from_texts(task_file_texts("humaneval", humaneval_task_file()), ngram)


@pytest.fixture(scope="module")
def index() -> ContaminationIndex:
    return build_index(_params())


def _relayout(text: str, separators: list[str]) -> str:
    """The text's words, each case-swapped, joined by the given separators in turn."""
    text_words = [word.swapcase() for word in words(text)]
    return "".join(word + separators[at % len(separators)] for at, word in enumerate(text_words))


def test_words_are_lower_cased_word_character_runs() -> None:
    assert words("def Add(a,b):\n\treturn a+b  # Sum") == ["def", "add", "a", "b", "return", "a", "b", "sum"]


# --- copies are found ---------------------------------------------------------------------------


def test_reformatted_humaneval_solution_is_flagged_with_its_task(index: ContaminationIndex) -> None:
    solution = humaneval_problems()[1].reference_completion
    # Tabs for indentation, one statement split over lines, spaces around brackets: a reformatted copy.
    reformatted = solution.replace("    ", "\t").replace(" = ", " =\n    ").replace("(", " ( ")
    assert reformatted != solution
    sample = f"### Instruction:\nSplit the groups.\n\n### Response:\n{reformatted}"
    assert index.matches(sample) == {"HumanEval/1"}


@settings(max_examples=30, deadline=None)
@given(task=st.integers(0, 163), separators=st.lists(LAYOUT, min_size=1, max_size=5))
def test_any_layout_of_a_humaneval_function_is_flagged_with_its_task(task: int, separators: list[str]) -> None:
    index = _humaneval_index(13)
    problem = humaneval_problems()[task]
    function = problem.prompt + problem.reference_completion
    copy = _relayout(function, separators)
    assert problem.task_id in index.matches(copy)
    assert index.matches(copy) == index.matches(function)


def test_mbpp_reference_solution_copy_is_flagged(index: ContaminationIndex) -> None:
    problem = next(problem for problem in mbpp_problems(str(MBPP)) if problem.task_id == 11)
    sample = "Here is a solution:\n" + problem.reference_completion.replace("\r\n", "\n").replace("\t", "  ")
    assert index.matches(sample) == {"MBPP/11"}
    assert index.checked == ["humaneval", "mbpp"]
    assert index.skipped == {}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), ngram=st.integers(4, 20))
def test_n_shared_words_flag_a_text_and_n_minus_one_do_not(data: st.DataObject, ngram: int) -> None:
    index = _humaneval_index(ngram)
    long_enough = [
        problem for problem in humaneval_problems()
        if len(words(problem.prompt + problem.reference_completion)) >= ngram
    ]
    problem = data.draw(st.sampled_from(long_enough))
    function_words = words(problem.prompt + problem.reference_completion)
    start = data.draw(st.integers(0, len(function_words) - ngram))
    window = function_words[start : start + ngram]
    assume(not all(word.isdigit() for word in window))  # bare number runs are not indexed
    surround = data.draw(st.integers(0, 20))

    def sample(shared: list[str]) -> str:
        return " ".join([FILLER] * surround + shared + [FILLER] * surround)

    assert problem.task_id in index.matches(sample(window))
    assert index.matches(sample(window[1:])) == set()
    assert index.matches(sample(window[:-1])) == set()


# --- other text is not --------------------------------------------------------------------------


@pytest.mark.parametrize("module", [textwrap, json.encoder, functools])
def test_unrelated_code_is_not_flagged(index: ContaminationIndex, module: object) -> None:
    assert index.matches(inspect.getsource(module)) == set()


def test_short_texts_are_not_flagged(index: ContaminationIndex) -> None:
    solution_words = words(humaneval_problems()[1].reference_completion)
    assert index.matches(" ".join(solution_words[: index.ngram - 1])) == set()
    assert index.matches("") == set()
    assert index.matches("return x") == set()


def test_mbpp_prompt_boilerplate_and_number_runs_are_not_flagged(index: ContaminationIndex) -> None:
    # The few-shot frame is the same for every task; a counting run is in several tasks' asserts.
    boilerplate = (
        "You are an expert Python programmer, and here is your task: Write a function to reverse words. "
        "Your code should pass these tests:\n\nassert reverse_words('a b') == 'b a'\n[BEGIN]\n"
    )
    counting = "list(range(1, 15)) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]"
    assert index.matches(boilerplate) == set()
    assert index.matches(counting) == set()


# --- what was checked, and the report -----------------------------------------------------------


def test_mbpp_is_checked_offline_from_the_copy_kit_ships() -> None:
    index = build_index(_params())
    assert index.checked == ["humaneval", "mbpp"] and index.skipped == {}


def test_an_unreachable_hub_mbpp_is_skipped_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(_params(eval_mbpp_path="google-research-datasets/mbpp"))
    assert index.checked == ["humaneval"]
    assert "unreachable" in index.skipped["mbpp"] and "eval_mbpp_path" in index.skipped["mbpp"]
    assert any("MBPP not checked" in str(warning.message) for warning in caught)
    report = contamination_report(["x"], find_contaminated(["x"], index), index)
    assert report["benchmarks_skipped"] == index.skipped
    assert report["contaminated_samples_by_benchmark"] == {"humaneval": 0}


def test_build_index_uses_the_params_ngram() -> None:
    index = build_index(_params(dataset_decontamination_ngram=6, eval_mbpp_path=MBPP))
    assert index.ngram == 6
    assert all(len(gram) == 6 for gram in index.task_ids_by_ngram)


def test_report_counts_samples_per_benchmark_and_shows_examples(index: ContaminationIndex) -> None:
    humaneval_copy = humaneval_problems()[1].reference_completion
    mbpp_copy = next(p for p in mbpp_problems(str(MBPP)) if p.task_id == 11).reference_completion
    texts = ["print('hello')", humaneval_copy, mbpp_copy, inspect.getsource(textwrap), humaneval_copy + mbpp_copy]
    matches = find_contaminated(texts, index)
    assert matches == [set(), {"HumanEval/1"}, {"MBPP/11"}, set(), {"HumanEval/1", "MBPP/11"}]

    report = contamination_report(texts, matches, index, max_examples=2)
    assert report["samples_checked"] == 5
    assert report["samples_contaminated"] == 3
    assert report["contaminated_samples_by_benchmark"] == {"humaneval": 2, "mbpp": 2}
    assert report["tasks_matched_by_benchmark"] == {"humaneval": 1, "mbpp": 1}
    assert [example["sample"] for example in report["examples"]] == [1, 2]
    first = report["examples"][0]
    assert first["task_ids"] == ["HumanEval/1"]
    assert first["shared_ngram"] == " ".join(words(humaneval_copy)[: index.ngram])  # the earliest one
    assert json.loads(json.dumps(report)) == report  # goes into the manifest as is


def test_report_orders_task_ids_by_number() -> None:
    index = _humaneval_index(13)
    problems = humaneval_problems()
    texts = ["".join(problems[task].prompt + problems[task].reference_completion for task in (10, 2))]
    report = contamination_report(texts, find_contaminated(texts, index), index)
    assert report["examples"][0]["task_ids"] == ["HumanEval/2", "HumanEval/10"]


def test_only_the_chosen_benchmarks_are_indexed() -> None:
    index = build_index(_params(dataset_decontamination_benchmarks="[humaneval]"))
    assert index.checked == ["humaneval"] and index.skipped == {}
