"""Progress of every long step, shown where the user is looking.

Under `kit run` each stage runs in a notebook kernel whose output the terminal never sees, so the
runner names a file in the kernel's environment (``TUNEBOOK_PROGRESS_FILE``): every update is appended
to it as one JSON line, and the runner draws the newest on its terminal (``ProgressFollower``). Anywhere else (a
notebook in JupyterLab, a `kit <stage>` command, a test) updates go to a tqdm bar: a widget in a
notebook, a line on a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

PROGRESS_FILE = "TUNEBOOK_PROGRESS_FILE"
# Updates written at most this often (the last one always): a step every few milliseconds stays cheap.
WRITE_INTERVAL_SECONDS = 0.5
# Where the terminal is a log (CI), the newest update is printed at least this often.
LOG_INTERVAL_SECONDS = 20.0
REDRAW_INTERVAL_SECONDS = 0.5


class Progress:
    """``done`` of ``total`` ``unit`` for one step named ``label``, with details such as the loss."""

    def __init__(self, label: str, total: int | None, unit: str = "steps") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done, self.details = 0, {}
        self.started = time.perf_counter()
        # The pace counts from the first update: a resumed run starts part way, and a first step
        # carries the start-up.
        self._first_done: int | None = None
        self._written = 0.0
        self._lock = threading.Lock()
        self._file = os.environ.get(PROGRESS_FILE)
        self._bar = None
        if not self._file:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=label, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)
        self._report(force=True)

    def update(self, done: int, **details: Any) -> None:
        with self._lock:
            self.details = {**self.details, **details}
            self._count(done)

    def advance(self, count: int = 1) -> None:
        """Safe from several threads: the sandbox's workers count their finished programs."""
        with self._lock:
            self._count(self.done + count)

    def _count(self, done: int) -> None:
        if self._first_done is None and done > self.done:
            self._first_done, self.started = done, time.perf_counter()
        self.done = done
        self._report(force=done == self.total)

    def close(self) -> None:
        with self._lock:
            self._report(force=True)
            if self._bar is not None:
                self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _report(self, force: bool) -> None:
        if self._bar is not None:
            self._bar.n = self.done
            if self.details:
                self._bar.set_postfix_str(_details_text(self.details), refresh=False)
            self._bar.refresh()
            return
        now = time.perf_counter()
        if not force and now - self._written < WRITE_INTERVAL_SECONDS:
            return
        self._written = now
        update = {"label": self.label, "done": self.done, "total": self.total, "unit": self.unit,
                  "details": self.details, "seconds_left": self._seconds_left(now)}
        with open(self._file, "a") as progress_file:
            progress_file.write(json.dumps(update) + "\n")


    def _seconds_left(self, now: float) -> float | None:
        if self._first_done is None:
            return None
        steps = self.done - self._first_done
        if not self.total or steps <= 0 or self.done >= self.total:
            return None
        return (now - self.started) / steps * (self.total - self.done)


def announce(label: str) -> None:
    """A step with nothing to count (loading, checking, saving): its name, shown until the next update."""
    if os.environ.get(PROGRESS_FILE):
        Progress(label, None)  # written as it starts; nothing to close in a file
    else:
        print(label, flush=True)


def show_training_progress(trainer, label: str, tokens_per_step: int | None = None) -> None:
    """Replace the trainer's own progress display (a bar, or its logs printed as dicts) by kit's, which
    reaches `kit run`'s terminal: from the main process, steps done of the run's total, the last loss,
    the evaluation loss and tokens per second, counted by the trainer (``num_input_tokens_seen``, as
    kit.train.stage's does) or ``tokens_per_step`` for fixed-size rows."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    for shown in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
        trainer.remove_callback(shown)

    def tokens_seen(state) -> int:
        return state.global_step * tokens_per_step if tokens_per_step else state.num_input_tokens_seen

    class TrainerProgress(TrainerCallback):
        progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = Progress(label, state.max_steps)
                self.tokens, self.time = tokens_seen(state), time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None:
                return
            details = {}
            if "loss" in (logs or {}):
                details["loss"] = logs["loss"]
            if "eval_loss" in (logs or {}):
                details["eval loss"] = logs["eval_loss"]
            if details:
                self.progress.update(state.global_step, **details)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is None:
                return
            details = {}
            seconds = time.perf_counter() - self.time
            if tokens_seen(state) > self.tokens and seconds > 0:
                details["tokens/s"] = (tokens_seen(state) - self.tokens) / seconds
            self.progress.update(state.global_step, **details)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()

    trainer.add_callback(TrainerProgress())


def _details_text(details: dict[str, Any]) -> str:
    parts = []
    for name, value in details.items():
        if isinstance(value, float):
            value = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"
        parts.append(f"{name} {value}")
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def describe(update: dict[str, Any]) -> str:
    """One line: ``training: 40/132 steps · loss 0.841 · tokens/s 1,230 · 0:45 left``."""
    done, total = update["done"], update["total"]
    if total:
        text = f"{update['label']}: {done}/{total} {update['unit']}"
    else:
        text = f"{update['label']}: {done} {update['unit']}" if done else update["label"]
    if update["details"]:
        text += " · " + _details_text(update["details"])
    if update["seconds_left"] is not None:
        text += f" · {_clock(update['seconds_left'])} left"
    return text


class ProgressFollower:
    """While a stage runs: the newest update in ``path`` drawn on ``stream`` behind ``prefix``, as one
    refreshing line on a terminal, otherwise as a line per step started and at least every
    ``LOG_INTERVAL_SECONDS``. The kernel finds the file through ``TUNEBOOK_PROGRESS_FILE``."""

    def __init__(self, path: Path, prefix: str, stream: TextIO | None = None) -> None:
        self.path, self.prefix = path, prefix
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True)
        self._previous = os.environ.get(PROGRESS_FILE)

    def __enter__(self) -> ProgressFollower:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        os.environ[PROGRESS_FILE] = str(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._previous is None:
            os.environ.pop(PROGRESS_FILE, None)
        else:
            os.environ[PROGRESS_FILE] = self._previous

    def _draw(self) -> None:
        offset, newest, label, printed = 0, None, None, 0.0
        started = time.perf_counter()
        while True:
            stopping = self._stop.wait(REDRAW_INTERVAL_SECONDS)
            with self.path.open() as progress_file:
                progress_file.seek(offset)
                lines = progress_file.read()
            complete = lines[: lines.rfind("\n") + 1]  # a line still being written waits for the next pass
            offset += len(complete)  # JSON lines are ASCII: characters are bytes
            now = time.perf_counter()
            for line in complete.splitlines():
                newest = json.loads(line)
                # A log names every step, however short, with the first update it had.
                if not self.interactive and newest["label"] != label:
                    self._print(newest, now - started)
                    label, printed = newest["label"], now
            if stopping:
                if self.interactive and newest is not None:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                return
            if newest is None:
                continue
            if self.interactive:
                line = self._line(newest, now - started)
                self.stream.write("\r\x1b[K" + line[: shutil.get_terminal_size().columns - 1])
                self.stream.flush()
            elif now - printed >= LOG_INTERVAL_SECONDS:
                self._print(newest, now - started)
                printed = now

    def _line(self, update: dict[str, Any], seconds: float) -> str:
        return f"{self.prefix} {describe(update)} ({_clock(seconds)})"

    def _print(self, update: dict[str, Any], seconds: float) -> None:
        self.stream.write(self._line(update, seconds) + "\n")
        self.stream.flush()
