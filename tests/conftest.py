"""Shared fixtures: the embedded default's params, pointed at a per-session MLflow store and run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.params import Params, load_params

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
SHARED_MBPP = ROOT.parent / "shared" / "data" / "mbpp.jsonl"


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
