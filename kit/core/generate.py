"""Ask the fine-tune: prompts wrapped as training wrapped them, answered greedily by base + adapter."""

from __future__ import annotations

from typing import Any

from kit.core.formats import prompt_text
from kit.core.models import inference_device, load_adapter_base, load_causal_lm, load_tokenizer, with_adapter
from kit.core.params import Params


def decoded_continuation(tokenizer, sequence, prompt_length: int) -> str:
    # Decoding the new tokens alone would lose the space SentencePiece strips from the start of a
    # text: one column of the first line's indentation. Decode all and cut off the decoded prompt.
    text = tokenizer.decode(sequence, skip_special_tokens=True)
    prompt = tokenizer.decode(sequence[:prompt_length], skip_special_tokens=True)
    return text[len(prompt) :]


def load_trained_model(params: Params, trained: dict[str, Any]):
    """(model, tokenizer): the base with the adapter on it, or the full fine-tune, ready to generate.

    The base is loaded unquantized, as evaluate scores the fine-tune and as a merged model is served: for a
    QLoRA adapter the dequantized NF4 base it trained against.
    """
    outputs = trained["outputs"]
    tokenizer = load_tokenizer(outputs["tokenizer_dir"], params)
    if outputs.get("model_dir"):
        model = load_causal_lm(outputs["model_dir"], params, quantize=False)
    else:
        base = load_adapter_base(outputs["base_model"], params, dequantized=params.load_in_4bit)
        model = with_adapter(base, outputs["adapter_dir"], tokenizer)
    return model.to(inference_device()).eval(), tokenizer


def generate_answers(
    params: Params, trained_manifest: dict[str, Any] | None, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """The fine-tune's greedy answer to each prompt, wrapped in the first dataset's training format."""
    import torch
    from transformers import GenerationConfig

    if trained_manifest is None:
        raise ValueError("generate answers with what train made; it needs the train stage's manifest")
    model, tokenizer = load_trained_model(params, trained_manifest)
    texts = [prompt_text(params.datasets[0], tokenizer, prompt) for prompt in prompts]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    tokenizer.padding_side = "left"  # new tokens follow every row's prompt directly
    encoded = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    prompt_length = encoded["input_ids"].shape[1]
    with torch.inference_mode():
        output = model.generate(**encoded, generation_config=config)
    return [decoded_continuation(tokenizer, sequence, prompt_length) for sequence in output]
