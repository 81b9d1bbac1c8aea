"""Batched llama.cpp generation (kit.evaluate.llama_batch) against llama-cpp-python's own one-prompt-at-a-time API."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.core.benchmarks import HUMANEVAL_STOP_SEQUENCES, load_benchmark, truncate_at_stop
from kit.core.llama import llama_model
from kit.core.models import resolve_base_model
from kit.core.params import load_params
from kit.evaluate.llama_batch import Sampling, batched_texts
from kit.quantize.gguf_export import export_gguf

from .conftest import SMOKE

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny default's pretrained base (a SentencePiece Llama) as an f16 GGUF file."""
    params = load_params(SMOKE, [f"output_dir={tmp_path_factory.mktemp('unused')}"])
    return export_gguf(Path(resolve_base_model(params)), tmp_path_factory.mktemp("gguf") / "model-f16.gguf", "f16")


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    problems = load_benchmark("humaneval", load_params(SMOKE, ["eval_limit=10"]))
    # Two prompts longer than the others and two very short ones, so that slots free at different times.
    return [problem.prompt for problem in problems] + ["def f(x):\n", "import os\n"]


def _one_at_a_time(llama, prompts: list[str]) -> list[str]:
    texts = []
    for prompt in prompts:
        response = llama.create_completion(prompt, max_tokens=MAX_NEW_TOKENS, temperature=0.0,
                                           stop=list(HUMANEVAL_STOP_SEQUENCES))
        texts.append(response["choices"][0]["text"])
    return texts


def _batched(llama, prompts: list[str], slots: int, sampling: Sampling | None = None) -> list[str]:
    stops = [HUMANEVAL_STOP_SEQUENCES] * len(prompts)
    return batched_texts(llama, prompts, stops, MAX_NEW_TOKENS, slots, sampling or Sampling())


def test_one_slot_generates_what_create_completion_does(tiny_gguf: Path, prompts: list[str]) -> None:
    with llama_model(tiny_gguf, n_ctx=1024) as llama:
        expected = _one_at_a_time(llama, prompts)
        texts = _batched(llama, prompts, slots=1)
    # create_completion leaves the stop sequence out; batched_texts keeps it, as transformers does.
    assert [truncate_at_stop(text, HUMANEVAL_STOP_SEQUENCES) for text in texts] == expected
    assert any(text != truncated for text, truncated in zip(texts, expected))  # some did stop


def test_slots_share_decodes_and_greedy_texts_stay_the_same(tiny_gguf: Path, prompts: list[str]) -> None:
    with llama_model(tiny_gguf, n_ctx=1024) as llama:
        alone = _batched(llama, prompts, slots=1)
        together = _batched(llama, prompts, slots=4)
    # Float sums in another order may tip a near tie; on this model and these prompts none does.
    assert together == alone


def test_a_prompt_longer_than_a_decode_is_fed_in_pieces(tiny_gguf: Path, prompts: list[str]) -> None:
    with llama_model(tiny_gguf, n_ctx=1024) as llama:
        whole = _batched(llama, prompts, slots=3)
    with llama_model(tiny_gguf, n_ctx=1024, n_batch=16) as llama:
        assert llama.context_params.n_batch == 16 and max(len(llama.tokenize(p.encode())) for p in prompts) > 16
        assert _batched(llama, prompts, slots=3) == whole


def test_a_sampled_text_depends_on_its_seed_not_on_its_neighbours(tiny_gguf: Path, prompts: list[str]) -> None:
    sampling = Sampling(temperature=1.0, top_p=0.95, seed=7)
    with llama_model(tiny_gguf, n_ctx=1024) as llama:
        alone = _batched(llama, prompts, slots=1, sampling=sampling)
        together = _batched(llama, prompts, slots=4, sampling=sampling)
        reseeded = _batched(llama, prompts, slots=4, sampling=Sampling(temperature=1.0, top_p=0.95, seed=8))
        greedy = _batched(llama, prompts, slots=4)
    # A draw can land on the edge between two tokens, which float sums in another order (four sequences
    # a step, not one) tip: one text in twelve did on an AMD EPYC. Neighbours that leaked into a sequence's
    # draws would change nearly all of them, as another seed does.
    assert sum(a == b for a, b in zip(together, alone)) >= len(prompts) - 1
    assert sum(a != b for a, b in zip(reseeded, alone)) >= len(prompts) // 2 and greedy != alone


def test_generation_ends_at_the_token_limit_or_a_stop(tiny_gguf: Path, prompts: list[str]) -> None:
    with llama_model(tiny_gguf, n_ctx=1024) as llama:
        texts = _batched(llama, prompts, slots=4)
        for text in texts:
            ends = [text.find(stop) + len(stop) for stop in HUMANEVAL_STOP_SEQUENCES if stop in text]
            if ends:  # it ended with the token that completed its first stop: at most a token follows it
                assert len(text) - min(ends) < 16
            else:
                assert abs(len(llama.tokenize(text.encode(), add_bos=False)) - MAX_NEW_TOKENS) <= 2


class _NoTokens:
    """A model whose vocabulary has no BOS token, asked for an empty prompt."""

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return []


def test_nothing_to_generate_from_is_refused_and_no_prompts_are_no_texts() -> None:
    with pytest.raises(ValueError, match="an empty prompt"):
        batched_texts(_NoTokens(), [""], [()], 4, 1, Sampling())
    assert batched_texts(_NoTokens(), [], [], 4, 1, Sampling()) == []
