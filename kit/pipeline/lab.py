"""`kit lab`: JupyterLab on working copies of the stage notebooks, in the interactive run folder.

JupyterLab saves a notebook as it runs it: the edited parameters cell and every output. Saved into the
tracked notebooks that would change the git tree, so every later run would be tagged with a ``-dirty``
commit and `kit rerun` would warn. The working copies in ``<output_dir>/interactive/notebooks/`` take
those saves instead; their parameters cells name the params file and overrides `kit lab` was given.
A working copy is written once and then kept, edits and outputs included: delete it to start again
from the tracked notebook.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import nbformat

from kit.core.params import Params
from kit.pipeline.stage import NOTEBOOKS, PROJECT_DIR, WORK_DIR_MARKER, resolve_run_dir

COMPARE_NOTEBOOK = "06_compare.ipynb"


def working_copies_folder(params: Params) -> Path:
    return (resolve_run_dir(params) / "notebooks").resolve()


def _parameters(params: Params, params_file: Path, overrides: list[str], notebook: str) -> dict[str, object]:
    """The values a working copy's parameters cell starts from."""
    if notebook == COMPARE_NOTEBOOK:
        return {"experiment": params.experiment_name, "tracking_uri": params.tracking_uri}
    return {"params_file": str(params_file), "overrides": list(overrides)}


def _with_parameters(notebook: nbformat.NotebookNode, values: dict[str, object]) -> nbformat.NotebookNode:
    """``notebook`` with the parameters cell's assignments of ``values`` rewritten, their comments kept."""
    cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    lines = []
    for line in cell.source.splitlines():
        name, _, rest = line.partition(" = ")
        comment = rest.partition("  # ")[2]
        if name in values:
            line = f"{name} = {values[name]!r}" + (f"  # {comment}" if comment else "")
        lines.append(line)
    cell.source = "\n".join(lines)
    return notebook


def _cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def write_working_copies(params: Params, params_file: Path, overrides: list[str]) -> tuple[Path, list[str]]:
    """The working copies' folder, with a copy of each stage notebook and the compare notebook that is not
    there yet; and the names of those kept whose cells differ from the tracked notebook's."""
    folder = working_copies_folder(params)
    folder.mkdir(parents=True, exist_ok=True)
    # Kernels start in the notebook's folder; this says where relative paths in the params resolve from.
    (folder / WORK_DIR_MARKER).write_text(json.dumps({"work_dir": os.getcwd()}))
    differing = []
    for name in [*sorted(NOTEBOOKS.values()), COMPARE_NOTEBOOK]:
        tracked = nbformat.read(PROJECT_DIR / "notebooks" / name, as_version=4)
        wanted = _with_parameters(tracked, _parameters(params, params_file, overrides, name))
        copy = folder / name
        if not copy.exists():
            nbformat.write(wanted, copy)
        elif _cells(nbformat.read(copy, as_version=4)) != _cells(wanted):
            differing.append(name)
    return folder, differing


def launch(folder: Path, jupyter_options: list[str]) -> NoReturn:
    """Replace this process with JupyterLab serving ``folder``: Ctrl-C and its messages are JupyterLab's own."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}", *jupyter_options]
    os.execv(sys.executable, command)
