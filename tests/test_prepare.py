"""Prepare: prompts as Axolotl renders them, loss masking, and packing that never leaks."""

from __future__ import annotations

import itertools

import torch
from datasets import Dataset, load_from_disk
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM
from trl import pack_dataset

from kit.models import load_tokenizer, resolve_base_model
from kit.params import DatasetSpec
from kit.prepare import IGNORE_INDEX, render, run_prepare, tokenize, with_position_ids


def test_alpaca_prompt_is_axolotls_text():
    prompt, completion = render({"instruction": "Add.", "input": "", "output": "x + 1"}, DatasetSpec(path="d"))
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd.\n\n### Response:\n"
    )
    assert completion == "x + 1"
    prompt, _ = render({"instruction": "Add.", "input": "2", "output": "3"}, DatasetSpec(path="d"))
    assert "paired with an input" in prompt and prompt.endswith("### Input:\n2\n\n### Response:\n")


def test_loss_masks_the_prompt_and_trains_the_response_and_eos(smoke_params):
    tokenizer = load_tokenizer(resolve_base_model(smoke_params), smoke_params)
    prompt, completion = "### Instruction:\nAdd one.\n\n### Response:\n", "def f(x):\n    return x + 1\n"
    sample = tokenize(prompt, completion, tokenizer, train_on_inputs=False)
    trained = [token for token, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX]
    assert sample["input_ids"][0] == tokenizer.bos_token_id and sample["input_ids"][-1] == tokenizer.eos_token_id
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]).strip() == completion.strip()
    everything = tokenize(prompt, completion, tokenizer, train_on_inputs=True)
    assert everything["labels"][1:] == everything["input_ids"][1:] and everything["labels"][0] == IGNORE_INDEX


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=60))
def test_packing_keeps_every_sample_whole_once_within_the_row_length(lengths):
    samples = [[index] * length for index, length in enumerate(lengths)]
    dataset = Dataset.from_dict({"input_ids": samples, "labels": samples})
    packed = pack_dataset(dataset, 64, strategy="bfd", map_kwargs={"batch_size": len(dataset)}).map(with_position_ids)
    seen = []
    for row in packed:
        assert len(row["input_ids"]) <= 64 and len(row["position_ids"]) == len(row["input_ids"])
        starts = [at for at, position in enumerate(row["position_ids"]) if position == 0] + [len(row["input_ids"])]
        seen += [row["input_ids"][start:end] for start, end in itertools.pairwise(starts)]
    assert sorted(seen) == sorted(samples)
    # Best fit decreasing never needs more rows than twice the optimum's lower bound.
    assert len(packed) <= 2 * -(-sum(lengths) // 64)


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
    assert metrics["prepare/samples_loaded"] == smoke_params.embedded_num_samples
    assert metrics["prepare/train_rows"] == len(splits["train"]) < metrics["prepare/train_samples"]
    assert 0.5 < metrics["prepare/packing_efficiency"] <= 1.0
    row = splits["train"][0]
    assert len(row["input_ids"]) <= smoke_params.sequence_len
    assert row["position_ids"].count(0) >= 2
    assert (tmp_path / "prepare" / "manifest.json").exists()
    assert (tmp_path / "prepare" / "tokenizer" / "tokenizer.model").exists()
