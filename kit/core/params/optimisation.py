"""How training steps: batches, the optimizer and its schedule, precision, checkpoints (Axolotl's keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kit.core.params.base import Strict

# Paged optimizers page their states between GPU and CPU memory; where no CUDA GPU is, the same optimizer
# runs unpaged (kit.core.hardware).
PAGED_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "paged_lion_32bit", "paged_lion_8bit")
# Axolotl's optimizer names, as handed to transformers' TrainingArguments(optim=...).
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_hf",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "lion_32bit",
    *PAGED_OPTIMIZERS,
)


class OptimisationKeys(Strict):
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro batches summed into one optimizer step")
    micro_batch_size: int = Field(1, ge=1, description="rows per process per forward pass")
    num_epochs: float = Field(1, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (wins over num_epochs)")
    optimizer: Literal[OPTIMIZERS] = Field(  # type: ignore[valid-type]
        "adamw_torch", description="transformers' optimizer name; paged ones run unpaged without CUDA (warns)"
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="the learning rate's schedule after warmup"
    )
    learning_rate: float = Field(2e-4, gt=0, description="the peak learning rate")
    warmup_steps: int | None = Field(None, ge=0, description="steps of linear warmup")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="warmup as a fraction of the steps")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradients clipped to this norm; 0 clips nothing")
    bf16: bool | Literal["auto"] = Field(
        False, description="train in bfloat16 on a CUDA GPU (auto: where it supports it); float32 on a CPU (warns)"
    )
    fp16: bool = Field(False, description="train in float16 on a CUDA GPU; float32 on a CPU (warns)")
    tf32: bool = Field(False, description="TensorFloat-32 matrix products on an Ampere or newer GPU")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, about a third more time"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Axolotl's early stopping; not supported yet: training runs all its steps (warns)"
    )
    resume_from_checkpoint: str | None = Field(
        None, description="a checkpoint folder, or `auto` for the newest under <run>/train/checkpoints"
    )
    logging_steps: int | None = Field(None, ge=1, description="steps between logged losses; default 10")
    eval_steps: float | None = Field(
        None, gt=0, description="steps between validation losses: a count, or a fraction of the run (0.01)"
    )
    save_strategy: Literal["no", "steps", "epoch"] | None = Field(
        None, description="when checkpoints are written; default every epoch"
    )
    save_steps: float | None = Field(
        None, gt=0, description="steps between checkpoints (save_strategy: steps): a count or a fraction of the run"
    )
    seed: int = Field(42, description="the seed of the split, the shuffle, the adapter's initial weights and sampling")

    @field_validator("save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML reads a bare `no` as false.
        return "no" if value is False else value

    @model_validator(mode="after")
    def _counts_or_fractions(self) -> OptimisationKeys:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("warmup_steps and warmup_ratio are both set; choose one")
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        for key in ("eval_steps", "save_steps"):
            value = getattr(self, key)
            if value is not None and value >= 1 and value != int(value):
                raise ValueError(f"{key}: a count (>= 1) must be a whole number; a fraction must be < 1")
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps
