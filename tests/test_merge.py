"""Merge: the saved folder reproduces base + adapter and carries what GGUF export needs."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.embedded import build_base_model
from kit.gguf_export import export_gguf
from kit.merge import HELD_OUT_SNIPPETS, run_merge
from kit.models import load_tokenizer, save_tokenizer
from kit.params import Params


def lora_trained_manifest(params: Params, folder: Path) -> dict:
    """What the train stage hands merge after a LoRA run: a seeded adapter that changes the outputs."""
    base = build_base_model(params)
    tokenizer = load_tokenizer(str(base), params)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(params.seed)
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:  # as training does for added tokens
        model.resize_token_embeddings(len(tokenizer))
    lora = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        target_modules=params.lora_targets,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    adapter_dir = folder / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    save_tokenizer(tokenizer, str(base), adapter_dir)
    outputs = {"base_model": str(base), "adapter_dir": str(adapter_dir), "model_dir": None,
               "tokenizer_dir": str(adapter_dir)}
    return {"stage": "train", "outputs": outputs, "metrics": {}}


def snippet_logits(model, tokenizer, snippet: str) -> np.ndarray:
    with torch.no_grad():
        return model(**tokenizer(snippet, return_tensors="pt")).logits[0].numpy()


def test_merged_model_reproduces_base_plus_adapter(smoke_params: Params, tmp_path: Path) -> None:
    trained = lora_trained_manifest(smoke_params, tmp_path)
    manifest = run_merge(smoke_params, trained, tmp_path / "merge")

    assert manifest["metrics"]["merge/max_abs_logit_diff"] < 1e-4
    assert manifest["metrics"]["merge/top1_agreement"] == 1.0
    assert json.loads((tmp_path / "merge" / "manifest.json").read_text())["outputs"] == manifest["outputs"]
    model_dir = Path(manifest["outputs"]["model_dir"])
    assert model_dir.is_absolute()

    # Checked again from the files on disk, independently of the stage's own measurement.
    base_dir = Path(trained["outputs"]["base_model"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base_logits = snippet_logits(base, tokenizer, HELD_OUT_SNIPPETS[0])
    adapted = PeftModel.from_pretrained(base, trained["outputs"]["adapter_dir"]).eval()
    adapted_logits = snippet_logits(adapted, tokenizer, HELD_OUT_SNIPPETS[0])
    merged_logits = snippet_logits(merged, tokenizer, HELD_OUT_SNIPPETS[0])
    assert np.abs(adapted_logits - base_logits).max() > 0.1, "the adapter must change the outputs"
    np.testing.assert_allclose(merged_logits, adapted_logits, atol=1e-4)
    assert not any("lora" in key for key in merged.state_dict())

    # The GGUF converter reads the SentencePiece model.
    assert (model_dir / "tokenizer.model").read_bytes() == (base_dir / "tokenizer.model").read_bytes()
    assert (model_dir / "generation_config.json").is_file()


def test_full_fine_tune_is_saved_in_merge_dtype(smoke_params: Params, tmp_path: Path) -> None:
    smoke_params.merge_dtype = "float16"
    base = str(build_base_model(smoke_params))
    trained = {"stage": "train", "outputs": {"base_model": base, "adapter_dir": None, "model_dir": base,
                                             "tokenizer_dir": base}}
    manifest = run_merge(smoke_params, trained, tmp_path / "merge")

    model_dir = Path(manifest["outputs"]["model_dir"])
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118 (not iterable)
    assert dtypes == {torch.float16}
    # The cast to float16 rounds the logits only slightly and keeps the model's choices.
    assert 0 < manifest["metrics"]["merge/max_abs_logit_diff"] < 0.02
    assert manifest["metrics"]["merge/top1_agreement"] >= 0.97


def test_added_tokens_survive_merge_and_gguf_export(smoke_params: Params, tmp_path: Path) -> None:
    smoke_params.tokens = ["<fill>"]
    trained = lora_trained_manifest(smoke_params, tmp_path)
    manifest = run_merge(smoke_params, trained, tmp_path / "merge")
    assert manifest["metrics"]["merge/top1_agreement"] == 1.0

    model_dir = Path(manifest["outputs"]["model_dir"])
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")
    reader = gguf.GGUFReader(path)
    fill_id = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<fill>")
    assert fill_id == smoke_params.embedded_vocab_size
    assert reader.get_field("tokenizer.ggml.tokens").contents(fill_id) == "<fill>"
    assert reader.get_field("tokenizer.ggml.token_type").contents(fill_id) == gguf.TokenType.USER_DEFINED
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        assert llama.tokenize(b"x = <fill>", add_bos=True)[-1] == fill_id
    finally:
        llama.close()
