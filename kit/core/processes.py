"""Whether a process that left something behind (a staging folder, a RUNNING MLflow run) still lives."""

from __future__ import annotations

import os
import socket


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def this_process() -> str:
    """``host:pid``: who owns what this process opens."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str | None) -> bool:
    """True for an owner (``host:pid``) of this machine whose process has ended; others cannot be told."""
    host, _, pid = (owner or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
