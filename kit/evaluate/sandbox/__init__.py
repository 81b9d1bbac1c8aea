"""Running generated programs: each alone, with resource limits, behind the strongest isolation the OS offers.

Three levels, the strongest that works here chosen once per process (``isolation()``):

- ``bubblewrap``: bwrap gives the programs their own PID, network, mount, IPC and UTS namespaces and
  a read-only view of the filesystem in which the home folders and /run are empty, /dev holds only
  null, zero, random and the like, and /tmp and /dev/shm are small private tmpfs mounts. The
  interpreter's own folders in those (pyenv under /root, a virtual environment under /tmp) are
  shown again, read-only, at their own paths.
- ``namespaces``: the same, made with util-linux's ``unshare``, ``mount`` and ``setpriv`` when
  bwrap is missing or fails.
- ``process-group``: where neither works, the limits and a process group only: a program can then
  read and write what this user can and signal this user's processes. Callers running untrusted
  code refuse it unless the user allows it (``checked_isolation``).

The package's parts: ``isolation`` builds the sandbox around a runner (bwrap's or unshare's command);
``runner`` is what runs inside it, standard library only; this module is the scorer's side (runners,
a pool of them, the isolation level).

In each sandbox a runner (``runner.py``, run by the scorer's interpreter with ``-c``) serves one worker
and forks a child per program: a warm interpreter starts a program in about a millisecond where a
fresh one takes tens. The child gets a folder of its own, a clean environment, CPU, memory, file-size
and (namespaced) process limits, is first in line for the OOM killer and, where the scorer is root,
runs as a user of its own. When it ends, or its time does, the runner kills everything it started
and (namespaced) empties /tmp and /dev/shm, so that nothing of one program reaches the next; where
that is not certain (SysV IPC objects, files it could not remove) the runner retires, and a fresh
one in a fresh sandbox takes over. A program passes only if it exits 0 after printing a random marker
that the harness appends after its tests, so exiting early or printing the wrong thing fails it.

Not covered:

- The filesystem stays readable: what any user may read when the scorer is root, or the scorer's own
  files outside the hidden folders when it is not.
- Unix sockets with a path outside /run can still be connected to (as root, only those any user may open).
- The kernel is shared (no seccomp filter), so a kernel exploit escapes.
- The memory of a program's processes together is capped only by 32 x 2 GiB, and CPU is not divided
  between concurrent programs beyond the kernel's scheduling: a hostile program can slow its
  neighbours until its own timeout ends it.
- The verdict guards against accidents, not forgery: the marker is in the program's source and memory,
  and asserts can be fooled (an object equal to everything).
- At the process-group level a program can read and write whatever the scorer's user can, signal that
  user's processes, use the network and leave daemons that reach later programs: trusted code only.
- When the scorer is not root, programs run as the runner's own user: the runner makes itself
  non-dumpable and is replaced when a program changed its limits, priority or CPU affinity.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import secrets
import select
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kit.evaluate.sandbox.isolation import ISOLATION_LEVELS, sandboxed
from kit.evaluate.sandbox.runner import (
    MINIMAL_PATH,
    PREIMPORTED,
    STDERR_TAIL_CHARS,
    exits_within,
    kill_group,
    removed_all,
)

if TYPE_CHECKING:
    from kit.core.progress import Progress

# Where a namespaced level's tool is missing: how to install it (Debian's packages).
INSTALL_HINTS = {"bubblewrap": "apt-get install bubblewrap", "namespaces": "apt-get install util-linux"}
# As root, each program runs as a user of its own from this range, which no real user has: root is
# exempt from the cap on processes and may open any file, and programs sharing a user could signal
# each other and would share one count of processes.
SANDBOX_UID_BASE = 2_000_000_000
SANDBOX_UID_COUNT = 2**20
PREIMPORTED += ("math", "operator", "random", "re", "string", "typing")
# Beyond a program's own timeout, for a runner to start (or to be found hung).
RUNNER_GRACE_SECONDS = 10
TRIAL_TIMEOUT_SECONDS = 30

# A random start, so that scorers running side by side draw different users.
_next_uid = itertools.count(secrets.randbelow(SANDBOX_UID_COUNT))


class WeakIsolationError(RuntimeError):
    """Programs would run in a process group alone, and the user has not allowed it."""


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # "passed", "failed" or "timeout"
    stderr_tail: str
    isolation: str = ""  # the level it ran under, one of ISOLATION_LEVELS

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    level: str  # the strongest that works here, one of ISOLATION_LEVELS
    failures: dict[str, str]  # why each stronger level does not work here

    @property
    def why_not_stronger(self) -> str:
        return "; ".join(f"{level}: {problem}" for level, problem in self.failures.items())

    def __str__(self) -> str:
        """One line for the log, ``sandbox: bubblewrap``; where stronger levels fail, why, in brackets."""
        return f"sandbox: {self.level}" + (f" ({self.why_not_stronger})" if self.failures else "")


# The scorer's side: runners, a pool of them, and the isolation level.


@functools.cache
def _runner_source() -> str:
    return (Path(__file__).parent / "runner.py").read_text()


class _Runner:
    """A runner in its own sandbox: programs go in on its stdin, their verdicts come out on its stdout."""

    def __init__(self, level: str) -> None:
        self.level = level
        namespaced = level != "process-group"
        # As root, each program gets a user of its own: it cannot signal or trace the runner, read
        # its output, or open root's files, and the cap on processes counts its processes alone.
        self.switch_users = namespaced and os.geteuid() == 0
        self.usable = True
        self._pending = b""
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (the runner's stderr, open while it runs)
        options = json.dumps({"switch_users": self.switch_users, "namespaced": namespaced})
        python = [sys.executable, "-I", "-B", "-S", "-c", _runner_source(), options]
        # Without a sandbox, a folder on the host for the runner's files, removed with the runner
        # even if a program killed it.
        self._host_folder = None if namespaced else tempfile.mkdtemp(prefix="tunebook-runner-")
        self._process = subprocess.Popen(
            sandboxed(level, python, self.switch_users),
            cwd="/",
            env={"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "TMPDIR": self._host_folder or "/tmp"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            start_new_session=True,
        )

    def run(self, program: str, timeout: float) -> ExecutionResult:
        uid = SANDBOX_UID_BASE + next(_next_uid) % SANDBOX_UID_COUNT if self.switch_users else None
        request = json.dumps({"program": program, "timeout": timeout, "uid": uid}) + "\n"
        deadline = time.monotonic() + timeout + RUNNER_GRACE_SECONDS
        try:
            self._process.stdin.write(request.encode())
            self._process.stdin.flush()
            answer = self._answer(deadline)
        except BrokenPipeError:  # the runner is gone: its sandbox did not start, or a program killed it
            answer = None
        if answer is None:
            self.usable = False
            status = "timeout" if time.monotonic() >= deadline else "failed"
            self.close()
            return ExecutionResult(status, self._errors_tail, self.level)
        self.usable = not answer["retire"]
        return ExecutionResult(answer["status"], answer["stderr_tail"], self.level)

    def _answer(self, deadline: float) -> dict | None:
        """The runner's next line, or None when it ends or the deadline passes first."""
        descriptor = self._process.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
                return None
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        """End the runner (its stdin closing ends its loop) and with it the sandbox and all in it."""
        if self._process.returncode is not None:  # closed already
            return
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        exits_within(self._process.pid, RUNNER_GRACE_SECONDS)
        kill_group(self._process.pid)
        self._process.wait()
        self._process.stdout.close()
        self._errors_tail = self._read_errors()
        if self._host_folder:
            removed_all(self._host_folder)

    def _read_errors(self) -> str:
        self._errors.seek(0)
        text = self._errors.read().decode("utf-8", errors="replace")[-STDERR_TAIL_CHARS:]
        self._errors.close()
        return text


@functools.cache
def isolation_unavailable(level: str) -> str:
    """Why ``level`` does not work on this machine, "" when it does: tried once with a trivial program."""
    try:
        result = run_programs(["pass"], TRIAL_TIMEOUT_SECONDS, 1, level)[0]
    except FileNotFoundError as error:  # the level's tool is missing
        return f"{error.filename} not found" + (f": {INSTALL_HINTS[level]}" if level in INSTALL_HINTS else "")
    except OSError as error:
        return str(error)
    # A traceback's last line says what went wrong; the frames are the in-sandbox runner's.
    said = result.stderr_tail.strip().splitlines()
    return "" if result.passed else f"{result.status}: {said[-1] if said else 'no output'}"


@functools.cache
def strongest_isolation() -> Isolation:
    """The strongest isolation level that works here, and why each stronger one does not."""
    failures = {}
    for level in ISOLATION_LEVELS:
        problem = isolation_unavailable(level)
        if not problem:
            return Isolation(level, failures)
        failures[level] = problem
    raise RuntimeError(f"no way to run programs here: {failures['process-group']}")


def isolation() -> str:
    """The strongest isolation level that works here: the one programs run at unless told another."""
    return strongest_isolation().level


def checked_isolation(allow_weak: bool, opt_in: str) -> Isolation:
    """The strongest isolation here, refused where it is a process group alone unless ``allow_weak``:
    untrusted programs could then read and write what this user can. ``opt_in`` says how to allow it."""
    chosen = strongest_isolation()
    if chosen.level == "process-group" and not allow_weak:
        raise WeakIsolationError(
            f"no sandbox for generated programs here ({chosen.why_not_stronger}); in a process group alone they "
            f"could read and write what this user can. Make one of those work, or, for trusted code only, {opt_in}"
        )
    return chosen


def run_program(program: str, timeout: float, level: str | None = None) -> ExecutionResult:
    """Run a Python program; it passes when it exits 0 having reached its last line.

    The check of the last line is a random marker the program prints when it ends, so a completion
    that calls ``exit(0)`` or ``os._exit(0)`` before the asserts run fails rather than passes.
    ``level`` forces an isolation level; by default the strongest that works here.
    """
    return run_programs([program], timeout, 1, level)[0]


def run_programs(
    programs: list[str], timeout: float, workers: int, level: str | None = None, progress: Progress | None = None
) -> list[ExecutionResult]:
    """Run programs ``workers`` at a time, each worker feeding a runner; results in order, each one
    counted on ``progress`` as it finishes."""
    level = level or isolation()
    idle: queue.SimpleQueue[_Runner] = queue.SimpleQueue()

    def run(program: str) -> ExecutionResult:
        try:
            runner = idle.get_nowait()
        except queue.Empty:
            runner = _Runner(level)
        try:
            return runner.run(program, timeout)
        finally:
            if progress is not None:
                progress.advance()
            if runner.usable:
                idle.put(runner)
            else:
                runner.close()

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, programs))
    finally:
        while not idle.empty():
            idle.get_nowait().close()


