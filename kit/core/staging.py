"""Folders a build writes into before it renames them into place, so an interrupted build never leaves
anything that looks finished; what a killed build left is removed by the next one. Builds made once for
every run (models turned from GGUF files, llama.cpp's converter) live under ``cache_root()``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from kit.core.processes import process_alive


def cache_root() -> Path:
    """Where builds keep what they made for every later run: TUNEBOOK_CACHE, else ~/.cache/tunebook."""
    return Path(os.environ.get("TUNEBOOK_CACHE", Path.home() / ".cache" / "tunebook"))


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` named ``<prefix><this process>-<random>``; the ones of that prefix that
    processes now gone left behind are removed first."""
    for left in parent.glob(f"{prefix}*"):
        owner = left.name.removeprefix(prefix).split("-", 1)[0]
        if owner.isdigit() and not process_alive(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))


def disk_full(path: Path, needed_bytes: int | None = None) -> OSError:
    """The error for a device that filled up writing ``path``: the path, the space it needs where known, and
    the space left."""
    free_mb = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free / 1e6
    needs = f"it needs at least {needed_bytes / 1e6:.0f} MB, " if needed_bytes else ""
    return OSError(errno.ENOSPC, f"no space left on the device writing {path} ({needs}{free_mb:.0f} MB free there); "
                   "free some space or point output_dir to a larger disk")


@contextlib.contextmanager
def written_aside(path: Path, needed_bytes: int | None = None):
    """A path beside ``path`` (a file or a folder) to write into; renamed to ``path`` once the block
    ends without error, removed if it fails. A full disk is named with the path, the space ``path``
    needs (where the caller knows it) and the space left once the partial write is gone."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield partial
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(partial, path)
    except Exception as error:  # not only OSError: safetensors and numpy report a full disk their own ways
        _remove(partial)
        if not filled_the_device(error, path.parent, needed_bytes):
            raise
        raise disk_full(path, needed_bytes) from None
    finally:
        _remove(partial)


# Space left below which a failed write is taken for a full device.
NEARLY_FULL_BYTES = 1 << 20


def filled_the_device(error: Exception, folder: Path, needed_bytes: int | None) -> bool:
    """ENOSPC, or a failed write on a device with less room than the file needs (or next to none): numpy's
    ``tofile`` (gguf's tensor writer) reports a short write, "65536 requested and 41904 written", with no
    errno, and safetensors raises a SafetensorError."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    free = shutil.disk_usage(folder).free
    return free < NEARLY_FULL_BYTES or (needed_bytes is not None and free < needed_bytes)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
