"""Merge: fold the trained LoRA adapter into its base and save one plain model folder.

The folder (safetensors in ``merge_dtype``, the tokenizer with its SentencePiece model, the
generation config) is what GGUF export and the Hub take. The merge is never done into a 4-bit
model: the base is reloaded in 16/32 bit. Before saving, the merged model is checked against
base + adapter on held-out code it never trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.models import inference_device, load_causal_lm, load_tokenizer, save_tokenizer, torch_dtype, with_adapter
from kit.params import Params
from kit.stage import write_manifest
from kit.tracking import log_metrics

# Code outside the embedded training tasks, with non-ASCII text, for checking merge and quantize.
HELD_OUT_SNIPPETS = (
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        return self.items.pop()\n",
    "import json\n\nwith open('scores.json', encoding='utf-8') as handle:\n"
    "    scores = json.load(handle)\nbest = max(scores, key=scores.get)\nprint(f'best: {best}')\n",
    "# Größe in KiB → MiB\ndef to_mib(size_kib: float) -> float:\n    return size_kib / 1024  # ≈ 0.001\n",
)


def run_merge(params: Params, trained: dict[str, Any] | None, out_dir: Path) -> dict[str, Any]:
    """Merge the train stage's adapter (or re-save its full fine-tune) into ``out_dir/model``."""
    if trained is None:
        raise ValueError("merge needs the train stage's manifest")
    trained_outputs = trained["outputs"]
    tokenizer_dir = trained_outputs["tokenizer_dir"]
    tokenizer = load_tokenizer(tokenizer_dir, params)
    token_ids = held_out_token_ids(tokenizer)
    device = inference_device()
    if trained_outputs["adapter_dir"]:
        base = load_causal_lm(trained_outputs["base_model"], params, quantize=False, dtype=params.merge_dtype)
        model = with_adapter(base, trained_outputs["adapter_dir"], tokenizer).to(device).eval()
        reference_logits = causal_lm_logits(model, token_ids)
        model = model.merge_and_unload()
    else:
        # A full fine-tune has nothing to fold in; the check then measures the cast to merge_dtype.
        model = load_causal_lm(trained_outputs["model_dir"], params, quantize=False, dtype="float32")
        model = model.to(device).eval()
        reference_logits = causal_lm_logits(model, token_ids)
        model = model.to(torch_dtype(params.merge_dtype))
    merged_logits = causal_lm_logits(model, token_ids)
    metrics = compare_logits(reference_logits, merged_logits, prefix="merge")

    model_dir = (out_dir / "model").resolve()
    model.save_pretrained(model_dir)
    save_tokenizer(tokenizer, tokenizer_dir, model_dir)

    log_metrics(metrics)
    return write_manifest(
        out_dir,
        "merge",
        inputs={key: trained_outputs[key] for key in ("base_model", "adapter_dir", "model_dir", "tokenizer_dir")},
        outputs={"model_dir": str(model_dir)},
        metrics=metrics,
    )


def held_out_token_ids(tokenizer) -> list[list[int]]:
    """The held-out snippets as the model sees them (with BOS)."""
    return [tokenizer(snippet)["input_ids"] for snippet in HELD_OUT_SNIPPETS]


def causal_lm_logits(model, token_ids: list[list[int]]):
    """Float32 next-token logits on the CPU, one (tokens, vocab) array per sequence."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [
            model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy() for ids in token_ids
        ]


def compare_logits(reference: list, candidate: list, prefix: str) -> dict[str, float]:
    """Largest absolute logit difference and how often both pick the same next token."""
    import numpy as np

    max_diff = max(float(np.abs(ref - cand).max()) for ref, cand in zip(reference, candidate))
    agree = sum(int((ref.argmax(-1) == cand.argmax(-1)).sum()) for ref, cand in zip(reference, candidate))
    positions = sum(len(ref) for ref in reference)
    return {f"{prefix}/max_abs_logit_diff": max_diff, f"{prefix}/top1_agreement": agree / positions}
