"""How every artifact is scored: the benchmarks, decoding, and the sandbox that runs the code (tunebook's
``eval_*`` keys; Axolotl has none)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kit.core.params.base import Strict
from kit.core.params.benchmark import BUILTIN_BENCHMARKS, BenchmarkFile, benchmark_entries


class EvalKeys(Strict):
    eval_benchmarks: list[str | BenchmarkFile] = Field(
        ["humaneval", "mbpp"],
        description="humaneval, mbpp, or {name, path} of a HumanEval-format jsonl of one's own",
    )
    eval_limit: int | dict[str, int] | None = Field(
        None,
        description="score only the first N problems: one N for every benchmark, or N per benchmark "
        "({humaneval: 4, mbpp: 4}; a benchmark not named is scored whole)",
    )
    eval_num_samples: int = Field(
        1, ge=1, description="completions per problem: 1 is greedy pass@1; more are sampled, for pass@k up to it"
    )
    eval_temperature: float = Field(0.2, ge=0, description="the sampling temperature, with eval_num_samples > 1")
    eval_top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling's mass, with eval_num_samples > 1")
    eval_max_new_tokens: int = Field(512, ge=1, description="the longest completion, in tokens")
    eval_batch_size: int = Field(
        8, ge=1, description="prompts generated together; sorted by length first, so a batch wastes little on padding"
    )
    eval_prompt_format: Literal["auto", "base", "instruct"] = Field(
        "auto",
        description="base: the benchmarks' own prompts; instruct: each task asked in the first dataset's training "
        "format and the code taken from the answer; auto: base for the base model, instruct for the fine-tunes "
        "when the training data is instructions",
    )
    eval_timeout: float = Field(3.0, gt=0, description="seconds a completion and its tests may run")
    eval_workers: int = Field(2, ge=1, description="completions run at once, each in its own sandbox")
    eval_allow_weak_isolation: bool = Field(
        False, description="where the sandbox has no namespaces, run completions anyway, able to read and write what "
        "this user can (trusted code only)"
    )
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

    @field_validator("eval_benchmarks", mode="before")
    @classmethod
    def _known_eval_benchmarks(cls, value: Any) -> Any:
        return benchmark_entries(value)

    @field_validator("eval_limit", mode="before")
    @classmethod
    def _limit_per_benchmark(cls, value: Any) -> Any:
        # Checked here rather than by the union's members, whose errors would each name a member type.
        limits = value if isinstance(value, dict) else {"": value}
        for limit in limits.values():
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise ValueError(f"a number of problems (at least 1), or one per benchmark; got {limit!r}")
        return value

    @model_validator(mode="after")
    def _benchmarks_named_once(self) -> EvalKeys:
        names = self.benchmark_names
        if len(set(names)) < len(names):
            raise ValueError("eval_benchmarks: a benchmark is named twice")
        if isinstance(self.eval_limit, dict):
            for name in self.eval_limit:
                if name not in names and name not in BUILTIN_BENCHMARKS:
                    raise ValueError(f"eval_limit: unknown benchmark {name!r}; eval_benchmarks has {', '.join(names)}")
        return self

    @property
    def benchmark_names(self) -> list[str]:
        """The names of ``eval_benchmarks``, in order."""
        return [entry if isinstance(entry, str) else entry.name for entry in self.eval_benchmarks]

    def benchmark_file(self, name: str) -> BenchmarkFile | None:
        """The file entry of ``eval_benchmarks`` named ``name``; None for a built-in benchmark."""
        return next((entry for entry in self.eval_benchmarks if isinstance(entry, BenchmarkFile)
                     and entry.name == name), None)

    def eval_limit_for(self, benchmark: str) -> int | None:
        """How many of ``benchmark``'s first problems are scored; None for all of them."""
        if isinstance(self.eval_limit, dict):
            return self.eval_limit.get(benchmark)
        return self.eval_limit
