"""The tiny default's builder: `kit tiny build` writes ordinary files that params name like any user's.

Into one folder (default ``~/.cache/tunebook/tiny``, which params/smoke.yaml names):

- ``model/``: a Hugging Face folder of a tiny Llama (2 layers, 256 wide) with a SentencePiece BPE
  tokenizer with byte fallback, as Code Llama's, pretrained for a few minutes on the Python standard
  library's sources and on small functions in the style of a task family (kit.tiny.model);
- ``train.jsonl``: alpaca rows of that family's training pool, each task asked as a completion of its
  code or in words (kit.tiny.tasks);
- ``tasks.jsonl``: the family's held-out tasks in HumanEval's format, each with the instruction and the
  answer start its training rows use, for ``eval_benchmarks: [{name: tiny, path: ...}]``.

Everything is built from fixed seeds, offline, byte for byte the same on every machine; ``tiny.json``
records what was asked for, and a folder that holds it already is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kit.core.progress import announce
from kit.core.staging import staging_folder
from kit.tiny.model import build_model, model_spec, stdlib_corpus
from kit.tiny.tasks import benchmark_tasks, instruction_rows

DEFAULT_FOLDER = Path("~/.cache/tunebook/tiny")
SPEC_FILE = "tiny.json"


@dataclass(frozen=True)
class TinySpec:
    """What the build makes: the model's shape and pretraining, and the training rows."""

    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    corpus_chars: int = 2_000_000
    # Full-training steps on the corpus and the family's style; 0 leaves the model as initialised.
    pretrain_steps: int = 1200
    pretrain_learning_rate: float = 2e-3
    # Share of pretraining rows that are task-style functions, not corpus text.
    pretrain_style_fraction: float = 0.5
    num_samples: int = 600
    # Draws the training rows from the pool; the model has its own seed (kit.tiny.model).
    seed: int = 42

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")


@dataclass(frozen=True)
class TinyFiles:
    model: Path
    train: Path
    tasks: Path


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def build_tiny(folder: Path, spec: TinySpec) -> TinyFiles:
    """The tiny model, its training rows and its benchmark in ``folder``; built only where ``folder``
    does not hold this spec's build already."""
    corpus = stdlib_corpus(spec.corpus_chars)
    shape = {key: value for key, value in dataclasses.asdict(spec).items()
             if key not in ("corpus_chars", "num_samples", "seed")}
    wanted = {"model": model_spec(shape, corpus), "num_samples": spec.num_samples, "seed": spec.seed}
    files = TinyFiles(folder / "model", folder / "train.jsonl", folder / "tasks.jsonl")
    marker = folder / SPEC_FILE
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return files
    # Only an earlier build is replaced: a folder of anything else is left alone.
    if folder.exists() and not marker.is_file() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} holds files of its own, not a tiny build; give another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the folder and renamed into place: a killed build never leaves half a model there.
    staging = staging_folder(folder.parent, f".{folder.name}-build-")
    try:
        announce(f"building the tiny model and its data into {folder} (a few minutes, once)")
        (staging / "model").mkdir()
        build_model(wanted["model"], corpus, staging / "model")
        (staging / "train.jsonl").write_text(_jsonl(instruction_rows(spec.num_samples, spec.seed)))
        (staging / "tasks.jsonl").write_text(_jsonl(benchmark_tasks()))
        (staging / SPEC_FILE).write_text(json.dumps(wanted, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files
