"""Benchmark of `kit compare`: the command's wall time on an experiment of 20 pipeline runs (goal: at
most 15 s), and the size of the HTML report of 3 runs (goal: under 5 MB) and of 20.

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.compare`` (about a minute on
2 cores); it writes reports/compare.md. The runs are hand-made in a temporary SQLite store, shaped as
`kit run` logs them (see tests/mlflow_runs.py): a parent and five stage runs each, every run with the
tiny default's 102 resolved params, the stages' metric names, HumanEval and MBPP pass@1 for five
variants, and a train loss logged at every step. The command is timed as a person runs it, a fresh
``kit compare`` process (Python's start and imports included), and split into its phases in this process.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from kit.core.params import load_params
from kit.pipeline.compare import load_comparison
from kit.pipeline.report import log_report, write_report

from ..mlflow_runs import log_pipeline_run
from .common import ROOT, machine, verdict, versions

SMOKE = ROOT / "params" / "smoke.yaml"
REPORT = ROOT / "reports" / "compare.md"

NUM_RUNS = 20
SWEEP_RUNS = 3
STEPS = 200
REPEATS = 3
GOAL_SECONDS = 15.0
GOAL_HTML_MB = 5.0
LEARNING_RATES = (1e-3, 5e-4, 2e-4, 1e-4)
LORA_RANKS = (8, 16, 32, 64, 128)

REPORTED_PACKAGES = ("mlflow", "pandas", "matplotlib")


def make_experiment(uri: str, name: str, num_runs: int, steps: int) -> list[str]:
    """``num_runs`` pipeline runs over a grid of learning rate and LoRA rank, each scoring differently."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(name)
    params = load_params(SMOKE).resolved()
    started_ms = int(time.time() * 1000)
    return [
        log_pipeline_run(
            client,
            experiment_id,
            f"run-{index:02d}",
            {
                **params,
                "learning_rate": LEARNING_RATES[index % len(LEARNING_RATES)],
                "lora_r": LORA_RANKS[index % len(LORA_RANKS)],
            },
            quality=0.2 + 0.6 * index / max(num_runs, 2),
            final_loss=7.0 - 0.02 * index,
            steps=steps,
            benchmarks=("humaneval", "mbpp"),
            started_ms=started_ms + 1000 * index,
        )
        for index in range(num_runs)
    ]


def time_command(uri: str, experiment: str, out_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kit.cli", "compare", "--tracking-uri", uri, "--experiment", experiment,
         "--out", str(out_dir)],
        check=True, capture_output=True, cwd=ROOT,
    )
    return time.perf_counter() - started


def time_phases(uri: str, experiment: str, out_dir: Path) -> dict[str, float]:
    started = time.perf_counter()
    comparison = load_comparison(uri, experiment)
    loaded = time.perf_counter()
    files = write_report(comparison, out_dir)
    written = time.perf_counter()
    log_report(comparison, files)
    return {
        "read runs from MLflow, build tables": loaded - started,
        "draw figures, write report.html and summary.md": written - loaded,
        "log both on a compare run": time.perf_counter() - written,
    }


def measure(num_runs: int = NUM_RUNS, sweep_runs: int = SWEEP_RUNS, steps: int = STEPS,
            repeats: int = REPEATS) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="benchmark_compare_"))
    try:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        started = time.perf_counter()
        make_experiment(uri, "many", num_runs, steps)
        make_experiment(uri, "sweep", sweep_runs, steps)
        setup_seconds = time.perf_counter() - started
        command_seconds = [time_command(uri, "many", folder / "many") for _ in range(repeats)]
        phases = time_phases(uri, "many", folder / "phases")
        time_command(uri, "sweep", folder / "sweep")
        return {
            "num_runs": num_runs,
            "sweep_runs": sweep_runs,
            "steps": steps,
            "setup_seconds": setup_seconds,
            "command_seconds": command_seconds,
            "phases": phases,
            "html_mb": (folder / "many" / "report.html").stat().st_size / 1e6,
            "sweep_html_mb": (folder / "sweep" / "report.html").stat().st_size / 1e6,
            "summary_kb": (folder / "many" / "summary.md").stat().st_size / 1e3,
        }
    finally:
        shutil.rmtree(folder)


def render_report(result: dict[str, Any]) -> str:
    median = statistics.median(result["command_seconds"])
    runs, sweep = result["num_runs"], result["sweep_runs"]
    every = ", ".join(f"{seconds:.1f}" for seconds in result["command_seconds"])
    lines = [
        "# Compare: `kit compare` time and report size",
        "",
        "Written by `.venv/bin/python -m tests.benchmarks.compare` (from the repository root, about a minute);",
        "rerun it to refresh every number here.",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; {versions(REPORTED_PACKAGES)}.",
        "",
        "## Setup",
        "",
        f"Hand-made runs in a temporary SQLite store, shaped as `kit run` logs them: {runs} pipeline runs in one "
        f"experiment, each a parent and five stage runs ({runs * 6} runs), every run with the tiny default's "
        f"resolved params, HumanEval and MBPP pass@1 for five variants, GGUF metrics, stage times, and a train loss "
        f"at each of {result['steps']} steps (eval loss every 10). Making them took {result['setup_seconds']:.0f} s. "
        f"The command is `kit compare --experiment ... --out ...`, each time a fresh process: Python's start and "
        f"imports, reading the runs, drawing, writing both files and logging them on a compare run.",
        "",
        "## Results",
        "",
        "| measure | value | goal | |",
        "| --- | ---: | ---: | --- |",
        f"| `kit compare`, {runs} runs (median of {len(result['command_seconds'])}) | {median:.1f} s | ≤ "
        f"{GOAL_SECONDS:.0f} s | {verdict(median <= GOAL_SECONDS)} |",
        f"| report.html, {sweep} runs | {result['sweep_html_mb']:.2f} MB | < {GOAL_HTML_MB:.0f} MB | "
        f"{verdict(result['sweep_html_mb'] < GOAL_HTML_MB)} |",
        f"| report.html, {runs} runs | {result['html_mb']:.2f} MB | | |",
        f"| summary.md, {runs} runs | {result['summary_kb']:.0f} kB | | |",
        "",
        f"Every command, in seconds: {every}.",
        "",
        f"Where the time goes, {runs} runs, in this process (imports already done):",
        "",
        *(f"- {phase}: {seconds:.2f} s" for phase, seconds in result["phases"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    REPORT.write_text(render_report(measure()))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
