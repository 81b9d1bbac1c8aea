"""Folders a build writes into before it renames them into place, so an interrupted build never leaves
anything that looks finished; what a killed build left is removed by the next one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from kit.processes import process_alive


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` named ``<prefix><this process>-<random>``; the ones of that prefix that
    processes now gone left behind are removed first."""
    for left in parent.glob(f"{prefix}*"):
        owner = left.name.removeprefix(prefix).split("-", 1)[0]
        if owner.isdigit() and not process_alive(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))


@contextlib.contextmanager
def written_aside(path: Path):
    """A path beside ``path`` (a file or a folder) to write into; renamed to ``path`` once the block
    ends without error, removed if it fails. A full disk is named with the path and the space left."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield partial
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(partial, path)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        free_mb = shutil.disk_usage(path.parent).free / 1e6
        raise OSError(errno.ENOSPC, f"no space left on the device writing {path} ({free_mb:.0f} MB free there); "
                      "free some space or point output_dir to a larger disk") from None
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.exists():
            partial.unlink()
