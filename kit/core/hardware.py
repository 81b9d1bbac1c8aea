"""What this machine can do, probed once, and what training runs with on it.

The params say what a run asks for (``bf16``, ``optimizer``, ``liger_*``, ``flash_attention``, ``fsdp``,
``deepspeed``); ``training_setup`` says what it gets here, and ``environment_warnings`` says where the two
differ. Both take a ``Machine``, so a CPU can say what a GPU would pick.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

from kit.core.params import LIGER_KERNELS, Params, unhonoured_key_warnings

# Where no CUDA GPU is, a paged optimizer runs unpaged (transformers has no unpaged 32-bit bitsandbytes
# AdamW; torch's AdamW is the same algorithm).
UNPAGED = {
    "paged_adamw_32bit": "adamw_torch",
    "paged_adamw_8bit": "adamw_8bit",
    "paged_lion_32bit": "lion_32bit",
    "paged_lion_8bit": "lion_8bit",
}
# Axolotl's names that transformers 5 no longer has, and the name of the same algorithm there.
RENAMED_OPTIMIZERS = {"adamw_hf": "adamw_torch"}
# The same algorithm as one fused kernel per step, where a CUDA GPU runs it.
FUSED_ON_CUDA = {"adamw_torch": "adamw_torch_fused"}


@dataclass(frozen=True)
class Machine:
    """What training can use here."""

    cuda_devices: int
    device_name: str
    bf16: bool
    flash_attn: bool
    liger_kernel: bool
    deepspeed: bool

    @property
    def cuda(self) -> bool:
        return self.cuda_devices > 0


@functools.cache
def this_machine() -> Machine:
    """This machine, probed once per process."""
    import torch

    def installed(package: str) -> bool:
        return importlib.util.find_spec(package) is not None

    cuda = torch.cuda.is_available()
    return Machine(
        cuda_devices=torch.cuda.device_count() if cuda else 0,
        device_name=torch.cuda.get_device_name() if cuda else "cpu",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        flash_attn=installed("flash_attn"),
        liger_kernel=installed("liger_kernel"),
        deepspeed=installed("deepspeed"),
    )


@dataclass(frozen=True)
class TrainingSetup:
    """What training runs with: the params' asks, as far as the machine honours them."""

    device: str
    attention: Literal["flash_attention_2", "sdpa"]
    compute_dtype: Literal["float32", "float16", "bfloat16"]
    optimizer: str
    liger_kernels: dict[str, bool]
    fsdp: bool
    deepspeed: bool
    tf32: bool | None

    def choices(self, params: Params) -> dict[str, str]:
        """The picks as the train run's tags."""
        kernels = [name for name, on in self.liger_kernels.items() if on]
        return {
            "train.device": self.device,
            "train.attention": self.attention,
            "train.compute_dtype": self.compute_dtype,
            "train.optimizer": self.optimizer + ("" if self.optimizer == params.optimizer
                                                 else f" (instead of {params.optimizer})"),
            "train.liger_kernels": ", ".join(kernels) or "none",
        }


def training_setup(params: Params, machine: Machine | None = None) -> TrainingSetup:
    """What ``params`` train with on ``machine`` (this one by default)."""
    machine = machine or this_machine()
    return TrainingSetup(
        device=machine.device_name,
        # SDPA keeps packed rows apart without a mask, as FlashAttention-2 does with position ids.
        attention="flash_attention_2" if params.flash_attention and machine.cuda and machine.flash_attn else "sdpa",
        compute_dtype=_compute_dtype(params, machine),
        optimizer=_optimizer(params, machine),
        liger_kernels=_liger_kernels(params, machine),
        fsdp=bool(params.fsdp) and machine.cuda and params.num_train_processes > 1,
        deepspeed=bool(params.deepspeed) and machine.cuda and machine.deepspeed,
        tf32=params.tf32 if machine.cuda else None,
    )


def _compute_dtype(params: Params, machine: Machine) -> Literal["float32", "float16", "bfloat16"]:
    """bf16/fp16 where a CUDA GPU can honour them (``bf16: auto``: where it supports bf16), else fp32."""
    if not machine.cuda:
        return "float32"
    if params.bf16 is True or (params.bf16 == "auto" and machine.bf16):
        return "bfloat16"
    return "float16" if params.fp16 else "float32"


def _optimizer(params: Params, machine: Machine) -> str:
    """transformers' name of the optimizer that runs: Axolotl's, unpaged without CUDA, fused AdamW on CUDA,
    adamw_hf renamed."""
    if not machine.cuda:
        return UNPAGED.get(params.optimizer) or RENAMED_OPTIMIZERS.get(params.optimizer, params.optimizer)
    name = RENAMED_OPTIMIZERS.get(params.optimizer, params.optimizer)
    return FUSED_ON_CUDA.get(name, name)


def _liger_kernels(params: Params, machine: Machine) -> dict[str, bool]:
    """Liger's kernels, each on unless its key says false, where a CUDA GPU and liger-kernel are; else {}."""
    if not (machine.cuda and machine.liger_kernel):
        return {}
    kernels = {kernel: getattr(params, key) is not False for key, kernel in LIGER_KERNELS.items()}
    # The fused linear cross entropy replaces the plain one; both on would compute the loss twice.
    return {**kernels, "cross_entropy": False} if any(kernels.values()) else {}


def environment_warnings(params: Params, machine: Machine | None = None) -> list[str]:
    """Keys understood but not honoured here (this machine, or this version), and what happens instead."""
    machine = machine or this_machine()
    setup = training_setup(params, machine)
    warnings = unhonoured_key_warnings(params)
    if params.flash_attention and setup.attention != "flash_attention_2":
        why = "no CUDA GPU here" if not machine.cuda else "flash-attn is not installed"
        warnings.append(f"flash_attention: {why}; using PyTorch SDPA attention instead")
    if params.optimizer in UNPAGED and not machine.cuda:
        warnings.append(f"optimizer: {params.optimizer} pages GPU memory; using {setup.optimizer} on this CPU")
    if params.optimizer in FUSED_ON_CUDA and machine.cuda:
        warnings.append(f"optimizer: {params.optimizer} runs as {setup.optimizer} on this GPU, "
                        "the same algorithm in one fused kernel")
    if params.optimizer in RENAMED_OPTIMIZERS:
        warnings.append(f"optimizer: transformers 5 has no {params.optimizer}; using {setup.optimizer}, the same "
                        "algorithm")
    liger_asked = [key for key in LIGER_KERNELS if getattr(params, key)]
    if liger_asked and not setup.liger_kernels:
        warnings.append(f"{liger_asked[0]}: Liger's kernels need a CUDA GPU and the liger-kernel package "
                        "(the gpu extra); training runs without them")
    if params.bf16 is True and not machine.cuda:
        warnings.append("bf16: no CUDA GPU here; training in float32 on the CPU")
    if params.fp16 and not machine.cuda:
        warnings.append("fp16: no CUDA GPU here; training in float32 on the CPU")
    if params.deepspeed and not setup.deepspeed:
        warnings.append("deepspeed: needs the deepspeed package and a CUDA GPU; training runs without DeepSpeed")
    if params.fsdp and not setup.fsdp:
        warnings.append("fsdp: needs several processes on CUDA GPUs; training runs without FSDP (DDP where several)")
    hub_unavailable = hub_unavailable_reason()
    if params.hub_model_id and hub_unavailable:
        warnings.append(f"hub_model_id: {hub_unavailable}; the merged model is not pushed")
    return warnings


def hub_unavailable_reason() -> str | None:
    """Why nothing can be pushed to the Hugging Face Hub from here, or None where it can."""
    from huggingface_hub import constants, get_token

    # Read now, not at import as huggingface_hub does, so a notebook can change it before merging.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES:
        return "HF_HUB_OFFLINE is set"
    if get_token() is None:
        return "no Hugging Face token here (`hf auth login`, or set HF_TOKEN)"
    return None
