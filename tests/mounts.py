"""Commands run over a real full or read-only filesystem: a user and mount namespace of their own
(``unshare -Urm``) mounts it over a folder, for that command alone, with no root needed."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MOUNTS = {
    # A tmpfs of this size over the folder: writes beyond it fail with ENOSPC.
    "small disk": 'mount -t tmpfs -o size={size} tmpfs "$0"',
    # The folder bound onto itself read-only: writes fail with EROFS.
    "read-only": 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"',
}


@functools.cache
def namespaces_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


def run_over(kind: str, folder: Path, argv: list[str], size: str = "3m", **options) -> subprocess.CompletedProcess:
    """``argv`` run with ``folder`` replaced by a filesystem of ``kind`` (see MOUNTS); skips where this
    machine allows no user namespaces."""
    if not namespaces_mount():
        pytest.skip("no user and mount namespaces here (unshare -Urm); tests/test_staging.py simulates the error")
    folder.mkdir(parents=True, exist_ok=True)
    script = MOUNTS[kind].format(size=size) + ' && exec "$@"'
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script, str(folder), *argv],
                          capture_output=True, text=True, **options)


# A stage function run on its own, its error and every path it left under the folder as JSON.
STAGE_SCRIPT = """
import json, sys
from pathlib import Path
from kit.core.params import load_params
from kit.pipeline.stage import stage_module
stage, params_file, disk = sys.argv[1], sys.argv[2], Path(sys.argv[5])
overrides, upstream = json.loads(sys.argv[3]), json.loads(sys.argv[4])
try:
    run = getattr(stage_module(stage), f"run_{stage}")
    run(load_params(params_file, overrides), upstream, disk / stage)
    error = ""
except Exception as failure:
    error = f"{type(failure).__name__}: {failure}"
print(json.dumps({"error": error, "left": sorted(str(path.relative_to(disk)) for path in disk.rglob("*"))}))
"""


def stage_on_a_small_disk(
    stage: str, params_file: Path, upstream: dict | None, folder: Path, size: str, overrides: list[str] = ()
) -> dict:
    """``run_<stage>`` writing into ``folder/<stage>`` on a tmpfs of ``size``: what it raised and left.
    The overrides may name paths under ``folder``."""
    done = run_over("small disk", folder, [sys.executable, "-c", STAGE_SCRIPT, stage, str(params_file),
                                           json.dumps(list(overrides)), json.dumps(upstream), str(folder)], size=size)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
