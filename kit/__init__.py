"""tunebook: prepare, QLoRA-train, evaluate, merge and quantize code LLMs, one notebook per stage."""

import warnings

# peft 0.21 still calls transformers 5's deprecated gradient-checkpointing names: a FutureWarning on
# every QLoRA load that nothing in a user's params can change.
warnings.filterwarnings(
    "ignore",
    message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable)` is deprecated",
    category=FutureWarning,
)
