"""The params schema: Axolotl's files validate, malformed ones stop with a message naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main
from kit.core.params import ParamsError, environment_warnings, key_table, load_params, parse_overrides

from .conftest import ROOT, SMOKE

# The article's Axolotl config, byte for byte.
ARTICLE_CONFIG = ROOT / "params" / "EvolCodeLlama-7b.yaml"
BAD = sorted((Path(__file__).parent / "bad_params").glob("*.yaml"))


def test_the_articles_axolotl_config_is_a_valid_params_file(capsys):
    assert main(["validate", str(ARTICLE_CONFIG)]) == 0
    params = load_params(ARTICLE_CONFIG)
    assert (params.lora_r, params.lora_alpha, params.micro_batch_size, params.eval_steps) == (32, 16, 10, 0.01)
    assert params.lora_targets == "all-linear"
    assert params.experiment_name == "EvolCodeLlama-7b"
    assert "lora_r: 32" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_params_files_validate(path):
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("path", BAD, ids=lambda path: path.stem)
def test_malformed_params_exit_2_naming_the_key_without_traceback(path, tmp_path):
    lines = path.read_text(errors="replace").splitlines()
    expected = [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]
    # The real console entry point, in a folder of its own: a refused file must write nothing.
    process = subprocess.run(
        [sys.executable, "-m", "kit.cli", "validate", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    for fragment in expected:
        assert fragment in process.stderr
    assert process.stderr.count("\n") <= 3
    assert list(tmp_path.iterdir()) == []


def test_a_folder_given_as_params_exits_2_saying_so(tmp_path):
    process = subprocess.run([sys.executable, "-m", "kit.cli", "validate", str(ROOT / "params")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "a folder, not a params file; name its YAML file" in process.stderr


def test_no_output_dir_means_a_folder_git_ignores():
    assert load_params(SMOKE, ["output_dir=null"]).output_dir == ".tunebook/runs"
    assert ".tunebook/" in (ROOT / ".gitignore").read_text().splitlines()


def test_run_refuses_a_bad_file_before_starting_anything(tmp_path, capsys):
    assert main(["run", str(BAD[0]), "--set", f"output_dir={tmp_path}"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_overrides_are_yaml_values_and_validated():
    assert parse_overrides(["lora_r=16", "eval_benchmarks=[mbpp]", "hub_model_id=me/x"]) == {
        "lora_r": 16, "eval_benchmarks": ["mbpp"], "hub_model_id": "me/x"
    }
    assert load_params(SMOKE, ["lora_r=16"]).lora_r == 16
    with pytest.raises(ParamsError, match="`lora_r`"):
        load_params(SMOKE, ["lora_r=-1"])
    with pytest.raises(ParamsError, match="expected key=value"):
        parse_overrides(["lora_r"])


def test_keys_this_machine_cannot_honour_warn_naming_the_key():
    params = load_params(SMOKE, ["flash_attention=true", "optimizer=paged_adamw_32bit", "wandb_project=x",
                                 "deepspeed=ds.json", "hub_model_id=me/model", "lora_model_dir=adapter"])
    warnings = "\n".join(environment_warnings(params))
    for key in ("flash_attention", "optimizer: paged_adamw_32bit", "wandb_project", "deepspeed", "hub_model_id",
                "lora_model_dir"):
        assert key in warnings


def test_derived_values_live_in_the_schema():
    params = load_params(SMOKE, ["micro_batch_size=3", "gradient_accumulation_steps=4", "bf16=true"])
    assert params.effective_batch_size == 12
    assert params.compute_dtype == "float32"  # no CUDA here: bf16 cannot be honoured
    assert params.experiment_name == "smoke"
    assert load_params(SMOKE, ["mlflow_experiment_name=mine"]).experiment_name == "mine"


def test_eval_limit_is_one_number_or_one_per_benchmark():
    assert load_params(SMOKE, ["eval_limit=3"]).eval_limit_for("tiny") == 3
    per_benchmark = load_params(SMOKE, ["eval_limit={humaneval: 2}"])
    assert (per_benchmark.eval_limit_for("humaneval"), per_benchmark.eval_limit_for("tiny")) == (2, None)
    with pytest.raises(ParamsError, match="eval_limit"):
        load_params(SMOKE, ["eval_limit={humaneval: 0}"])
    with pytest.raises(ParamsError, match="eval_limit"):
        load_params(SMOKE, ["eval_limit={apps: 2}"])


def test_test_datasets_and_val_set_size_are_not_both_taken():
    with pytest.raises(ParamsError, match="test_datasets and val_set_size are both set"):
        load_params(SMOKE, ["test_datasets=[{path: v.jsonl}]", "val_set_size=0.1"])
    assert load_params(SMOKE, ["test_datasets=[{path: v.jsonl}]", "val_set_size=0"]).test_datasets[0].path == "v.jsonl"


def test_the_smollm2_mbpp_params_file_is_valid_and_evaluates_every_artifact():
    params = load_params(ROOT / "params" / "smollm2-135m-mbpp.yaml")
    assert params.eval_variants == ["base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m"]
    assert params.datasets[0].type == params.test_datasets[0].type == "chat_template"
    assert params.eval_limit is None and params.eval_num_samples == 1  # every problem, greedily


def test_a_benchmark_is_a_builtin_name_or_a_task_file_named_in_one_place(tmp_path):
    tasks = tmp_path / "mine.jsonl"
    tasks.write_text('{"task_id": "Mine/0", "prompt": "def f():\\n", "canonical_solution": "    return 1\\n", '
                     '"test": "def check(f):\\n    assert f() == 1\\n", "entry_point": "f"}\n')
    mine = f"{{name: mine, path: {tasks}}}"
    params = load_params(SMOKE, [f"eval_benchmarks=[{mine}, humaneval]", "eval_limit={mine: 1}",
                                 f"dataset_decontamination_benchmarks=[{mine}, mbpp]"])
    assert params.benchmark_names == ["mine", "humaneval"]
    assert params.benchmark_file("mine").path == str(tasks) and params.benchmark_file("humaneval") is None
    assert [getattr(entry, "name", entry) for entry in params.dataset_decontamination_benchmarks] == ["mine", "mbpp"]
    refused = {
        "eval_benchmarks=[apps]": "unknown benchmark 'apps'",
        f"eval_benchmarks=[{{name: humaneval, path: {tasks}}}]": "needs a name of its own",
        "eval_benchmarks=[{name: mine, path: missing.jsonl}]": "missing.jsonl: no such file",
        f"eval_benchmarks=[{mine}, {mine}]": "a benchmark is named twice",
        "dataset_decontamination_benchmarks=[mine]": "unknown benchmark 'mine'",
    }
    for override, message in refused.items():
        with pytest.raises(ParamsError, match=re.escape(message)):
            load_params(SMOKE, [override])


def test_kit_params_lists_every_key_with_its_default(capsys):
    from kit.cli import main

    assert main(["params"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line[0].isspace()]
    assert listed == [key for key, _, _ in key_table()] and "base_model" in listed and "eval_benchmarks" in listed
