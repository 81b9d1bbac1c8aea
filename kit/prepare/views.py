"""What the prepare notebook shows: views of the stage's manifest and outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from kit.core.formats import IGNORE_INDEX
from kit.core.models import load_tokenizer
from kit.core.params import Params


def _row_samples(prepared: dict[str, Any], params: Params, index: int, split: str):
    """The samples of one prepared row, each as (token ids, labels), and the tokenizer to read them."""
    from datasets import load_from_disk

    row = load_from_disk(prepared["outputs"]["dataset_dir"])[split][index]
    tokenizer = load_tokenizer(prepared["outputs"]["tokenizer_dir"], params)
    positions = row.get("position_ids") or list(range(len(row["input_ids"])))
    starts = [at for at, position in enumerate(positions) if position == 0] + [len(positions)]
    samples = [
        (row["input_ids"][start:end], row["labels"][start:end]) for start, end in itertools.pairwise(starts)
    ]
    return samples, tokenizer


def show_row(prepared: dict[str, Any], params: Params, index: int = 0, split: str = "train"):
    """One prepared row split into its samples: masked (prompt) and trained (response) text of each."""
    import pandas as pd

    samples, tokenizer = _row_samples(prepared, params, index, split)
    table = [
        {
            "tokens": len(ids),
            "trained tokens": sum(label != IGNORE_INDEX for label in labels),
            "masked (prompt)": tokenizer.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX]),
            "trained (response)": tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]),
        }
        for ids, labels in samples
    ]
    return pd.DataFrame(table).rename_axis("sample in row")


def show_masking(prepared: dict[str, Any], params: Params, index: int = 0, split: str = "train"):
    """The first sample of a row token by token: masked tokens grey and struck through, trained ones bold."""
    from html import escape

    from IPython.display import HTML

    samples, tokenizer = _row_samples(prepared, params, index, split)
    ids, labels = samples[0]
    # Each token's text as the difference of decoded prefixes: decoding one SentencePiece token
    # alone drops its leading space.
    decoded = [tokenizer.decode(ids[:end]) for end in range(len(ids) + 1)]
    spans = []
    for end, label in enumerate(labels, start=1):
        text = escape(decoded[end][len(decoded[end - 1]):])
        style = "color:#999;text-decoration:line-through" if label == IGNORE_INDEX else "font-weight:bold"
        spans.append(f'<span style="{style}">{text}</span>')
    return HTML(f'<pre style="white-space:pre-wrap">{"".join(spans)}</pre>')


def dataset_counts(prepared: dict[str, Any]):
    """Per dataset: rows loaded, dropped for each reason, kept."""
    import pandas as pd

    summary = json.loads(Path(prepared["outputs"]["summary"]).read_text())
    return pd.DataFrame(summary["datasets"]).set_index("path")


def contamination(prepared: dict[str, Any]) -> dict[str, Any]:
    """The decontamination report: benchmarks checked or skipped, contaminated samples, examples."""
    return json.loads(Path(prepared["outputs"]["summary"]).read_text())["contamination"]


def sample_lengths(prepared: dict[str, Any]):
    """Token length of every training sample (before packing), for a histogram."""
    import pandas as pd

    summary = json.loads(Path(prepared["outputs"]["summary"]).read_text())
    return pd.Series(summary["sample_lengths"], name="tokens per sample")
