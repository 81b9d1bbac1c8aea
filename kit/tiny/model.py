"""The tiny base model: a Llama and its tokenizer, built offline and deterministically.

Nothing here is downloaded. The tokenizer is SentencePiece BPE with byte fallback, as Code Llama's,
trained on the Python standard library's sources (text every machine with Python has) and the task
family's style (kit.tiny.tasks); the model is a Llama-architecture causal LM initialised from a seed
of its own (not the training rows' seed) and pretrained, fully, on the same text, so that the
fine-tune has a base that knows Python to teach.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import sysconfig
import time
from pathlib import Path

from kit.core.progress import announce, show_training_progress
from kit.tiny.tasks import style_functions

BUILDER_VERSION = 3
# Pretraining rows: tokens per row and rows per step.
PRETRAIN_SEQUENCE_LEN = 256
PRETRAIN_BATCH_SIZE = 8
PRETRAIN_WARMUP_STEPS = 30
BOS_ID = 1
BUILD_TIME = "build-time.json"
# Style functions in the tokenizer's and the pretraining's text: about 300k characters.
STYLE_FUNCTIONS = 6000
# The base's own seed, apart from the training rows': 42 keeps the base the published ledger was measured on.
BASE_MODEL_SEED = 42
# Positions the model takes: enough for every sequence_len the smoke params use.
MAX_POSITION_EMBEDDINGS = 2048


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


def model_spec(shape: dict, corpus: str) -> dict:
    """Everything that decides the model's bytes: the builder's version and seed, the shape and
    pretraining asked for, and the corpus."""
    return {
        "builder_version": BUILDER_VERSION,
        "seed": BASE_MODEL_SEED,
        **shape,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest(),
        "corpus_chars": len(corpus),
    }


def build_model(spec: dict, corpus: str, folder: Path) -> None:
    """The tokenizer, the initialised model and its pretraining, saved into ``folder`` with build.json
    (the spec and the final pretraining loss) and the build's time apart (BUILD_TIME)."""
    started = time.perf_counter()
    style = style_functions(STYLE_FUNCTIONS, spec["seed"])
    announce("tiny base model: training its tokenizer")
    tokenizer = _train_tokenizer(corpus + style, spec, folder)
    model = _init_model(spec)
    pretrain_loss = _pretrain(model, tokenizer, folder, corpus, style, spec) if spec["pretrain_steps"] else None
    from transformers.utils import logging as transformers_logging

    # transformers shows a bar for writing the weights: one small file, nothing to watch.
    transformers_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder))
    finally:
        transformers_logging.enable_progress_bar()
    # The time apart from the spec, so that two builds of one spec stay byte-identical but for that file.
    (folder / "build.json").write_text(json.dumps({**spec, "pretrain_final_loss": pretrain_loss}, indent=2,
                                                  sort_keys=True))
    (folder / BUILD_TIME).write_text(json.dumps({"build_seconds": round(time.perf_counter() - started, 1)}))


def _train_tokenizer(corpus: str, spec: dict, folder: Path):
    import sentencepiece as spm

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
    tokenizer = _load_tokenizer(folder)
    # save_pretrained writes tokenizer.json and its config beside the SentencePiece model, which
    # stays: the GGUF converter reads its scores and piece types.
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _load_tokenizer(folder: Path):
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(folder), legacy=False, add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _init_model(spec: dict):
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
    return LlamaForCausalLM(config).to(torch.float32)


def pretraining_rows(token_ids: list[int], style_ids: list[int], spec: dict) -> list[list[int]]:
    """Every row the pretraining sees, in order: windows of the corpus or of the style functions, the
    share of style rows ``pretrain_style_fraction``, each starting with BOS, chosen by the seed."""
    chooser = random.Random(spec["seed"])
    width = PRETRAIN_SEQUENCE_LEN - 1
    rows = []
    for _ in range(spec["pretrain_steps"] * PRETRAIN_BATCH_SIZE):
        source = style_ids if chooser.random() < spec["pretrain_style_fraction"] else token_ids
        start = chooser.randrange(len(source) - width)
        rows.append([BOS_ID, *source[start : start + width]])
    return rows


def _pretrain(model, tokenizer, folder: Path, corpus: str, style: str, spec: dict) -> float:
    """Full training of ``model`` on the corpus and the style functions with transformers' Trainer; the
    last logged loss."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    corpus_ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    style_ids = tokenizer(style, add_special_tokens=False)["input_ids"]
    rows = pretraining_rows(corpus_ids, style_ids, spec)
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    arguments = TrainingArguments(
        output_dir=str(folder / "pretraining"),
        per_device_train_batch_size=PRETRAIN_BATCH_SIZE,
        max_steps=spec["pretrain_steps"],
        learning_rate=spec["pretrain_learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=min(PRETRAIN_WARMUP_STEPS, spec["pretrain_steps"] // 10),
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=max(1, spec["pretrain_steps"] // 20),
        save_strategy="no",
        report_to="none",
        seed=spec["seed"],
        data_seed=spec["seed"],
        # The model is tiny: a GPU's start-up would cost more than it saves. Full rows need no padding.
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=default_data_collator)
    show_training_progress(trainer, "base model pretraining", tokens_per_step=PRETRAIN_BATCH_SIZE * len(rows[0]))
    trainer.train()
    shutil.rmtree(folder / "pretraining", ignore_errors=True)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1]
