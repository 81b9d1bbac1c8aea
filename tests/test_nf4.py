"""4-bit layers compute what their quantized weights say, in train and eval mode, on every CPU, and
stay as loaded; the guard stops a base that does not (kit.core.nf4)."""

from __future__ import annotations

import os
import subprocess
import sys

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from transformers import LlamaConfig, LlamaForCausalLM, TrainerState

from kit.core import nf4
from kit.core.models import load_causal_lm
from kit.train.stage import nf4_guard


def _nf4_linear(seed: int = 0) -> bnb.nn.Linear4bit:
    """256 -> 512, NF4 with double quantization, float32 compute: QLoRA's layer, weights ~ N(0, 0.02),
    as kit loads it (repacking switched off)."""
    torch.manual_seed(seed)
    weight = torch.randn(512, 256) * 0.02
    layer = bnb.nn.Linear4bit(256, 512, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                     module=layer)
    layer.bias.data = torch.randn(512) * 0.02
    return nf4.keep_unpacked(layer.to("cpu"))  # .to quantizes


def _as_bitsandbytes_builds_it_on_an_avx512_bf16_cpu(layer: bnb.nn.Linear4bit) -> bnb.nn.Linear4bit:
    # What bitsandbytes sets in Linear4bit.__init__ from the CPU (has_avx512bf16()), as on an AMD Zen 4.
    layer.support_avx512bf16_for_cpu = True
    return layer


def _dequantized_output(layer: bnb.nn.Linear4bit, inputs: torch.Tensor) -> torch.Tensor:
    weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return inputs @ weight.T + layer.bias


@pytest.mark.parametrize("avx512_bf16", [False, True], ids=["this-cpu", "avx512-bf16-cpu"])
def test_an_nf4_linear_computes_its_dequantized_weights_in_both_modes_and_is_not_changed(avx512_bf16):
    layer = _nf4_linear()
    if avx512_bf16 or bnb.functional.has_avx512bf16():
        _as_bitsandbytes_builds_it_on_an_avx512_bf16_cpu(layer)
    nf4.keep_unpacked(layer)
    inputs = torch.randn(8, 256, generator=torch.Generator().manual_seed(1))
    expected = _dequantized_output(layer, inputs).detach()
    loaded = nf4.snapshot(layer)

    layer.train()
    trained_mode = layer(inputs.clone().requires_grad_()).detach()
    layer.eval()
    with torch.no_grad():
        eval_mode = layer(inputs)
    layer.state_dict()  # what every checkpoint save calls
    layer.train()
    after = layer(inputs.clone().requires_grad_()).detach()

    for output in (trained_mode, eval_mode, after):
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    assert nf4.snapshot(layer) == loaded
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    nf4.check_nf4_base(layer, loaded, "in this test")


def test_the_guard_names_a_layer_that_bitsandbytes_repacked_in_place():
    model = torch.nn.Sequential(_as_bitsandbytes_builds_it_on_an_avx512_bf16_cpu(_nf4_linear()))
    loaded = nf4.snapshot(model)
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 256))  # bitsandbytes' eval path: the weight is repacked in place
    with pytest.raises(nf4.NF4BaseError, match=r"changed after evaluation: layer 0's .*repacked it in place"):
        nf4.check_nf4_base(model, loaded, "after evaluation")


def test_the_guard_stops_a_layer_that_bitsandbytes_would_repack_before_anything_runs_it():
    model = torch.nn.Sequential(_as_bitsandbytes_builds_it_on_an_avx512_bf16_cpu(_nf4_linear()))
    loaded = nf4.snapshot(model)
    with pytest.raises(nf4.NF4BaseError, match=r"unsafe after loading: bitsandbytes would repack layer 0"):
        nf4.check_nf4_base(model, loaded, "after loading")
    assert nf4.snapshot(model) == loaded  # the guard itself ran nothing that repacks


def test_the_guard_names_a_layer_whose_output_is_not_its_weights():
    model = torch.nn.Sequential(_nf4_linear())
    loaded = nf4.snapshot(model)
    model[0].forward = lambda inputs: torch.zeros(*inputs.shape[:-1], 512)  # a kernel gone wrong
    with pytest.raises(nf4.NF4BaseError, match=r"wrong before merging: layer 0 in eval mode is off"):
        nf4.check_nf4_base(model, loaded, "before merging")


def test_training_stops_where_the_frozen_base_changes_after_an_evaluation_or_a_save():
    layer = _nf4_linear()
    model = torch.nn.Sequential(layer)
    guard = nf4_guard(model)  # checks the base as loaded: right
    guard.on_evaluate(None, TrainerState(global_step=3), None)
    layer.weight.quant_state.state2.absmax.mul_(1.01)  # as bitsandbytes' approximate un-repacking on a save did
    with pytest.raises(nf4.NF4BaseError, match="changed after saving checkpoint-4"):
        guard.on_save(None, TrainerState(global_step=4), None)


def test_a_4bit_base_kit_loads_never_repacks_and_saving_it_changes_nothing(tmp_path, smoke_params):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    model = load_causal_lm(str(tmp_path / "tiny"), smoke_params, quantize=True)
    layers = nf4.nf4_layers(model)
    assert len(layers) == 14 and not any(layer.support_avx512bf16_for_cpu for layer in layers.values())
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    loaded = nf4.snapshot(model)
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(tokens).logits
        model.state_dict()
        again = model(tokens).logits
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert nf4.snapshot(model) == loaded


@pytest.mark.parametrize("offline", ["1", "0"], ids=["offline", "online"])
def test_bitsandbytes_loaded_through_kit_says_nothing(offline):
    """On AVX-512 BF16 CPUs bitsandbytes asks the Hub for a kernel kit never runs, and logs its failure."""
    done = subprocess.run([sys.executable, "-c", "import kit.core.nf4, bitsandbytes"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": offline})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
