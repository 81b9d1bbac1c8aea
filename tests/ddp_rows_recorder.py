"""A train worker that also writes down the packed rows each rank trains on, for tests/test_distributed.py.

Launched by ``kit.train.distributed.launch_train(..., worker="tests.ddp_rows_recorder")`` in place of the
kit's own worker, which it then runs unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kit.train import stage as train
from kit.train import worker


def rows_seen_file(spec: Path, rank: int) -> Path:
    return spec.with_name(f"rows-seen-rank{rank}.jsonl")


class RecordingCollator(train.PackedRowsCollator):
    """The kit's collator, appending each batch's rows (their token ids) to this rank's file first."""

    def __call__(self, rows):
        with rows_seen_file(Path(sys.argv[1]), int(os.environ["RANK"])).open("a") as seen:
            seen.write(json.dumps([row["input_ids"] for row in rows]) + "\n")
        return super().__call__(rows)


if __name__ == "__main__":
    train.PackedRowsCollator = RecordingCollator
    sys.exit(worker.main())
