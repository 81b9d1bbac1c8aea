"""Quantize: the merged model as GGUF files for llama.cpp, each checked against the merged model.

An f16 GGUF is exported first; every type in ``gguf_quantizations`` is made from it by llama.cpp's
own quantizer; the time of the conversion and of each quantization is recorded. Each file is then
loaded in llama.cpp and run on held-out code: its perplexity and how often its next-token choice
matches the merged Hugging Face model's show what quantizing cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import re
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kit.core.llama import llama_model
from kit.core.logits import causal_lm_logits, held_out_token_ids
from kit.core.manifest import params_hash, upstream_manifest, write_manifest
from kit.core.models import inference_device, load_causal_lm, load_tokenizer
from kit.core.params import Params
from kit.core.progress import Progress
from kit.core.staging import written_aside
from kit.core.tracking import log_metrics
from kit.quantize.gguf_export import OUT_TYPES, export_gguf

SOURCE_TYPE = "f16"


# What the quantize notebook shows first (kit.pipeline.stage.metrics_table); gguf_table follows with every file.
SUMMARY_METRICS = {"merged/perplexity": "merged model's perplexity on held-out code"}


def params_read(params: Params) -> dict[str, Any]:
    """The resolved params quantize depends on (its manifest's params hash); the merged model's reach it
    through merge's."""
    return {"gguf_quantizations": list(params.gguf_quantizations)}


def run_quantize(params: Params, upstream: dict[str, dict[str, Any]] | None, out_dir: Path) -> dict[str, Any]:
    """``out_dir/model-<type>.gguf`` for f16 and each of ``gguf_quantizations``, with their metrics."""
    merged = upstream_manifest(upstream, "merge", "quantize")
    model_dir = Path(merged["outputs"]["model_dir"])
    out_dir = out_dir.resolve()
    gguf_paths, seconds = {}, {}
    gguf_types = list(dict.fromkeys([SOURCE_TYPE, *params.gguf_quantizations]))
    parameters = parameter_count(model_dir)
    with Progress("writing GGUF files", len(gguf_types), unit="files") as progress:
        for done, gguf_type in enumerate(gguf_types):
            target = out_dir / f"model-{gguf_type}.gguf"
            started = time.perf_counter()
            # Written aside and renamed when complete: a crash never leaves a file that looks finished.
            with written_aside(target, gguf_bytes_at_least(parameters, gguf_type)) as partial:
                if gguf_type in OUT_TYPES:  # written straight from the weights
                    progress.update(done, now=f"converting to {gguf_type}")
                    export_gguf(model_dir, partial, gguf_type)
                else:
                    progress.update(done, now=f"quantizing to {gguf_type}")
                    quantize_gguf(gguf_paths[SOURCE_TYPE], partial, gguf_type)
            gguf_paths[gguf_type] = target
            seconds[gguf_type] = time.perf_counter() - started
        progress.update(len(gguf_types), now="all written")

    token_ids = held_out_token_ids(load_tokenizer(str(model_dir), params))
    merged_model = load_causal_lm(str(model_dir), params, quantize=False, dtype="float32")
    merged_logits = causal_lm_logits(merged_model.to(inference_device()).eval(), token_ids)
    del merged_model  # llama.cpp loads next; the Hugging Face copy need not stay in memory
    metrics = {"merged/perplexity": perplexity(merged_logits, token_ids)}
    checking = Progress("checking each GGUF file against the merged model", len(gguf_paths), unit="files")
    with checking as progress:
        for gguf_type, path in gguf_paths.items():
            metrics.update(gguf_metrics(path, gguf_type, token_ids, merged_logits))
            metrics[f"gguf/{gguf_type}/seconds"] = seconds[gguf_type]
            progress.advance()

    log_metrics(metrics)
    return write_manifest(
        out_dir,
        "quantize",
        inputs={"model_dir": str(model_dir.resolve())},
        outputs={"gguf": {gguf_type: str(path) for gguf_type, path in gguf_paths.items()}},
        metrics=metrics,
        params_hash=params_hash(params_read(params), upstream),
    )


def parameter_count(model_dir: Path) -> int:
    """The weights in ``model_dir``'s safetensors files, read from their headers."""
    from safetensors import safe_open

    count = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as tensors:
            names = tensors.keys()
            count += sum(int(np.prod(tensors.get_slice(name).get_shape())) for name in names)
    return count


def gguf_bytes_at_least(parameters: int, gguf_type: str) -> int:
    """A lower bound on the size of a GGUF file of ``parameters`` weights: all of them in the type's main
    block format (a k-quant mix puts some tensors in larger types, and norms stay f32)."""
    block_type = re.sub(r"(_K)_[SML]$", r"\1", gguf_type.upper())  # q4_k_m is mostly Q4_K blocks
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[block_type]]
    return parameters * block_bytes // block_weights


def llama_file_type(gguf_type: str) -> int:
    """llama.cpp's ``LLAMA_FTYPE_*`` constant for a lower-case type name such as ``q4_k_m``."""
    import llama_cpp

    name = "LLAMA_FTYPE_ALL_F32" if gguf_type == "f32" else f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}"
    if not hasattr(llama_cpp, name):
        raise ValueError(f"GGUF type {gguf_type!r}: this llama.cpp has no {name}")
    return getattr(llama_cpp, name)


def quantize_gguf(source: Path, target: Path, gguf_type: str) -> Path:
    """``source`` (an f16/f32 GGUF) quantized by llama.cpp to ``gguf_type`` at ``target``."""
    import llama_cpp

    quantize_params = llama_cpp.llama_model_quantize_default_params()
    quantize_params.ftype = llama_file_type(gguf_type)
    # llama.cpp logs every tensor it quantizes (through llama-cpp-python's Python-side logger);
    # that log is kept for the error message rather than printed.
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), ctypes.byref(quantize_params)
        )
    if status != 0:
        log_tail = "\n".join(log.getvalue().splitlines()[-5:])
        raise RuntimeError(f"llama.cpp could not quantize {source} to {gguf_type} (status {status}):\n{log_tail}")
    return target


def gguf_logits(path: Path, token_ids: list[list[int]]) -> tuple[list[np.ndarray], float]:
    """llama.cpp's logits for each sequence, and the file's bits per weight as llama.cpp counts them."""
    import llama_cpp

    longest = max(len(ids) for ids in token_ids)
    with llama_model(path, n_ctx=longest, n_batch=longest, logits_all=True) as model:
        logits = []
        for ids in token_ids:
            model.reset()
            model.eval(ids)
            logits.append(np.array(model.scores[: len(ids)], dtype=np.float32))
        bits_per_weight = 8 * llama_cpp.llama_model_size(model.model) / llama_cpp.llama_model_n_params(model.model)
    return logits, bits_per_weight


def gguf_metrics(
    path: Path, gguf_type: str, token_ids: list[list[int]], merged_logits: list[np.ndarray]
) -> dict[str, float]:
    logits, bits_per_weight = gguf_logits(path, token_ids)
    agree = sum(int((ours.argmax(-1) == ref.argmax(-1)).sum()) for ours, ref in zip(logits, merged_logits))
    prefix = f"gguf/{gguf_type}"
    return {
        f"{prefix}/size_mb": path.stat().st_size / 1e6,
        f"{prefix}/bits_per_weight": bits_per_weight,
        f"{prefix}/perplexity": perplexity(logits, token_ids),
        f"{prefix}/top1_agreement": agree / sum(len(ids) for ids in token_ids),
    }


def perplexity(logits: list[np.ndarray], token_ids: list[list[int]]) -> float:
    """exp of the mean negative log-likelihood of each next token, over all sequences."""
    total_nll, count = 0.0, 0
    for sequence_logits, ids in zip(logits, token_ids):
        predicting = sequence_logits[:-1].astype(np.float64)
        shifted = predicting - predicting.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total_nll -= log_probs[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    return float(np.exp(total_nll / count))
