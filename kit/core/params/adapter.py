"""The adapter trained (Axolotl's LoRA keys); no adapter means a full fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kit.core.params.base import Strict


class AdapterKeys(Strict):
    adapter: Literal["lora", "qlora"] | None = Field(
        None, description="lora, qlora (on a 4-bit base: load_in_4bit), or unset for a full fine-tune"
    )
    lora_model_dir: str | None = Field(
        None, description="Axolotl's adapter to start from; not supported yet: the adapter starts new (warns)"
    )
    lora_r: int = Field(8, ge=1, description="the adapter's rank")
    lora_alpha: int = Field(16, ge=1, description="the adapter's scale is lora_alpha / lora_r")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    lora_target_modules: list[str] | None = Field(
        None, description="the modules adapted, by name; default [q_proj, v_proj]"
    )
    lora_target_linear: bool | None = Field(None, description="adapt every linear layer but the output head")
    lora_fan_in_fan_out: bool | None = Field(
        None, description="the target layers store their weights transposed (GPT-2's Conv1D)"
    )
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head]; "
        "the embeddings and head are added when special_tokens or tokens grow the vocabulary",
    )
    peft_use_dora: bool = Field(False, description="DoRA: the adapter learns each weight's magnitude apart")

    @property
    def lora_targets(self) -> str | list[str]:
        """peft's target_modules: every linear layer for ``lora_target_linear``."""
        if self.lora_target_linear:
            return "all-linear"
        return self.lora_target_modules or ["q_proj", "v_proj"]
