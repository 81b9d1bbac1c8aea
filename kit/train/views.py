"""What the train notebook shows: views of the stage's manifest and outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kit.train.stage import (
    _loss_table,
)


def loss_curves(trained: dict[str, Any]):
    """Train and eval loss by step, from the trainer's log, as a table a notebook can plot."""
    return _loss_table(json.loads(Path(trained["outputs"]["log_history"]).read_text()))
