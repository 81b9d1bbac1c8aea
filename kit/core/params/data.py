"""The training data: where it comes from, its prompt format, how it becomes token rows, and its hygiene.
Axolotl's keys, and tunebook's ``dataset_*`` for what Axolotl lacks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from kit.core.params.base import Strict
from kit.core.params.benchmark import BenchmarkFile, benchmark_entries


class UserFormat(Strict):
    """Axolotl's custom prompt format (``type:`` as a mapping): field names and template strings."""

    system_prompt: str = Field("", description="the {system} text of every prompt")
    field_system: str | None = Field(None, description="a field holding each row's own system text")
    field_instruction: str = Field("instruction", description="the field holding the instruction")
    field_input: str | None = Field("input", description="the field holding the input, if any")
    field_output: str = Field("output", description="the field holding the answer, the text trained on")
    format: str = Field(description="prompt template with {instruction}, {input} and {system}")
    no_input_format: str | None = Field(None, description="the template for rows with an empty input")


class DatasetSpec(Strict):
    """One entry of ``datasets``, with Axolotl's per-dataset keys."""

    path: str = Field(description="a Hub dataset name, or a local file or folder (json, jsonl, csv, parquet, arrow)")
    type: Literal["alpaca", "sharegpt", "chat_template", "completion"] | UserFormat = Field(
        "alpaca", description="the prompt format: alpaca, sharegpt, chat_template, completion, or a mapping of one's "
        "own (field_instruction, format, ...)"
    )
    split: str = Field("train", description="the split read, or a slice of it (train[:100], train[10%:]); a "
                       "local file's one split is train")
    name: str | None = Field(None, description="the Hub dataset's configuration")
    data_files: str | list[str] | None = Field(None, description="files of the Hub dataset or folder to read")
    revision: str | None = Field(None, description="the Hub dataset's revision (a commit pins it)")
    field: str | None = Field(None, description="text field for `completion`; default `text`")
    # Conversations (`sharegpt`, `chat_template`), with Axolotl's chat_template keys.
    field_messages: str | None = Field(None, description="default `conversations` (sharegpt), `messages`")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="default {role: from, content: value} (sharegpt), {role: role, content: content}"
    )
    chat_template: Literal["tokenizer_default", "chatml", "llama2"] | None = Field(
        None, description="a named template; it wins over the tokenizer's own, as in Axolotl"
    )
    roles_to_train: list[str] = Field(["assistant"], description="the roles whose turns are trained on")


class DataKeys(Strict):
    datasets: list[DatasetSpec] = Field(min_length=1, description="the training data, one entry per dataset")
    dataset_prepared_path: str | None = Field(
        None, description="a folder where prepared rows are kept and found again (same data, tokenizer and params)"
    )
    val_set_size: float = Field(
        0.0, ge=0, description="validation rows held out of the training rows: a fraction (< 1) or a count"
    )
    test_datasets: list[DatasetSpec] | None = Field(
        None, description="validation from datasets of their own, prepared as `datasets` are (not with val_set_size)"
    )
    # Under .tunebook/, which git ignores (Axolotl's ./out would sit in the work tree).
    output_dir: str = Field(".tunebook/runs", description="where run folders go: <output_dir>/<mlflow_run_name>")
    sequence_len: int = Field(2048, ge=16, description="the longest sample, and the packed row's length, in tokens")
    sample_packing: bool = Field(
        False, description="samples packed into rows of sequence_len, each attending only to itself"
    )
    train_on_inputs: bool = Field(False, description="train on the prompt's tokens too, not only the answer's")
    group_by_length: bool = Field(
        False, description="Axolotl's length grouping; transformers 5 has none, so batches are shuffled (warns)"
    )
    special_tokens: dict[str, str] | None = Field(
        None, description="the tokenizer's bos/eos/unk/pad tokens, set or added ({eos_token: </s>})"
    )
    tokens: list[str] | None = Field(None, description="tokens added to the vocabulary (the embeddings grow)")
    excess_length_strategy: Literal["drop", "truncate"] = Field(
        "drop", description="a sample over sequence_len is dropped, or cut to it"
    )
    dataset_bad_rows: Literal["error", "skip"] = Field(
        "error", description="a row that cannot be read stops prepare naming its file and line, or is counted and "
        "skipped"
    )
    dataset_decontamination: Literal["off", "report", "remove"] = Field(
        "report", description="training samples sharing an n-gram with a benchmark problem: counted, removed, or "
        "not looked for"
    )
    dataset_decontamination_ngram: int = Field(
        13, ge=4, description="the n-gram length, in words, that counts as shared"
    )
    dataset_decontamination_benchmarks: list[str | BenchmarkFile] = Field(
        ["humaneval", "mbpp"],
        description="benchmarks the training data is checked against: humaneval, mbpp, or {name, path} of a "
        "HumanEval-format jsonl",
    )

    @field_validator("dataset_decontamination_benchmarks", mode="before")
    @classmethod
    def _known_decontamination_benchmarks(cls, value: Any) -> Any:
        return benchmark_entries(value)

    @field_validator("dataset_decontamination", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false.
        return "off" if value is False else value
