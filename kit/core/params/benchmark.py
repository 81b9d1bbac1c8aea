"""A benchmark entry, as eval_benchmarks and dataset_decontamination_benchmarks list them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from kit.core.params.base import Strict

# The benchmarks kit knows by name; any other is a BenchmarkFile.
BUILTIN_BENCHMARKS = ("humaneval", "mbpp")


class BenchmarkFile(Strict):
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


def benchmark_entries(value: Any) -> Any:
    """A list of benchmark entries, each a built-in name or a mapping; checked before the union is tried,
    whose errors would each name a member type."""
    if not isinstance(value, list):
        return value
    for entry in value:
        if isinstance(entry, str) and entry not in BUILTIN_BENCHMARKS:
            raise ValueError(f"unknown benchmark {entry!r}; expected {', '.join(BUILTIN_BENCHMARKS)} or "
                             "{name, path} of a HumanEval-format jsonl")
    return value
