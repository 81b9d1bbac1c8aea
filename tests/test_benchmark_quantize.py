"""The quantize benchmark at a tiny size: what keeps `python -m tests.benchmarks.quantize` from rotting."""

from __future__ import annotations

from pathlib import Path

from .benchmarks import quantize as benchmark

TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4}


def test_the_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    result = benchmark.measure(tmp_path, gguf_types=("q8_0", "q4_k_m"), larger_shape=TINY_SHAPE, train_steps=1)

    models = result["models"]
    larger = models["larger Llama, 1 training steps"]
    random_perplexity = models["larger Llama, 0 training steps"]["metrics"]["merged/perplexity"]
    assert larger["metrics"]["merged/perplexity"] != random_perplexity
    assert larger["types"] == ["f16", "q8_0", "q4_k_m"]
    # Embeddings and output (2 x 2048 x 256), attention (4 x 256^2), feed-forward (3 x 256 x 512), 3 norms.
    assert larger["parameters"] == 2 * 2048 * 256 + 4 * 256**2 + 3 * 256 * 512 + 3 * 256
    metrics = larger["metrics"]
    assert metrics["gguf/q4_k_m/size_mb"] < metrics["gguf/q8_0/size_mb"] < metrics["gguf/f16/size_mb"]
    assert all(metrics[f"gguf/{gguf_type}/seconds"] > 0 for gguf_type in larger["types"])
    report = benchmark.render_report(result)
    assert "## Tiny default" in report and "## Larger Llama, 1 training steps" in report
    assert "| q4_k_m | " in report and report.count("- q4_k_m file at most 0.35x the f16 file: ") == 1
    assert report.count("- f16 top-1 agreement >= 0.99: ") == 2  # the tiny default and the trained Llama
