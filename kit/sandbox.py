"""Running generated programs: each in its own process group, temporary folder and resource limits.

This contains mistakes, not attackers: a program runs as the same user without namespaces or
syscall filters. It cannot hang the evaluation, outlive it, exhaust memory, write large files,
read the parent's environment (tokens), or litter the working folder. Evaluate untrusted models
in a container as well.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MEMORY_LIMIT_BYTES = 2 * 1024**3
FILE_SIZE_LIMIT_BYTES = 16 * 1024**2
STDERR_TAIL_CHARS = 2000
# System tools only: the parent's PATH (its virtual environment, the user's folders) is not passed on.
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # "passed", "failed" or "timeout"
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limit_resources(cpu_seconds: int) -> None:
    """Runs in the child between fork and exec, so it does nothing but set limits."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT_BYTES, FILE_SIZE_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Last: until exec this is a copy of the (possibly large) parent, which must not need to grow.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _kill_group(process_group: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group had already ended
        os.killpg(process_group, signal.SIGKILL)


def _tail(path: Path, chars: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - chars * 4))
        return handle.read().decode("utf-8", errors="replace")[-chars:]


def run_program(program: str, timeout: float) -> ExecutionResult:
    """Run a Python program; it passes when it exits 0 having reached its last line.

    The check of the last line is a random marker the program prints when it ends, so a completion
    that calls ``exit(0)`` or ``os._exit(0)`` before the asserts run fails rather than passes.
    """
    marker = f"tunebook-finished-{secrets.token_hex(8)}"
    source = f"{program}\n\nprint({marker!r}, flush=True)\n"
    with tempfile.TemporaryDirectory(prefix="tunebook-sandbox-") as folder:
        workdir = Path(folder)
        (workdir / "program.py").write_text(source)
        stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        # The whole environment: nothing of the parent's (tokens, credentials) reaches the program.
        environment = {
            "PATH": MINIMAL_PATH,
            "HOME": folder,
            "TMPDIR": folder,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        }
        cpu_seconds = math.ceil(timeout) + 1
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            # -I: ignore PYTHON* variables and the user's site-packages; -B: no bytecode files.
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", "program.py"],
                cwd=folder,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=lambda: _limit_resources(cpu_seconds),
            )
            try:
                returncode = process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The group's leader is the program: this also ends children it left running.
                _kill_group(process.pid)
                process.wait()
        stderr_tail = _tail(stderr_path, STDERR_TAIL_CHARS)
        if timed_out:
            return ExecutionResult("timeout", stderr_tail)
        finished = _tail(stdout_path, len(marker) + 2).rstrip("\n").endswith(marker)
        return ExecutionResult("passed" if returncode == 0 and finished else "failed", stderr_tail)


def run_programs(programs: list[str], timeout: float, workers: int) -> list[ExecutionResult]:
    """Run programs ``workers`` at a time (threads waiting on subprocesses); results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, timeout), programs))
