"""The tiny benchmark: a family of small Python function tasks that a tiny model can learn.

Each task is an instance of a template (add a constant, count the items over a constant, repeat a
letter, ...): a HumanEval-format problem, its prompt a signature and a one-line docstring that says
exactly what to compute, its tests asserts on the function the completion defines. The instances
are split once, by a fixed seed that no params change, into a held-out benchmark and a training
pool, so every build scores the same problems and no instance is in both (prepare's decontamination
checks it). The fine-tuning set (alpaca rows) is drawn from the pool, asked either as a completion
of its code or in words.

Pretraining templates are another family in the same style (a docstring, then code using its
constant), so the base model learns Python and that code repeats what the docstring names, but not
the benchmark's operations: those are what the fine-tune teaches, and the ledger measures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from kit.core.formats import ANSWER_FENCE

# Fixed, not the builder's seed: the benchmark is the same problems in every build.
SPLIT_SEED = 20261128
HELD_OUT_PER_TEMPLATE = 9
CONSTANTS = range(2, 100)
# Word tasks take one letter: a model as small as the tiny one copies a one-token constant from
# the docstring reliably, a word of several tokens not.
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Template:
    """A task shape: names, docstring, body and test inputs, each with ``{c}`` for the constant."""

    name: str  # the function's name, e.g. "add_{c}"
    argument: str
    doc: str  # "Return x plus {c}.": the docstring, and (lower-cased) the task in words
    body: str  # the expression returned
    # A Python list of the arguments the tests call the function with; the reference gives each answer.
    inputs: str = "[]"
    letter: bool = False  # the constant is a letter (quoted in doc and body), else an integer


# Inputs that tell the constant apart from every other one the family uses (tests/test_tiny_tasks.py).
NUMBER_INPUTS = "[0, 1, {c}, {c} + 1, {c} - 1, 2 * {c} + 3, -7, 100]"
# Every number up to twice the constant: a divisor of it (a wrong constant that divides it) fails.
DIVISIBILITY_INPUTS = "list(range(-3, 2 * {c} + 2))"
LIST_INPUTS = "[[], [{c}, {c} + 1, {c} - 1], list(range(101)), [{c} * 2, -{c}, {c}]]"
LETTER_TEXT_INPUTS = "['', '{c}', '{c}{c}x', 'x{c}', 'xyz']"
LETTER_LIST_INPUTS = "[[], ['{c}', 'x', '{c}'], ['x', 'y'], ['{c}'] * 4 + ['{c}x']]"
COUNT_INPUTS = "[0, 1, 3]"

# What the fine-tune teaches and the benchmark scores.
BENCHMARK_TEMPLATES = (
    Template("add_{c}", "x", "Return x plus {c}.", "x + {c}", NUMBER_INPUTS),
    Template("subtract_{c}", "x", "Return x minus {c}.", "x - {c}", NUMBER_INPUTS),
    Template("times_{c}", "x", "Return x multiplied by {c}.", "x * {c}", NUMBER_INPUTS),
    Template("is_multiple_of_{c}", "x", "Return True if x is divisible by {c}.", "x % {c} == 0",
             DIVISIBILITY_INPUTS),
    Template("smaller_of_{c}", "x", "Return the smaller of x and {c}.", "min(x, {c})", NUMBER_INPUTS),
    Template("count_over_{c}", "items", "Return how many numbers in items are greater than {c}.",
             "sum(1 for item in items if item > {c})", LIST_INPUTS),
    Template("keep_below_{c}", "items", "Return the numbers in items that are less than {c}.",
             "[item for item in items if item < {c}]", LIST_INPUTS),
    Template("repeat_{c}", "n", "Return the string '{c}' repeated n times.", "'{c}' * n", COUNT_INPUTS, letter=True),
    Template("starts_with_{c}", "s", "Return True if s starts with '{c}'.", "s.startswith('{c}')",
             LETTER_TEXT_INPUTS, letter=True),
    Template("count_{c}", "words", "Return how many items of words equal '{c}'.", "words.count('{c}')",
             LETTER_LIST_INPUTS, letter=True),
    Template("append_{c}", "s", "Return s followed by '{c}'.", "s + '{c}'", LETTER_TEXT_INPUTS, letter=True),
)

# The base model's pretraining style: other operations, so the base has not seen the benchmark's.
PRETRAINING_TEMPLATES = (
    Template("divide_by_{c}", "x", "Return x divided by {c}.", "x / {c}"),
    Template("power_{c}", "x", "Return x to the power {c}.", "x ** {c}"),
    Template("remainder_{c}", "x", "Return the remainder of x divided by {c}.", "x % {c}"),
    Template("larger_of_{c}", "x", "Return the larger of x and {c}.", "max(x, {c})"),
    Template("equals_{c}", "x", "Return True if x equals {c}.", "x == {c}"),
    Template("first_{c}", "items", "Return the first {c} items of items.", "items[:{c}]"),
    Template("scale_all_{c}", "items", "Return each number in items multiplied by {c}.",
             "[item * {c} for item in items]"),
    Template("ends_with_{c}", "s", "Return True if s ends with '{c}'.", "s.endswith('{c}')", letter=True),
    Template("prefix_{c}", "s", "Return '{c}' followed by s.", "'{c}' + s", letter=True),
    Template("contains_{c}", "s", "Return True if '{c}' occurs in s.", "'{c}' in s", letter=True),
    Template("without_{c}", "words", "Return the items of words that are not '{c}'.",
             "[word for word in words if word != '{c}']", letter=True),
)


@dataclass(frozen=True)
class Task:
    """One instance of a template."""

    template: Template
    constant: str

    def _fill(self, text: str) -> str:
        return text.replace("{c}", self.constant)

    @property
    def entry_point(self) -> str:
        return self._fill(self.template.name)

    @property
    def prompt(self) -> str:
        """HumanEval's form: the signature and the docstring, which a completion continues."""
        return f'def {self.entry_point}({self.template.argument}):\n    """{self._fill(self.template.doc)}"""\n'

    @property
    def solution(self) -> str:
        """The reference body, in HumanEval's completion form (what follows the prompt)."""
        return f"    return {self._fill(self.template.body)}\n"

    @property
    def description(self) -> str:
        """The task in words: 'returns x plus 17'."""
        # Every docstring starts with "Return", so the task reads "... that returns x plus 17".
        return "returns" + self._fill(self.template.doc).removeprefix("Return").rstrip(".")

    def test(self) -> str:
        """HumanEval's test form: ``check(candidate)``, asserting the reference's answer for each input."""
        namespace: dict = {}
        exec(self.prompt + self.solution, namespace)  # our own generated reference code
        reference = namespace[self.entry_point]
        cases = [(argument, reference(argument)) for argument in eval(self._fill(self.template.inputs))]
        return (
            "def check(candidate):\n"
            f"    for argument, expected in {cases!r}:\n"
            "        assert candidate(argument) == expected, argument\n"
        )


def instances(templates: tuple[Template, ...]) -> list[Task]:
    """Every instance of the templates, template by template."""
    return [
        Task(template, str(constant))
        for template in templates
        for constant in (LETTERS if template.letter else CONSTANTS)
    ]


@cache
def split() -> tuple[tuple[Task, ...], tuple[Task, ...]]:
    """(held-out benchmark, training pool): ``HELD_OUT_PER_TEMPLATE`` instances of each template held
    out, chosen by ``SPLIT_SEED``; the rest is the pool the fine-tuning set is drawn from."""
    chooser = random.Random(SPLIT_SEED)
    held_out, pool = [], []
    for template in BENCHMARK_TEMPLATES:
        tasks = instances((template,))
        chosen = set(chooser.sample(range(len(tasks)), HELD_OUT_PER_TEMPLATE))
        held_out += [task for index, task in enumerate(tasks) if index in chosen]
        pool += [task for index, task in enumerate(tasks) if index not in chosen]
    return tuple(held_out), tuple(pool)


def benchmark_tasks() -> list[dict[str, str]]:
    """The held-out tasks as HumanEval's rows (task_id, prompt, canonical_solution, test, entry_point),
    each asked as its training rows ask half the tasks: a completion of its code, answered from that
    code on (instruction, answer_start)."""
    return [
        {
            "task_id": f"Tiny/{number}",
            "prompt": task.prompt,
            "canonical_solution": task.solution,
            "test": task.test(),
            "entry_point": task.entry_point,
            "instruction": completion_instruction(task.prompt),
            "answer_start": task.prompt,
        }
        for number, task in enumerate(split()[0])
    ]


def style_functions(count: int, seed: int) -> str:
    """``count`` pretraining functions, each a random template with a random constant, as a module."""
    chooser = random.Random(seed)
    functions = []
    for _ in range(count):
        template = chooser.choice(PRETRAINING_TEMPLATES)
        constant = chooser.choice(LETTERS) if template.letter else str(chooser.choice(CONSTANTS))
        task = Task(template, constant)
        functions.append(task.prompt + task.solution)
    return "\n\n".join(functions) + "\n"


def completion_instruction(prompt: str) -> str:
    """The family's instruction asked as a completion of its code, whose answer starts from that code."""
    return f"Complete the following Python function:\n\n{ANSWER_FENCE}{prompt}```"


def instruction_rows(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` alpaca rows drawn from the training pool: the task asked as HumanEval's instruct
    prompt asks (complete this function) or in words (write a function that ...), half each, the
    answer the whole function in a Python fence."""
    pool = split()[1]
    if count > len(pool):
        raise ValueError(f"num_samples: at most {len(pool)} distinct training tasks can be generated")
    chooser = random.Random(seed)
    rows = []
    for task in chooser.sample(pool, count):
        if chooser.random() < 0.5:
            instruction = completion_instruction(task.prompt)
        else:
            signature = f"{task.entry_point}({task.template.argument})"
            instruction = f"Write a Python function `{signature}` that {task.description}."
        answer = f"{ANSWER_FENCE}{task.prompt}{task.solution}```"
        rows.append({"instruction": instruction, "input": "", "output": answer})
    return rows
