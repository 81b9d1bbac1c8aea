"""Untrusted code never runs in a process group alone unless the user allows it: the evaluate stage,
`kit score` and `kit run` stop before running anything, naming why the sandbox has no namespaces and
how to allow it. The machine is made weak by faking the trial of each level."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.cli import main
from kit.core.benchmarks import humaneval_problems
from kit.core.params import Params
from kit.evaluate import sandbox
from kit.evaluate.sandbox import WeakIsolationError, checked_isolation, isolation, run_program, strongest_isolation
from kit.evaluate.score import default_out_path, score_samples
from kit.evaluate.stage import evaluation_isolation, run_evaluate

from .conftest import SMOKE

WHY_NOT = {"bubblewrap": "bwrap not found: apt-get install bubblewrap", "namespaces": "failed: unshare: denied"}


@pytest.fixture()
def weak_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine where neither namespaced level works."""
    monkeypatch.setattr(sandbox, "isolation_unavailable", lambda level: WHY_NOT.get(level, ""))
    strongest_isolation.cache_clear()
    yield
    strongest_isolation.cache_clear()


@pytest.fixture()
def samples(tmp_path: Path) -> Path:
    problem = humaneval_problems()[0]
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": problem.task_id, "completion": problem.reference_completion}) + "\n")
    return path


def _assert_names_why_and_how(message: str, opt_in: str) -> None:
    assert all(f"{level}: {why}" in message for level, why in WHY_NOT.items()), message
    assert opt_in in message


def _the_one_error(stderr: str) -> str:
    """The CLI's error line, the last of its output: one line, no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == stderr.splitlines()[-1:], stderr
    return errors[0]


def test_without_namespaces_the_strongest_level_is_a_process_group_and_says_why(weak_machine: None) -> None:
    assert strongest_isolation() == sandbox.Isolation("process-group", WHY_NOT)
    assert isolation() == "process-group"
    assert str(strongest_isolation()).startswith("sandbox: process-group (bubblewrap: bwrap not found")
    assert run_program("pass", timeout=5).isolation == "process-group"
    with pytest.raises(WeakIsolationError) as refused:
        checked_isolation(False, "say so")
    _assert_names_why_and_how(str(refused.value), "say so")
    assert checked_isolation(True, "say so").level == "process-group"


def test_a_namespaced_level_needs_no_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    no_bwrap = {"bubblewrap": WHY_NOT["bubblewrap"]}
    monkeypatch.setattr(sandbox, "isolation_unavailable", lambda level: no_bwrap.get(level, ""))
    strongest_isolation.cache_clear()
    try:
        assert checked_isolation(False, "say so") == sandbox.Isolation("namespaces", no_bwrap)
        assert str(checked_isolation(False, "say so")) == f"sandbox: namespaces (bubblewrap: {no_bwrap['bubblewrap']})"
    finally:
        strongest_isolation.cache_clear()


def test_score_refuses_a_process_group_before_running_anything(weak_machine: None, samples: Path) -> None:
    with pytest.raises(WeakIsolationError) as refused:
        score_samples("humaneval", samples)
    _assert_names_why_and_how(str(refused.value), "--allow-weak-isolation")
    assert not default_out_path(samples).exists()


def test_kit_score_refuses_in_one_line_and_runs_when_allowed(
    weak_machine: None, samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples)]) == 2
    error = _the_one_error(capsys.readouterr().err)
    _assert_names_why_and_how(error, "--allow-weak-isolation")
    assert not default_out_path(samples).exists()

    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples), "--allow-weak-isolation"]) == 0
    assert f"sandbox: process-group (bubblewrap: {WHY_NOT['bubblewrap']}; " in capsys.readouterr().err
    assert [json.loads(line)["passed"] for line in default_out_path(samples).read_text().splitlines()] == [True]


def test_evaluate_refuses_a_process_group_unless_the_params_allow_it(
    weak_machine: None, smoke_params: Params, tmp_path: Path
) -> None:
    out_dir = tmp_path / "evaluate"
    with pytest.raises(WeakIsolationError) as refused:
        run_evaluate(smoke_params, {}, out_dir)
    _assert_names_why_and_how(str(refused.value), "eval_allow_weak_isolation: true")
    assert not out_dir.exists()

    smoke_params.eval_allow_weak_isolation = True
    assert evaluation_isolation(smoke_params).level == "process-group"
    # Past the sandbox's check, to the next: the upstream manifests it was not given.
    with pytest.raises(ValueError, match="needs the train stage's manifest"):
        run_evaluate(smoke_params, {}, out_dir)


def test_kit_run_refuses_before_any_stage_when_it_would_evaluate(
    weak_machine: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(SMOKE), "--set", f"output_dir={out}"]) == 2
    error = _the_one_error(capsys.readouterr().err)
    _assert_names_why_and_how(error, "eval_allow_weak_isolation: true")
    assert not out.exists()
