"""One strict schema for an experiment's params file, composed of one part per concern.

A params file is one flat mapping, as Axolotl's is: keys that Axolotl has keep its names and meanings, so
an Axolotl config (such as the article's EvolCodeLlama-7b.yaml) is a valid params file. What Axolotl
lacks is prefixed: ``dataset_*``, ``train_*``, ``eval_*``, ``merge_*``, ``gguf_*``. Each concern is a
part of its own (``CONCERNS``: model, data, adapter, optimisation, acceleration, tracking, evaluate, merge,
gguf); ``Params`` is all of them at once, and checks what spans two. What the machine decides (CUDA,
bf16, optimizer substitutions, Liger, FSDP and DeepSpeed) is not here but in ``kit.core.hardware``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, PrivateAttr, ValidationError, model_validator

from kit.core.params.acceleration import LIGER_KERNELS, AccelerationKeys
from kit.core.params.adapter import AdapterKeys
from kit.core.params.base import ParamsError, Strict
from kit.core.params.benchmark import BUILTIN_BENCHMARKS, BenchmarkFile
from kit.core.params.data import DataKeys, DatasetSpec, UserFormat
from kit.core.params.evaluate import EvalKeys
from kit.core.params.gguf import GGUF_TYPES, GGUF_VARIANT_PREFIX, GgufKeys
from kit.core.params.merge import MERGE_LOGIT_DIFF_LIMITS, MergeKeys
from kit.core.params.model import PACKAGED_GGUF, ModelKeys
from kit.core.params.optimisation import OPTIMIZERS, OptimisationKeys
from kit.core.params.tracking import TrackingKeys

__all__ = [
    "BUILTIN_BENCHMARKS", "CONCERNS", "GGUF_TYPES", "GGUF_VARIANT_PREFIX", "LIGER_KERNELS", "MERGE_LOGIT_DIFF_LIMITS",
    "OPTIMIZERS", "PACKAGED_GGUF", "BenchmarkFile", "DatasetSpec", "KeyRow", "Params",
    "ParamsError", "UserFormat", "key_table", "load_params", "parse_overrides", "unhonoured_key_warnings",
    "validate_params",
]

# The parts, in the order a params file is usually written and `kit params` lists them.
CONCERNS: dict[str, type[Strict]] = {
    "model": ModelKeys,
    "data": DataKeys,
    "adapter": AdapterKeys,
    "optimisation": OptimisationKeys,
    "acceleration": AccelerationKeys,
    "tracking": TrackingKeys,
    "evaluate": EvalKeys,
    "merge": MergeKeys,
    "gguf": GgufKeys,
}


# pydantic takes the fields of the last base first: the parts are listed backwards so that the schema
# keeps CONCERNS' order.
class Params(GgufKeys, MergeKeys, EvalKeys, TrackingKeys, AccelerationKeys, OptimisationKeys, AdapterKeys, DataKeys,
             ModelKeys):
    """Every key of every concern; the checks below are those that span two concerns."""

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_combinations(self) -> Params:
        if self.adapter == "qlora" and not self.load_in_4bit:
            raise ValueError("adapter: qlora needs load_in_4bit: true (QLoRA trains on a 4-bit base)")
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; choose one")
        if self.load_in_4bit and self.adapter != "qlora":
            raise ValueError("load_in_4bit: true needs adapter: qlora (a 4-bit base cannot be fully fine-tuned)")
        if self.load_in_8bit and self.adapter is None:
            raise ValueError("load_in_8bit: true needs adapter: lora (an 8-bit base cannot be fully fine-tuned)")
        if self.test_datasets and self.val_set_size:
            raise ValueError("test_datasets and val_set_size are both set; validation comes from one of them")
        if self.val_set_size >= 1 and self.val_set_size != int(self.val_set_size):
            raise ValueError("val_set_size: a count (>= 1) must be a whole number; a fraction must be < 1")
        if self.eval_prompt_format == "instruct" and self.datasets[0].type == "completion":
            raise ValueError(
                "eval_prompt_format: instruct asks in the first dataset's training format, but its type is "
                "completion, which has no prompt; use base or auto"
            )
        if self.merge_base == "dequantized" and not self.load_in_4bit:
            raise ValueError(
                "merge_base: dequantized is for an adapter trained on a 4-bit base (load_in_4bit); this adapter "
                "trained on the original base, which merge uses"
            )
        self._check_eval_variants()
        return self

    def _check_eval_variants(self) -> None:
        if self.eval_variants is None:
            return
        available = self.available_eval_variants
        for variant in self.eval_variants:
            if variant in available:
                continue
            if variant == "adapter":
                why = "adapter is null, so train makes a full fine-tune: `finetuned`"
            elif variant == "finetuned":
                why = f"adapter is {self.adapter}, so train makes an adapter: `adapter`"
            elif variant.removeprefix(GGUF_VARIANT_PREFIX) in GGUF_TYPES:
                why = f"{variant.removeprefix(GGUF_VARIANT_PREFIX)} is not in gguf_quantizations"
            else:
                why = "no artifact has that name"
            raise ValueError(f"eval_variants: `{variant}`: {why}; this pipeline makes {', '.join(available)}")
        if len(set(self.eval_variants)) < len(self.eval_variants):
            raise ValueError("eval_variants: a variant is named twice")

    # --- derived values that span concerns: the one place they are computed ---
    @property
    def source(self) -> Path | None:
        """The params file this came from, if any."""
        return self._source

    @property
    def experiment_name(self) -> str:
        if self.mlflow_experiment_name:
            return self.mlflow_experiment_name
        return self._source.stem if self._source else "tunebook"

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI wins, then the params key, then a local SQLite file (no server)."""
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{Path('.tunebook/mlflow.db').resolve()}"

    @property
    def available_eval_variants(self) -> tuple[str, ...]:
        """Every artifact the pipeline makes, in pipeline order: the names ``eval_variants`` may use."""
        gguf_types = dict.fromkeys(["f16", *self.gguf_quantizations])  # quantize always writes f16 first
        trained = "adapter" if self.adapter else "finetuned"
        return ("base", trained, "merged", *(f"{GGUF_VARIANT_PREFIX}{gguf_type}" for gguf_type in gguf_types))

    @property
    def evaluated_variants(self) -> tuple[str, ...]:
        """``eval_variants`` in pipeline order; by default every artifact but the f16 GGUF (unless
        ``gguf_quantizations`` names it): slow on a 7B model, and close to the merged model."""
        if self.eval_variants is not None:
            return tuple(variant for variant in self.available_eval_variants if variant in self.eval_variants)
        f16 = f"{GGUF_VARIANT_PREFIX}f16"
        return tuple(
            variant
            for variant in self.available_eval_variants
            if variant != f16 or "f16" in self.gguf_quantizations
        )

    @property
    def merge_base_used(self) -> Literal["dequantized", "original"]:
        """``merge_base``; by default the weights the adapter trained against: the dequantized NF4 base for a
        4-bit base, where it reproduces the trained model and the original base does not (reports/merge.md)."""
        if self.merge_base is not None:
            return self.merge_base
        return "dequantized" if self.load_in_4bit else "original"

    def resolved(self) -> dict[str, Any]:
        """Every key with its value after defaults, as written to MLflow and `kit validate`."""
        return self.model_dump(mode="json")


def _format_error(error: dict[str, Any], source: str) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "params"
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        known = DatasetSpec.model_fields if len(error["loc"]) > 1 else Params.model_fields
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return f"{source}: unknown key `{location}`{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and not error["loc"]:
        return f"{source}: {message}"
    return f"{source}: key `{location}`: {message}"


def parse_overrides(overrides: list[str] | dict[str, Any] | str | None) -> dict[str, Any]:
    """``["lora_r=16", "eval_benchmarks=[humaneval]"]`` -> ``{"lora_r": 16, ...}``; values are YAML.

    A string is one ``key=value`` or a YAML list of them, as ``papermill -p overrides`` passes it.
    """
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    if isinstance(overrides, str):
        listed = yaml.safe_load(overrides) if overrides.lstrip().startswith("[") else None
        overrides = listed if isinstance(listed, list) else [overrides]
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override `{item}`: expected key=value")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def load_params(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Params:
    """Read, override and validate a params file; raises ParamsError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: no such params file") from exc
    except IsADirectoryError as exc:
        raise ParamsError(f"{path}: a folder, not a params file; name its YAML file (params/smoke.yaml)") from exc
    except PermissionError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        byte = exc.object[exc.start]
        raise ParamsError(f"{path}: line {line}: not UTF-8 text (byte {byte:#04x}); save the file as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values")
    raw.update(parse_overrides(overrides))
    return validate_params(raw, source=path)


def validate_params(raw: dict[str, Any], source: Path | None = None) -> Params:
    # Axolotl writes an empty key for "unset"; None then means "use the default".
    cleaned = {key: value for key, value in raw.items() if value is not None}
    try:
        params = Params.model_validate(cleaned)
    except ValidationError as exc:
        lines = [_format_error(error, str(source or "params")) for error in exc.errors()]
        raise ParamsError("\n".join(lines)) from None
    params._source = source.resolve() if source else None
    return params


class KeyRow(NamedTuple):
    concern: str
    key: str
    default: str
    description: str


# Keys whose values are mappings of keys of their own, listed under theirs (datasets[].path); test_datasets'
# entries are datasets', listed once.
_NESTED = {"datasets": DatasetSpec, "datasets[].type": UserFormat, "eval_benchmarks": BenchmarkFile}


def key_table() -> list[KeyRow]:
    """Every key of the schema with its concern, default and description, in the schema's order; the keys
    of a dataset entry, a format of one's own and a benchmark file follow the key that holds them."""

    def rows(concern: str, model: type[BaseModel], prefix: str = "") -> list[KeyRow]:
        listed = []
        for key, field in model.model_fields.items():
            default = "(required)" if field.is_required() else json.dumps(
                field.get_default(call_default_factory=True), default=str)
            listed.append(KeyRow(concern, prefix + key, default, field.description or ""))
            nested = _NESTED.get(prefix + key)
            if nested:
                listed += rows(concern, nested, f"{prefix}{key}[].")
        return listed

    return [row for concern, part in CONCERNS.items() for row in rows(concern, part)]


# Keys accepted so that Axolotl configs load, that nothing reads, with what happens instead, and when
# the key is set to a value that would have changed something in Axolotl.
UNREAD_KEYS = {
    "base_model_config": ("the model's config comes from base_model",
                          lambda params: params.base_model_config not in (None, params.base_model)),
    "model_type": ("models load with AutoModelForCausalLM, which takes the class from the model's config",
                   lambda params: params.model_type not in (None, "AutoModelForCausalLM")),
    "is_llama_derived_model": ("the architecture comes from the model's config",
                               lambda params: params.is_llama_derived_model is not None),
    "strict": ("unknown keys are always errors", lambda params: params.strict),
    "debug": ("01_prepare.ipynb shows rows token by token, masked and trained", lambda params: bool(params.debug)),
}
# Axolotl keys this version reads but does not act on yet, and what happens instead.
NOT_YET_HONOURED = {
    "lora_model_dir": "the adapter is trained from scratch, not from this folder",
    "early_stopping_patience": "training runs all its steps",
}


def unhonoured_key_warnings(params: Params) -> list[str]:
    """Keys this version accepts and does not act on, on any machine, and what happens instead."""
    warnings = [f"{key}: not read; {instead}" for key, (instead, applies) in UNREAD_KEYS.items() if applies(params)]
    if params.xformers_attention:
        warnings.append("xformers_attention: not supported; using PyTorch SDPA attention instead")
    if params.lr_scheduler == "constant" and (params.warmup_steps or params.warmup_ratio):
        warnings.append(
            "lr_scheduler: constant has no warmup in transformers; warmup_steps/warmup_ratio are ignored "
            "(constant_with_warmup warms up)"
        )
    for key in TrackingKeys.model_fields:
        if key.startswith("wandb_") and getattr(params, key):
            warnings.append(f"{key}: Weights & Biases is not used; runs are tracked in MLflow instead")
    if params.group_by_length:
        warnings.append("group_by_length: transformers 5's Trainer has no length grouping; batches are shuffled")
    if params.local_rank is not None:
        warnings.append("local_rank: the launcher sets each process's rank; the key is ignored")
    for key, instead in NOT_YET_HONOURED.items():
        if getattr(params, key) is not None:
            warnings.append(f"{key}: not supported yet; {instead}")
    return warnings
