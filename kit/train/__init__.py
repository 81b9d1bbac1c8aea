"""Train: QLoRA, LoRA or full fine-tuning on the prepared rows with transformers' Trainer.

Features and the keys that switch them:
- the adapter (``adapter``: qlora, lora, or none for a full fine-tune; ``lora_r``, ``lora_alpha``,
  ``lora_dropout``, ``lora_target_modules`` / ``lora_target_linear``, ``lora_modules_to_save``,
  ``lora_fan_in_fan_out``, ``peft_use_dora``), on a base loaded in 4 or 8 bits (``load_in_4bit``,
  ``load_in_8bit``);
- packed rows kept apart sample by sample (``sample_packing``, from prepare's manifest);
- the optimisation (``optimizer``, ``learning_rate``, ``lr_scheduler``, ``warmup_steps`` /
  ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``, ``micro_batch_size``,
  ``gradient_accumulation_steps``, ``num_epochs`` / ``max_steps``, ``gradient_checkpointing``, ``bf16``
  / ``fp16`` / ``tf32``, ``liger_kernel``);
- evaluation and checkpoints (``eval_steps``, ``logging_steps``, ``save_steps``, ``save_strategy``),
  resuming from the newest complete checkpoint (``resume_from_checkpoint``);
- several processes with DDP, FSDP or DeepSpeed (``num_train_processes``, ``fsdp``, ``fsdp_config``,
  ``deepspeed``, ``train_accelerate_config``): see ``kit.train.distributed``.

Metrics logged: train/loss, train/learning_rate, train/grad_norm per step; eval/loss; eval/base_loss,
eval/final_loss, train/final_loss, train/steps, train/total_tokens, train/tokens_per_second,
train/runtime_seconds, train/peak_memory_mb.
"""

from kit.train.stage import SUMMARY_METRICS, run_train
from kit.train.views import loss_curves

__all__ = ["SUMMARY_METRICS", "loss_curves", "run_train"]
