"""kit generate: the trained adapter answers prompts wrapped exactly as its training prompts were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.cli import main
from kit.core.formats import ALPACA_NO_INPUT, prompt_text, render, tokenize
from kit.core.generate import generate_answers
from kit.core.models import load_tokenizer
from kit.core.params import DatasetSpec, Params, load_params
from kit.prepare.stage import run_prepare
from kit.train.stage import run_train

from .conftest import SMOKE, TINY_ROWS

PROMPT = "Write a function that returns the sum of a list of numbers."


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, dict]:
    """(overrides, run folder, train manifest): two real training steps of the tiny default."""
    folder = tmp_path_factory.mktemp("generate")
    overrides = [f"output_dir={folder / 'out'}", f"dataset_prepared_path={folder / 'prepared'}", "max_steps=2",
                 "val_set_size=0"]
    params = load_params(SMOKE, overrides)
    run_dir = folder / "run"
    trained = run_train(params, {"prepare": run_prepare(params, None, run_dir / "prepare")}, run_dir / "train")
    return overrides, run_dir, trained


def test_alpaca_prompts_are_axolotls_no_input_prompt_as_tokens_training_saw(trained_run, smoke_params: Params) -> None:
    _, _, trained = trained_run
    tokenizer = load_tokenizer(trained["outputs"]["tokenizer_dir"], smoke_params)
    spec = smoke_params.datasets[0]
    row = json.loads(TINY_ROWS.read_text().splitlines()[0])
    prompt = prompt_text(spec, tokenizer, row["instruction"])
    assert spec.type == "alpaca" and prompt == ALPACA_NO_INPUT.format(instruction=row["instruction"])
    # Generation starts from the very token ids a training sample has before its response.
    trained_ids = tokenize(render(row, spec), tokenizer)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert trained_ids[: len(prompt_ids)] == prompt_ids


def test_conversations_end_with_the_assistant_header(trained_run, smoke_params: Params) -> None:
    _, _, trained = trained_run
    tokenizer = load_tokenizer(trained["outputs"]["tokenizer_dir"], smoke_params)
    spec = DatasetSpec(path="chats.jsonl", type="chat_template", chat_template="chatml")
    assert prompt_text(spec, tokenizer, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_generate_answers_greedily_with_the_trained_adapter(trained_run) -> None:
    overrides, _, trained = trained_run
    params = load_params(SMOKE, overrides)
    assert trained["outputs"]["adapter_dir"]
    answers = generate_answers(params, trained, [PROMPT, "Reverse a string."], max_new_tokens=8)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    assert generate_answers(params, trained, [PROMPT], max_new_tokens=8) == answers[:1]  # greedy: repeatable


def test_kit_generate_prints_only_the_answer(trained_run, capsys) -> None:
    overrides, run_dir, trained = trained_run
    sets = [argument for override in overrides for argument in ("--set", override)]
    code = main(["generate", str(SMOKE), *sets, "--run-dir", str(run_dir), "--prompt", PROMPT,
                 "--max-new-tokens", "8"])
    expected = generate_answers(load_params(SMOKE, overrides), trained, [PROMPT], max_new_tokens=8)[0]
    assert code == 0 and capsys.readouterr().out == expected + "\n"


def test_kit_generate_without_a_trained_model_says_so(tmp_path: Path, capsys) -> None:
    code = main(["generate", str(SMOKE), "--set", f"output_dir={tmp_path}", "--prompt", PROMPT])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert f"no trained model in {tmp_path / 'interactive' / 'train'}" in captured.err
