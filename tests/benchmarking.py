"""What the benchmark reports share: the versions of what was measured, as each report notes them."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.tracking import package_versions


def measure_offline_and_report(
    measure: Callable[[Path], Any], render: Callable[[Any], str], report: Path
) -> None:
    """Measure in a scratch folder with the Hub off, then write the rendered report and show it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        result = measure(Path(work))
    report.write_text(render(result))
    print(report.read_text())


def versions(packages: tuple[str, ...]) -> str:
    """``Python 3.11.7, torch 2.13.0+cpu, ...`` for the packages a benchmark's numbers depend on."""
    listed = [f"{name} {version}" for name, version in package_versions(packages).items()]
    return ", ".join([f"Python {platform.python_version()}", *listed])
