"""What the benchmark reports share: the machine and the versions they were measured on, and how a goal reads."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The repository root: the params the benchmarks run and the reports/ they write.
ROOT = Path(__file__).resolve().parents[2]


def verdict(met: bool) -> str:
    """A goal's outcome in a report; a missed one stands out."""
    return "met" if met else "**missed**"


def load_average() -> float:
    """The 5-minute load average: other processes share the cores, and their load is part of what the timings mean."""
    return os.getloadavg()[1]


def hardware() -> str:
    """``2 cores (AMD EPYC), 24 GiB``."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB"


def machine() -> str:
    """The machine as a CPU benchmark's report notes it, with the load at its end."""
    return (f"{hardware()}, no GPU used; 5-minute load average {load_average():.1f} at the end "
            "(this benchmark counts about 1)")


def versions(packages: tuple[str, ...]) -> str:
    """``Python 3.11.7, torch 2.13.0+cpu, ...`` for the packages a benchmark's numbers depend on."""
    # Imported here: the score benchmark's timed calls import this module in processes that import only
    # the tool they time, and kit.core.tracking pulls in MLflow.
    from kit.core.tracking import package_versions

    listed = [f"{name} {version}" for name, version in package_versions(packages).items()]
    return ", ".join([f"Python {platform.python_version()}", *listed])


def model_shape(model_dir: str | Path) -> str:
    """A Llama folder's shape as the reports name it: vocabulary, hidden size, layers."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    return (f"Llama, vocabulary {config.vocab_size}, hidden size {config.hidden_size}, "
            f"{config.num_hidden_layers} layers")


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def measure_offline_and_report(
    measure: Callable[[Path], Any], render: Callable[[Any], str], report: Path
) -> None:
    """Measure in a scratch folder with the Hub off, then write the rendered report and show it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        result = measure(Path(work))
    report.write_text(render(result))
    print(report.read_text())
