"""Shared fixtures: the tiny default's files and params, pointed at a per-session MLflow store and run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kit.core.benchmarks import PACKAGED_MBPP
from kit.core.params import Params, load_params
from kit.tiny import DEFAULT_FOLDER, TinySpec, build_tiny

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
MBPP = PACKAGED_MBPP
# The tiny default's files, where params/smoke.yaml names them.
TINY_SPEC = TinySpec()
TINY = DEFAULT_FOLDER.expanduser()
TINY_MODEL = TINY / "model"
TINY_ROWS = TINY / "train.jsonl"
# The tiny default's tokenizer, committed: tests that need a tokenizer and no model load it.
TINY_TOKENIZER = ROOT / "tests" / "assets" / "tiny-tokenizer"
# What tools keep in a work tree (the interpreter's bytecode, pytest's, ruff's and hypothesis' caches,
# the installed package's metadata); anything else a test leaves there fails it.
# In the name of what a test puts in the work tree on purpose, for a moment: tests/test_work_tree.py's
# probe, the sandbox tests' victim file.
PROBE = "left-by-a-test"
TOOL_FOLDERS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def pytest_configure(config: pytest.Config) -> None:
    # Before collection: huggingface_hub and datasets read it when first imported, and collection imports
    # them; set later, a test asking the Hub for what is not there waits for the network's retries.
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Each pytest-xdist worker computes on its share of the cores, and so do the processes it starts: torch's
    # threads spinning on a core another worker holds slowed the whole suite twofold.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        torch.set_num_threads(threads)
    # Before collection, which loads params/smoke.yaml: a few minutes the first time, then a no-op.
    build_tiny(TINY, TINY_SPEC)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # One worker more than cores for `-n auto`: with one per core, a fifth of the cores' time went idle
    # while tests waited on the processes, servers and sandboxes they start.
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The slow files first: handed out last, one would run on alone after the other workers are done.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def smoke_at(folder: Path, overrides: list[str]) -> Params:
    """The tiny default with ``overrides``, writing its runs and prepared data under ``folder``."""
    return load_params(SMOKE, [f"output_dir={folder}", f"dataset_prepared_path={folder / 'prepared'}", *overrides])


def log_history(trained: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainer's log of a train manifest's run."""
    return json.loads(Path(trained["outputs"]["log_history"]).read_text())


def logged_losses(trained: dict[str, Any]) -> list[float]:
    return [entry["loss"] for entry in log_history(trained) if "loss" in entry]


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test logs to its own session's SQLite store, never the developer's, from a folder of the
    session's own: what MLflow (or any tool) writes relative to the current folder stays out of the
    work tree."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    patch = pytest.MonkeyPatch()
    patch.chdir(tmp_path_factory.mktemp("cwd"))
    # ... from where processes the tests start (``python -m tests.…``) still find the repository's modules.
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    yield
    patch.undo()


def work_tree_entries() -> set[str]:
    """Every file and folder of the work tree but tools' caches and virtual environments."""
    entries = set()
    for folder, folders, files in os.walk(ROOT):
        kept = [name for name in folders if name not in TOOL_FOLDERS and not name.endswith(".egg-info")
                and not (Path(folder, name) / "pyvenv.cfg").exists()]
        folders[:] = kept
        relative = Path(folder).relative_to(ROOT)
        entries.update(str(relative / name) for name in [*kept, *files])
    return entries


@pytest.fixture(autouse=True)
def leaves_the_work_tree_clean():
    """A test writes into its own temporary folders, never into the repository."""
    before = work_tree_entries()
    yield
    # Those are glimpsed by a test in another pytest-xdist worker.
    left = sorted(entry for entry in work_tree_entries() - before if PROBE not in entry)
    assert not left, f"the test left these in the work tree: {left[:10]}"


@pytest.fixture()
def smoke_params(tmp_path: Path) -> Params:
    """The tiny default, writing into this test's folder."""
    return load_params(SMOKE, [f"output_dir={tmp_path / 'out'}", f"dataset_prepared_path={tmp_path / 'prepared'}"])
