"""The params schema: Axolotl's files validate, malformed ones stop with a message naming the key."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main
from kit.core.hardware import environment_warnings
from kit.core.params import CONCERNS, ParamsError, key_table, load_params, parse_overrides

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
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line and not line[0].isspace() and not line.startswith("#")]
    assert listed == [row.key for row in key_table()] and "base_model" in listed and "eval_benchmarks" in listed
    assert [line for line in lines if line.startswith("#")] == [f"# {concern}" for concern in CONCERNS]


# --- the schema by concern, every key described, and keys nothing reads ---

KIT = ROOT / "kit"
SCHEMA = KIT / "core" / "params"


def test_the_schema_is_the_concerns_put_together_in_their_order():
    from kit.core.params import Params
    from kit.core.params.base import Strict

    owners: dict[str, list[str]] = {}
    for concern, part in CONCERNS.items():
        for key in part.model_fields:
            owners.setdefault(key, []).append(concern)
    assert {key: concerns for key, concerns in owners.items() if len(concerns) > 1} == {}
    assert list(Params.model_fields) == list(owners)
    assert [row.concern for row in key_table() if "." not in row.key] == [owners[key][0] for key in owners]
    # A check of one part that another's of the same name hid would be lost without a word.
    def checks(model) -> list[str]:
        decorators = model.__pydantic_decorators__
        return [*decorators.field_validators, *decorators.model_validators]

    own = [name for part in CONCERNS.values() for name in checks(part) if name not in checks(Strict)]
    assert len(own) == len(set(own)) and set(own) <= set(checks(Params))


def test_every_key_has_a_description():
    assert [row.key for row in key_table() if not row.description.strip()] == []
    nested = {row.key for row in key_table() if "." in row.key}
    assert {"datasets[].path", "datasets[].type", "datasets[].type[].format", "eval_benchmarks[].path"} <= nested


def _says_unhonoured(name: str) -> bool:
    # What only says a key is not honoured (the warnings) does not read it.
    return name.endswith("warnings") or name in ("UNREAD_KEYS", "NOT_YET_HONOURED")


def _names_in(tree: ast.AST, tables: bool = False) -> set[str]:
    """Attribute names a piece of source reads, but in warnings; with ``tables``, also names and strings (the
    schema's tables of keys, which code reads with getattr)."""
    names, nodes = set(), [tree]
    while nodes:
        node = nodes.pop()
        defined = [node.name] if isinstance(node, ast.FunctionDef) else [
            target.id for target in getattr(node, "targets", []) if isinstance(target, ast.Name)]
        if any(_says_unhonoured(name) for name in defined):
            continue
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif tables and isinstance(node, ast.Name):
            names.add(node.id)
        elif tables and isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        nodes.extend(ast.iter_child_nodes(node))
    return names


def _schema_members() -> dict[str, set[str]]:
    """What each of the schema's properties, methods and constants reads (validators check, they do not read)."""
    members: dict[str, set[str]] = {}
    for path in SCHEMA.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            inside = node.body if isinstance(node, ast.ClassDef) else [node]
            for member in inside:
                names = [member.name] if isinstance(member, ast.FunctionDef) else [
                    target.id for target in getattr(member, "targets", []) if isinstance(target, ast.Name)]
                for name in names:
                    if not name.startswith("_"):
                        members.setdefault(name, set()).update(_names_in(member, tables=True))
    return members


def keys_read() -> set[str]:
    """Every name kit reads outside the schema, and through the schema's own members the names they read."""
    members = _schema_members()
    constants = {name for name in members if name.isupper()}  # tables such as LIGER_KERNELS, imported by name
    read: set[str] = set()
    for path in KIT.rglob("*.py"):
        if SCHEMA not in path.parents:
            tree = ast.parse(path.read_text())
            read |= _names_in(tree) | (_names_in(tree, tables=True) & constants)
    frontier = read & set(members)
    while frontier:
        new = members.pop(frontier.pop()) - read
        read |= new
        frontier |= new & set(members)
    return read


def _a_value_for(annotation) -> str:
    text = str(annotation)
    return next(value for kind, value in (("bool", "true"), ("int", "1"), ("float", "0.5"), ("list", "[x]"),
                                          ("dict", "{a: b}"), ("str", "x")) if kind in text)


def test_a_key_nothing_reads_warns_when_it_is_set():
    from kit.core.params import Params

    read = keys_read()
    unread = [key for key in Params.model_fields if key not in read]
    assert {"base_model_config", "model_type", "is_llama_derived_model", "strict", "debug", "wandb_project",
            "group_by_length", "local_rank", "lora_model_dir", "early_stopping_patience"} <= set(unread)
    assert {"lora_r", "seed", "eval_variants", "liger_rope", "tokenizer_type"}.isdisjoint(unread)
    for key in unread:
        params = load_params(SMOKE, [f"{key}={_a_value_for(Params.model_fields[key].annotation)}"])
        assert any(warning.startswith(f"{key}:") for warning in environment_warnings(params)), key
