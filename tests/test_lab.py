"""`kit lab`: working copies of the notebooks take JupyterLab's saves, the tracked ones stay as
committed (kit.pipeline.lab); a working copy's kernel resolves paths from where kit lab ran (kit.pipeline.stage)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat
import pytest

from kit.core.params import load_params
from kit.pipeline.lab import write_working_copies
from kit.pipeline.stage import NOTEBOOKS, enter_work_dir

from .conftest import ROOT, SMOKE

TRACKED = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _digests() -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in TRACKED}


def _parameters(notebook: Path) -> dict[str, object]:
    cell = next(cell for cell in nbformat.read(notebook, as_version=4).cells
                if "parameters" in cell.metadata.get("tags", []))
    values: dict[str, object] = {}
    exec(cell.source, {}, values)  # the cell is literals only (tests/test_notebooks.py)
    return values


def test_working_copies_name_the_params_and_keep_every_other_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["output_dir=lab-out", "max_steps=3"]
    params = load_params(SMOKE, overrides)
    before = _digests()
    folder, differing = write_working_copies(params, SMOKE, overrides)

    assert folder == tmp_path / "lab-out" / "interactive" / "notebooks" and differing == []
    assert sorted(path.name for path in folder.glob("*.ipynb")) == [path.name for path in TRACKED]
    for name in NOTEBOOKS.values():
        values = _parameters(folder / name)
        assert values["params_file"] == str(SMOKE) and values["overrides"] == overrides
        assert values["run_dir"] == ""  # the interactive run folder, beside the copies
        copy, tracked = (nbformat.read(path, as_version=4) for path in (folder / name, ROOT / "notebooks" / name))
        assert [cell.id for cell in copy.cells] == [cell.id for cell in tracked.cells]
        assert [cell.source for cell in copy.cells if "parameters" not in cell.metadata.get("tags", [])] == [
            cell.source for cell in tracked.cells if "parameters" not in cell.metadata.get("tags", [])]
    compare = _parameters(folder / "06_compare.ipynb")
    assert compare["experiment"] == "smoke" and compare["tracking_uri"] == params.tracking_uri
    assert _digests() == before


def test_a_working_copy_once_written_is_kept_and_one_that_differs_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(SMOKE, ["output_dir=lab-out"])
    folder, _ = write_working_copies(params, SMOKE, [])
    edited = nbformat.read(folder / "02_train.ipynb", as_version=4)
    edited.cells[-1].source += "\nprint('mine')"
    edited.cells[-1].outputs = [nbformat.v4.new_output("stream", text="an output JupyterLab saved\n")]
    nbformat.write(edited, folder / "02_train.ipynb")
    ran = nbformat.read(folder / "01_prepare.ipynb", as_version=4)
    ran.cells[-1].outputs = [nbformat.v4.new_output("stream", text="outputs alone are no edit\n")]
    nbformat.write(ran, folder / "01_prepare.ipynb")

    again, differing = write_working_copies(params, SMOKE, [])
    assert again == folder and differing == ["02_train.ipynb"]
    kept = nbformat.read(folder / "02_train.ipynb", as_version=4)
    assert kept.cells[-1].source.endswith("print('mine')") and kept.cells[-1].outputs
    assert nbformat.read(folder / "01_prepare.ipynb", as_version=4).cells[-1].outputs

    other = load_params(SMOKE, ["output_dir=lab-out", "lora_r=4"])
    _, differing = write_working_copies(other, SMOKE, ["lora_r=4"])  # other overrides: every copy differs
    assert "02_train.ipynb" in differing and "06_compare.ipynb" not in differing


def test_a_working_copys_kernel_works_from_the_folder_kit_lab_ran_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder, _ = write_working_copies(load_params(SMOKE, ["output_dir=lab-out"]), SMOKE, [])
    monkeypatch.chdir(folder)  # where JupyterLab starts the kernel
    enter_work_dir()
    assert Path.cwd() == tmp_path
    monkeypatch.chdir(ROOT / "notebooks")  # a tracked notebook's kernel
    enter_work_dir()
    assert Path.cwd() == ROOT


def test_kit_lab_refuses_bad_params_before_writing_anything(tmp_path, monkeypatch, capsys):
    from kit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["lab", str(SMOKE), "--set", "lora_r=true"]) == 2
    assert "lora_r" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [path.name for path in TRACKED])
def test_every_tracked_notebook_has_a_parameters_cell_kit_lab_can_set(name):
    values = _parameters(ROOT / "notebooks" / name)
    wanted = {"experiment", "tracking_uri"} if name == "06_compare.ipynb" else {"params_file", "overrides"}
    assert wanted <= set(values), f"{name}: kit lab sets {sorted(wanted)} in its parameters cell"
