"""4-bit (NF4) bases that stay the model QLoRA trains against, on every CPU, and the check that proves it.

bitsandbytes 0.50.2 (the newest release) on a CPU with AVX-512 BF16: ``Linear4bit.forward`` in eval
mode with an input that needs no grad repacks the layer's weight in place for a fused bfloat16 CPU
kernel (``_convert_weight_packed_for_cpu``). That path returns wrong values, replaces the
double-quantized ``absmax`` by a float copy, and is undone only approximately by ``state_dict()``
(so every checkpoint save moves the weights); a train-mode forward after it runs through a kernel
without autograd. The train-mode path (dequantize, then a plain matmul) is right. No release fixes
it, and a version bound would give up CPU QLoRA, so kit switches the repacking off in each layer
(``support_avx512bf16_for_cpu``, which bitsandbytes sets from the CPU when it builds the layer):
every forward then takes the dequantizing path.

``check_nf4_base`` is the guard: it stops training or merging, naming the layer and the cause, when a
4-bit layer's quantization state differs from its snapshot, its repacking is still switched on, or
its output (eval and train mode) disagrees with its dequantized weights.
"""

from __future__ import annotations

from typing import Any

from kit.core.notices import drop_notice

# Numbers a layer's snapshot holds: the byte sums of its tensors and whether it was repacked.
Signature = tuple[Any, ...]
CHECKSUM_CHUNK = 1 << 24
# Outputs are compared relative to their largest magnitude: matmul order alone moves float32 by ~1e-6
# (TF32 on a GPU by ~1e-3) and half precision by ~1e-2; the repacked CPU path was off by ~5x the output.
RELATIVE_TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2, "float16": 5e-2}
PROBE_ROWS = 4


class NF4BaseError(RuntimeError):
    """A 4-bit base no longer computes what its quantized weights say."""


# Notices that ask nothing of the user. bitsandbytes, at import on AVX-512 BF16 CPUs, asks the Hub (through
# ``kernels``) for a fused kernel kit never runs (see above) and logs that it could not have it; offline,
# ``kernels`` first logs that it skipped the publisher check. transformers says in which dtype
# ``dequantize`` casts, which kit chose (merge_dtype or compute dtype).
drop_notice("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")
drop_notice("kernels._internals.hf_hub", "Skipping publisher trust check")
drop_notice("transformers.integrations.bitsandbytes", "The modules are dequantized in")


def nf4_layers(model) -> dict[str, Any]:
    import bitsandbytes as bnb

    return {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}


def keep_unpacked(model):
    """Switch bitsandbytes' in-place CPU repacking off in every 4-bit layer (module docstring)."""
    for layer in nf4_layers(model).values():
        layer.support_avx512bf16_for_cpu = False
    return model


def _checksum(tensor) -> tuple[int, int]:
    """The sum and the position-weighted sum of a tensor's bytes, on its own device: cheap for a 7B base
    on a GPU, and a byte moved elsewhere (a repacking) changes the second."""
    import torch

    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    total = weighted = 0
    for start in range(0, data.numel(), CHECKSUM_CHUNK):
        chunk = data[start : start + CHECKSUM_CHUNK].to(torch.int64)
        positions = torch.arange(start, start + chunk.numel(), device=chunk.device) % 65521 + 1
        total += int(chunk.sum())
        weighted += int((chunk * positions).sum())
    return total, weighted


def _quant_state(layer):
    return layer.weight.quant_state


def _signature(layer) -> Signature:
    state = _quant_state(layer)
    tensors = [layer.weight.data, state.absmax]
    if state.nested:
        tensors += [state.state2.absmax, state.offset]
    repacked = bool(getattr(state, "packing_format_for_cpu", False))
    return (repacked, state.nested, tuple(state.shape), *(_checksum(tensor) for tensor in tensors))


def snapshot(model) -> dict[str, Signature]:
    """Each 4-bit layer's quantization state, to check the base against later."""
    return {name: _signature(layer) for name, layer in nf4_layers(model).items()}


def _compute_dtype(layer):
    import torch

    return layer.compute_dtype or torch.float32


def _disagreement(layer, training: bool) -> float:
    """Largest difference between the layer's output and ``x @ dequantize(W).T + b``, relative to the
    output's largest magnitude, in train mode (input needing grad) or eval mode under no_grad."""
    import torch
    from bitsandbytes.functional import dequantize_4bit

    weight = layer.weight
    dtype = _compute_dtype(layer)
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(PROBE_ROWS, layer.in_features, generator=generator).to(weight.device, dtype)
    with torch.no_grad():
        dequantized = dequantize_4bit(weight.data, _quant_state(layer)).to(dtype)
        expected = torch.nn.functional.linear(probe, dequantized, None if layer.bias is None else layer.bias.to(dtype))
    was_training = layer.training
    layer.train(training)
    try:
        if training:
            with torch.enable_grad():
                actual = layer(probe.clone().requires_grad_()).detach()
        else:
            with torch.no_grad():
                actual = layer(probe)
    finally:
        layer.train(was_training)
    scale = float(expected.abs().max()) or 1.0
    return float((actual.to(dtype) - expected).abs().max()) / scale


def check_nf4_base(model, reference: dict[str, Signature], when: str) -> None:
    """Raise ``NF4BaseError`` naming the first 4-bit layer whose quantization state is no longer
    ``reference``'s, that bitsandbytes would repack on its next eval forward, or whose output disagrees
    with its dequantized weights; ``when`` says at which point. The state is checked first: it names
    the cause, and probing a repacked layer's output goes through the kernel that broke it."""
    layers = nf4_layers(model)
    for name, layer in layers.items():
        if _signature(layer) != reference.get(name):
            repacked = getattr(_quant_state(layer), "packing_format_for_cpu", False)
            cause = (
                "bitsandbytes repacked it in place for its AVX-512 BF16 CPU kernel"
                if repacked
                else "its weight or quantization statistics changed in place"
            )
            raise NF4BaseError(
                f"4-bit base changed {when}: layer {name}'s quantization state is not the one loaded ({cause}); "
                "the frozen base QLoRA trains against must not change"
            )
    for name, layer in layers.items():
        # Probing such a layer in eval mode would itself repack it.
        if getattr(layer, "support_avx512bf16_for_cpu", False) and layer.weight.device.type == "cpu":
            raise NF4BaseError(
                f"4-bit base unsafe {when}: bitsandbytes would repack layer {name} in place on its next eval "
                "forward on this AVX-512 BF16 CPU; load 4-bit models with kit.core.models.load_causal_lm, or call "
                "kit.core.nf4.keep_unpacked on the model"
            )
    for name, layer in layers.items():
        for training in (False, True):
            measured = _disagreement(layer, training)
            tolerance = RELATIVE_TOLERANCE[str(_compute_dtype(layer)).removeprefix("torch.")]
            if measured > tolerance:
                mode = "train" if training else "eval"
                raise NF4BaseError(
                    f"4-bit base is wrong {when}: layer {name} in {mode} mode is off from its dequantized "
                    f"weights by {measured:.3g} of its output (tolerance {tolerance:g}); bitsandbytes' 4-bit "
                    "kernels on this machine do not compute what the weights say"
                )
