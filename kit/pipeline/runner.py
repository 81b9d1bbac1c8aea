"""`kit run`: the stage notebooks executed in pipeline order with papermill, under one MLflow parent run.

Pipeline order is ``kit.pipeline.stage.STAGES``, which the notebooks' numbers follow: 05_evaluate runs
last, after merge and quantize have made the artifacts it scores.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.core import tracking
from kit.core.params import load_params
from kit.core.progress import ProgressFollower
from kit.core.staging import disk_full
from kit.pipeline.stage import NOTEBOOKS, PROJECT_DIR, STAGES

NOTEBOOK_DIR = PROJECT_DIR / "notebooks"


@dataclass
class PipelineResult:
    run_dir: Path
    parent_run_id: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed_stage: str | None = None
    interrupted_stage: str | None = None
    error: str = ""


LOCK_FILE = ".kit-run.lock"
# The run's params, resolved once (file, defaults, overrides), which every stage notebook loads.
RUN_PARAMS = "params.yaml"


class RunFolderInUse(Exception):
    """Another process runs the pipeline into the same run folder."""


@contextlib.contextmanager
def owned(run_dir: Path):
    """Hold ``run_dir`` for this process while the pipeline writes into it. The kernel's lock goes
    with the process, so a killed run never leaves the folder locked."""
    with (run_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RunFolderInUse(
                f"run folder {run_dir} is in use by another kit run ({lock.read().strip() or 'a process'}); "
                "wait for it, or give this run another mlflow_run_name"
            ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        lock.flush()
        yield


def executed_notebook(run_dir: Path, stage: str, outcome: str = "") -> Path:
    """Where a stage's executed notebook goes: ``02_train.running.ipynb`` while papermill writes it,
    ``02_train.ipynb`` once the stage finished, ``02_train.failed.ipynb`` or ``02_train.interrupted.ipynb``
    otherwise, so a notebook that stopped short never looks like a finished stage's."""
    name = NOTEBOOKS[stage]
    return run_dir / "notebooks" / (name.replace(".ipynb", f".{outcome}.ipynb") if outcome else name)


def write_run_params(params, run_dir: Path) -> Path:
    """``run_dir/params.yaml``: every key of ``params`` resolved, the experiment's name kept (it comes from
    the params file's name), so that notebooks load exactly these values, overrides never crossing
    papermill as strings."""
    import yaml

    resolved = {**params.resolved(), "mlflow_experiment_name": params.experiment_name}
    path = run_dir / RUN_PARAMS
    path.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    return path


def _file_away(running: Path, final: Path) -> Path:
    if running.exists():
        os.replace(running, final)
    return final


def parse_stages(stages: str | None) -> list[str]:
    if not stages:
        return list(STAGES)
    chosen = [stage.strip() for stage in stages.split(",") if stage.strip()]
    unknown = [stage for stage in chosen if stage not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    # Always in pipeline order, whatever order they were given in.
    return [stage for stage in STAGES if stage in chosen]


def _error_summary(error: Exception) -> str:
    """The failing cell's error as the notebook showed it, without papermill's wrapping."""
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    traceback = getattr(error, "traceback", None) or []
    # Kernel tracebacks carry ANSI colour codes; the last frames are the useful part, and the last
    # line of the traceback is often the error line itself.
    final = f"{ename}: {evalue}"
    tail = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in traceback[-3:]]
    return "\n".join([*(line for line in tail if line.strip() != final), final])


def run_pipeline(
    params_file: str | Path,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    echo=print,
    tags: dict[str, str] | None = None,
) -> PipelineResult:
    import papermill
    from traitlets.config import Config

    overrides = list(overrides or [])
    params_file = Path(params_file).resolve()
    params = load_params(params_file, overrides)
    stages = stages or list(STAGES)
    if "evaluate" in stages:
        from kit.evaluate.stage import evaluation_isolation

        echo(str(evaluation_isolation(params)))  # refused here, not after minutes of training
    run_name = params.mlflow_run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(params.output_dir) / run_name).resolve()
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    with owned(run_dir):  # one process writes a run folder at a time
        closed = tracking.close_abandoned_runs(params)
        if closed:
            echo(f"marked KILLED {len(closed)} run(s) that a process now gone left RUNNING: {', '.join(closed)}")
        parent_run_id = tracking.start_parent_run(params, overrides, tags)
        result = PipelineResult(run_dir=run_dir, parent_run_id=parent_run_id)
        run_params = write_run_params(params, run_dir)
        echo(f"run folder {run_dir}")
        echo(f"mlflow {params.tracking_uri} experiment {params.experiment_name!r} run {parent_run_id}")

        started = time.perf_counter()
        for number, stage in enumerate(stages, start=1):
            stage_run_id = tracking.start_stage_run(params, stage, parent_run_id, overrides)
            running = executed_notebook(run_dir, stage, "running")
            for earlier in running.parent.glob(NOTEBOOKS[stage].replace(".ipynb", "*.ipynb")):
                earlier.unlink()  # an earlier run's, in this folder: never mistaken for this one's
            step = f"[{number}/{len(stages)}] {stage}"
            echo(f"{step} ...", flush=True)
            stage_started = time.perf_counter()
            failure = None
            try:
                # The kernel's output stays in the executed notebook; its progress reaches this terminal.
                with ProgressFollower(run_dir / "progress" / f"{stage}.jsonl", f"{step} ·"):
                    papermill.execute_notebook(
                        str(NOTEBOOK_DIR / NOTEBOOKS[stage]),
                        str(running),
                        parameters={
                            "params_file": str(run_params),
                            "overrides": [],
                            "run_dir": str(run_dir),
                            "parent_run_id": parent_run_id,
                            "mlflow_run_id": stage_run_id,
                        },
                        kernel_name="python3",
                        progress_bar=False,
                        cwd=os.getcwd(),
                        config=Config({
                            # Kernels talk over local IPC sockets: no TCP ports opened for plain-text traffic.
                            "KernelManager": {"transport": "ipc"},
                            # A kernel writes its own log to this terminal; jupyter_client interrupts every
                            # kernel it shuts down, which that log reports as an ERROR. A stage's errors
                            # reach the notebook and this runner either way.
                            "NotebookClient": {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]},
                        }),
                    )
            except Exception as error:  # papermill raises the notebook's error; any failure stops the pipeline
                failure = error
                if isinstance(error, OSError) and error.errno == errno.ENOSPC:  # papermill writing the notebook
                    failure = disk_full(executed_notebook(run_dir, stage, "failed"))
            except KeyboardInterrupt:  # Ctrl-C: papermill has shut the kernel down; close the runs it leaves
                # nbclient's task that watches the kernel then finds it gone, and asyncio would print that
                # task's DeadKernelError with its traceback when the task is collected: nothing to act on.
                logging.getLogger("asyncio").setLevel(logging.CRITICAL)
                echo("")
                interrupted = _file_away(running, executed_notebook(run_dir, stage, "interrupted"))
                tracking.end_run(params, stage_run_id, "KILLED", notebook=interrupted)
                result.interrupted_stage = stage
                break
            seconds = time.perf_counter() - stage_started
            result.stage_seconds[stage] = seconds
            executed = _file_away(running, executed_notebook(run_dir, stage, "failed" if failure else ""))
            tracking.end_run(params, stage_run_id, "FAILED" if failure else "FINISHED", notebook=executed)
            if failure is not None:
                echo(f"{step} FAILED after {seconds:.1f} s")
                result.failed_stage, result.error = stage, _error_summary(failure)
                # One line for the error; its frames are in the executed notebook (and in result.error).
                complete = tracking.notebook_complete(executed)
                where = f"the executed notebook{', with the traceback' if complete else ' was cut short'}: {executed}"
                echo(f"stage {stage} failed: {result.error.splitlines()[-1]}\n{where}", file=sys.stderr)
                break
            echo(f"{step} done in {seconds:.1f} s (total {time.perf_counter() - started:.1f} s)")

        client = tracking.configure(params)
        for stage, seconds in result.stage_seconds.items():
            client.log_metric(parent_run_id, f"pipeline/{stage}_seconds", seconds)
        client.log_metric(parent_run_id, "pipeline/seconds", time.perf_counter() - started)
        status = "KILLED" if result.interrupted_stage else "FAILED" if result.failed_stage else "FINISHED"
        client.set_terminated(parent_run_id, status)
        return result
