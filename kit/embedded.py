"""The embedded default: a tiny Llama and its training data, built offline and deterministically.

Nothing here is downloaded. The tokenizer is SentencePiece BPE with byte fallback, as Code Llama's,
trained on the Python standard library's sources (text every machine with Python has); the model
is a Llama-architecture causal LM initialised from the params' seed. Both are cached under a key of
everything that decides their bytes, so the first build pays and later runs reuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sysconfig
import tempfile
from pathlib import Path

from kit.params import Params

BUILDER_VERSION = 2


def cache_root() -> Path:
    return Path(os.environ.get("TUNEBOOK_CACHE", Path.home() / ".cache" / "tunebook"))


def stdlib_corpus(max_chars: int) -> str:
    """The standard library's Python sources in sorted path order, cut at ``max_chars``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(chunks)[:max_chars]


def _builder_spec(params: Params, corpus: str) -> dict:
    return {
        "builder_version": BUILDER_VERSION,
        "seed": params.seed,
        "vocab_size": params.embedded_vocab_size,
        "hidden_size": params.embedded_hidden_size,
        "num_layers": params.embedded_num_layers,
        "num_heads": params.embedded_num_heads,
        "intermediate_size": params.embedded_intermediate_size,
        "max_position_embeddings": max(2048, params.sequence_len),
        "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest(),
        "corpus_chars": len(corpus),
    }


def build_base_model(params: Params, cache: Path | None = None) -> Path:
    """The folder of the embedded base model (weights, config, tokenizer), built on first use."""
    corpus = stdlib_corpus(params.embedded_corpus_chars)
    spec = _builder_spec(params, corpus)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    target = (cache or cache_root()) / "embedded-model" / key
    if (target / "build.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a killed build never leaves a half model in the cache.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        _train_tokenizer(corpus, spec, staging)
        _init_model(spec, staging)
        (staging / "build.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        try:
            staging.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / "build.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tokenizer(corpus: str, spec: dict, folder: Path) -> None:
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    lines = [line for line in corpus.splitlines() if line.strip()]
    # Trained into memory: a model_prefix path would be recorded in the model and change its bytes.
    model = io.BytesIO()
    # Settings for code: no normalisation, whitespace kept as written (indentation is syntax),
    # digits split, bytes as fallback so any text round-trips; ids as Llama's (unk 0, bos 1, eos 2).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=spec["vocab_size"],
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=8192,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), legacy=False, add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token
    # save_pretrained writes tokenizer.json and its config beside the SentencePiece model, which
    # stays: the GGUF converter reads its scores and piece types.
    tokenizer.save_pretrained(str(folder))


def _init_model(spec: dict, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(folder))


# --- training data -----------------------------------------------------------------------------

WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "ember", "lotus", "cedar", "amber",
         "coral", "delta", "frost", "grove", "harbor", "ivory", "jade", "kite", "lemon", "meadow")


def all_tasks() -> list[tuple[str, str]]:
    """Every instance of a family of small Python function tasks: (instruction, reference solution)."""
    tasks = []
    for k in range(2, 50):
        tasks += [
            (f"Write a Python function `add_{k}(x)` that returns x plus {k}.",
             f"def add_{k}(x):\n    return x + {k}\n"),
            (f"Write a Python function `times_{k}(x)` that returns x multiplied by {k}.",
             f"def times_{k}(x):\n    return x * {k}\n"),
            (f"Write a Python function `count_over_{k}(items)` that returns how many numbers in items are "
             f"greater than {k}.",
             f"def count_over_{k}(items):\n    return sum(1 for item in items if item > {k})\n"),
            (f"Write a Python function `is_multiple_of_{k}(x)` that returns True if x is divisible by {k}.",
             f"def is_multiple_of_{k}(x):\n    return x % {k} == 0\n"),
        ]
    for word in WORDS:
        tasks += [
            (f"Write a Python function `repeat_{word}(n)` that returns the string '{word}' repeated n times.",
             f"def repeat_{word}(n):\n    return '{word}' * n\n"),
            (f"Write a Python function `starts_with_{word}(s)` that returns True if s starts with '{word}'.",
             f"def starts_with_{word}(s):\n    return s.startswith('{word}')\n"),
            (f"Write a Python function `count_{word}(words)` that returns how many items of the list words "
             f"equal '{word}'.",
             f"def count_{word}(words):\n    total = 0\n    for word in words:\n        if word == '{word}':\n"
             f"            total += 1\n    return total\n"),
        ]
    return tasks


def build_instruction_dataset(params: Params, cache: Path | None = None) -> Path:
    """An alpaca-format jsonl of small code tasks, generated from the params' seed."""
    tasks = all_tasks()
    if params.embedded_num_samples > len(tasks):
        raise ValueError(f"embedded_num_samples: at most {len(tasks)} distinct tasks can be generated")
    chosen = random.Random(params.seed).sample(tasks, params.embedded_num_samples)
    rows = [{"instruction": instruction, "input": "", "output": output} for instruction, output in chosen]
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    key = hashlib.sha256(f"{BUILDER_VERSION}\n{text}".encode()).hexdigest()[:16]
    path = (cache or cache_root()) / "embedded-data" / f"code-instructions-{key}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".partial")
        staging.write_text(text)
        staging.rename(path)
    return path
