"""params/smollm2-135m-mbpp.yaml cut down (two steps, eight validation tasks, two problems) end to end,
through the benchmark that reports on it: GGUF -> Hugging Face, the chat template through prepare, train
and evaluate, merge, and llama.cpp's export of a byte-level BPE Llama."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.core.manifest import read_manifest

from .benchmarks import real as benchmark

pytestmark = pytest.mark.slow

CUT_DOWN = ("max_steps=2", "gradient_accumulation_steps=1", "sequence_len=256", "warmup_steps=0", "eval_steps=2",
            "test_datasets=[{path: .tunebook/data/mbpp-validation.jsonl, type: chat_template, split: 'train[:8]'}]",
            "eval_limit=2", "eval_max_new_tokens=48")
VARIANTS = ["base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m"]


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=40))
@settings(max_examples=30, deadline=None)
def test_a_bootstrap_interval_holds_the_mean_and_is_a_point_when_every_problem_agrees(passed: list[float]) -> None:
    values = np.array(passed)
    low, high = benchmark.bootstrap_interval(values, benchmark.resampled_problems(len(values)))
    assert low <= values.mean() <= high
    assert 0.0 <= low <= high <= 1.0
    assert (low == high) == (len(set(passed)) == 1)


def test_a_change_from_the_base_is_resampled_on_the_same_problems() -> None:
    base = {f"t{index}": float(index % 2) for index in range(30)}
    same = dict(base)
    better = {task: 1.0 for task in base}
    ledger = benchmark.ledger_with_intervals(
        {("base", "mbpp"): base, ("merged", "mbpp"): same, ("adapter", "mbpp"): better})["mbpp"]
    assert ledger["merged"]["change"] == 0.0 and ledger["merged"]["change_interval"] == (0.0, 0.0)
    assert ledger["adapter"]["change"] == 0.5
    low, high = ledger["adapter"]["change_interval"]
    assert 0.0 < low < 0.5 < high <= 1.0


@pytest.mark.skipif(benchmark.gguf_file("smollm2-135m-instruct") is None, reason="unreachable")
def test_the_real_recipe_cut_down_runs_end_to_end(tmp_path: Path) -> None:
    log = benchmark.run_commands(tmp_path, CUT_DOWN)
    result = benchmark.measure(tmp_path, log, CUT_DOWN)
    run_dir = result["run_dir"]
    assert run_dir.is_relative_to(tmp_path) and list(result["stage_seconds"]) == list(benchmark.STAGES)

    # The base is the shipped GGUF file, turned into an ordinary folder with its chat template.
    base_folder = Path(read_manifest(run_dir, "train")["outputs"]["base_model"])
    assert base_folder.parent.name == "gguf-models" and (base_folder / "config.json").exists()
    assert "<|im_start|>" in (base_folder / "chat_template.jinja").read_text()
    # The training rows were rendered in that template, and so was every prompt evaluated.
    prepared = read_manifest(run_dir, "prepare")
    assert prepared["metrics"]["prepare/num_train"] > 0 and 0 < prepared["metrics"]["prepare/num_val"] <= 8
    results = result["results"]
    assert list(results) == VARIANTS
    for variant, scored in results.items():
        for name in ("humaneval", "mbpp"):
            first_prompt = scored["benchmarks"][name]["first_prompt"]
            assert first_prompt.startswith("<|im_start|>") and "<|im_start|>assistant\n```python\n" in first_prompt
            assert "<|im_end|>" in scored["benchmarks"][name]["stop_sequences"]
        assert scored["decoding"]["engine"] == ("llama.cpp" if variant.startswith("gguf_") else "transformers")

    # llama.cpp's converter exported the byte-level BPE Llama, checked against the merged model.
    quantized = read_manifest(run_dir, "quantize")
    assert quantized["metrics"]["gguf/q8_0/top1_agreement"] > 0.9
    assert result["direct"]["scores"]["num_problems"] == 2

    for variants in result["ledger"].values():
        assert list(variants) == VARIANTS
        for entry in variants.values():
            low, high = entry["interval"]
            assert low <= entry["pass@1"] <= high
    report = benchmark.render_report(result)
    assert "| variant | humaneval (2) | change from base | mbpp (2) | change from base |" in report
    assert "of the shipped GGUF in llama.cpp (HumanEval)" in report and "Code Llama 7B" in report
