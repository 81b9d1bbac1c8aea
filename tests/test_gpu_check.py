"""The GPU check's arithmetic, and its dry run on a machine without a GPU (as CI is)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kit.pipeline import gpu_check
from kit.pipeline.gpu_check import (
    CODE_LLAMA_7B,
    datasheet_tflops,
    linear_parameters,
    mean_attended_positions,
    sample_lengths,
    training_flops_per_token,
)


def test_code_llama_7b_has_its_published_parameter_count():
    embeddings = CODE_LLAMA_7B["hidden_size"] * CODE_LLAMA_7B["vocab_size"]
    # 6.74 B (Code Llama's model card); RMSNorm weights, 0.27 M, are left out of both.
    assert linear_parameters(CODE_LLAMA_7B) + embeddings == pytest.approx(6.738e9, rel=1e-3)


def test_flops_per_token_by_hand():
    # A 1-layer model, hidden 2, one head, intermediate 3, vocabulary 5: q,k,v,o 4*2*2, MLP 3*2*3, head 2*5.
    shape = {"hidden_size": 2, "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
             "intermediate_size": 3, "vocab_size": 5}
    assert linear_parameters(shape) == 16 + 18 + 10
    # Samples of 1 and 3 tokens: positions attended 1 | 1, 2, 3 -> 7 over 4 tokens.
    assert mean_attended_positions([1, 3]) == 7 / 4
    assert training_flops_per_token(shape, 7 / 4) == 4 * 44 + 3 * (4 * 2 * 7 / 4 * 1)


def test_sample_lengths_are_long_tailed_and_fit_a_row():
    lengths = sample_lengths(4000, 650, 2048, seed=0)
    assert min(lengths) >= 32 and max(lengths) <= 2048
    assert 600 < sum(lengths) / len(lengths) < 700
    assert sample_lengths(10, 650, 2048, seed=0) == lengths[:10]


def test_datasheet_peaks_are_found_by_device_name():
    assert datasheet_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert datasheet_tflops("NVIDIA H100 PCIe") == 756.0
    assert datasheet_tflops("NVIDIA GeForce RTX 3090") == 71.0
    assert datasheet_tflops("Some Future GPU") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without a GPU does")
def test_without_a_gpu_it_says_so_and_dry_runs_its_logic(tmp_path, capsys):
    report = tmp_path / "gpu.md"
    assert gpu_check.main(["--steps", "2", "--warmup-steps", "1", "--out", str(report)]) == 0
    assert capsys.readouterr().out.startswith("no CUDA GPU here: a dry run")
    text = report.read_text()
    for model in ("a tiny Llama (dry run)", "a tiny Qwen2 (dry run)"):
        section = text.split(f"## {model}\n")[1].split("\n## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
        expected = ["gradient checkpointing", "no checkpointing"] if "Llama" in model else ["gradient checkpointing"]
        assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == expected
        for row in rows:
            cells = row.split(" | ")
            assert float(cells[2].replace(",", "")) > 0  # tokens/s measured from real steps
            assert cells[7:] == ["adamw_torch (instead of paged_adamw_32bit)", "sdpa", "float32", "none |"]


def test_kit_gpu_check_hands_its_options_to_the_check(tmp_path):
    # From another folder: the check comes with the package, not with the project folder.
    result = subprocess.run([sys.executable, "-m", "kit.cli", "gpu-check", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert "--mean-sample-tokens" in result.stdout and "--skip-smoke" in result.stdout
