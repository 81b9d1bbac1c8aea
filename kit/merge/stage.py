"""Merge: fold the trained LoRA adapter into its base and save one plain model folder.

The folder (safetensors in ``merge_dtype``, the tokenizer with its SentencePiece model and chat
template, the generation config) is what GGUF export and the Hub take. The merge is never done into
a 4-bit model: a QLoRA adapter is folded into its NF4 base dequantized to ``merge_dtype`` (the
weights it trained against), or into the original base (``merge_base``). Before saving, the merged
model is checked against base + adapter on held-out code it never trained on, and the stage stops
above ``merge_max_logit_diff``. With ``hub_model_id`` the folder is pushed to the Hub, where it can be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.core.formats import CONVERSATION_TYPES, resolve_chat_template
from kit.core.hardware import hub_unavailable_reason
from kit.core.logits import causal_lm_logits, held_out_token_ids
from kit.core.manifest import params_hash, upstream_manifest, write_manifest
from kit.core.models import (
    inference_device,
    load_adapter_base,
    load_causal_lm,
    load_tokenizer,
    save_tokenizer,
    torch_dtype,
    with_adapter,
)
from kit.core.params import Params
from kit.core.progress import announce
from kit.core.staging import written_aside
from kit.core.tracking import log_metrics

# What the merge notebook shows first (kit.pipeline.stage.metrics_table).
SUMMARY_METRICS = {
    "merge/max_abs_logit_diff": "largest logit difference, merged vs as trained",
    "merge/top1_agreement": "top-1 agreement, merged vs as trained",
}


# The keys merge reads itself; the adapter's reach its hash through train's.
MERGE_KEYS = ("merge_dtype", "merge_base", "merge_max_logit_diff", "hub_model_id")


def params_read(params: Params) -> dict[str, Any]:
    """The resolved params merge depends on (its manifest's params hash)."""
    resolved = params.resolved()
    return {key: resolved[key] for key in MERGE_KEYS}


def run_merge(params: Params, upstream: dict[str, dict[str, Any]] | None, out_dir: Path) -> dict[str, Any]:
    """Merge the train stage's adapter (or re-save its full fine-tune) into ``out_dir/model``."""
    trained = upstream_manifest(upstream, "train", "merge")
    trained_outputs = trained["outputs"]
    tokenizer_dir = trained_outputs["tokenizer_dir"]
    tokenizer = load_tokenizer(tokenizer_dir, params)
    token_ids = held_out_token_ids(tokenizer)
    device = inference_device()
    if trained_outputs["adapter_dir"]:
        merge_base = params.merge_base_used
        announce(f"loading the base ({merge_base}) and the adapter")
        base = load_adapter_base(
            trained_outputs["base_model"], params, merge_base == "dequantized", params.merge_dtype
        )
        model = with_adapter(base, trained_outputs["adapter_dir"], tokenizer).to(device).eval()
        reference_logits = causal_lm_logits(model, token_ids)
        model = model.merge_and_unload()
    else:
        # A full fine-tune has nothing to fold in; the check then measures the cast to merge_dtype.
        merge_base = None
        model = load_causal_lm(trained_outputs["model_dir"], params, quantize=False, dtype="float32")
        model = model.to(device).eval()
        reference_logits = causal_lm_logits(model, token_ids)
        model = model.to(torch_dtype(params.merge_dtype))
    announce("checking the merged model's logits against the model as trained")
    merged_logits = causal_lm_logits(model, token_ids)
    metrics = compare_logits(reference_logits, merged_logits, prefix="merge")
    log_metrics(metrics)
    check_merge(metrics, params)

    model_dir = (out_dir / "model").resolve()
    announce(f"saving {model_dir}")
    tokenizer.chat_template = trained_chat_template(params, tokenizer)
    weight_bytes = sum(weights.numel() * weights.element_size() for weights in model.parameters())
    with written_aside(model_dir, weight_bytes) as partial:  # a crash never leaves a folder that looks like a model
        model.save_pretrained(partial)  # safetensors, config and generation_config.json
        save_tokenizer(tokenizer, tokenizer_dir, partial)
    hub = push_to_hub(params, model_dir)
    return write_manifest(
        out_dir,
        "merge",
        inputs={key: trained_outputs[key] for key in ("base_model", "adapter_dir", "model_dir", "tokenizer_dir")},
        # tokenizer_dir as train's manifest names it, so kit.core.generate answers with the merged model too.
        outputs={"model_dir": str(model_dir), "tokenizer_dir": str(model_dir), "merge_base": merge_base,
                 "hub": hub},
        metrics=metrics,
        params_hash=params_hash(params_read(params), upstream),
    )


def check_merge(metrics: dict[str, float], params: Params) -> None:
    """Stop before saving a merged model that predicts unlike base + adapter."""
    measured = metrics["merge/max_abs_logit_diff"]
    if measured > params.merge_logit_diff_limit:
        key = "merge_max_logit_diff" + ("" if params.merge_max_logit_diff else f" (default for {params.merge_dtype})")
        raise RuntimeError(
            f"merge check failed: merge/max_abs_logit_diff {measured:.4g} is above {key} "
            f"{params.merge_logit_diff_limit:g}: the merged model's logits on the held-out snippets differ from "
            f"base + adapter's (top-1 agreement {metrics['merge/top1_agreement']:.3f}); nothing was saved"
        )


def trained_chat_template(params: Params, tokenizer) -> str | None:
    """The chat template the model learned: the first conversation dataset's, else the tokenizer's own."""
    for spec in params.datasets:
        if spec.type in CONVERSATION_TYPES:
            return resolve_chat_template(spec, tokenizer)
    return tokenizer.chat_template


def push_to_hub(params: Params, model_dir: Path) -> dict[str, Any] | None:
    """Push the merged folder to ``hub_model_id``; offline or without a token, say why not and skip."""
    if not params.hub_model_id:
        return None
    unavailable = hub_unavailable_reason()
    if unavailable:
        message = f"hub_model_id: {unavailable}; the merged model is not pushed to {params.hub_model_id}"
        print(message)
        return {"repo_id": params.hub_model_id, "pushed": False, "skipped": message}
    from huggingface_hub import HfApi

    api = HfApi()
    # Private, as Axolotl pushes (hub_private_repo); an existing repo keeps its visibility.
    repo = api.create_repo(params.hub_model_id, private=True, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo.repo_id, folder_path=model_dir, repo_type="model", commit_message="Upload merged model (tunebook)"
    )
    print(f"hub_model_id: pushed the merged model to {repo}")
    return {"repo_id": repo.repo_id, "pushed": True, "url": str(repo), "commit_url": commit.commit_url}


def compare_logits(reference: list, candidate: list, prefix: str) -> dict[str, float]:
    """Largest absolute logit difference and how often both pick the same next token."""
    import numpy as np

    max_diff = max(float(np.abs(ref - cand).max()) for ref, cand in zip(reference, candidate))
    agree = sum(int((ref.argmax(-1) == cand.argmax(-1)).sum()) for ref, cand in zip(reference, candidate))
    positions = sum(len(ref) for ref in reference)
    return {f"{prefix}/max_abs_logit_diff": max_diff, f"{prefix}/top1_agreement": agree / positions}
