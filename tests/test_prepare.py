"""Prepare: prompts as Axolotl renders them, loss masking, and packing that never leaks."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM
from trl import pack_dataset

from kit.core.formats import IGNORE_INDEX, render, tokenize
from kit.core.models import load_tokenizer
from kit.core.params import DatasetSpec, load_params
from kit.prepare.stage import pack_splits, run_prepare

from .conftest import SMOKE, TINY_SPEC, TINY_TOKENIZER
from .mounts import stage_on_a_small_disk


def test_alpaca_prompt_is_axolotls_text():
    (prompt, masked), (completion, trained) = render({"instruction": "Add.", "input": "", "output": "x + 1"},
                                                     DatasetSpec(path="d"))
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd.\n\n### Response:\n"
    )
    assert (completion, masked, trained) == ("x + 1", False, True)
    (prompt, _), _ = render({"instruction": "Add.", "input": "2", "output": "3"}, DatasetSpec(path="d"))
    assert "paired with an input" in prompt and prompt.endswith("### Input:\n2\n\n### Response:\n")


def test_loss_masks_the_prompt_and_trains_the_response_and_eos(smoke_params):
    tokenizer = load_tokenizer(str(TINY_TOKENIZER), smoke_params)
    prompt, completion = "### Instruction:\nAdd one.\n\n### Response:\n", "def f(x):\n    return x + 1\n"
    sample = tokenize([(prompt, False), (completion, True)], tokenizer, train_on_inputs=False)
    trained = [token for token, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX]
    assert sample["input_ids"][0] == tokenizer.bos_token_id and sample["input_ids"][-1] == tokenizer.eos_token_id
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]).strip() == completion.strip()
    everything = tokenize([(prompt, False), (completion, True)], tokenizer, train_on_inputs=True)
    assert everything["labels"][1:] == everything["input_ids"][1:] and everything["labels"][0] == IGNORE_INDEX


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=60))
def test_packing_keeps_every_sample_whole_once_within_the_row_length(lengths):
    samples = [[index] * length for index, length in enumerate(lengths)]
    dataset = Dataset.from_dict({"input_ids": samples, "labels": samples})
    packed = pack_splits(DatasetDict({"train": dataset}), 64)["train"]
    trl_rows = pack_dataset(dataset, 64, strategy="bfd", map_kwargs={"batch_size": len(dataset)})
    seen = []
    for row in packed:
        assert len(row["input_ids"]) <= 64 and len(row["position_ids"]) == len(row["input_ids"])
        assert row["labels"] == row["input_ids"]
        starts = [at for at, position in enumerate(row["position_ids"]) if position == 0] + [len(row["input_ids"])]
        seen += [row["input_ids"][start:end] for start, end in itertools.pairwise(starts)]
        for start, end in itertools.pairwise(starts):
            assert row["position_ids"][start:end] == list(range(end - start))
    assert sorted(seen) == sorted(samples)
    assert len(packed) <= len(trl_rows)


def _tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def test_packed_samples_see_only_themselves():
    model = _tiny_llama()
    first, second = torch.randint(3, 64, (1, 7)), torch.randint(3, 64, (1, 5))
    row = torch.cat([first, second], dim=1)
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(input_ids=first, use_cache=False).logits,
                           model(input_ids=second, use_cache=False).logits], dim=1)
        leaky = model(input_ids=row, position_ids=positions, attention_mask=torch.ones_like(row),
                      use_cache=False).logits
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # The condition the collator relies on: an all-ones mask lets the second sample see the first.
    assert (leaky[:, 7:] - alone[:, 7:]).abs().max() > 1e-3


def test_run_prepare_writes_packed_rows_and_counts(smoke_params, tmp_path):
    manifest = run_prepare(smoke_params, None, tmp_path / "prepare")
    metrics = manifest["metrics"]
    splits = load_from_disk(manifest["outputs"]["dataset_dir"])
    assert set(splits) == {"train", "validation"}
    assert metrics["prepare/num_samples"] == TINY_SPEC.num_samples
    assert metrics["prepare/num_packed_rows"] == len(splits["train"]) < metrics["prepare/num_train"]
    assert 0.5 < metrics["prepare/packing_efficiency"] <= 1.0
    row = splits["train"][0]
    assert len(row["input_ids"]) <= smoke_params.sequence_len
    assert row["position_ids"].count(0) >= 2
    assert (tmp_path / "prepare" / "manifest.json").exists()
    assert (tmp_path / "prepare" / "tokenizer" / "tokenizer.model").exists()


def _alpaca_file(path, rows: int):
    path.write_text("".join(
        json.dumps({"instruction": f"Return {n} squared.", "input": "", "output": f"def f():\n    return {n} ** 2\n"})
        + "\n" for n in range(rows)
    ))
    return path


def test_prepared_rows_are_cached_by_data_tokenizer_and_params(tmp_path, monkeypatch):
    data = _alpaca_file(tmp_path / "data.jsonl", 30)
    overrides = [f"dataset_prepared_path={tmp_path / 'cache'}", f"datasets=[{{path: {data}, type: alpaca}}]",
                 "dataset_decontamination=off"]
    params = load_params(SMOKE, overrides)
    first = run_prepare(params, None, tmp_path / "a")
    again = run_prepare(params, None, tmp_path / "b")
    assert (first["metrics"]["prepare/cache_hit"], again["metrics"]["prepare/cache_hit"]) == (0.0, 1.0)
    assert first["outputs"]["dataset_dir"] == again["outputs"]["dataset_dir"]
    assert {k: v for k, v in first["metrics"].items() if k != "prepare/cache_hit"} == {
        k: v for k, v in again["metrics"].items() if k != "prepare/cache_hit"}

    other_params = run_prepare(load_params(SMOKE, [*overrides, "sequence_len=128"]), None, tmp_path / "c")
    assert other_params["metrics"]["prepare/cache_hit"] == 0.0
    _alpaca_file(data, 31)
    other_data = run_prepare(params, None, tmp_path / "d")
    assert other_data["metrics"]["prepare/cache_hit"] == 0.0
    assert other_data["metrics"]["prepare/num_samples"] == 31
    assert len({first["outputs"]["dataset_dir"], other_params["outputs"]["dataset_dir"],
                other_data["outputs"]["dataset_dir"]}) == 3


def test_an_interrupted_prepare_leaves_no_cache_entry(tmp_path, monkeypatch):
    import kit.prepare.stage

    data = _alpaca_file(tmp_path / "data.jsonl", 20)
    params = load_params(SMOKE, [f"dataset_prepared_path={tmp_path / 'cache'}",
                                 f"datasets=[{{path: {data}, type: alpaca}}]", "dataset_decontamination=off"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kit.prepare.stage, "pack_splits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(params, None, tmp_path / "a")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert run_prepare(params, None, tmp_path / "b")["metrics"]["prepare/cache_hit"] == 0.0


def test_a_full_disk_names_the_cache_entry_and_leaves_no_part_of_it(tmp_path):
    """A real 1 MB filesystem for the prepared data: the smoke run's rows (about 1.6 MB) do not fit."""
    disk = tmp_path / "disk"
    outcome = stage_on_a_small_disk("prepare", SMOKE, None, disk, size="1m",
                                    overrides=[f"dataset_prepared_path={disk / 'cache'}"])
    assert re.fullmatch(rf"OSError: \[Errno 28\] no space left on the device writing {re.escape(str(disk / 'cache'))}"
                        r"/\w+ \(\d MB free there\); free some space or point output_dir to a larger disk",
                        outcome["error"]), outcome["error"]
    assert [path for path in outcome["left"] if path.startswith("cache")] == ["cache"]  # no entry, no staging folder


def test_a_damaged_cache_entry_is_built_again_saying_so(tmp_path, capsys):
    data = _alpaca_file(tmp_path / "data.jsonl", 20)
    params = load_params(SMOKE, [f"dataset_prepared_path={tmp_path / 'cache'}",
                                 f"datasets=[{{path: {data}, type: alpaca}}]", "dataset_decontamination=off"])
    first = run_prepare(params, None, tmp_path / "a")
    [arrow] = Path(first["outputs"]["dataset_dir"]).glob("train/*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])  # cut in half after it was written
    capsys.readouterr()

    again = run_prepare(params, None, tmp_path / "b")
    assert again["metrics"]["prepare/cache_hit"] == 0.0
    folder = Path(first["outputs"]["dataset_dir"]).parent
    assert f"prepared data in {folder} is damaged (train/{arrow.name} is not as written); building it again" in (
        capsys.readouterr().out)
    rows = load_from_disk(again["outputs"]["dataset_dir"])["train"].num_rows
    assert rows == first["metrics"]["prepare/num_packed_rows"]


def test_test_datasets_are_the_validation_split_and_part_of_the_cache_key(tmp_path):
    train, validation = _alpaca_file(tmp_path / "train.jsonl", 30), _alpaca_file(tmp_path / "validation.jsonl", 7)
    overrides = [f"dataset_prepared_path={tmp_path / 'cache'}", f"datasets=[{{path: {train}, type: alpaca}}]",
                 f"test_datasets=[{{path: {validation}, type: alpaca}}]", "val_set_size=0",
                 "dataset_decontamination=off", "sample_packing=false"]
    manifest = run_prepare(load_params(SMOKE, overrides), None, tmp_path / "a")
    splits = load_from_disk(manifest["outputs"]["dataset_dir"])
    assert (len(splits["train"]), len(splits["validation"])) == (30, 7)
    assert (manifest["metrics"]["prepare/num_train"], manifest["metrics"]["prepare/num_val"]) == (30, 7)
    assert [spec["path"] for spec in manifest["inputs"]["test_datasets"]] == [str(validation)]
    summary = json.loads(Path(manifest["outputs"]["summary"]).read_text())
    assert [(entry["split"], entry["kept"]) for entry in summary["datasets"]] == [("train", 30), ("validation", 7)]

    _alpaca_file(validation, 8)  # other validation data: prepared again, not read from the cache
    again = run_prepare(load_params(SMOKE, overrides), None, tmp_path / "b")
    assert again["metrics"]["prepare/cache_hit"] == 0.0 and again["metrics"]["prepare/num_val"] == 8


def test_a_missing_test_dataset_is_named_before_the_model_loads(tmp_path):
    train = _alpaca_file(tmp_path / "train.jsonl", 3)
    params = load_params(SMOKE, [f"datasets=[{{path: {train}, type: alpaca}}]", "val_set_size=0",
                                 f"test_datasets=[{{path: {tmp_path / 'absent.jsonl'}}}]"])
    with pytest.raises(ValueError, match=r"absent\.jsonl: no such file"):
        run_prepare(params, None, tmp_path / "prepare")
