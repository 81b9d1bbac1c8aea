"""A Hugging Face Llama-family or Qwen2 folder written as GGUF, the file llama.cpp loads and quantizes.

Covers what this kit merges: ``LlamaForCausalLM`` or ``MistralForCausalLM`` safetensors with a
SentencePiece ``tokenizer.model`` (Code Llama, Llama 2, Mistral 7B, the embedded model), and
``Qwen2ForCausalLM`` (Qwen2, Qwen2.5, Qwen2.5-Coder) with its byte-level BPE ``tokenizer.json``.
Tensors are streamed one at a time, so a 7B model is converted without holding it all in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kit.notices import drop_notice

# gguf reads Llama's pair template ("<s> A <s> B") and says it has no separator token: llama.cpp never
# encodes pairs for a causal LM, so the notice asks nothing of the user.
drop_notice("gguf.vocab", "Unknown separator token")


@dataclass(frozen=True)
class ArchitectureLayout:
    """How one Hugging Face architecture maps onto llama.cpp."""

    gguf_arch: gguf.MODEL_ARCH
    tokenizer: str  # "sentencepiece" (tokenizer.model) or "byte-level-bpe" (tokenizer.json)
    # llama.cpp's llama rotates adjacent pairs of q/k dimensions, Hugging Face the two halves of a
    # head; its qwen2 rotates halves (NeoX style) as Hugging Face does and needs no reordering.
    permute_rotary_rows: bool


ARCHITECTURES = {
    "LlamaForCausalLM": ArchitectureLayout(gguf.MODEL_ARCH.LLAMA, "sentencepiece", permute_rotary_rows=True),
    "MistralForCausalLM": ArchitectureLayout(gguf.MODEL_ARCH.LLAMA, "sentencepiece", permute_rotary_rows=True),
    "Qwen2ForCausalLM": ArchitectureLayout(gguf.MODEL_ARCH.QWEN2, "byte-level-bpe", permute_rotary_rows=False),
}
# out_type -> (general.file_type, GGML type of 2-D weights); 1-D tensors (norms, biases) stay f32, as
# llama.cpp keeps them: they are tiny and sensitive to rounding.
OUT_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}
# SentencePiece's piece types (sentencepiece_model.proto) as GGUF token types.
PIECE_TOKEN_TYPES = {
    1: gguf.TokenType.NORMAL,
    2: gguf.TokenType.UNKNOWN,
    3: gguf.TokenType.CONTROL,
    4: gguf.TokenType.USER_DEFINED,
    5: gguf.TokenType.UNUSED,
    6: gguf.TokenType.BYTE,
}
# Rows of a vocabulary larger than the tokenizer (padded for speed) are never produced or predicted.
PADDING_SCORE = -10000.0
# Tokens added on top of the SentencePiece model are matched whole before SentencePiece runs.
ADDED_TOKEN_SCORE = -1000.0
# Qwen2's pre-tokenizer split (its tokenizer.json), which llama.cpp implements under the name "qwen2".
QWEN2_PRE_TOKENIZER_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class _PlannedTensor:
    gguf_name: str
    hf_name: str
    shard: Path
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return int(np.prod(self.shape)) // block_size * block_bytes


def export_gguf(model_dir: Path, out_path: Path, out_type: str = "f16") -> Path:
    """Write ``model_dir`` (config.json, safetensors, tokenizer) as a GGUF file of ``out_type``."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type {out_type!r}: GGUF export writes {', '.join(OUT_TYPES)}; quantize from f16")
    config = read_convertible_config(model_dir)
    layout = ARCHITECTURES[config["architectures"][0]]
    file_type, weight_type = OUT_TYPES[out_type]
    plan = _plan_tensors(model_dir, config, layout, weight_type)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[layout.gguf_arch])
    try:
        _add_hyperparameters(writer, config, file_type)
        if layout.tokenizer == "sentencepiece":
            _add_sentencepiece_vocabulary(writer, model_dir, config["vocab_size"])
        else:
            _add_byte_level_bpe_vocabulary(writer, model_dir, config["vocab_size"])
        for planned in plan:
            # Described by their GGML type, so the writer neither infers it from a numpy dtype (numpy
            # has no bfloat16) nor reads the shape of bf16's raw bytes as the tensor's.
            writer.add_tensor_info(
                planned.gguf_name, planned.shape, np.dtype(np.float32), planned.nbytes, raw_dtype=planned.ggml_type
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for planned in plan:
            writer.write_tensor_data(_load_tensor(planned, config, layout))
    finally:
        writer.close()
    return out_path


def read_convertible_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a model export_gguf can convert; a ValueError names what it cannot."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{model_dir}: architecture {architecture} is not supported for GGUF export "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    config["architectures"] = [architecture]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{model_dir}: rope scaling {rope_type!r} is not supported for GGUF export")
    if config.get("use_sliding_window"):
        raise ValueError(f"{model_dir}: sliding-window attention is not supported for GGUF export")
    tokenizer_file = {"sentencepiece": "tokenizer.model", "byte-level-bpe": "tokenizer.json"}[
        ARCHITECTURES[architecture].tokenizer
    ]
    if not (Path(model_dir) / tokenizer_file).is_file():
        raise ValueError(f"{model_dir}: {architecture} needs its tokenizer's {tokenizer_file} for GGUF export")
    return config


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: int) -> None:
    rope = config.get("rope_parameters") or {}
    head_dim = _head_dim(config)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    if head_dim != config["hidden_size"] // config["num_attention_heads"]:
        # llama.cpp derives the head size from the embedding width unless told otherwise.
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _add_sentencepiece_vocabulary(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """The SentencePiece model as llama.cpp's "llama" tokenizer, padded to the embedding rows."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((model_dir / "tokenizer.model").read_bytes())
    if len(proto.pieces) > vocab_size:
        raise ValueError(
            f"{model_dir}: tokenizer.model has {len(proto.pieces)} pieces, the model only {vocab_size} rows"
        )
    tokens = [f"[PAD{index}]" for index in range(vocab_size)]
    scores = [PADDING_SCORE] * vocab_size
    token_types = [gguf.TokenType.UNUSED] * vocab_size
    for index, piece in enumerate(proto.pieces):
        tokens[index], scores[index], token_types[index] = piece.piece, piece.score, PIECE_TOKEN_TYPES[piece.type]
    for added in _added_tokens(model_dir):
        if len(proto.pieces) <= added["id"] < vocab_size:
            index = added["id"]
            scores[index] = ADDED_TOKEN_SCORE
            if added.get("special"):
                tokens[index], token_types[index] = added["content"], gguf.TokenType.CONTROL
            else:
                # SentencePiece writes spaces as U+2581; llama.cpp matches added tokens in that form.
                tokens[index] = added["content"].replace(" ", "\u2581")
                token_types[index] = gguf.TokenType.USER_DEFINED

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)

    # tokenizer.json, tokenizer_config.json and config.json name the special tokens and the chat
    # template; the SentencePiece model's own ids fill whatever they leave unset.
    special_vocab = gguf.SpecialVocab(model_dir, n_vocab=vocab_size)
    trainer = proto.trainer_spec
    own_ids = {"unk": trainer.unk_id, "bos": trainer.bos_id, "eos": trainer.eos_id, "pad": trainer.pad_id}
    for kind, token_id in own_ids.items():
        if token_id >= 0:
            special_vocab.special_token_ids.setdefault(kind, token_id)
    # Llama's SentencePiece models start every sequence with BOS unless the tokenizer says otherwise.
    special_vocab.add_special_token.setdefault("bos", True)
    special_vocab.add_to_gguf(writer, quiet=True)


def _add_byte_level_bpe_vocabulary(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """tokenizer.json's byte-level BPE as llama.cpp's "gpt2" tokenizer with Qwen2's pre-tokenizer."""
    pattern = _pre_tokenizer_pattern(model_dir)
    if pattern != QWEN2_PRE_TOKENIZER_PATTERN:
        # Another split would tokenize differently in llama.cpp than in Hugging Face, silently.
        raise ValueError(
            f"{model_dir}: the tokenizer's pre-tokenizer splits on {pattern!r}, not Qwen2's; GGUF export "
            "supports byte-level BPE with Qwen2's pre-tokenizer only"
        )
    try:
        bpe = gguf.BpeVocab(model_dir)
    except FileNotFoundError as error:  # what BpeVocab raises for a tokenizer.json of another kind
        raise ValueError(f"{model_dir}: tokenizer.json is not a byte-level BPE tokenizer ({error})") from error
    if bpe.vocab_size > vocab_size:
        raise ValueError(f"{model_dir}: tokenizer.json has {bpe.vocab_size} tokens, the model only {vocab_size} rows")
    tokens = [f"[PAD{index}]" for index in range(vocab_size)]
    token_types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in bpe.vocab.items():
        tokens[index], token_types[index] = token, gguf.TokenType.NORMAL
    # Added tokens are matched whole, as their text rather than as byte-level symbols; special ones
    # (<|im_start|>, <|endoftext|>) are control tokens that plain text never produces.
    for added in _added_tokens(model_dir):
        index = added["id"]
        tokens[index] = added["content"]
        token_types[index] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    # Merges, special ids (tokenizer_config.json, then config.json: Qwen2's tokenizer names no BOS
    # but the model's config does) and the chat template.
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # Qwen2's tokenizer adds no BOS; llama.cpp's gpt2 tokenizer would otherwise decide for itself.
    special_vocab.add_special_token.setdefault("bos", False)
    special_vocab.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_pattern(model_dir: Path) -> str | None:
    """The regex of the Split in tokenizer.json's pre-tokenizer, if it has one."""
    pre_tokenizer = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    for step in pre_tokenizer.get("pretokenizers", [pre_tokenizer]):
        if step.get("type") == "Split":
            return step["pattern"].get("Regex")
    return None


def _added_tokens(model_dir: Path) -> list[dict[str, Any]]:
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        return []
    return json.loads(tokenizer_json.read_text()).get("added_tokens", [])


def _safetensors_shards(model_dir: Path) -> list[Path]:
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{model_dir}: no safetensors weights")
    return shards


def _plan_tensors(
    model_dir: Path, config: dict[str, Any], layout: ArchitectureLayout, weight_type: gguf.GGMLQuantizationType
) -> list[_PlannedTensor]:
    """Every tensor's GGUF name, shape and type, read from the safetensors headers only."""
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(layout.gguf_arch, config["num_hidden_layers"])
    arch_name = gguf.MODEL_ARCH_NAMES[layout.gguf_arch]
    plan = []
    for shard in _safetensors_shards(model_dir):
        with safe_open(shard, framework="pt") as weights:
            for hf_name in weights.keys():  # noqa: SIM118 (safe_open has keys() but cannot be iterated)
                if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp
                    continue
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # tied to the embeddings: llama.cpp uses token_embd when there is no output
                gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ValueError(f"{shard}: tensor {hf_name} has no GGUF name in the {arch_name} layout")
                shape = tuple(weights.get_slice(hf_name).get_shape())
                ggml_type = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else weight_type
                plan.append(_PlannedTensor(gguf_name, hf_name, shard, shape, ggml_type))
    return plan


def _load_tensor(planned: _PlannedTensor, config: dict[str, Any], layout: ArchitectureLayout) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(planned.shard, framework="pt") as weights:
        data = weights.get_tensor(planned.hf_name).float().numpy()
    if layout.permute_rotary_rows:
        n_heads = config["num_attention_heads"]
        if planned.hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_for_llama_rope(data, n_heads)
        elif planned.hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_for_llama_rope(data, config.get("num_key_value_heads") or n_heads)
    return np.ascontiguousarray(gguf.quants.quantize(data, planned.ggml_type))


def permute_for_llama_rope(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's q/k rows from Hugging Face's rotary layout to llama.cpp's.

    Hugging Face rotates the first half of a head's dimensions against the second half; llama.cpp
    rotates adjacent pairs. Interleaving the two halves makes both compute the same attention.
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
