"""The tiny default is built offline and deterministically into ordinary files, which params load like any."""

from __future__ import annotations

import hashlib
import json

import pytest

from kit.core.benchmarks import extract_code, load_benchmark
from kit.core.models import load_tokenizer, resolve_base_model
from kit.core.params import load_params
from kit.tiny import SPEC_FILE, TinySpec, build_tiny
from kit.tiny.model import BUILD_TIME
from kit.tiny.tasks import split

from .conftest import SMOKE, TINY_MODEL, TINY_TOKENIZER

# Smaller than the smoke model and a few pretraining steps, so that two full builds stay quick; the
# builder is the same.
SMALL = TinySpec(vocab_size=512, hidden_size=64, intermediate_size=128, corpus_chars=200_000, pretrain_steps=3,
                 num_samples=50)


def _digest(folder):
    # Every file but the one holding how long the build took.
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != BUILD_TIME}


def test_two_builds_are_byte_identical(tmp_path):
    first = build_tiny(tmp_path / "a", SMALL)
    build_tiny(tmp_path / "b", SMALL)
    files = _digest(tmp_path / "a")
    assert {"model/model.safetensors", "model/tokenizer.model", "model/tokenizer.json", "model/config.json",
            "train.jsonl", "tasks.jsonl", SPEC_FILE} <= set(files)
    assert files == _digest(tmp_path / "b")
    assert first.model == tmp_path / "a" / "model"


def test_a_built_folder_is_left_as_it_is_and_another_spec_rebuilds_it(tmp_path):
    files = build_tiny(tmp_path, SMALL)
    stamp = (files.model / "model.safetensors").stat().st_mtime_ns
    assert build_tiny(tmp_path, SMALL) == files
    assert (files.model / "model.safetensors").stat().st_mtime_ns == stamp
    # Another seed draws other training rows on the same base model.
    rows = files.train.read_bytes()
    build_tiny(tmp_path, TinySpec(**{**SMALL.__dict__, "seed": 7}))
    assert files.train.read_bytes() != rows
    assert json.loads((tmp_path / SPEC_FILE).read_text())["seed"] == 7
    with pytest.raises(ValueError, match="hidden_size must be a multiple of num_heads"):
        TinySpec(hidden_size=65)
    # A folder of anything else is never replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a tiny build"):
        build_tiny(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_the_tokenizer_is_sentencepiece_bpe_with_byte_fallback_and_round_trips_code(tmp_path):
    files = build_tiny(tmp_path, SMALL)
    tokenizer = load_tokenizer(str(files.model), load_params(SMOKE))
    code = 'def café(x):\n    """Ünïcode → ok 🐍"""\n\treturn x  +  1\n'
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == code
    assert "<0xF0>" in tokenizer.convert_ids_to_tokens(ids)  # the emoji fell back to bytes
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_the_committed_tokenizer_asset_is_the_one_the_build_makes():
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (TINY_TOKENIZER / name).read_bytes() == (TINY_MODEL / name).read_bytes(), name


def test_the_files_are_what_params_name_like_any_model_data_and_benchmark(tmp_path):
    files = build_tiny(tmp_path, SMALL)
    params = load_params(SMOKE, [f"base_model={files.model}", f"datasets=[{{path: {files.train}, type: alpaca}}]",
                                 f"eval_benchmarks=[{{name: tiny, path: {files.tasks}}}]", "eval_limit=null",
                                 f"dataset_decontamination_benchmarks=[{{name: tiny, path: {files.tasks}}}]"])
    assert resolve_base_model(params) == str(files.model)
    rows = [json.loads(line) for line in files.train.read_text().splitlines()]
    assert len(rows) == SMALL.num_samples
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    for row in rows[:20]:
        compile(extract_code(row["output"]), "<sample>", "exec")
    problems = load_benchmark("tiny", params, "instruct")
    assert len(problems) == len(split()[0])
    # Asked as its training rows ask: complete this code, the answer primed with it.
    assert problems[0].instruction.startswith("Complete the following Python function:")
    assert problems[0].response_prefix == "```python\n" + problems[0].solution_prefix
