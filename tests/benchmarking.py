"""What the benchmark reports share: the versions of what was measured, as each report notes them."""

from __future__ import annotations

import platform

from kit.tracking import package_versions


def versions(packages: tuple[str, ...]) -> str:
    """``Python 3.11.7, torch 2.13.0+cpu, ...`` for the packages a benchmark's numbers depend on."""
    listed = [f"{name} {version}" for name, version in package_versions(packages).items()]
    return ", ".join([f"Python {platform.python_version()}", *listed])
