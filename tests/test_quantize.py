"""GGUF export and quantize: llama.cpp reads the files as the merged Hugging Face model behaves."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.embedded import build_base_model
from kit.gguf_export import export_gguf
from kit.merge import run_merge
from kit.params import GGUF_TYPES, Params
from kit.quantize import gguf_table, llama_file_type, run_quantize

CODE_WITH_UNICODE = 'def grüße(name: str) -> str:\n    return f"¡Hola, {name}! → ✓ 😀"  # naïve\n'


@pytest.fixture()
def merged(smoke_params: Params, tmp_path: Path) -> dict:
    """A merge stage's manifest: the embedded base re-saved as a full fine-tune would be."""
    base = str(build_base_model(smoke_params))
    trained = {"stage": "train", "outputs": {"base_model": base, "adapter_dir": None, "model_dir": base,
                                             "tokenizer_dir": base}}
    return run_merge(smoke_params, trained, tmp_path / "merge")


def field_value(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


def test_f16_gguf_matches_the_hf_model_and_tokenizer(merged: dict, tmp_path: Path) -> None:
    model_dir = Path(merged["outputs"]["model_dir"])
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")
    config = json.loads((model_dir / "config.json").read_text())

    reader = gguf.GGUFReader(path)
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "llama.block_count") == config["num_hidden_layers"]
    assert field_value(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field_value(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert len(field_value(reader, "tokenizer.ggml.tokens")) == config["vocab_size"]
    tensor_types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert tensor_types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert tensor_types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False)
    try:
        token_ids = llama.tokenize(CODE_WITH_UNICODE.encode(), add_bos=True)
        assert token_ids == tokenizer(CODE_WITH_UNICODE)["input_ids"]
        assert llama.detokenize(token_ids).decode() == CODE_WITH_UNICODE
        llama.eval(token_ids)
        gguf_logits = np.array(llama.scores[: len(token_ids)])
    finally:
        llama.close()
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([token_ids])).logits[0].numpy()
    # Wrongly permuted q/k rows or misnamed tensors would move the logits far more than f16 rounding.
    assert np.abs(gguf_logits - hf_logits).max() < 0.02
    assert (gguf_logits.argmax(-1) == hf_logits.argmax(-1)).mean() >= 0.95


def test_run_quantize_writes_and_checks_every_type(smoke_params: Params, merged: dict, tmp_path: Path) -> None:
    manifest = run_quantize(smoke_params, merged, tmp_path / "quantize")

    paths = {gguf_type: Path(path) for gguf_type, path in manifest["outputs"]["gguf"].items()}
    assert set(paths) == {"f16", *smoke_params.gguf_quantizations}
    assert all(path.is_absolute() and path.name == f"model-{t}.gguf" for t, path in paths.items())
    metrics = manifest["metrics"]
    assert metrics["gguf/q4_k_m/size_mb"] < metrics["gguf/q8_0/size_mb"] < metrics["gguf/f16/size_mb"]
    assert 15.5 < metrics["gguf/f16/bits_per_weight"] <= 16.5
    assert 8.0 < metrics["gguf/q8_0/bits_per_weight"] < 9.0
    assert metrics["gguf/f16/top1_agreement"] >= 0.95
    assert metrics["gguf/q8_0/top1_agreement"] >= 0.9
    merged_perplexity = metrics["merged/perplexity"]
    assert metrics["gguf/f16/perplexity"] == pytest.approx(merged_perplexity, rel=0.01)
    assert metrics["gguf/q8_0/perplexity"] == pytest.approx(merged_perplexity, rel=0.05)
    assert 0 < metrics["gguf/q4_k_m/top1_agreement"] <= 1
    table = gguf_table(manifest)
    assert table.loc["q8_0", "perplexity"] == metrics["gguf/q8_0/perplexity"]
    assert table.loc["merged", "perplexity"] == merged_perplexity


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        export_gguf(tmp_path, tmp_path / "model.gguf")


def test_every_params_gguf_type_has_a_llama_cpp_file_type() -> None:
    assert llama_file_type("q8_0") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_file_type("f32") == llama_cpp.LLAMA_FTYPE_ALL_F32
    assert len({llama_file_type(gguf_type) for gguf_type in GGUF_TYPES}) == len(GGUF_TYPES)
