"""The compare benchmark at a tiny size: what keeps `python -m tests.benchmarks.compare` from rotting."""

from __future__ import annotations

from .benchmarks import compare as benchmark


def test_the_benchmark_runs_end_to_end_on_a_few_runs() -> None:
    result = benchmark.measure(num_runs=2, sweep_runs=1, steps=5, repeats=1)
    assert len(result["command_seconds"]) == 1 and result["command_seconds"][0] > 0
    assert list(result["phases"]) == [
        "read runs from MLflow, build tables",
        "draw figures, write report.html and summary.md",
        "log both on a compare run",
    ]
    # Two runs' report holds more than one run's: two sets of bars and curves, two table columns.
    assert 0 < result["sweep_html_mb"] < result["html_mb"] < benchmark.GOAL_HTML_MB
    report = benchmark.render_report(result)
    assert "| `kit compare`, 2 runs (median of 1) |" in report and "| report.html, 1 runs |" in report
    assert report.count("| met |") + report.count("| **missed** |") == 2
