"""The sandbox against programs that misbehave, and the benchmarks' own solutions run through it."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from kit.benchmarks import humaneval_problems, mbpp_problems
from kit.sandbox import run_program, run_programs

from .conftest import SHARED_MBPP


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie: a killed orphan may wait on a slow reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_correct_program_passes_and_a_wrong_one_fails() -> None:
    passed = run_program("def double(x):\n    return 2 * x\n\nassert double(3) == 6", timeout=5)
    failed = run_program("def double(x):\n    return x\n\nassert double(3) == 6", timeout=5)
    assert passed.passed and passed.status == "passed"
    assert not failed.passed and failed.status == "failed"
    assert "AssertionError" in failed.stderr_tail


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "exit()"])
def test_exiting_zero_before_the_asserts_fails(exit_call: str) -> None:
    result = run_program(f"def answer():\n    {exit_call}\n\nassert answer() == 42", timeout=5)
    assert result.status == "failed"


def test_an_infinite_loop_times_out_and_leaves_no_process() -> None:
    program = "import os, sys\nprint(os.getpid(), file=sys.stderr, flush=True)\nwhile True:\n    pass"
    started = time.monotonic()
    result = run_program(program, timeout=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - started < 4
    assert _gone_within(int(_last_line(result.stderr_tail)), seconds=2)


def test_children_outliving_the_program_are_killed_with_its_group() -> None:
    program = (
        "import os, subprocess, sys, time\n"
        "sleeper = subprocess.Popen(['sleep', '60'])\n"
        "forked = os.fork()\n"
        "if forked == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(sleeper.pid, forked, file=sys.stderr, flush=True)\n"
    )
    started = time.monotonic()
    result = run_program(program, timeout=5)
    assert result.passed, result.stderr_tail
    assert time.monotonic() - started < 4, "the program's own exit ends the run, not its children's"
    for pid in _last_line(result.stderr_tail).split():
        assert _gone_within(int(pid), seconds=2)


def test_the_program_cannot_see_the_parents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_generated_code")
    program = (
        "import os\n"
        "assert 'HF_TOKEN' not in os.environ, 'token leaked'\n"
        "assert not any('hf_not_for' in value for value in os.environ.values()), 'value leaked'\n"
    )
    result = run_program(program, timeout=5)
    assert result.passed, result.stderr_tail


def test_files_are_written_only_inside_a_temporary_folder_that_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    program = (
        "import os, pathlib, tempfile\n"
        "pathlib.Path('relative.txt').write_text('x')\n"
        "(pathlib.Path.home() / 'home.txt').write_text('x')\n"
        "handle, temporary = tempfile.mkstemp()\n"
        "raise SystemExit(repr([os.getcwd(), str(pathlib.Path.home()), os.path.dirname(temporary)]))\n"
    )
    result = run_program(program, timeout=5)
    assert result.status == "failed"
    folders = {Path(folder) for folder in ast.literal_eval(_last_line(result.stderr_tail))}
    assert len(folders) == 1
    (folder,) = folders
    assert folder.name.startswith("tunebook-sandbox-") and folder != tmp_path
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_memory_bomb_fails_quickly() -> None:
    # 3 GiB: past the sandbox's limit, yet an allocation any machine's kernel would grant (and the
    # program fill, for seconds) were there no limit.
    program = "data = bytearray(3 * 1024**3)"
    started = time.monotonic()
    result = run_program(program, timeout=10)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr_tail
    assert time.monotonic() - started < 2


def test_a_file_past_the_size_limit_fails() -> None:
    result = run_program("open('big.bin', 'wb').write(b'x' * 64 * 1024**2)", timeout=5)
    assert result.status == "failed"


def test_programs_run_in_parallel_and_keep_their_order() -> None:
    programs = ["import time\ntime.sleep(0.5)", "assert False", "import time\ntime.sleep(0.5)", "pass"]
    started = time.monotonic()
    results = run_programs(programs, timeout=5, workers=4)
    assert [result.status for result in results] == ["passed", "failed", "passed", "passed"]
    assert time.monotonic() - started < 1.5 * 0.5 + 1


def test_humaneval_reference_solutions_pass_and_a_wrong_one_fails() -> None:
    problems = humaneval_problems()[:5]
    programs = [problem.program(problem.reference_completion) for problem in problems]
    programs.append(problems[0].program("    return None\n"))
    results = run_programs(programs, timeout=5, workers=2)
    assert [result.status for result in results[:-1]] == ["passed"] * 5, [r.stderr_tail for r in results]
    assert results[-1].status == "failed"


@pytest.mark.skipif(not SHARED_MBPP.exists(), reason="the shared MBPP file is absent")
def test_mbpp_reference_solutions_pass_and_a_wrong_one_fails() -> None:
    problems = mbpp_problems(str(SHARED_MBPP))[:5]
    programs = [problem.program(problem.reference_completion) for problem in problems]
    # The task's function, defined to return nothing: the asserts must catch it.
    programs.append(problems[0].program("def remove_Occ(s, ch):\n    return None\n"))
    results = run_programs(programs, timeout=5, workers=2)
    assert [result.status for result in results[:-1]] == ["passed"] * 5, [r.stderr_tail for r in results]
    assert results[-1].status == "failed"
