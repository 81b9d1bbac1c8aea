"""Loading base models and tokenizers: a GGUF file, or anything from_pretrained reads."""

from __future__ import annotations

from pathlib import Path

from kit.core import nf4
from kit.core.gguf_base import gguf_file, hf_folder_from_gguf
from kit.core.hardware import training_setup
from kit.core.params import Params


def resolve_base_model(params: Params) -> str:
    """A from_pretrained name or folder; a GGUF file is turned into a folder once (or found in the cache)."""
    gguf = gguf_file(params.base_model)
    return str(hf_folder_from_gguf(gguf)) if gguf else params.base_model


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_tokenizer(name_or_path: str, params: Params):
    """The tokenizer, with a pad token (Llama has none: its unk serves) and the params' tokens."""
    from transformers import AutoTokenizer

    source = params.tokenizer_config or name_or_path
    if params.tokenizer_type and Path(source).is_dir():
        import transformers

        tokenizer_class = getattr(transformers, params.tokenizer_type)
    else:
        tokenizer_class = AutoTokenizer
    tokenizer = tokenizer_class.from_pretrained(source, trust_remote_code=params.trust_remote_code)
    if params.special_tokens:
        tokenizer.add_special_tokens(dict(params.special_tokens))
    if params.tokens:
        tokenizer.add_tokens(list(params.tokens))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, params: Params, quantize: bool, dtype: str | None = None):
    """The base model; with ``quantize``, in NF4 (QLoRA) or 8-bit as the params say."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    setup = training_setup(params)
    dtype = dtype or setup.compute_dtype
    quantization = None
    if quantize and params.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
        )
    elif quantize and params.load_in_8bit:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=torch_dtype(dtype),
        quantization_config=quantization,
        attn_implementation=setup.attention,
        trust_remote_code=params.trust_remote_code,
    )
    return nf4.keep_unpacked(model) if quantize and params.load_in_4bit else model


def load_adapter_base(name_or_path: str, params: Params, dequantized: bool, dtype: str | None = None):
    """The unquantized base a LoRA adapter goes on (to run or to merge into).

    ``dequantized``: the base quantized to NF4 as QLoRA training loaded it, then every Linear4bit replaced
    by a plain Linear holding its dequantized weight (transformers' ``dequantize``, on bitsandbytes):
    the weights the adapter trained against, so base + adapter is the model as trained
    (reports/merge.md). Otherwise the original full-precision weights.
    """
    if dequantized:
        quantized = load_causal_lm(name_or_path, params, quantize=True, dtype=dtype)
        nf4.check_nf4_base(quantized, nf4.snapshot(quantized), "before it is dequantized")
        return quantized.dequantize(dtype=torch_dtype(dtype or training_setup(params).compute_dtype))
    return load_causal_lm(name_or_path, params, quantize=False, dtype=dtype)


def fit_embeddings_to_tokenizer(model, tokenizer):
    """Grow the embeddings for tokens the params added; never shrink a vocabulary padded for speed."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def with_adapter(base, adapter_dir: str, tokenizer):
    """The base with a trained LoRA adapter on it; training grew the embeddings the adapter saved."""
    from peft import PeftModel

    return PeftModel.from_pretrained(fit_embeddings_to_tokenizer(base, tokenizer), adapter_dir)


def inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def save_tokenizer(tokenizer, source: str, folder: Path) -> Path:
    """Save the tokenizer, keeping the SentencePiece model beside it.

    transformers 5 writes only tokenizer.json; llama.cpp's GGUF converter reads the ``tokenizer.model``
    scores and piece types, so it is copied from the source folder where there is one, and the tokens
    added on top of it from ``added_tokens.json``, which transformers 5 no longer writes.
    """
    import json
    import shutil

    tokenizer.save_pretrained(str(folder))
    sentencepiece_model = Path(source) / "tokenizer.model"
    if sentencepiece_model.is_file():
        shutil.copyfile(sentencepiece_model, folder / "tokenizer.model")
        from sentencepiece import SentencePieceProcessor

        pieces = SentencePieceProcessor(model_file=str(sentencepiece_model)).get_piece_size()
        added = {token: token_id for token, token_id in tokenizer.get_added_vocab().items() if token_id >= pieces}
        if added:
            (folder / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False))
    return folder
