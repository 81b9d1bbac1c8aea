"""What the quantize notebook shows: views of the stage's manifest and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.core.llama import llama_model


def gguf_table(quantized: dict[str, Any]):
    """One row per GGUF type (and the merged model's perplexity), from a quantize manifest; ``seconds`` is
    the time of f16's conversion and of each other type's quantization."""
    import pandas as pd

    metrics = quantized["metrics"]
    columns = ("size_mb", "bits_per_weight", "perplexity", "top1_agreement", "seconds")
    rows = {
        gguf_type: {column: metrics[f"gguf/{gguf_type}/{column}"] for column in columns}
        for gguf_type in quantized["outputs"]["gguf"]
    }
    rows["merged"] = {"perplexity": metrics["merged/perplexity"]}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(columns))
    table.index.name = "type"
    return table


def gguf_generations(quantized: dict[str, Any], prompt: str, max_tokens: int):
    """Each GGUF file's greedy continuation of ``prompt`` in llama.cpp, one row per type."""
    import pandas as pd

    completions = {}
    for gguf_type, path in quantized["outputs"]["gguf"].items():
        with llama_model(Path(path)) as model:
            response = model.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        completions[gguf_type] = response["choices"][0]["text"]
    table = pd.DataFrame({"completion": completions})
    table.index.name = "type"
    return table
