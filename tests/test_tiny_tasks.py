"""The tiny benchmark: HumanEval-format tasks whose tests tell a right answer from a near miss,
held out from the training set, scored by the same sandbox, and caught by decontamination if copied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.core.benchmarks import load_benchmark
from kit.evaluate.sandbox import run_programs
from kit.prepare.decontaminate import build_index, find_contaminated
from kit.tiny.tasks import (
    BENCHMARK_TEMPLATES,
    CONSTANTS,
    HELD_OUT_PER_TEMPLATE,
    LETTERS,
    PRETRAINING_TEMPLATES,
    Task,
    benchmark_tasks,
    instruction_rows,
    split,
    style_functions,
)


def _passes(task: Task, solution: str) -> bool:
    namespace: dict = {}
    try:
        exec(task.prompt + solution + "\n" + task.test() + f"\ncheck({task.entry_point})", namespace)
    except AssertionError:
        return False
    return True


def _constants(task: Task) -> tuple[str, ...]:
    return LETTERS if task.template.letter else tuple(map(str, CONSTANTS))


def test_the_split_is_fixed_balanced_and_disjoint() -> None:
    held_out, pool = split()
    assert len(held_out) == HELD_OUT_PER_TEMPLATE * len(BENCHMARK_TEMPLATES)
    assert {task.template for task in held_out} == set(BENCHMARK_TEMPLATES)
    assert not set(held_out) & set(pool)
    assert [row["task_id"] for row in benchmark_tasks()] == [f"Tiny/{n}" for n in range(len(held_out))]
    # Another process computes the same split: it depends on no params and no global random state.
    assert [task.entry_point for task in held_out[:5]] == ["add_3", "add_14", "add_16", "add_48", "add_51"]


def test_the_pretraining_style_shares_no_operation_with_the_benchmark() -> None:
    benchmark = {(template.doc, template.body) for template in BENCHMARK_TEMPLATES}
    assert not benchmark & {(template.doc, template.body) for template in PRETRAINING_TEMPLATES}
    style = style_functions(200, seed=1)
    assert style == style_functions(200, seed=1) != style_functions(200, seed=2)
    compile(style, "<style>", "exec")
    assert not any(f"def {task.entry_point}(" in style for task in split()[0])


def test_every_reference_passes_and_every_other_constant_fails() -> None:
    """The tests discriminate: a model that copies the wrong constant (the likely miss) scores 0."""
    for task in split()[0]:
        assert _passes(task, task.solution), task.entry_point
        for other in _constants(task):
            if other != task.constant:
                wrong = Task(task.template, other).solution
                assert not _passes(task, wrong), (task.entry_point, other)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(BENCHMARK_TEMPLATES), st.data())
def test_any_instance_of_any_template_is_a_valid_humaneval_task(template, data) -> None:
    constant = data.draw(st.sampled_from(LETTERS if template.letter else tuple(map(str, CONSTANTS))))
    task = Task(template, constant)
    assert task.prompt.startswith(f"def {task.entry_point}(") and task.prompt.endswith('"""\n')
    assert _passes(task, task.solution)
    assert not _passes(task, "    return None\n")


def test_the_references_pass_in_the_sandbox_through_the_benchmark_loader(smoke_params) -> None:
    problems = load_benchmark("tiny", smoke_params.model_copy(update={"eval_limit": None}))
    assert len(problems) == len(split()[0])
    programs = [problem.program(problem.reference_completion) for problem in problems]
    broken = [problem.program("    return None\n") for problem in problems[:10]]
    results = run_programs(programs + broken, timeout=5.0, workers=2)
    assert [result.status for result in results[: len(programs)]] == ["passed"] * len(programs)
    assert all(result.status == "failed" for result in results[len(programs):])


def test_eval_limit_can_be_set_per_benchmark(smoke_params) -> None:
    params = smoke_params.model_copy(update={"eval_limit": {"humaneval": 2}})
    assert len(load_benchmark("humaneval", params)) == 2
    assert len(load_benchmark("tiny", params)) == len(split()[0])
    assert len(load_benchmark("tiny", params.model_copy(update={"eval_limit": 3}))) == 3


def test_the_training_rows_come_from_the_pool_in_both_phrasings() -> None:
    rows = instruction_rows(len(split()[1]), seed=0)
    assert len({row["output"] for row in rows}) == len(split()[1])
    assert any(row["instruction"].startswith("Complete the following") for row in rows)
    assert any(row["instruction"].startswith("Write a Python function") for row in rows)
    with pytest.raises(ValueError, match="num_samples"):
        instruction_rows(len(split()[1]) + 1, seed=0)


def test_decontamination_finds_no_held_out_task_in_the_training_set_but_catches_a_copy(smoke_params) -> None:
    tiny = smoke_params.benchmark_file("tiny")
    params = smoke_params.model_copy(update={"dataset_decontamination_benchmarks": [tiny]})
    index = build_index(params)
    rows = [json.loads(line) for line in Path(params.datasets[0].path).expanduser().read_text().splitlines()]
    texts = [row["instruction"] + "\n" + row["output"] for row in rows]
    assert not any(find_contaminated(texts, index))
    held_out = split()[0][0]
    copied = f"Write a Python function that {held_out.description}.\n{held_out.prompt}{held_out.solution}"
    neighbour = Task(held_out.template, str(int(held_out.constant) + 1))
    assert neighbour not in split()[0]
    near = f"{neighbour.prompt}{neighbour.solution}"
    assert find_contaminated([copied, near], index) == [{"Tiny/0"}, set()]
