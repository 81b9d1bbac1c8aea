"""Each stage notebook runs alone under plain papermill on the tiny default; every notebook is kept thin."""

from __future__ import annotations

import ast
import json
import os

import papermill
import pytest

from kit.core.manifest import read_manifest
from kit.pipeline.stage import NOTEBOOKS

from .conftest import ROOT, SMOKE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_is_thin_and_committed_clean(name):
    """Every notebook: the stages' and the ones outside the pipeline (06_compare)."""
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    cells = notebook["cells"]
    ids = [cell.get("id") for cell in cells]
    assert None not in ids and len(set(ids)) == len(ids)  # nbformat 4.5 asks for them; papermill warns without
    assert cells[0]["cell_type"] == "markdown" and "papermill" in "".join(cells[0]["source"])
    tagged = [cell for cell in cells if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1
    for node in ast.walk(ast.parse("".join(tagged[0]["source"]))):
        assert isinstance(node, ast.Module | ast.Assign | ast.Name | ast.Store | ast.Load | ast.Constant | ast.List)
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            tree = ast.parse("".join(cell["source"]).replace("%", "#"))
            assert not any(isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda) for node in ast.walk(tree))


def test_notebooks_run_alone_with_plain_papermill(tmp_path):
    """The train notebook alone runs the missing prepare stage first, and the evaluate notebook the
    merge and quantize stages its variants need; the merge and quantize notebooks then rerun on that folder."""
    out = tmp_path / "out"
    run_dir = out / "interactive"
    for stage in ("train", "evaluate", "merge", "quantize"):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / NOTEBOOKS[stage]),
            str(tmp_path / NOTEBOOKS[stage]),
            parameters={
                "params_file": str(SMOKE),
                "overrides": [f"output_dir={out}", f"dataset_prepared_path={tmp_path / 'prepared'}", "max_steps=4",
                          "eval_benchmarks=[humaneval]", "eval_limit=1"],
            },
            kernel_name="python3",
            progress_bar=False,
            cwd=os.getcwd(),
        )
        assert read_manifest(run_dir, stage) is not None
        if stage == "evaluate":
            variants = read_manifest(run_dir, "evaluate")["inputs"]["variants"]
            assert set(variants) == {"base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m"}
    assert read_manifest(run_dir, "prepare") is not None
    for stage in ("evaluate", "quantize"):
        executed = json.loads((tmp_path / NOTEBOOKS[stage]).read_text())
        code = [cell for cell in executed["cells"] if cell["cell_type"] == "code"]
        finished = next(index for index, cell in enumerate(code) if "stage.finish" in "".join(cell["source"]))
        assert all(cell["outputs"] for cell in code[finished:])  # the stage's results, tables and grids shown


def test_prepare_notebook_runs_alone(tmp_path):
    papermill.execute_notebook(
        str(ROOT / "notebooks" / NOTEBOOKS["prepare"]),
        str(tmp_path / NOTEBOOKS["prepare"]),
        parameters={"params_file": str(SMOKE), "overrides": [f"output_dir={tmp_path}", "dataset_prepared_path=null"]},
        kernel_name="python3",
        progress_bar=False,
    )
    assert read_manifest(tmp_path / "interactive", "prepare")["metrics"]["prepare/num_packed_rows"] > 0
