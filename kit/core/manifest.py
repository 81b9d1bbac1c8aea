"""Manifests: what a stage made, from what, with which metrics, in ``<run_dir>/<stage>/manifest.json``.

Each stage writes one; the stages downstream read it to find their inputs. A manifest's ``params_hash``
is of the resolved params its stage read and of its upstream manifests' hashes: a stage made under
other params, or from an upstream stage that was, has another hash (kit.pipeline.stage re-runs it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def params_hash(read: dict[str, Any], upstream: dict[str, dict[str, Any]] | None) -> str:
    """The hash of the params a stage read (``read``: key -> resolved value) chained to its upstream
    manifests' hashes."""
    chained = {stage: manifest.get("params_hash") for stage, manifest in sorted((upstream or {}).items())}
    text = json.dumps({"params": read, "upstream": chained}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(
    out_dir: Path,
    stage: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    metrics: dict[str, float],
    params_hash: str,
) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "params_hash": params_hash,
        "inputs": inputs,
        "outputs": outputs,
        "metrics": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def upstream_manifest(upstream: dict[str, dict[str, Any]] | None, stage: str, reader: str) -> dict[str, Any]:
    """The manifest of ``stage`` in ``upstream`` (what ``run_<reader>`` takes: manifests by stage)."""
    manifest = (upstream or {}).get(stage)
    if manifest is None:
        raise ValueError(f"{reader} needs the {stage} stage's manifest")
    return manifest


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
