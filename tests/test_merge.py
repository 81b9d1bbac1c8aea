"""Merge: the saved folder reproduces base + adapter and carries what GGUF export needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import huggingface_hub
import llama_cpp
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.core.formats import CHAT_TEMPLATES
from kit.core.hardware import environment_warnings
from kit.core.logits import HELD_OUT_SNIPPETS, causal_lm_logits, held_out_token_ids
from kit.core.models import load_causal_lm, load_tokenizer, save_tokenizer, with_adapter
from kit.core.params import Params, ParamsError
from kit.merge.stage import compare_logits, push_to_hub, run_merge
from kit.quantize.gguf_export import export_gguf

from .conftest import SMOKE, TINY_MODEL, TINY_SPEC, smoke_at
from .mounts import stage_on_a_small_disk


def lora_trained_manifest(params: Params, folder: Path) -> dict:
    """What the train stage hands merge after a LoRA run: a seeded adapter that changes the outputs."""
    base = TINY_MODEL
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


def test_merged_model_reproduces_base_plus_adapter(tmp_path: Path) -> None:
    params = smoke_at(tmp_path, ["adapter=lora", "load_in_4bit=false"])  # LoRA on the fp32 base
    trained = lora_trained_manifest(params, tmp_path)
    manifest = run_merge(params, {"train": trained}, tmp_path / "merge")

    assert manifest["metrics"]["merge/max_abs_logit_diff"] < 1e-4
    assert manifest["metrics"]["merge/top1_agreement"] == 1.0
    assert json.loads((tmp_path / "merge" / "manifest.json").read_text())["outputs"] == manifest["outputs"]
    assert manifest["outputs"]["merge_base"] == "original" and manifest["outputs"]["hub"] is None
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


def test_full_fine_tune_is_saved_in_merge_dtype(smoke_params: Params, tmp_path: Path) -> None:
    smoke_params.merge_dtype = "float16"
    base = str(TINY_MODEL)
    trained = {"stage": "train", "outputs": {"base_model": base, "adapter_dir": None, "model_dir": base,
                                             "tokenizer_dir": base}}
    manifest = run_merge(smoke_params, {"train": trained}, tmp_path / "merge")

    model_dir = Path(manifest["outputs"]["model_dir"])
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118 (not iterable)
    assert dtypes == {torch.float16}
    # The cast to float16 rounds the logits only slightly and keeps the model's choices.
    assert 0 < manifest["metrics"]["merge/max_abs_logit_diff"] < 0.02
    assert manifest["metrics"]["merge/top1_agreement"] >= 0.97


def test_a_full_disk_names_the_model_folder_and_the_space_it_needs_and_leaves_nothing(
    smoke_params: Params, tmp_path: Path
) -> None:
    """A real 3 MB filesystem under merge's folder: the float32 model (about 9.6 MB) does not fit, which
    safetensors reports as its own error, not an OSError."""
    base = str(TINY_MODEL)
    trained = {"stage": "train", "outputs": {"base_model": base, "adapter_dir": None, "model_dir": base,
                                             "tokenizer_dir": base}}
    disk = tmp_path / "disk"
    outcome = stage_on_a_small_disk("merge", SMOKE, {"train": trained}, disk, size="3m")
    target = disk / "merge" / "model"
    assert re.fullmatch(rf"OSError: \[Errno 28\] no space left on the device writing {re.escape(str(target))} \(it "
                        r"needs at least (9|10) MB, 3 MB free there\); free some space or point output_dir to a larger "
                        r"disk", outcome["error"]), outcome["error"]
    assert outcome["left"] == ["merge"]


def test_added_tokens_survive_merge_and_gguf_export(smoke_params: Params, tmp_path: Path) -> None:
    smoke_params.tokens = ["<fill>"]
    trained = lora_trained_manifest(smoke_params, tmp_path)
    manifest = run_merge(smoke_params, {"train": trained}, tmp_path / "merge")
    assert manifest["metrics"]["merge/top1_agreement"] == 1.0

    model_dir = Path(manifest["outputs"]["model_dir"])
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")
    reader = gguf.GGUFReader(path)
    fill_id = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<fill>")
    assert fill_id == TINY_SPEC.vocab_size
    assert reader.get_field("tokenizer.ggml.tokens").contents(fill_id) == "<fill>"
    assert reader.get_field("tokenizer.ggml.token_type").contents(fill_id) == gguf.TokenType.USER_DEFINED
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        assert llama.tokenize(b"x = <fill>", add_bos=True)[-1] == fill_id
    finally:
        llama.close()


def model_as_trained(params: Params, trained: dict):
    """QLoRA's model in training: the NF4 base (float32 compute, as on this CPU) with the adapter on it."""
    outputs = trained["outputs"]
    tokenizer = load_tokenizer(outputs["tokenizer_dir"], params)
    base = load_causal_lm(outputs["base_model"], params, quantize=True, dtype="float32")
    return with_adapter(base, outputs["adapter_dir"], tokenizer).eval(), tokenizer


def saved_model_logits(model_dir: Path, token_ids: list[list[int]]) -> list[np.ndarray]:
    return causal_lm_logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), token_ids)


def test_qlora_merge_into_the_dequantized_base_reproduces_the_model_as_trained(
    smoke_params: Params, tmp_path: Path
) -> None:
    assert smoke_params.load_in_4bit and smoke_params.merge_base is None and smoke_params.merge_dtype == "float32"
    trained = lora_trained_manifest(smoke_params, tmp_path)
    as_trained, tokenizer = model_as_trained(smoke_params, trained)
    token_ids = held_out_token_ids(tokenizer)
    trained_logits = causal_lm_logits(as_trained, token_ids)

    dequantized = run_merge(smoke_params, {"train": trained}, tmp_path / "dequantized")
    assert dequantized["outputs"]["merge_base"] == "dequantized"
    assert dequantized["metrics"]["merge/max_abs_logit_diff"] < 1e-4
    model_dir = Path(dequantized["outputs"]["model_dir"])
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())  # a plain fp32 model
    versus_trained = compare_logits(trained_logits, saved_model_logits(model_dir, token_ids), prefix="trained")
    # NF4 codes times their block scales are exact in fp32, so the dequantized base holds the very
    # weights training computed with; what is left is the order of fp32 sums, W x + B A x against
    # (W + B A) x: measured 2.1e-6 (torch 2.13 CPU, bitsandbytes 0.50.2), 1e-4 is the fp32 merge bound.
    assert versus_trained["trained/max_abs_logit_diff"] < 1e-4
    assert versus_trained["trained/top1_agreement"] == 1.0

    smoke_params.merge_base = "original"
    original = run_merge(smoke_params, {"train": trained}, tmp_path / "original")
    assert original["outputs"]["merge_base"] == "original"
    assert original["metrics"]["merge/max_abs_logit_diff"] < 1e-4  # a faithful merge of the other base
    model_dir = Path(original["outputs"]["model_dir"])
    off = compare_logits(trained_logits, saved_model_logits(model_dir, token_ids), prefix="trained")
    # The NF4 rounding the adapter trained on is gone: measured 0.35 and 0.76 top-1 agreement here.
    assert off["trained/max_abs_logit_diff"] > 0.1 > 1000 * versus_trained["trained/max_abs_logit_diff"]
    assert off["trained/top1_agreement"] < 0.95


def test_merge_base_and_check_bound_are_derived_in_the_schema(tmp_path: Path) -> None:
    assert smoke_at(tmp_path, []).merge_base_used == "dequantized"  # QLoRA
    assert smoke_at(tmp_path, ["adapter=lora", "load_in_4bit=false"]).merge_base_used == "original"
    assert smoke_at(tmp_path, ["merge_base=original"]).merge_base_used == "original"
    limits = {dtype: smoke_at(tmp_path, [f"merge_dtype={dtype}"]).merge_logit_diff_limit
              for dtype in ("float32", "float16", "bfloat16")}
    assert limits == {"float32": 0.01, "float16": 0.25, "bfloat16": 2.0}
    assert smoke_at(tmp_path, ["merge_dtype=bfloat16", "merge_max_logit_diff=0.5"]).merge_logit_diff_limit == 0.5
    with pytest.raises(ParamsError, match="merge_base: dequantized is for an adapter trained on a 4-bit base"):
        smoke_at(tmp_path, ["adapter=lora", "load_in_4bit=false", "merge_base=dequantized"])
    with pytest.raises(ParamsError, match="`merge_max_logit_diff`"):
        smoke_at(tmp_path, ["merge_max_logit_diff=0"])


def test_merge_stops_above_the_logit_bound_naming_key_and_value(smoke_params: Params, tmp_path: Path) -> None:
    trained = lora_trained_manifest(smoke_params, tmp_path)
    smoke_params.merge_dtype = "bfloat16"
    smoke_params.merge_max_logit_diff = 1e-3  # a float32 bound for a bfloat16 merge: its rounding exceeds it
    message = r"merge/max_abs_logit_diff ([\d.e-]+) is above merge_max_logit_diff 0\.001"
    with pytest.raises(RuntimeError, match=message) as failed:
        run_merge(smoke_params, {"train": trained}, tmp_path / "merge")
    assert float(re.search(message, str(failed.value)).group(1)) > 1e-3
    assert not (tmp_path / "merge" / "model").exists() and not (tmp_path / "merge" / "manifest.json").exists()

    smoke_params.merge_max_logit_diff = None  # bfloat16's default bound passes the same merge
    manifest = run_merge(smoke_params, {"train": trained}, tmp_path / "merge")
    assert 1e-3 < manifest["metrics"]["merge/max_abs_logit_diff"] < smoke_params.merge_logit_diff_limit


def test_merged_folder_holds_safetensors_tokenizer_chat_template_and_generation_config(tmp_path: Path) -> None:
    conversations = "datasets=[{path: ~/.cache/tunebook/tiny/train.jsonl, type: chat_template, chat_template: chatml}]"
    params = smoke_at(tmp_path, [conversations])
    trained = lora_trained_manifest(params, tmp_path)
    model_dir = Path(run_merge(params, {"train": trained}, tmp_path / "merge")["outputs"]["model_dir"])

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model"} <= {
        path.name for path in model_dir.iterdir()
    }
    assert not list(model_dir.glob("*.bin"))
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}  # noqa: SIM118
    base = AutoModelForCausalLM.from_pretrained(trained["outputs"]["base_model"])
    saved = json.loads((model_dir / "generation_config.json").read_text())
    assert saved["bos_token_id"] == base.generation_config.bos_token_id
    assert saved["eos_token_id"] == base.generation_config.eos_token_id
    # The template the model trained on, though the tiny tokenizer has none of its own.
    assert AutoTokenizer.from_pretrained(trained["outputs"]["base_model"]).chat_template is None
    assert AutoTokenizer.from_pretrained(model_dir).chat_template == CHAT_TEMPLATES["chatml"]


def test_hub_push_is_skipped_offline_saying_why(
    smoke_params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke_params.hub_model_id = "me/tiny-merged"  # HF_HUB_OFFLINE=1 in every test (conftest)
    manifest = run_merge(smoke_params, {"train": lora_trained_manifest(smoke_params, tmp_path)}, tmp_path / "merge")
    message = "hub_model_id: HF_HUB_OFFLINE is set; the merged model is not pushed to me/tiny-merged"
    assert manifest["outputs"]["hub"] == {"repo_id": "me/tiny-merged", "pushed": False, "skipped": message}
    assert message in capsys.readouterr().out
    assert (Path(manifest["outputs"]["model_dir"]) / "model.safetensors").is_file()


def test_hub_push_is_skipped_without_a_token(
    smoke_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    smoke_params.hub_model_id = "me/tiny-merged"
    hub = push_to_hub(smoke_params, tmp_path)
    assert hub["pushed"] is False and "no Hugging Face token here" in hub["skipped"]
    warnings = environment_warnings(smoke_params)
    assert any(warning.startswith("hub_model_id: no Hugging Face token") for warning in warnings)


def test_hub_push_uploads_the_merged_folder_to_a_private_repo(
    smoke_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def create_repo(self, repo_id, **options):
        calls.append(("create_repo", repo_id, options))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **options):
        calls.append(("upload_folder", options["repo_id"], options))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{options['repo_id']}/commit/abc",
            commit_message="",
            commit_description="",
            oid="abc",
        )

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    smoke_params.hub_model_id = "me/tiny-merged"
    assert not any(warning.startswith("hub_model_id") for warning in environment_warnings(smoke_params))

    manifest = run_merge(smoke_params, {"train": lora_trained_manifest(smoke_params, tmp_path)}, tmp_path / "merge")
    model_dir = Path(manifest["outputs"]["model_dir"])
    (create, repo_id, options), (upload, uploaded_to, upload_options) = calls
    assert (create, repo_id, options["private"], options["exist_ok"]) == ("create_repo", "me/tiny-merged", True, True)
    assert (upload, uploaded_to, Path(upload_options["folder_path"])) == ("upload_folder", "me/tiny-merged", model_dir)
    assert manifest["outputs"]["hub"] == {
        "repo_id": "me/tiny-merged", "pushed": True, "url": "https://huggingface.co/me/tiny-merged",
        "commit_url": "https://huggingface.co/me/tiny-merged/commit/abc",
    }
