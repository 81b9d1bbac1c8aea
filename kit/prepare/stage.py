"""Prepare: the params' datasets -> the exact token rows the trainer sees, with every count reported."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from kit.core.manifest import params_hash, write_manifest
from kit.core.models import load_tokenizer, resolve_base_model, save_tokenizer
from kit.core.params import DatasetSpec, Params
from kit.core.progress import announce
from kit.core.sources import check_local_paths, load_source
from kit.core.staging import disk_full, filled_the_device, staging_folder
from kit.core.tracking import log_metrics
from kit.prepare.packing import repack_rows
from kit.prepare.samples import collect_samples


def with_position_ids(row: dict[str, Any]) -> dict[str, Any]:
    """Positions restart at every sample: what keeps packed samples apart in attention."""
    row["position_ids"] = [position for length in row["seq_lengths"] for position in range(length)]
    return row


# Every key that changes the prepared rows; with the data, the tokenizer and PREPARE_VERSION it
# makes the cache key of `dataset_prepared_path`.
PREPARATION_KEYS = (
    "datasets", "test_datasets", "sequence_len", "sample_packing", "train_on_inputs", "val_set_size", "seed",
    "excess_length_strategy", "dataset_bad_rows", "dataset_decontamination", "dataset_decontamination_ngram",
    "eval_mbpp_path", "special_tokens", "tokens",
)
# The model keys prepare reads: the tokenizer comes from them.
MODEL_KEYS = ("base_model", "tokenizer_type", "tokenizer_config", "trust_remote_code")
# Bumped whenever preparation changes what it writes for the same inputs.
PREPARE_VERSION = 2
SUMMARY = "prepared.json"


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def data_fingerprint(spec: DatasetSpec) -> str:
    """The content of one dataset: its local files' bytes, or the Hub dataset's own fingerprint."""
    local = Path(spec.path).expanduser()
    if local.is_file():
        return _hash_files([local])
    if local.is_dir():
        return _hash_files(sorted(path for path in local.rglob("*") if path.is_file()))
    # datasets fingerprints a Hub dataset from its downloaded files (and so from the revision).
    return load_source(spec)._fingerprint


def _decontamination(params: Params) -> list:
    return [entry if isinstance(entry, str) else entry.model_dump()
            for entry in params.dataset_decontamination_benchmarks]


def params_read(params: Params) -> dict[str, Any]:
    """The resolved params prepare depends on (its manifest's params hash)."""
    resolved = params.resolved()
    return {**{key: resolved[key] for key in (*MODEL_KEYS, *PREPARATION_KEYS)},
            "decontamination": _decontamination(params)}


def cache_key(params: Params, tokenizer_dir: Path) -> str:
    resolved = params.resolved()
    inputs = {key: resolved[key] for key in PREPARATION_KEYS}
    inputs["data"] = [data_fingerprint(spec) for spec in [*params.datasets, *(params.test_datasets or [])]]
    # The benchmarks checked against, a task file by its bytes.
    inputs["decontamination"] = [entry if isinstance(entry, str) else _hash_files([Path(entry.path).expanduser()])
                                 for entry in params.dataset_decontamination_benchmarks]
    inputs["tokenizer"] = _hash_files(sorted(tokenizer_dir.iterdir()))
    inputs["version"] = PREPARE_VERSION
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def pack_splits(splits, sequence_len: int):
    """TRL's best-fit-decreasing packer (one batch holds a whole split, so its bins span all of it),
    then the rows it left loose repacked (kit.prepare.packing)."""
    from datasets import Dataset, DatasetDict
    from trl import pack_dataset

    packed = {}
    for name, split in splits.items():
        rows = pack_dataset(split, sequence_len, strategy="bfd", map_kwargs={"batch_size": max(1, len(split))})
        rows = Dataset.from_list(repack_rows(rows.to_list(), sequence_len))
        packed[name] = rows.map(with_position_ids).remove_columns("seq_lengths")
    return DatasetDict(packed)


def _build(params: Params, tokenizer, folder: Path) -> dict[str, Any]:
    """Rows into ``folder/dataset``; returns the summary (metrics, counts, lengths) written beside them."""
    from datasets import Dataset, DatasetDict

    from kit.prepare.decontaminate import build_index, contamination_report, find_contaminated

    announce(f"loading and tokenizing {len(params.datasets)} dataset(s)")
    collected = collect_samples(params, tokenizer)
    samples = collected.samples
    contamination: dict[str, Any] = {"samples_contaminated": 0}
    if params.dataset_decontamination != "off":
        benchmarks = ", ".join(entry if isinstance(entry, str) else entry.name
                               for entry in params.dataset_decontamination_benchmarks)
        announce(f"checking {len(samples)} samples against {benchmarks} (decontamination)")
        index = build_index(params)
        matches = find_contaminated(collected.texts, index)
        contamination = contamination_report(collected.texts, matches, index)
        if params.dataset_decontamination == "remove":
            samples = [sample for sample, matched in zip(samples, matches) if not matched]
    if not samples:
        raise ValueError("datasets: no sample left after removing empty, duplicate, too long and contaminated ones")

    splits = DatasetDict({"train": Dataset.from_list(samples)})
    validation = None
    if params.test_datasets:
        announce(f"loading and tokenizing {len(params.test_datasets)} validation dataset(s) (test_datasets)")
        validation = collect_samples(params, tokenizer, params.test_datasets)
        if not validation.samples:
            raise ValueError("test_datasets: no sample left after removing empty, duplicate and too long ones")
        splits["validation"] = Dataset.from_list(validation.samples)
    elif params.val_set_size:
        test_size = int(params.val_set_size) if params.val_set_size >= 1 else params.val_set_size
        split = splits["train"].train_test_split(test_size=test_size, seed=params.seed)
        splits = DatasetDict({"train": split["train"], "validation": split["test"]})
    sample_lengths = [len(row) for row in splits["train"]["input_ids"]]
    num_val = len(splits["validation"]) if "validation" in splits else 0
    if params.sample_packing:
        announce(f"packing {len(sample_lengths)} training samples into rows of {params.sequence_len} tokens")
        splits = pack_splits(splits, params.sequence_len)
    splits.save_to_disk(str(folder / "dataset"))

    totals = collected.totals
    rows = len(splits["train"])
    metrics = {
        "prepare/num_samples": totals["loaded"],
        "prepare/num_bad_rows": totals["bad_rows"],
        "prepare/num_empty": totals["empty"],
        "prepare/num_duplicates": totals["duplicates"],
        "prepare/num_dropped_too_long": totals["too_long"],
        "prepare/num_truncated": totals["truncated"],
        "prepare/num_contaminated": contamination["samples_contaminated"],
        "prepare/num_train": len(sample_lengths),
        "prepare/num_val": num_val,
        "prepare/train_tokens": sum(sample_lengths),
        "prepare/num_packed_rows": rows if params.sample_packing else 0,
        "prepare/packing_efficiency": sum(sample_lengths) / (rows * params.sequence_len),
    }
    datasets = [{"path": spec.path, "split": "train", **counts}
                for spec, counts in zip(params.datasets, collected.counts)]
    if validation is not None:
        datasets += [{"path": spec.path, "split": "validation", **counts}
                     for spec, counts in zip(params.test_datasets, validation.counts)]
    summary = {"metrics": metrics, "datasets": datasets, "contamination": contamination,
               "sample_lengths": sample_lengths, "checksums": _checksums(folder / "dataset")}
    (folder / SUMMARY).write_text(json.dumps(summary))
    return summary


def _checksums(dataset_dir: Path) -> dict[str, str]:
    """sha256 of every file of a saved dataset, by its path inside it."""
    return {str(path.relative_to(dataset_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(dataset_dir.rglob("*")) if path.is_file()}


def _damaged(folder: Path) -> str | None:
    """What differs in a cache entry from what was written (a file changed, missing or added), if anything."""
    written = json.loads((folder / SUMMARY).read_text()).get("checksums", {})
    found = _checksums(folder / "dataset")
    changed = sorted(set(written) ^ set(found)) or [name for name in written if written[name] != found[name]]
    return changed[0] if changed else None


# What the prepare notebook shows first (kit.pipeline.stage.metrics_table).
SUMMARY_METRICS = {
    "prepare/num_train": "training samples",
    "prepare/num_val": "validation samples",
    "prepare/num_contaminated": "samples overlapping a benchmark",
    "prepare/train_tokens": "training tokens",
    "prepare/num_packed_rows": "packed rows",
    "prepare/packing_efficiency": "packing efficiency (real tokens / row tokens)",
}


def run_prepare(params: Params, upstream: dict[str, dict[str, Any]] | None, out_dir: Path) -> dict[str, Any]:
    """The params' datasets as token rows in ``out_dir`` (or the prepared-data cache); prepare reads no
    stage's manifest, so ``upstream`` is empty."""
    check_local_paths(params)
    base_model = resolve_base_model(params)
    tokenizer = load_tokenizer(base_model, params)
    tokenizer_dir = save_tokenizer(tokenizer, base_model, out_dir / "tokenizer").resolve()

    if params.dataset_prepared_path:
        key = cache_key(params, tokenizer_dir)
        folder = (Path(params.dataset_prepared_path) / key).resolve()
        cache_hit = (folder / SUMMARY).exists()
        damaged = _damaged(folder) if cache_hit else None
        if damaged:
            print(f"prepared data in {folder} is damaged ({damaged} is not as written); building it again")
            shutil.rmtree(folder)
            cache_hit = False
        if cache_hit:
            print(f"prepared data loaded from {folder} (same data, tokenizer and params)")
        else:
            # Built aside and renamed into place: an interrupted prepare never leaves a cache entry.
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = staging_folder(folder.parent, f".{key}-")
            try:
                _build(params, tokenizer, staging)
                staging.rename(folder)
            except Exception as error:
                if not (isinstance(error, OSError) and (folder / SUMMARY).exists()):  # another run finished first
                    shutil.rmtree(staging, ignore_errors=True)
                    if filled_the_device(error, folder.parent, None):
                        raise disk_full(folder) from None
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        summary = json.loads((folder / SUMMARY).read_text())
    else:
        folder, cache_hit = out_dir.resolve(), False
        summary = _build(params, tokenizer, folder)

    metrics = {**summary["metrics"], "prepare/cache_hit": float(cache_hit)}
    log_metrics(metrics)
    return write_manifest(
        out_dir,
        "prepare",
        inputs={"datasets": [spec.model_dump() for spec in params.datasets],
                "test_datasets": [spec.model_dump() for spec in params.test_datasets or []], "base_model": base_model},
        outputs={
            "dataset_dir": str(folder / "dataset"),
            "summary": str(folder / SUMMARY),
            "tokenizer_dir": str(tokenizer_dir),
            "base_model": base_model,
            "packed": params.sample_packing,
        },
        metrics=metrics,
        params_hash=params_hash(params_read(params), upstream),
    )
