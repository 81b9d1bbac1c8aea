"""Staging: what a killed build left is removed by the next; an artifact appears under its name only once
complete, and a full disk is named (kit.core.staging)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from kit.core.staging import staging_folder, written_aside


def test_a_killed_builds_folder_goes_and_a_live_ones_stays(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".abc-{gone.stdout.strip()}-x1y2"  # as a build killed mid-way leaves it
    (left / "dataset").mkdir(parents=True)
    live = tmp_path / f".abc-{os.getppid()}-z3"  # a build still running elsewhere
    live.mkdir()
    other = tmp_path / ".abcd-1-q"  # another prefix: not this build's
    other.mkdir()

    made = staging_folder(tmp_path, ".abc-")
    assert made.name.startswith(f".abc-{os.getpid()}-") and made.is_dir()
    assert not left.exists() and live.exists() and other.exists()


def test_a_file_or_folder_appears_under_its_name_only_once_complete(tmp_path):
    target = tmp_path / "model-f16.gguf"
    with written_aside(target) as partial:
        partial.write_bytes(b"GGUF")
        assert not target.exists()
    assert target.read_bytes() == b"GGUF"

    folder = tmp_path / "model"
    (folder / "old").mkdir(parents=True)  # a previous run's model is replaced whole
    with written_aside(folder) as partial:
        partial.mkdir()
        (partial / "config.json").write_text("{}")
    assert [path.name for path in folder.iterdir()] == ["config.json"]


def test_a_failed_write_leaves_nothing_and_a_full_disk_is_named(tmp_path):
    target = tmp_path / "model-q8_0.gguf"
    with pytest.raises(RuntimeError), written_aside(target) as partial:
        partial.write_bytes(b"half a fi")
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []

    full = rf"no space left on the device writing {target} \(\d+ MB free there\)"
    with pytest.raises(OSError, match=full), written_aside(target) as partial:
        partial.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
