"""Held-out code and a model's logits on it: how merge and quantize check that nothing was lost."""

from __future__ import annotations

# Code outside the tiny model's training tasks, with non-ASCII text, for checking merge and quantize.
HELD_OUT_SNIPPETS = (
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        return self.items.pop()\n",
    "import json\n\nwith open('scores.json', encoding='utf-8') as handle:\n"
    "    scores = json.load(handle)\nbest = max(scores, key=scores.get)\nprint(f'best: {best}')\n",
    "# Größe in KiB → MiB\ndef to_mib(size_kib: float) -> float:\n    return size_kib / 1024  # ≈ 0.001\n",
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
