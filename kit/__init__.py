"""tunebook: prepare, QLoRA-train, evaluate, merge and quantize code LLMs, one notebook per stage."""
