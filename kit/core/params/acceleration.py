"""Attention kernels, fused kernels and training in several processes: asked for here, honoured where the
machine can (kit.core.hardware decides, and says what it does instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from kit.core.params.base import Strict

# Axolotl's liger plugin keys and the Liger kernel each switches (liger_kernel's argument names).
LIGER_KERNELS = {
    "liger_rope": "rope",
    "liger_rms_norm": "rms_norm",
    "liger_glu_activation": "swiglu",
    "liger_fused_linear_cross_entropy": "fused_linear_cross_entropy",
}


class AccelerationKeys(Strict):
    flash_attention: bool | None = Field(
        None, description="FlashAttention-2 where a CUDA GPU and flash-attn are; else PyTorch SDPA (warns)"
    )
    xformers_attention: bool | None = Field(
        None, description="Axolotl's xformers attention; not supported: PyTorch SDPA runs (warns)"
    )
    local_rank: int | None = Field(
        None, description="Axolotl's; ignored: the launcher sets each process's rank (warns)"
    )
    deepspeed: str | None = Field(None, description="a DeepSpeed JSON config, used where deepspeed and CUDA are")
    fsdp: list[str] | str | None = Field(None, description="transformers' fsdp options, used on several CUDA GPUs")
    fsdp_config: dict[str, Any] | None = Field(None, description="transformers' fsdp_config, with fsdp")
    debug: bool | None = Field(None, description="Axolotl's debug output; not read (warns when true)")
    # Liger's fused Triton kernels: unset means on where they can run.
    liger_rope: bool | None = Field(None, description="Liger's fused rotary embedding; unset: on where Liger runs")
    liger_rms_norm: bool | None = Field(None, description="Liger's fused RMSNorm; unset: on where Liger runs")
    liger_glu_activation: bool | None = Field(None, description="Liger's fused SwiGLU; unset: on where Liger runs")
    liger_fused_linear_cross_entropy: bool | None = Field(
        None, description="Liger's head and loss in one kernel, never holding every logit; unset: on where Liger runs"
    )
    train_num_processes: int | None = Field(
        None, ge=1, description="processes training together (DDP); default: the accelerate config's, else 1"
    )
    train_accelerate_config: str | None = Field(
        None, description="an `accelerate config` file that `accelerate launch` starts training with"
    )

    @field_validator("train_accelerate_config")
    @classmethod
    def _config_is_there(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file {value}")
        return value

    @property
    def num_train_processes(self) -> int:
        """How many processes train: ``train_num_processes``, else the accelerate config's ``num_processes``, else 1."""
        if self.train_num_processes:
            return self.train_num_processes
        if self.train_accelerate_config:
            config = yaml.safe_load(Path(self.train_accelerate_config).read_text()) or {}
            return int(config.get("num_processes") or 1)
        return 1
