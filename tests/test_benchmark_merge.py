"""The merge benchmark on a one-step adapter: what keeps `python -m tests.benchmarks.merge` from rotting."""

from __future__ import annotations

from pathlib import Path

from .benchmarks import merge as benchmark


def test_the_benchmark_runs_end_to_end_on_a_one_step_adapter(tmp_path: Path) -> None:
    result = benchmark.measure(tmp_path, max_steps=1, merge_dtypes=("float32",))
    dequantized, original = result["merges"]
    assert (dequantized["merge_base"], original["merge_base"]) == ("dequantized", "original")
    # Even a barely trained adapter sits on the NF4 base: only the dequantized merge reproduces it.
    assert dequantized["versus_trained"]["trained/max_abs_logit_diff"] < 1e-4
    assert original["versus_trained"]["trained/max_abs_logit_diff"] > 0.1
    assert all(merge["check"]["merge/max_abs_logit_diff"] < 1e-4 and merge["seconds"] > 0 for merge in result["merges"])
    report = benchmark.render_report(result)
    assert "| float32 | dequantized | " in report and "| float32 | original | " in report
    assert "So `merge_base` defaults to `dequantized`" in report and "1 steps" in report
