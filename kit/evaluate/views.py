"""What the evaluate notebook shows: views of the stage's manifest and outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from kit.evaluate.stage import (
    ledger_from_results,
)


def results_table(manifest: dict):
    """pass@k with a row per variant (in pipeline order) and a column per benchmark and k, beside the
    prompt format each variant was given."""
    import pandas as pd

    results = json.loads(Path(manifest["outputs"]["results"]).read_text())
    rows = {}
    for variant, result in results.items():
        rows[variant] = {"prompt_format": result["prompt_format"]}
        for benchmark, scores in result["benchmarks"].items():
            pass_at_k = {f"{benchmark} {key}": value for key, value in scores.items() if key.startswith("pass@")}
            rows[variant].update(pass_at_k)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    return table


def quality_ledger(manifest: dict):
    """The run's quality ledger: pass@1 of each variant (base -> adapter -> merged -> each GGUF) on each
    benchmark, so a loss anywhere along the pipeline shows as a drop down a column."""
    return ledger_from_results(json.loads(Path(manifest["outputs"]["results"]).read_text()))


def pass_fail_grid(manifest: dict, benchmark: str):
    """Each variant's share of passing samples on each problem of ``benchmark`` (1 or 0 under greedy
    decoding): a row per problem, in the benchmark's order, and a column per variant."""
    import pandas as pd

    rows = [row for row in _read_jsonl(manifest["outputs"]["problems"]) if row["benchmark"] == benchmark]
    if not rows:
        scored = ", ".join(manifest["inputs"]["benchmarks"])
        raise ValueError(f"{benchmark} was not evaluated in this run; it scored {scored}")
    table = pd.DataFrame(rows)
    grid = table.pivot(index="task_id", columns="variant", values="pass@1")
    # pivot sorts its labels; problems keep the benchmark's order and variants the pipeline's.
    return grid.reindex(index=table["task_id"].unique(), columns=table["variant"].unique())


def styled_grid(grid):
    """A pass/fail grid coloured to read at a glance: green where every sample passed, red where none did."""
    return grid.style.map(_pass_colour).format("{:.0%}")


def _pass_colour(share: float) -> str:
    colour = "#2e7d32" if share == 1 else "#c62828" if share == 0 else "#ef6c00"
    return f"background-color: {colour}; color: white"


def failing_completions(manifest: dict, limit: int = 3):
    """The first ``limit`` failing samples of each variant on each benchmark, with the error each failed with."""
    import pandas as pd

    rows = []
    for variant, paths in manifest["outputs"]["samples"].items():
        for benchmark, path in paths.items():
            failing = (sample for sample in _read_jsonl(path) if sample["status"] != "passed")
            shown = itertools.islice(failing, limit)
            rows += [{"variant": variant, "benchmark": benchmark, **sample} for sample in shown]
    return pd.DataFrame(rows, columns=["variant", "benchmark", "task_id", "result", "completion"])


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
