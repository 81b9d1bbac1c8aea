"""A training worker that ``kit.train.distributed`` launches, one per process: ``python -m kit.train.worker SPEC``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow

from kit.core import tracking
from kit.core.params import validate_params
from kit.train.distributed import is_main_process
from kit.train.stage import run_train


def main(argv: list[str] | None = None) -> int:
    """A worker: train on this process's share of the rows, rank 0 logging into the stage's MLflow run."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    params = validate_params(spec["params"], source=Path(spec["source"]) if spec["source"] else None)
    out_dir = Path(spec["out_dir"])
    if spec["mlflow_run_id"] and is_main_process():
        tracking.configure(params)
        with mlflow.start_run(run_id=spec["mlflow_run_id"]):
            run_train(params, {"prepare": spec["prepared"]}, out_dir)
    else:
        run_train(params, {"prepare": spec["prepared"]}, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
