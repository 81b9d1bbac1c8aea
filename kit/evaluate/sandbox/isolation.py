"""The sandbox around a runner, built on the scorer's side: the bubblewrap and namespaces commands that
give it its own namespaces, a read-only filesystem with the home folders and /run hidden, a minimal /dev
and small private tmpfs mounts."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path

from kit.evaluate.sandbox.runner import (
    FILE_SIZE_LIMIT_BYTES,
    OUTPUT_FOLDER,
)

ISOLATION_LEVELS = ("bubblewrap", "namespaces", "process-group")
# /tmp and /dev/shm of a sandbox: they live in memory, so they are capped.
TMPFS_SIZE_BYTES = 64 * 1024**2
OUTPUT_SIZE_BYTES = 2 * FILE_SIZE_LIMIT_BYTES + 1024**2
# Hidden from namespaced programs: credentials (tokens, keys) live in home folders; /run holds sockets.
HIDDEN_FOLDERS = ("/root", "/home", "/run")
# Standard devices bound into the namespaces level's fresh /dev (bubblewrap's --dev makes the same).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Held by a reused runner to switch each program to its user, kill what it leaves and wipe its files.
RUNNER_CAPABILITIES = ("setuid", "setgid", "kill", "chown", "dac_override", "fowner")


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


def sandboxed(level: str, command: list[str], switch_users: bool) -> list[str]:
    if level == "bubblewrap":
        return _bubblewrap_command(command, switch_users)
    if level == "namespaces":
        return _namespaces_command(command, switch_users)
    if level == "process-group":
        return command
    raise ValueError(f"unknown isolation level {level!r}; choose from {ISOLATION_LEVELS}")
