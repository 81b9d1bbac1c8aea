"""Shared fixtures: the embedded default's params, pointed at a per-session MLflow store and run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kit.params import Params, load_params

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
SHARED_MBPP = ROOT.parent / "shared" / "data" / "mbpp.jsonl"


def smoke_at(folder: Path, overrides: list[str]) -> Params:
    """The embedded default with ``overrides``, writing its runs and prepared data under ``folder``."""
    return load_params(SMOKE, [f"output_dir={folder}", f"dataset_prepared_path={folder / 'prepared'}", *overrides])


def log_history(trained: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainer's log of a train manifest's run."""
    return json.loads(Path(trained["outputs"]["log_history"]).read_text())


def logged_losses(trained: dict[str, Any]) -> list[float]:
    return [entry["loss"] for entry in log_history(trained) if "loss" in entry]


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test logs to its own session's SQLite store, never the developer's."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield
    patch.undo()


@pytest.fixture()
def smoke_params(tmp_path: Path) -> Params:
    """The embedded default, writing into this test's folder."""
    return load_params(SMOKE, [f"output_dir={tmp_path / 'out'}", f"dataset_prepared_path={tmp_path / 'prepared'}"])
