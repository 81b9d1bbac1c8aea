"""The embedded default is built offline, deterministically, and cached."""

from __future__ import annotations

import hashlib

from kit.benchmarks import extract_code
from kit.embedded import BUILD_TIME, build_base_model, build_instruction_dataset
from kit.models import load_tokenizer
from kit.params import load_params

from .conftest import SMOKE


def _tiny(overrides=()):
    # Smaller than the smoke model and a few pretraining steps, so two full builds stay quick; the
    # builder is the same.
    return load_params(SMOKE, ["embedded_vocab_size=512", "embedded_hidden_size=64", "embedded_intermediate_size=128",
                               "embedded_corpus_chars=200000", "embedded_pretrain_steps=3", *overrides])


def _digest(folder):
    # Every file but the one holding how long the build took.
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())
            if path.name != BUILD_TIME}


def test_two_builds_are_byte_identical_and_the_fine_tunes_seed_is_not_the_bases(tmp_path):
    first = build_base_model(_tiny(), cache=tmp_path / "a")
    second = build_base_model(_tiny(), cache=tmp_path / "b")
    assert {"model.safetensors", "tokenizer.model", "tokenizer.json", "config.json"} <= set(_digest(first))
    assert _digest(first) == _digest(second)
    # A seed sweep fine-tunes one base: another seed finds the same cached folder, built nothing new.
    assert build_base_model(_tiny(["seed=7"]), cache=tmp_path / "a") == first
    assert len(list((tmp_path / "a" / "embedded-model").iterdir())) == 1
    # ... while it draws other training rows.
    assert build_instruction_dataset(_tiny(["seed=7"]), tmp_path).read_bytes() != build_instruction_dataset(
        _tiny(), tmp_path).read_bytes()


def test_a_built_model_is_reused_from_the_cache(tmp_path):
    folder = build_base_model(_tiny(), cache=tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_base_model(_tiny(), cache=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_tokenizer_is_sentencepiece_bpe_with_byte_fallback_and_round_trips_code(tmp_path):
    params = _tiny()
    tokenizer = load_tokenizer(str(build_base_model(params, cache=tmp_path)), params)
    code = 'def café(x):\n    """Ünïcode → ok 🐍"""\n\treturn x  +  1\n'
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == code
    assert "<0xF0>" in tokenizer.convert_ids_to_tokens(ids)  # the emoji fell back to bytes
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_the_instruction_set_is_alpaca_and_deterministic(tmp_path):
    import json

    first = build_instruction_dataset(_tiny(), cache=tmp_path / "a")
    second = build_instruction_dataset(_tiny(), cache=tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(rows) == _tiny().embedded_num_samples
    assert set(rows[0]) == {"instruction", "input", "output"}
    for row in rows[:20]:
        compile(extract_code(row["output"]), "<sample>", "exec")
