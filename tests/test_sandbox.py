"""The sandbox against hostile programs, and the benchmarks' own solutions run through it. What every
level holds to is tested at all three; the containment a process group alone cannot give, at the
namespaced levels. A level that does not work here skips, saying why, but where
TUNEBOOK_REQUIRE_SANDBOX is set (as in CI) a namespaced level that does not work fails.

Each hostile program names itself with a random token (its /proc comm, or argv[0] of what it starts),
so that the test can look for its processes from the host whatever PID namespace they live in.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kit.core.benchmarks import humaneval_problems, mbpp_problems
from kit.evaluate import sandbox
from kit.evaluate.sandbox import ISOLATION_LEVELS, isolation, isolation_unavailable, run_program, run_programs
from kit.evaluate.sandbox.runner import PROCESS_LIMIT

from .conftest import MBPP, PROBE, ROOT

NAMESPACED = ("bubblewrap", "namespaces")
SANDBOX_REQUIRED = bool(os.environ.get("TUNEBOOK_REQUIRE_SANDBOX"))
# A failing benchmark test, ending each hostile program: what it did must not make it pass.
FAILING_TEST = "\nassert 1 + 1 == 3\n"
# A user no one has, for programs of an unprivileged scorer.
UNPRIVILEGED_UID = 1999999999


def _unavailable(level: str, problem: str) -> NoReturn:
    message = f"{level} does not work here: {problem}"
    if SANDBOX_REQUIRED and level in NAMESPACED:
        pytest.fail(f"{message} (TUNEBOOK_REQUIRE_SANDBOX asks for every namespaced level)")
    pytest.skip(message)


def _working(level: str) -> str:
    problem = isolation_unavailable(level)
    if problem:
        _unavailable(level, problem)
    return level


@pytest.fixture(params=ISOLATION_LEVELS)
def level(request: pytest.FixtureRequest) -> str:
    """Every level, for what holds at all of them."""
    return _working(request.param)


@pytest.fixture(params=NAMESPACED)
def namespaced_level(request: pytest.FixtureRequest) -> str:
    """The namespaced levels, for what a process group alone does not contain."""
    return _working(request.param)


def _token() -> str:
    return f"tb{secrets.token_hex(6)}"  # 14 characters: fits a process's 15-character comm


def _named(token: str) -> str:
    """Program lines that give the process (and what it forks) the token as its name."""
    return f"import sys\nopen('/proc/self/comm', 'w').write({token!r})\nprint('named', file=sys.stderr, flush=True)\n"


def _alive_with(token: str) -> list[int]:
    """Host pids of live (not zombie) processes whose name or command line holds the token."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
        if state not in ("Z", "X") and (token in name or token in cmdline):
            found.append(int(entry.name))
    return found


def _none_left(token: str, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive_with(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_correct_program_passes_and_a_wrong_one_fails_recording_the_isolation() -> None:
    passed = run_program("def double(x):\n    return 2 * x\n\nassert double(3) == 6", timeout=5)
    failed = run_program("def double(x):\n    return x\n\nassert double(3) == 6", timeout=5)
    assert passed.passed and passed.status == "passed"
    assert not failed.passed and failed.status == "failed"
    assert "AssertionError" in failed.stderr_tail
    assert passed.isolation == failed.isolation == isolation()


def test_the_strongest_working_level_is_chosen() -> None:
    working = [level for level in ISOLATION_LEVELS if not isolation_unavailable(level)]
    assert isolation() == working[0]
    if shutil.which("bwrap"):
        assert isolation() == "bubblewrap", isolation_unavailable("bubblewrap")


@pytest.mark.parametrize(
    "exit_call",
    [
        "import sys; sys.exit(0)",
        "import os; os._exit(0)",
        "raise SystemExit",
        "print('tunebook-finished-' + '0' * 16, flush=True); raise SystemExit(0)",  # a guessed marker
    ],
)
def test_exiting_zero_before_the_asserts_fails(exit_call: str) -> None:
    result = run_program(f"def answer():\n    {exit_call}\n\nassert answer() == 42", timeout=5)
    assert result.status == "failed"


def test_an_endless_loop_times_out_and_leaves_no_process(level: str) -> None:
    token = _token()
    started = time.monotonic()
    result = run_program(_named(token) + "while True:\n    pass\n", timeout=0.5, level=level)
    assert result.status == "timeout" and "named" in result.stderr_tail
    assert time.monotonic() - started < 3
    assert _none_left(token)


def test_a_loop_ignoring_every_signal_it_can_is_killed(level: str) -> None:
    token = _token()
    program = _named(token) + (
        "import signal\n"
        "for number in range(1, signal.NSIG):\n"
        "    try:\n"
        "        signal.signal(number, signal.SIG_IGN)\n"
        "    except (OSError, ValueError):\n"
        "        pass\n"  # SIGKILL and SIGSTOP cannot be ignored
        "while True:\n"
        "    pass\n"
    )
    started = time.monotonic()
    result = run_program(program, timeout=0.5, level=level)
    assert result.status == "timeout" and "named" in result.stderr_tail
    assert time.monotonic() - started < 3
    assert _none_left(token)


def test_a_memory_bomb_fails_quickly(level: str) -> None:
    # 3 GiB: past the sandbox's limit, yet an allocation any machine's kernel would grant (and the
    # program fill, for seconds) were there no limit.
    started = time.monotonic()
    result = run_program("data = bytearray(3 * 1024**3)" + FAILING_TEST, timeout=10, level=level)
    assert result.status == "failed" and "MemoryError" in result.stderr_tail
    assert time.monotonic() - started < 2


def test_a_fork_storm_is_capped_and_ends_with_the_program(namespaced_level: str) -> None:
    token = _token()
    # Bounded at 300 so that a missing cap fails the test without exhausting the host's pids.
    program = _named(token) + (
        "import os, time\n"
        "children = 0\n"
        "for _ in range(300):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        break\n"
        "    children += 1\n"
        "print('children', children, file=sys.stderr, flush=True)\n"
    )
    started = time.monotonic()
    result = run_program(program + FAILING_TEST, timeout=5, level=namespaced_level)
    assert result.status == "failed"
    children = int(next(line for line in result.stderr_tail.splitlines() if line.startswith("children")).split()[1])
    assert 0 < children < PROCESS_LIMIT
    assert time.monotonic() - started < 4, "the program's own exit ends the run, not its children's"
    assert _none_left(token)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_endless_output_is_cut_off_at_the_file_size_limit(level: str, stream: str) -> None:
    program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n"
    started = time.monotonic()
    result = run_program(program, timeout=10, level=level)
    # Killed by SIGXFSZ at the limit, well before the timeout: unlimited, it would run into it.
    assert result.status == "failed"
    assert time.monotonic() - started < 5


def test_a_file_past_the_size_limit_fails(level: str) -> None:
    result = run_program("open('big.bin', 'wb').write(b'x' * 64 * 1024**2)", timeout=5, level=level)
    assert result.status == "failed"


@pytest.mark.parametrize("folder", [".", "/tmp", "/dev/shm"])
def test_many_files_cannot_fill_more_than_the_private_folders_cap(namespaced_level: str, folder: str) -> None:
    # 12 files of 8 MiB, each under the file-size limit: together past the private tmpfs's 64 MiB.
    program = f"for index in range(12):\n    open(f'{folder}/part{{index}}.bin', 'wb').write(b'x' * 8 * 1024**2)\n"
    result = run_program(program, timeout=5, level=namespaced_level)
    assert result.status == "failed" and "No space left on device" in result.stderr_tail


@pytest.fixture()
def victims(tmp_path: Path) -> Iterator[list[Path]]:
    """Files outside the program's folder: one in the repository, one in pytest's temporary folder."""
    in_repository = Path(tempfile.mkdtemp(prefix=f".{PROBE}-sandbox-victim-", dir=ROOT))
    files = [in_repository / "precious.txt", tmp_path / "precious.txt"]
    for file in files:
        file.write_text("keep me")
    try:
        yield files
    finally:
        shutil.rmtree(in_repository, ignore_errors=True)


def test_files_outside_its_folder_cannot_be_deleted_truncated_or_added_to(
    namespaced_level: str, victims: list[Path]
) -> None:
    attacks = (
        "os.remove(path)",
        "open(path, 'w').write('gone')",
        "os.truncate(path, 0)",
        "os.rename(path, path + '.moved')",
        "os.chmod(path, 0)",
        "open(os.path.join(os.path.dirname(path), 'planted.txt'), 'w').write('x')",
        "shutil.rmtree(os.path.dirname(path))",
    )
    program = "import os, shutil, sys\n" + f"for path in {[str(victim) for victim in victims]!r}:\n"
    for attack in attacks:
        program += f"    try:\n        {attack}\n        print('done', {attack!r}, file=sys.stderr)\n"
        program += "    except OSError:\n        pass\n"
    result = run_program(program + FAILING_TEST, timeout=5, level=namespaced_level)
    assert result.status == "failed" and "done" not in result.stderr_tail, result.stderr_tail
    for victim in victims:
        assert sorted(os.listdir(victim.parent)) == ["precious.txt"]
        assert victim.read_text() == "keep me" and os.access(victim, os.R_OK | os.W_OK)


def test_files_are_written_only_inside_a_temporary_folder_that_is_removed(
    level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    program = (
        "import os, pathlib, tempfile\n"
        "pathlib.Path('relative.txt').write_text('x')\n"
        "(pathlib.Path.home() / 'home.txt').write_text('x')\n"
        "handle, temporary = tempfile.mkstemp()\n"
        "raise SystemExit(repr([os.getcwd(), str(pathlib.Path.home()), os.path.dirname(temporary)]))\n"
    )
    result = run_program(program, timeout=5, level=level)
    assert result.status == "failed"
    folders = {Path(folder) for folder in ast.literal_eval(_last_line(result.stderr_tail))}
    assert len(folders) == 1
    (folder,) = folders
    assert folder.name.startswith("tunebook-sandbox-") and folder != tmp_path
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_program_cannot_see_the_parents_environment(level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"hf_{secrets.token_hex(8)}"
    monkeypatch.setenv("HF_TOKEN", secret)
    program = (
        "import os, sys\n"
        "found = dict(os.environ)\n"
        "found['self'] = open('/proc/self/environ', 'rb').read().decode(errors='replace')\n"
        "print(found, file=sys.stderr)\n"
    )
    result = run_program(program, timeout=5, level=level)
    assert result.passed, result.stderr_tail
    assert "HF_TOKEN" not in result.stderr_tail and secret not in result.stderr_tail
    assert "PATH" in result.stderr_tail  # what it printed did reach the test


def test_the_scorers_process_and_the_home_folder_are_out_of_sight(namespaced_level: str) -> None:
    secret = f"hf_{secrets.token_hex(8)}"
    handle, secret_file = tempfile.mkstemp(prefix=".sandbox-secret-", dir=Path.home())
    os.close(handle)
    try:
        Path(secret_file).write_text(secret)
        program = (
            "import os, sys\n"
            f"for path in ['/proc/{os.getpid()}/environ', '/proc/{os.getpid()}/cmdline', {secret_file!r}]:\n"
            "    try:\n"
            "        print('read', path, open(path, 'rb').read()[:100], file=sys.stderr)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        result = run_program(program + FAILING_TEST, timeout=5, level=namespaced_level)
    finally:
        os.remove(secret_file)
    assert result.status == "failed"
    assert "read" not in result.stderr_tail, result.stderr_tail


@pytest.mark.parametrize(
    "attack",
    [
        "os.killpg(0, signal.SIGKILL)",  # its own session's group
        "os.kill(os.getppid(), signal.SIGKILL)",  # the runner
    ],
)
def test_killing_its_parent_or_group_hurts_neither_the_scorer_nor_other_samples(level: str, attack: str) -> None:
    _assert_the_attack_hurts_only_its_program(level, attack)


# Outside a PID namespace the scorer is in sight, and -1 is every process root may kill.
@pytest.mark.parametrize("attack", ["os.kill(SCORER, signal.SIGKILL)", "os.kill(-1, signal.SIGKILL)"])
def test_killing_the_scorer_or_every_process_hurts_neither_it_nor_other_samples(
    namespaced_level: str, attack: str
) -> None:
    _assert_the_attack_hurts_only_its_program(namespaced_level, attack)


def _assert_the_attack_hurts_only_its_program(level: str, attack: str) -> None:
    program = (
        "import os, signal, sys, time\n"
        f"SCORER = {os.getpid()}\n"
        f"try:\n    {attack}\nexcept OSError as error:\n    print(error, file=sys.stderr)\n"
        "time.sleep(0.2)\n" + FAILING_TEST
    )
    good = "import time\ntime.sleep(0.2)\n"
    results = run_programs([program, good, good, good], timeout=5, workers=2, level=level)
    assert [result.status for result in results] == ["failed", "passed", "passed", "passed"]


def test_the_program_holds_no_capabilities_and_cannot_gain_any(namespaced_level: str) -> None:
    program = (
        "import sys\n"
        "status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines())\n"
        "print({key: status[key] for key in ('CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'NoNewPrivs')}, file=sys.stderr)\n"
        "assert int(status['CapEff'], 16) == int(status['CapPrm'], 16) == int(status['CapAmb'], 16) == 0\n"
        "assert status['NoNewPrivs'] == '1'\n"
    )
    result = run_program(program, timeout=5, level=namespaced_level)
    assert result.passed, result.stderr_tail


def test_nothing_a_program_leaves_reaches_the_next_one_in_its_runner(namespaced_level: str) -> None:
    token = _token()
    leaves_files_and_a_daemon = _named(token) + (
        "import os, time\n"
        "for shared in ('/tmp', '/dev/shm'):\n"
        "    open(f'{shared}/planted.txt', 'w').write('x')\n"
        "    os.makedirs(f'{shared}/closed/inner')\n"
        "    os.chmod(f'{shared}/closed', 0)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"  # a daemon, out to kill what comes next
        "        try:\n"
        "            os.kill(-1, 9)\n"
        "        except OSError:\n"
        "            pass\n"
        "        time.sleep(0.01)\n"
    )
    leaves_a_sysv_segment = "import ctypes\nassert ctypes.CDLL(None).shmget(0, 1 << 20, 0o1600) >= 0\n"
    follower = (
        "import os, time\n"
        "time.sleep(0.3)\n"  # time enough for any daemon to strike
        "leftovers = [f'{shared}/{name}' for shared in ('/tmp', '/dev/shm') for name in ('planted.txt', 'closed')]\n"
        "assert not any(os.path.exists(path) for path in leftovers), leftovers\n"
        "assert len(open('/proc/sysvipc/shm').read().splitlines()) == 1, 'a SysV segment is left'\n"
        "processes = [name for name in os.listdir('/proc') if name.isdigit()]\n"
        "assert len(processes) == 3, processes\n"  # the namespace's init, the runner, this program
    )
    # One worker: one runner for them all, but where a program had it retired.
    programs = [leaves_files_and_a_daemon + FAILING_TEST, follower, leaves_a_sysv_segment + FAILING_TEST, follower]
    results = run_programs(programs, timeout=5, workers=1, level=namespaced_level)
    assert [result.status for result in results] == ["failed", "passed", "failed", "passed"], results
    assert _none_left(token)


def copy_sandbox(folder: Path) -> None:
    """The sandbox package alone under ``folder/kit/evaluate/``, as a clone holds it, but with nothing else of
    kit: it imports only the standard library and itself."""
    package = folder / "kit" / "evaluate" / "sandbox"
    shutil.copytree(Path(sandbox.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    for parent in (folder / "kit", folder / "kit" / "evaluate"):
        (parent / "__init__.py").write_text("")
    for path in (folder / "kit", *(folder / "kit").rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


# Programs of an unprivileged scorer run as its own user and could reach the runner they share.
UNPRIVILEGED = ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}", "--clear-groups", "--"]
UNPRIVILEGED_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from kit.evaluate import sandbox
level = sys.argv[2]
problem = sandbox.isolation_unavailable(level)
attacks = [
    "import os, resource\\nresource.prlimit(os.getppid(), resource.RLIMIT_NPROC, (1, 1))",
    "import os\\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "import os\\nos.sched_setaffinity(os.getppid(), {0})",
    "import os\\nos.chmod('/tmp/.tunebook-output', 0)\\nos.chmod('/tmp', 0)",
    "open('/tmp/.tunebook-output/junk', 'wb').write(b'x' * 30 * 1024**2)",
    "import os\\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(1)",
]
good = "import subprocess\\nsubprocess.run(['true'], check=True)\\nprint('x' * 10**6)"
programs = [program for attack in attacks for program in (attack + "\\nassert False", good)]
statuses = [] if problem else [result.status for result in sandbox.run_programs(programs, 5, 1, level)]
print(json.dumps({"problem": problem, "statuses": statuses}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user takes root")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system interpreter an unprivileged user can run")
def test_as_an_unprivileged_user_programs_cannot_hamper_the_runner_they_share(namespaced_level: str) -> None:
    # A copy of the module and the script where any user can read them, run by an unassigned user.
    folder = Path(tempfile.mkdtemp(prefix="sandbox-unprivileged-"))
    try:
        folder.chmod(0o755)
        copy_sandbox(folder)
        (folder / "script.py").write_text(UNPRIVILEGED_SCRIPT)
        command = [*UNPRIVILEGED, "/usr/bin/python3", str(folder / "script.py"), str(folder), namespaced_level]
        completed = subprocess.run(command, capture_output=True, text=True, cwd="/", env={"HOME": "/"}, timeout=120)
    finally:
        shutil.rmtree(folder)
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout)
    if outcome["problem"]:
        _unavailable(namespaced_level, f"for an unprivileged user, {outcome['problem']}")
    assert outcome["statuses"] == ["failed", "passed"] * 6


# Run by the interpreter of a virtual environment under /tmp, as a clone made there runs kit (the
# sandbox module is beside it, as kit/ is): one runner runs the programs, then says if it still serves.
CLONE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from kit.evaluate import sandbox
level, programs = sys.argv[2], json.loads(sys.argv[3])
problem = sandbox.isolation_unavailable(level)
results, serving = [], False
if not problem:
    runner = sandbox._Runner(level)
    results = [runner.run(program, 5) for program in programs]
    serving = runner.usable
    runner.close()
outcome = {"problem": problem, "statuses": [result.status for result in results], "serving": serving}
print(json.dumps({**outcome, "stderr": [result.stderr_tail for result in results]}))
"""


@pytest.fixture(params=["the scorer", "an unprivileged scorer"])
def clone_under_tmp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, list[str], str]]:
    """A folder under /tmp with the sandbox module, a file of the scorer's and a virtual environment
    (``.venv``, made by the scorer from a base interpreter it can run); what runs a command as the
    scorer; and that base. The unprivileged scorer owns the folder: only read-only mounts keep its
    programs out."""
    if request.param == "the scorer":
        if not str(tmp_path).startswith("/tmp/"):
            pytest.skip(f"pytest's temporary folder {tmp_path} is not under /tmp")
        folder, user, base = tmp_path, [], sys._base_executable
    else:
        if os.geteuid() != 0:
            pytest.skip("switching to an unprivileged user takes root")
        if not Path("/usr/bin/python3").exists():
            pytest.skip("no system interpreter an unprivileged user can run")
        # Not in pytest's folder, which is root's alone.
        folder = Path(tempfile.mkdtemp(prefix="sandbox-clone-", dir="/tmp"))
        user, base = UNPRIVILEGED, "/usr/bin/python3"
        folder.chmod(0o755)
    clone = folder / "clone"
    clone.mkdir()
    copy_sandbox(clone)
    (clone / "script.py").write_text(CLONE_SCRIPT)
    (clone / "planted.txt").write_text("the scorer's")
    if user:
        for path in (clone, *clone.rglob("*")):
            os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    subprocess.run([*user, base, "-m", "venv", "--without-pip", str(clone / ".venv")], check=True, cwd="/")
    try:
        yield clone, user, base
    finally:
        if user:
            shutil.rmtree(folder)


def test_from_a_virtual_environment_under_tmp_programs_run_namespaced_seeing_only_it(
    namespaced_level: str, clone_under_tmp: tuple[Path, list[str], str]
) -> None:
    clone, user, base = clone_under_tmp
    venv, holder = clone / ".venv", Path("/tmp", clone.relative_to("/tmp").parts[0])
    paths = f"import os\nclone, venv, holder = {str(clone)!r}, {str(venv)!r}, {str(holder)!r}\n"
    sees_only_the_environment = paths + (
        "assert not os.path.exists(f'{clone}/planted.txt'), 'a file beside the environment is in sight'\n"
        "assert os.listdir(clone) == ['.venv'], os.listdir(clone)\n"
        "others = {name for name in os.listdir('/tmp') if not name.startswith('tunebook-sandbox-')}\n"
        "assert others == {'.tunebook-output', os.path.basename(holder)}, others\n"
    )
    writes = [
        "open(f'{venv}/bin/python', 'ab')",
        "open(f'{venv}/planted.txt', 'w')",
        "os.mkdir(f'{venv}/planted')",
        "os.rename(f'{venv}/pyvenv.cfg', f'{venv}/moved.cfg')",
        "os.chmod(venv, 0o777)",
        "open(f'{clone}/planted.txt', 'w')",  # in a folder the sandbox made to hold it
        "os.mkdir(f'{holder}/planted')",
        "os.rmdir(venv)",
    ]
    writes_nothing = paths + f"for write in {writes!r}:\n" + (
        "    try:\n"
        "        eval(write)\n"
        "    except OSError:\n"
        "        continue\n"
        "    raise AssertionError(write)\n"
    )
    finds_it_intact = paths + "assert os.path.isfile(f'{venv}/pyvenv.cfg') and os.listdir(clone) == ['.venv']\n"

    def run(python: str, programs: list[str]) -> dict:
        command = [*user, python, str(clone / "script.py"), str(clone), namespaced_level, json.dumps(programs)]
        completed = subprocess.run(command, capture_output=True, text=True, cwd="/", env={"HOME": "/"}, timeout=120)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    # Where the level works for this scorer at all (its base interpreter lies outside /tmp), it must
    # work from the virtual environment too.
    problem = run(base, [])["problem"]
    if problem:
        _unavailable(namespaced_level, f"for {' '.join(user) or 'this user'}: {problem}")
    outcome = run(str(venv / "bin" / "python"), [sees_only_the_environment, writes_nothing, finds_it_intact])
    assert outcome["problem"] == ""
    assert outcome["statuses"] == ["passed"] * 3, outcome["stderr"]
    # The folders kept for the interpreter neither get wiped after each program nor retire the runner.
    assert outcome["serving"]


def test_children_outliving_the_program_are_killed(level: str) -> None:
    token = _token()
    program = _named(token) + (
        "import os, subprocess, time\n"
        f"subprocess.Popen([{token!r}, '60'], executable='sleep')\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
    )
    if level in NAMESPACED:  # a daemon in a session of its own leaves the program's process group
        program += "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
        program += "    os._exit(0)\n"
    program += "time.sleep(0.2)\nprint('started', file=sys.stderr, flush=True)\n"
    started = time.monotonic()
    result = run_program(program + FAILING_TEST, timeout=5, level=level)
    assert result.status == "failed" and "started" in result.stderr_tail, result.stderr_tail
    assert time.monotonic() - started < 4, "the program's own exit ends the run, not its children's"
    assert _none_left(token)


def test_a_hostile_sample_among_good_ones_changes_none_of_their_verdicts(level: str) -> None:
    good = "import subprocess, time\nsubprocess.run(['true'], check=True)\ntime.sleep(0.2)\nassert sum(range(4)) == 6\n"
    hostile = [
        "while True:\n    pass\n",
        "data = bytearray(3 * 1024**3)\n",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    ]
    if level in NAMESPACED:
        hostile += [
            "open('/tmp/planted.txt', 'w').write('x' * 60 * 1024**2)\n",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        ]
    programs = [program for bad in hostile for program in (good, bad + FAILING_TEST)] + [good]
    results = run_programs(programs, timeout=2, workers=4, level=level)
    statuses = [result.status for result in results]
    assert statuses[0::2] == ["passed"] * (len(hostile) + 1), [result.stderr_tail for result in results[0::2]]
    assert "passed" not in statuses[1::2]


def test_programs_run_in_parallel_and_keep_their_order() -> None:
    programs = ["import time\ntime.sleep(0.5)", "assert False", "import time\ntime.sleep(0.5)", "pass"]
    started = time.monotonic()
    results = run_programs(programs, timeout=5, workers=4)
    assert [result.status for result in results] == ["passed", "failed", "passed", "passed"]
    assert time.monotonic() - started < 1.5 * 0.5 + 1


def test_every_humaneval_reference_solution_passes_and_a_wrong_one_fails() -> None:
    problems = humaneval_problems()
    programs = [problem.program(problem.reference_completion) for problem in problems]
    programs.append(problems[0].program("    return None\n"))
    results = run_programs(programs, timeout=5, workers=2)
    failures = [(p.task_id, r.stderr_tail) for p, r in zip(problems, results) if not r.passed]
    assert failures == []
    assert results[-1].status == "failed"


def test_mbpp_reference_solutions_pass_and_a_wrong_one_fails() -> None:
    problems = mbpp_problems(str(MBPP))[:20]
    programs = [problem.program(problem.reference_completion) for problem in problems]
    # The task's function, defined to return nothing: the asserts must catch it.
    programs.append(problems[0].program("def remove_Occ(s, ch):\n    return None\n"))
    results = run_programs(programs, timeout=5, workers=2)
    assert [result.status for result in results[:-1]] == ["passed"] * 20, [r.stderr_tail for r in results]
    assert results[-1].status == "failed"
