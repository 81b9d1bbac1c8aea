"""The runner, inside the sandbox: run by the scorer's interpreter as ``python -c <this file's source>``.

It serves one worker: a program (a JSON line) in on stdin, its verdict out on stdout, each program in a
forked child with its own folder, environment and limits, and nothing it started or wrote left for the
next. It imports the standard library alone (tests/test_layers.py checks it): nothing else is there.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import importlib
import io
import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import sys
import tempfile
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

MEMORY_LIMIT_BYTES = 2 * 1024**3
FILE_SIZE_LIMIT_BYTES = 16 * 1024**2
# Inside a sandbox, a tmpfs of the runner's own for the programs' output, which they cannot fill.
OUTPUT_FOLDER = "/tmp/.tunebook-output"
# Processes and threads of one program together.
PROCESS_LIMIT = 32
STDERR_TAIL_CHARS = 2000
# System tools only: the parent's PATH (its virtual environment, the user's folders) is not passed on.
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
# What the benchmarks' programs import, loaded once by a reused runner rather than by every program.
PREIMPORTED = ("array", "bisect", "cmath", "collections", "copy", "functools", "hashlib", "heapq", "itertools")
PR_SET_DUMPABLE = 4


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    descriptor = os.pidfd_open(pid)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def exits_within(pid: int, seconds: float) -> bool:
    """Whether the process ends within ``seconds``: woken the moment it does (Popen.wait polls)."""
    with _pidfd(pid) as exited:
        return bool(select.select([exited], [], [], seconds)[0])


def kill_group(process_group: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group had already ended
        os.killpg(process_group, signal.SIGKILL)


def _tail(path: Path, chars: int) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - chars * 4))
        return handle.read().decode("utf-8", errors="replace")[-chars:]


def _serve(switch_users: bool, namespaced: bool) -> None:
    """One request (a JSON line) in on stdin, one answer out on stdout, until stdin closes."""
    for name in PREIMPORTED:
        importlib.import_module(name)
    if namespaced and not switch_users:
        # Programs run as the runner's own user here: non-dumpable, it cannot be traced or have its
        # memory written by one of them, which could then forge the verdicts of those after it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    state = _runner_state()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        answer = _run_one(request["program"], request["timeout"], request["uid"], namespaced)
        answer["retire"] |= namespaced and _runner_state() != state
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _runner_state() -> tuple:
    """What a program of the runner's own user could change in it to hamper the programs after it."""
    limits = [resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")]
    return limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)


def _run_one(program: str, timeout: float, uid: int | None, namespaced: bool) -> dict:
    """Run one program in a forked child; it passes when it exits 0 having reached its last line.

    Once it ends, everything it started is killed and (namespaced) everything it wrote is removed,
    so that nothing of it is left to reach the next program.
    """
    marker = f"tunebook-finished-{secrets.token_hex(8)}"
    source = f"{program}\n\nprint({marker!r}, flush=True)\n"
    # The runner's own folder (0700) for the output, made once the last program's processes are dead,
    # so that none of them could have prepared it; a program of a user of its own cannot reach it.
    private = Path(tempfile.mkdtemp(prefix="tunebook-output-", dir=OUTPUT_FOLDER if namespaced else None))
    folder = tempfile.mkdtemp(prefix="tunebook-sandbox-")
    Path(folder, "program.py").write_text(source)
    if uid is not None:
        os.chown(folder, uid, uid)
    stdout_path, stderr_path = private / "stdout.txt", private / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        child = os.fork()
        if child == 0:
            limits = _limits(math.ceil(timeout) + 1, cap_processes=namespaced)
            _run_in_this_child(folder, source, uid, limits, stdout.fileno(), stderr.fileno())
    try:
        timed_out = not exits_within(child, timeout)
    finally:
        # Not yet reaped, the child still names its group: it and what it started, unless that left
        # the group, which only a PID namespace of its own catches.
        kill_group(child)
        if namespaced:
            _kill_all_programs()
            for shared, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), (OUTPUT_FOLDER, 0o700)):
                os.chmod(shared, mode)  # as the runner's own user, the program may have changed them
        returncode = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    stderr_tail = _tail(stderr_path, STDERR_TAIL_CHARS)
    finished = _tail(stdout_path, len(marker) + 2).rstrip("\n").endswith(marker)
    shutil.rmtree(private)
    if namespaced:
        # Where some of what it wrote cannot go, or SysV IPC objects (which outlive their processes)
        # are left, the runner retires: its sandbox ends with it.
        retire = not removed_all(*_shared_entries()) or _ipc_objects_left()
    else:
        removed_all(folder)  # on the host: what it wrote anywhere else stays, as the level allows
        retire = False
    status = "timeout" if timed_out else "passed" if returncode == 0 and finished else "failed"
    return {"status": status, "stderr_tail": stderr_tail, "retire": retire}


def _limits(cpu_seconds: int, cap_processes: bool) -> dict[int, int]:
    limits = {
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: FILE_SIZE_LIMIT_BYTES,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_AS: MEMORY_LIMIT_BYTES,
    }
    # It counts a user's processes (per user namespace): only set where the program has its own.
    if cap_processes:
        limits[resource.RLIMIT_NPROC] = PROCESS_LIMIT
    return limits


def _run_in_this_child(
    folder: str, source: str, uid: int | None, limits: dict[int, int], stdout: int, stderr: int
) -> NoReturn:
    """The forked child: its limits, its user, a fresh ``__main__``, then the program; never returns.

    Anything failing before the program runs (a user that cannot be switched to) fails the program.
    """
    status = 1
    try:
        os.setsid()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # the runner's channels
        for kind, limit in limits.items():
            # The CPU limit's hard value one second on: SIGXCPU first, then SIGKILL.
            resource.setrlimit(kind, (limit, limit + 1 if kind == resource.RLIMIT_CPU else limit))
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # from root to another user: every capability goes
        # Dumpable again (a switch of user, or the runner, made it not): its /proc files are its own.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        Path("/proc/self/oom_score_adj").write_text("1000")
        os.chdir(folder)
        # The whole environment: nothing of the scorer's (tokens, credentials) reaches the program.
        os.environ.clear()
        os.environ.update(PATH=MINIMAL_PATH, HOME=folder, TMPDIR=folder, LANG="C.UTF-8", PYTHONHASHSEED="0")
        tempfile.tempdir = None
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        sys.modules["random"].seed()  # else every program repeats the runner's random numbers
        path = os.path.join(folder, "program.py")
        main = types.ModuleType("__main__")
        main.__file__, main.__builtins__ = path, builtins
        sys.modules["__main__"], sys.argv = main, [path]
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
        status = 0
    except SystemExit as exit:
        status = _exit_status(exit.code)
    except BaseException as error:
        # The program's traceback, from its own first frame on.
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _exit_status(code: object) -> int:
    """What the interpreter would exit with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _kill_all_programs() -> None:
    """Kill every process the runner may signal: in its PID namespace, that is all but it and init."""
    if os.getppid() != 1:  # never outside a PID namespace of its own, where -1 means the whole machine
        raise RuntimeError("a namespaced runner must run under its PID namespace's init")
    os.kill(-1, signal.SIGKILL)


def _shared_entries() -> list[str]:
    """What is in the sandbox's /tmp, /dev/shm and output folder (the last program's folder included),
    but the mounts the sandbox made there (the output folder, those holding the interpreter's folders),
    which no program can make."""
    entries = [entry.path for shared in ("/tmp", "/dev/shm", OUTPUT_FOLDER) for entry in os.scandir(shared)]
    return [entry for entry in entries if not os.path.ismount(entry)]


def _ipc_objects_left() -> bool:
    return any(len(Path(f"/proc/sysvipc/{kind}").read_text().splitlines()) > 1 for kind in ("shm", "msg", "sem"))


def removed_all(*paths: str) -> bool:
    """Delete what a program left, though it may have closed its folders to itself; False on failure."""
    try:
        for path in paths:
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                for root, folders, _ in os.walk(path):
                    for folder in folders:
                        if not os.path.islink(os.path.join(root, folder)):
                            os.chmod(os.path.join(root, folder), 0o700)
                shutil.rmtree(path)
            else:
                os.unlink(path)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    _serve(**json.loads(sys.argv[1]))
