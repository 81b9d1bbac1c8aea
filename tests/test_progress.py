"""Progress: what a stage reports reaches `kit run`'s terminal, as one refreshing line on a TTY and as
log lines elsewhere (kit.core.progress)."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import pytest

from kit.core import progress
from kit.core.progress import Progress, ProgressFollower, announce, describe


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def fast_redraws(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(progress, "WRITE_INTERVAL_SECONDS", 0.0)


def test_an_update_reads_as_done_of_total_with_its_details_and_the_time_left():
    update = {"label": "training", "done": 40, "total": 132, "unit": "steps",
              "details": {"loss": 0.84123, "tokens/s": 1230.4}, "seconds_left": 45.2}
    assert describe(update) == "training: 40/132 steps · loss 0.841 · tokens/s 1,230 · 0:45 left"
    assert describe({**update, "total": None, "done": 0, "details": {}, "seconds_left": None}) == "training"


def test_the_stage_side_writes_json_lines_where_the_runner_says(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.PROGRESS_FILE, str(path))
    monkeypatch.setattr(progress, "WRITE_INTERVAL_SECONDS", 3600.0)
    with Progress("generating", 3, unit="samples") as counted:
        for _ in range(3):
            counted.advance()
    announce("saving")
    updates = [json.loads(line) for line in path.read_text().splitlines()]
    # The first, the last (done == total) and the close are written; the ones between wait their turn.
    assert [(update["label"], update["done"]) for update in updates] == [
        ("generating", 0), ("generating", 3), ("generating", 3), ("saving", 0)]
    assert updates[1]["seconds_left"] is None


def test_workers_counting_at_once_lose_no_count(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_FILE, str(tmp_path / "progress.jsonl"))
    counted = Progress("running the tests", 400, unit="samples")
    threads = [threading.Thread(target=lambda: [counted.advance() for _ in range(100)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counted.done == 400


def test_a_log_gets_a_line_per_step_and_the_terminal_one_refreshing_line(tmp_path, fast_redraws):
    for stream in (io.StringIO(), Terminal()):
        path = tmp_path / f"{type(stream).__name__}.jsonl"
        with ProgressFollower(path, "[2/5] train ·", stream):
            steps = Progress("training", 10)
            for step in range(1, 11):
                steps.update(step, loss=1.0 / step)
                time.sleep(0.02)
            time.sleep(0.05)
        shown = stream.getvalue()
        assert "[2/5] train · training: " in shown
        if isinstance(stream, Terminal):
            assert "\n" not in shown and shown.endswith("\r\x1b[K")  # the line is cleared for "done"
        else:
            # A line when the step starts, then one per LOG_INTERVAL_SECONDS: not one per update.
            assert shown.count("\n") == 1 and shown.startswith("[2/5] train · training: ")
    assert progress.PROGRESS_FILE not in os.environ


def test_a_log_is_told_at_least_every_interval_while_a_step_runs(tmp_path, fast_redraws, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.05)
    stream = io.StringIO()
    with ProgressFollower(tmp_path / "progress.jsonl", "[1/5] prepare ·", stream):
        Progress("base model pretraining", 1200)
        time.sleep(0.3)
    assert stream.getvalue().count("[1/5] prepare · base model pretraining: 0/1200 steps") >= 3


def test_time_left_is_paced_from_the_first_update_as_a_resumed_run_starts_part_way(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.PROGRESS_FILE, str(path))
    monkeypatch.setattr(progress, "WRITE_INTERVAL_SECONDS", 0.0)
    clock = iter(range(0, 1000, 10))  # each reading of the clock is 10 s after the one before
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    steps = Progress("training", 100)
    steps.update(50)  # resumed at step 50: no pace yet
    steps.update(60)
    steps.update(70)
    # The pace starts at step 50 (clock 20): step 60 is written at 40 (20 s for 10 steps, 40 to go),
    # step 70 at 50 (30 s for 20 steps, 30 to go).
    left = [json.loads(line)["seconds_left"] for line in path.read_text().splitlines()]
    assert left == [None, None, 80.0, 45.0]


def test_a_log_names_every_step_however_short(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_INTERVAL_SECONDS", 0.2)  # all three steps start within one redraw
    stream = io.StringIO()
    with ProgressFollower(tmp_path / "progress.jsonl", "[3/5] merge ·", stream):
        for step in ("loading the base", "checking the merge", "saving"):
            announce(step)
    assert stream.getvalue().splitlines() == [
        f"[3/5] merge · {step} (0:00)" for step in ("loading the base", "checking the merge", "saving")]
