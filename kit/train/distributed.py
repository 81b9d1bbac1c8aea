"""Scale-out: the train stage in several processes (DDP), started with `accelerate launch`.

``run_train`` hands over to ``launch_train`` when the params ask for more than one process; the
launcher starts the workers (``python -m kit.train.worker SPEC``), each of which calls ``run_train``
again, now inside the process group that transformers' Trainer joins by itself. Rank 0 alone logs to
the stage's MLflow run and writes the adapter and the manifest, which the launching process returns.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow

from kit.core.hardware import TrainingSetup, this_machine
from kit.core.manifest import MANIFEST
from kit.core.params import Params

LAUNCH_SPEC = "launch.json"
WORKER = "kit.train.worker"


def in_launched_process() -> bool:
    """True inside a process a distributed launcher (accelerate, torchrun) started."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _free_port() -> int:
    # Each launch gets its own rendezvous port, so runs side by side on one machine do not collide.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scale_out_arguments(params: Params, setup: TrainingSetup) -> dict[str, Any]:
    """TrainingArguments for FSDP and DeepSpeed where this machine honours them (else a warning said so)."""
    arguments: dict[str, Any] = {}
    if setup.fsdp:
        arguments.update(fsdp=params.fsdp, fsdp_config=params.fsdp_config)
    if setup.deepspeed:
        arguments["deepspeed"] = params.deepspeed
    return arguments


def launch_command(params: Params, spec: Path, worker: str = WORKER) -> list[str]:
    """`accelerate launch` of ``worker`` (a module run with the spec file) in the params' processes."""
    processes = params.num_train_processes
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if params.train_accelerate_config:
        command += ["--config_file", params.train_accelerate_config]
    else:
        # accelerate's `--multi_gpu` is its torchrun launcher; on a CPU the Trainer then joins a gloo group.
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--num_processes", str(processes), "--main_process_port", str(_free_port())]
    if not this_machine().cuda:
        # torchrun would leave each process one thread; share the cores out instead.
        command += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    return [*command, "-m", worker, str(spec)]


def launch_train(params: Params, prepared: dict[str, Any], out_dir: Path, worker: str = WORKER) -> dict[str, Any]:
    """Train in ``params.num_train_processes`` processes of ``worker``; returns the manifest rank 0 wrote."""
    processes, machine = params.num_train_processes, this_machine()
    if machine.cuda and processes > machine.cuda_devices:
        raise RuntimeError(
            f"train_num_processes: {processes} processes asked for, {machine.cuda_devices} CUDA GPUs here"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    manifest.unlink(missing_ok=True)  # what is read back must be this launch's
    active = mlflow.active_run()
    spec = out_dir / LAUNCH_SPEC
    spec.write_text(json.dumps({
        "params": params.resolved(),
        "source": str(params.source) if params.source else None,
        "prepared": prepared,
        "out_dir": str(out_dir.resolve()),
        "mlflow_run_id": active.info.run_id if active else None,
    }, indent=1))
    command = launch_command(params, spec, worker)
    print(f"training in {processes} processes: {shlex.join(command)}", flush=True)
    exit_code, tail = _run_relaying_output(command)
    if exit_code != 0:
        raise RuntimeError(f"training in {processes} processes failed (exit {exit_code}); last lines:\n{tail}")
    return json.loads(manifest.read_text())


def _run_relaying_output(command: list[str]) -> tuple[int, str]:
    """Run ``command``, printing its output as it comes (a notebook cell shows it); returns the exit code and tail."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line)
    return process.returncode, "".join(tail)
