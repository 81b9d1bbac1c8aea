"""Train: QLoRA for real on a 4-bit NF4 base, and packed batches that train as unpacked ones do."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bitsandbytes as bnb
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kit.formats import IGNORE_INDEX
from kit.models import load_tokenizer
from kit.params import load_params
from kit.prepare import run_prepare
from kit.train import PackedRowsCollator, _build_model, optimizer_name, run_train

from .conftest import SMOKE


def test_qlora_puts_lora_on_a_4bit_base_and_trains_only_the_adapter(smoke_params):
    from kit.models import resolve_base_model

    base = resolve_base_model(smoke_params)
    model = _build_model(smoke_params, base, load_tokenizer(base, smoke_params))
    four_bit = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * smoke_params.embedded_num_layers  # q k v o gate up down
    assert four_bit[0].weight.quant_type == "nf4"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_run_train_fits_the_adapter_and_logs_its_curves(tmp_path):
    params = load_params(SMOKE, [f"output_dir={tmp_path}", "max_steps=12", "eval_steps=6", "logging_steps=2"])
    trained = run_train(params, run_prepare(params, None, tmp_path / "prepare"), tmp_path / "train")
    outputs, metrics = trained["outputs"], trained["metrics"]
    assert (tmp_path / "train" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "train" / "adapter" / "tokenizer.model").exists()
    assert metrics["train/steps"] == 12 and math.isfinite(metrics["train/final_loss"])
    history = json.loads(Path(outputs["log_history"]).read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [entry["step"] for entry in history if "eval_loss" in entry][:2] == [6, 12]


def test_a_packed_batch_has_the_loss_of_its_samples_unpacked():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    samples = [torch.randint(3, 64, (length,)).tolist() for length in (6, 9, 4)]
    labels = [[IGNORE_INDEX] + sample[1:] for sample in samples]
    packed = PackedRowsCollator(pad_token_id=0, packed=True)([
        {"input_ids": samples[0] + samples[1], "labels": labels[0] + labels[1],
         "position_ids": list(range(6)) + list(range(9))},
        {"input_ids": samples[2], "labels": labels[2], "position_ids": list(range(4))},
    ])
    assert "attention_mask" not in packed
    unpacked = PackedRowsCollator(pad_token_id=0, packed=False)(
        [{"input_ids": sample, "labels": label} for sample, label in zip(samples, labels)]
    )
    with torch.no_grad():
        packed_loss = model(**packed, use_cache=False).loss
        unpacked_loss = model(**unpacked, use_cache=False).loss
    torch.testing.assert_close(packed_loss, unpacked_loss)


def test_paged_optimizers_fall_back_on_a_cpu():
    params = load_params(SMOKE, ["optimizer=paged_adamw_32bit"])
    assert optimizer_name(params) == ("paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch")
