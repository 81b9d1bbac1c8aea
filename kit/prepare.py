"""Prepare: the params' datasets -> the exact token rows the trainer sees, with every count reported."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from kit.models import load_tokenizer, resolve_base_model, save_tokenizer
from kit.params import EMBEDDED_DATASET, DatasetSpec, Params
from kit.stage import write_manifest
from kit.tracking import log_metrics

IGNORE_INDEX = -100
# Axolotl's alpaca prompts, word for word, so adapters trained here prompt the same way.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_source(spec: DatasetSpec, params: Params):
    """One ``datasets`` entry as a Dataset: the embedded set, a local file or folder, or the Hub."""
    from datasets import load_dataset, load_from_disk

    path = spec.path
    if path == EMBEDDED_DATASET:
        from kit.embedded import build_instruction_dataset

        path = str(build_instruction_dataset(params))
    local = Path(path).expanduser()
    if local.is_file():
        builder = LOCAL_BUILDERS.get(local.suffix)
        if builder is None:
            raise ValueError(f"datasets: {path}: unsupported file type {local.suffix!r} ({', '.join(LOCAL_BUILDERS)})")
        field = spec.field if builder == "json" else None
        return load_dataset(builder, data_files=str(local), split="train", field=field)
    if local.is_dir() and (local / "dataset_info.json").exists():
        return load_from_disk(str(local))
    return load_dataset(
        path,
        name=spec.name,
        split=spec.split,
        data_files=spec.data_files,
        revision=spec.revision,
    )


def render(example: dict[str, Any], spec: DatasetSpec) -> tuple[str, str]:
    """(prompt, completion): the prompt is masked from the loss unless train_on_inputs."""
    if spec.type == "alpaca":
        template = ALPACA_WITH_INPUT if example.get("input") else ALPACA_NO_INPUT
        return template.format(instruction=example["instruction"], input=example.get("input", "")), example["output"]
    return "", example["text"]


def tokenize(prompt: str, completion: str, tokenizer, train_on_inputs: bool) -> dict[str, list[int]]:
    """Token ids of prompt + completion + EOS, with labels.

    The whole text is tokenized once and the prompt found by character offsets: tokenizing the two
    parts apart would change the tokens at the seam (SentencePiece prefixes each part with a space).
    """
    text = prompt + completion
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    input_ids = list(encoded["input_ids"]) + [tokenizer.eos_token_id]
    labels = list(input_ids)
    if not train_on_inputs:
        for index, (start, end) in enumerate(encoded["offset_mapping"]):
            if start < len(prompt) or end == 0:
                labels[index] = IGNORE_INDEX
    # The first token is never predicted within its sample; in a packed row it would be "predicted"
    # from the previous sample's last token, so it is masked either way.
    labels[0] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


def with_position_ids(row: dict[str, Any]) -> dict[str, Any]:
    """Positions restart at every sample: what keeps packed samples apart in attention."""
    row["position_ids"] = [position for length in row["seq_lengths"] for position in range(length)]
    return row


def run_prepare(params: Params, inputs: dict[str, Any] | None, out_dir: Path) -> dict[str, Any]:
    from datasets import Dataset, DatasetDict
    from trl import pack_dataset

    base_model = resolve_base_model(params)
    tokenizer = load_tokenizer(base_model, params)
    tokenizer_dir = save_tokenizer(tokenizer, base_model, out_dir / "tokenizer")

    counts = {"loaded": 0, "empty": 0, "duplicates": 0, "too_long": 0}
    samples, seen = [], set()
    for spec in params.datasets:
        source = load_source(spec, params)
        counts["loaded"] += len(source)
        for example in source:
            prompt, completion = render(example, spec)
            if not completion.strip():
                counts["empty"] += 1
                continue
            if (prompt, completion) in seen:
                counts["duplicates"] += 1
                continue
            seen.add((prompt, completion))
            sample = tokenize(prompt, completion, tokenizer, params.train_on_inputs)
            if len(sample["input_ids"]) > params.sequence_len:
                counts["too_long"] += 1
                continue
            samples.append(sample)
    if not samples:
        raise ValueError("datasets: no sample left after removing empty, duplicate and too long ones")

    dataset = Dataset.from_list(samples)
    splits = DatasetDict({"train": dataset})
    if params.val_set_size:
        test_size = int(params.val_set_size) if params.val_set_size >= 1 else params.val_set_size
        split = dataset.train_test_split(test_size=test_size, seed=params.seed)
        splits = DatasetDict({"train": split["train"], "validation": split["test"]})

    train_samples = len(splits["train"])
    real_tokens = sum(len(row) for row in splits["train"]["input_ids"])
    if params.sample_packing:
        # TRL's best-fit-decreasing packer; one batch holds the whole split so bins span all of it.
        splits = DatasetDict({
            name: pack_dataset(
                split, params.sequence_len, strategy="bfd", map_kwargs={"batch_size": max(1, len(split))}
            ).map(with_position_ids).remove_columns("seq_lengths")
            for name, split in splits.items()
        })
    dataset_dir = out_dir / "dataset"
    splits.save_to_disk(str(dataset_dir))

    rows = len(splits["train"])
    metrics = {
        "prepare/samples_loaded": counts["loaded"],
        "prepare/dropped_empty": counts["empty"],
        "prepare/dropped_duplicates": counts["duplicates"],
        "prepare/dropped_too_long": counts["too_long"],
        "prepare/train_samples": train_samples,
        "prepare/validation_rows": len(splits["validation"]) if "validation" in splits else 0,
        "prepare/train_rows": rows,
        "prepare/train_tokens": real_tokens,
        "prepare/packing_efficiency": real_tokens / (rows * params.sequence_len),
    }
    log_metrics(metrics)
    return write_manifest(
        out_dir,
        "prepare",
        inputs={"datasets": [spec.model_dump() for spec in params.datasets], "base_model": base_model},
        outputs={
            "dataset_dir": str(dataset_dir.resolve()),
            "tokenizer_dir": str(tokenizer_dir.resolve()),
            "base_model": base_model,
            "packed": params.sample_packing,
        },
        metrics=metrics,
    )


def show_row(prepared: dict[str, Any], params: Params, index: int = 0, split: str = "train"):
    """One prepared row split into its samples: masked (prompt) and trained (response) text of each."""
    import pandas as pd
    from datasets import load_from_disk

    from kit.models import load_tokenizer

    row = load_from_disk(prepared["outputs"]["dataset_dir"])[split][index]
    tokenizer = load_tokenizer(prepared["outputs"]["tokenizer_dir"], params)
    positions = row.get("position_ids") or list(range(len(row["input_ids"])))
    starts = [at for at, position in enumerate(positions) if position == 0] + [len(positions)]
    samples = []
    for start, end in itertools.pairwise(starts):
        ids, labels = row["input_ids"][start:end], row["labels"][start:end]
        samples.append({
            "tokens": len(ids),
            "trained tokens": sum(label != IGNORE_INDEX for label in labels),
            "masked (prompt)": tokenizer.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX]),
            "trained (response)": tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]),
        })
    return pd.DataFrame(samples).rename_axis("sample in row")
