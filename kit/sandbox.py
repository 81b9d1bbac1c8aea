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

In each sandbox a runner (this module, run by the scorer's interpreter with ``-c``) serves one worker
and forks a child per program: a warm interpreter starts a program in about a millisecond where a
fresh one takes tens. The child gets a folder of its own, a clean environment, CPU, memory, file-size
and (namespaced) process limits, is first in line for the OOM killer and, where the scorer is root,
runs as a user of its own. When it ends, or its time does, the runner kills everything it started
and (namespaced) empties /tmp and /dev/shm, so that nothing of one program reaches the next; where
that is not certain (SysV IPC objects, files it could not remove) the runner retires, and a fresh
one in a fresh sandbox takes over.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import functools
import importlib
import io
import itertools
import json
import math
import os
import queue
import resource
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # not imported at run time: this file also runs alone, inside the sandbox
    from kit.progress import Progress

ISOLATION_LEVELS = ("bubblewrap", "namespaces", "process-group")
# Where a namespaced level's tool is missing: how to install it (Debian's packages).
INSTALL_HINTS = {"bubblewrap": "apt-get install bubblewrap", "namespaces": "apt-get install util-linux"}
MEMORY_LIMIT_BYTES = 2 * 1024**3
FILE_SIZE_LIMIT_BYTES = 16 * 1024**2
# /tmp and /dev/shm of a sandbox: they live in memory, so they are capped.
TMPFS_SIZE_BYTES = 64 * 1024**2
# Inside a sandbox, a tmpfs of the runner's own for the programs' output, which they cannot fill.
OUTPUT_FOLDER = "/tmp/.tunebook-output"
OUTPUT_SIZE_BYTES = 2 * FILE_SIZE_LIMIT_BYTES + 1024**2
# Processes and threads of one program together.
PROCESS_LIMIT = 32
# As root, each program runs as a user of its own from this range, which no real user has: root is
# exempt from the cap on processes and may open any file, and programs sharing a user could signal
# each other and would share one count of processes.
SANDBOX_UID_BASE = 2_000_000_000
SANDBOX_UID_COUNT = 2**20
STDERR_TAIL_CHARS = 2000
# System tools only: the parent's PATH (its virtual environment, the user's folders) is not passed on.
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
# Hidden from namespaced programs: credentials (tokens, keys) live in home folders; /run holds sockets.
HIDDEN_FOLDERS = ("/root", "/home", "/run")
# Standard devices bound into the namespaces level's fresh /dev (bubblewrap's --dev makes the same).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# What the benchmarks' programs import, loaded once by a reused runner rather than by every program.
PREIMPORTED = ("array", "bisect", "cmath", "collections", "copy", "functools", "hashlib", "heapq", "itertools")
PREIMPORTED += ("math", "operator", "random", "re", "string", "typing")
# Held by a reused runner to switch each program to its user, kill what it leaves and wipe its files.
RUNNER_CAPABILITIES = ("setuid", "setgid", "kill", "chown", "dac_override", "fowner")
# Beyond a program's own timeout, for a runner to start (or to be found hung).
RUNNER_GRACE_SECONDS = 10
PR_SET_DUMPABLE = 4
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


# The sandbox around a runner, built on the scorer's side.


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


@functools.cache
def _existing_hidden_folders() -> tuple[str, ...]:
    """HIDDEN_FOLDERS and the user's home that exist, but for one in /tmp, which the sandbox's own /tmp hides."""
    candidates = [folder for folder in dict.fromkeys([*HIDDEN_FOLDERS, str(Path.home())]) if os.path.isdir(folder)]
    return tuple(folder for folder in candidates if folder != "/" and not _inside(folder, "/tmp"))


@functools.cache
def _interpreter_folders() -> tuple[str, ...]:
    """What the runner's interpreter reads as it starts: its prefixes (a virtual environment's, holding
    bin/python and pyvenv.cfg, and its base's) and the folder of each link from sys.executable on to the
    file itself, at the paths they are named by and at their real ones."""
    links = [sys.executable]
    while os.path.islink(links[-1]):
        links.append(os.path.join(os.path.dirname(links[-1]), os.readlink(links[-1])))
    named = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *map(os.path.dirname, links)]
    forms = {form for path in named for form in (os.path.normpath(path), os.path.realpath(path))}
    return tuple(sorted(form for form in forms if os.path.isdir(form)))


@functools.cache
def _kept_folders() -> tuple[str, ...]:
    """The interpreter's folders that the sandbox would hide (pyenv under /root, a virtual environment
    under /tmp), shown again read-only; none inside another."""
    hiding = (*_existing_hidden_folders(), "/tmp")
    hidden = [folder for folder in _interpreter_folders() if any(_inside(folder, other) for other in hiding)]
    return tuple(folder for folder in hidden if not any(_inside(folder, other) for other in hidden))


@functools.cache
def _hidden_folders() -> tuple[str, ...]:
    """Each a small read-only tmpfs in the sandbox, showing only the kept folders inside it: the existing
    hidden folders, and each entry of /tmp that leads to a kept folder (the rest of the host's /tmp is
    out of sight behind the sandbox's own)."""
    in_tmp = [Path(folder).relative_to("/tmp").parts[0] for folder in _kept_folders() if _inside(folder, "/tmp")]
    return (*_existing_hidden_folders(), *(f"/tmp/{entry}" for entry in dict.fromkeys(in_tmp)))


def _parents_in_hidden_folder(path: str) -> list[str]:
    """The folders between ``path`` and the hidden folder holding it, which bwrap must make (0755)."""
    for hidden in _hidden_folders():
        if _inside(path, hidden):
            parts = Path(path).relative_to(hidden).parts[:-1]
            return [str(Path(hidden, *parts[: depth + 1])) for depth in range(len(parts))]
    return []


def _bubblewrap_command(command: list[str], switch_users: bool) -> list[str]:
    if switch_users:
        # As root, no user namespace (it would map the programs to root outside): the runner keeps
        # the capabilities it needs, which the programs lose when they switch user.
        arguments = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        arguments.append("--unshare-cgroup-try")
        for capability in RUNNER_CAPABILITIES:
            arguments += ["--cap-add", f"CAP_{capability.upper()}"]
    else:
        # A user namespace of the user's own, in which bwrap drops every capability.
        arguments = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns"]
    # The sandbox dies with this process; --new-session keeps it off the scorer's terminal and group.
    arguments += ["--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for private in ("/tmp", "/dev/shm"):
        arguments += ["--perms", "1777", "--size", str(TMPFS_SIZE_BYTES), "--tmpfs", private]
    arguments += ["--perms", "0700", "--size", str(OUTPUT_SIZE_BYTES), "--tmpfs", OUTPUT_FOLDER]
    # After /tmp's tmpfs, which would cover those in it; bwrap binds from the host's tree all the same.
    for hidden in _hidden_folders():
        arguments += ["--perms", "0755", "--size", "4096", "--tmpfs", hidden]
    for kept in _kept_folders():
        for parent in _parents_in_hidden_folder(kept):
            arguments += ["--perms", "0755", "--dir", parent]
        arguments += ["--ro-bind", kept, kept]
    # bwrap's /dev is a tmpfs of unbounded size: read-only, its device nodes still work.
    for read_only in (*_hidden_folders(), "/dev"):
        arguments += ["--remount-ro", read_only]
    return [*arguments, "--chdir", "/tmp", "--", *command]


@functools.cache
def _namespaces_script() -> str:
    """Run by ``sh`` with all capabilities in fresh namespaces, its arguments the command.

    It makes every mount read-only, then builds what bubblewrap would (private /tmp and /dev/shm, a
    fresh /dev, hidden folders with the interpreter's own shown again) and runs the command, which
    drops the capabilities. Any step failing fails the run: nothing runs half-isolated.
    """
    size = f"size={TMPFS_SIZE_BYTES},mode=1777,nosuid,nodev"
    hidden = [shlex.quote(folder) for folder in _hidden_folders()]
    in_tmp = [shlex.quote(folder) for folder in _hidden_folders() if _inside(folder, "/tmp")]
    # Each kept folder held open from the start (sh numbers descriptors up to 9), to be bound from its
    # descriptor once tmpfs mounts cover its path: --no-canonicalize, or mount would look the path up.
    descriptors = {shlex.quote(folder): 3 + index for index, folder in enumerate(_kept_folders())}
    lines = [
        "set -eu",
        "umask 022",
        *(f"exec {descriptor}<{folder}" for folder, descriptor in descriptors.items()),
        # /proc is this PID namespace's own, mounted by unshare; what is under /dev gets covered.
        "IFS='\n'",
        "for target in $(awk '{print $5}' /proc/self/mountinfo); do",
        '  case $target in /proc|/proc/*|/dev/*) ;; *) mount -n -o remount,bind,ro "$target" ;; esac',
        "done",
        "IFS=' '",
        f"mount -n -t tmpfs -o {size} tmpfs /tmp",
        f"mkdir {OUTPUT_FOLDER}",
        f"mount -n -t tmpfs -o size={OUTPUT_SIZE_BYTES},mode=700,nosuid,nodev tmpfs {OUTPUT_FOLDER}",
        "mkdir /tmp/.stage",
        # The host's device nodes, each moved aside and back onto a fresh /dev (no disks, no ptys).
        f"devices='{' '.join(DEVICES)}'",
        'for node in $devices; do : >"/tmp/.stage/$node"; mount -n --bind "/dev/$node" "/tmp/.stage/$node"; done',
        "mount -n -t tmpfs -o size=1m,mode=755,nosuid tmpfs /dev",
        'for node in $devices; do : >"/dev/$node"; mount -n --move "/tmp/.stage/$node" "/dev/$node"; done',
        "mkdir /dev/shm",
        "ln -s /proc/self/fd /dev/fd",
        "mount -n -o remount,bind,ro /dev",
        f"mount -n -t tmpfs -o {size} tmpfs /dev/shm",
    ]
    lines += [f"mkdir {folder}" for folder in in_tmp]  # mount points on the sandbox's fresh /tmp
    lines += [f"mount -n -t tmpfs -o size=4096,mode=755,nosuid,nodev tmpfs {folder}" for folder in hidden]
    for folder, descriptor in descriptors.items():
        lines += [f"mkdir -p {folder}", f"mount -n --no-canonicalize --rbind /proc/self/fd/{descriptor} {folder}"]
        lines.append(f"exec {descriptor}<&-")
    lines += [f"mount -n -o remount,bind,ro {folder}" for folder in hidden]
    lines += [
        "rm -r /tmp/.stage",
        "cd /tmp",
        # Not exec: this shell stays PID 1, so the runner's exit ends the namespace and all in it.
        "status=0",
        'setsid --wait "$@" || status=$?',
        "exit $status",
    ]
    return "\n".join(lines)


def _namespaces_command(command: list[str], switch_users: bool) -> list[str]:
    if switch_users:
        # As root, no user namespace (it would map the programs to root outside): the runner keeps
        # the capabilities it needs, which the programs lose when they switch user.
        user = []
        bounding = ",".join(["-all", *(f"+{capability}" for capability in RUNNER_CAPABILITIES)])
    else:
        user, bounding = ["--user", "--map-root-user"], "-all"
    namespaces = [*user, "--mount", "--pid", "--fork", "--mount-proc", "--net", "--ipc", "--uts", "--cgroup"]
    unprivileged = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs"]
    script = ["/bin/sh", "-c", _namespaces_script(), "sandbox", *unprivileged, "--", *command]
    return ["unshare", *namespaces, "--kill-child", "--", *script]


def _sandboxed(level: str, command: list[str], switch_users: bool) -> list[str]:
    if level == "bubblewrap":
        return _bubblewrap_command(command, switch_users)
    if level == "namespaces":
        return _namespaces_command(command, switch_users)
    if level == "process-group":
        return command
    raise ValueError(f"unknown isolation level {level!r}; choose from {ISOLATION_LEVELS}")


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    descriptor = os.pidfd_open(pid)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _exits_within(pid: int, seconds: float) -> bool:
    """Whether the process ends within ``seconds``: woken the moment it does (Popen.wait polls)."""
    with _pidfd(pid) as exited:
        return bool(select.select([exited], [], [], seconds)[0])


def _kill_group(process_group: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group had already ended
        os.killpg(process_group, signal.SIGKILL)


def _tail(path: Path, chars: int) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - chars * 4))
        return handle.read().decode("utf-8", errors="replace")[-chars:]


# The runner, inside the sandbox: this module run with ``python -c``.


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
        timed_out = not _exits_within(child, timeout)
    finally:
        # Not yet reaped, the child still names its group: it and what it started, unless that left
        # the group, which only a PID namespace of its own catches.
        _kill_group(child)
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
        retire = not _removed(*_shared_entries()) or _ipc_objects_left()
    else:
        _removed(folder)  # on the host: what it wrote anywhere else stays, as the level allows
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


def _removed(*paths: str) -> bool:
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


# The scorer's side: runners, a pool of them, and the isolation level.


@functools.cache
def _runner_source() -> str:
    return Path(__file__).read_text()


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
            _sandboxed(level, python, self.switch_users),
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
        _exits_within(self._process.pid, RUNNER_GRACE_SECONDS)
        _kill_group(self._process.pid)
        self._process.wait()
        self._process.stdout.close()
        self._errors_tail = self._read_errors()
        if self._host_folder:
            _removed(self._host_folder)

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


if __name__ == "__main__":
    _serve(**json.loads(sys.argv[1]))
