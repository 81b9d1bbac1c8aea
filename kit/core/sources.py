"""Where training data comes from: local files and folders, or the Hugging Face Hub."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core.params import DatasetSpec, Params

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# What `save_to_disk` writes at the top of a Dataset's or a DatasetDict's folder.
SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")
# Local files, like a saved Dataset, hold one split of this name.
LOCAL_SPLIT = "train"


@dataclass(frozen=True)
class RowPlace:
    """Where a row is: its file (or Hub dataset) and its number, counted from 1."""

    file: str
    row: int
    # A JSON lines file's rows are numbered by line, blank lines included, as an editor shows them.
    unit: str = "row"

    def __str__(self) -> str:
        return f"{self.file}: {self.unit} {self.row}"


class BadData(ValueError):
    """A row that cannot be used; the message names its file, its row or line, and the field."""

    def __init__(self, reason: str, *, field: str | None = None, place: RowPlace | None = None):
        self.reason, self.field, self.place = reason, field, place
        self.file = place.file if place else None
        self.row = place.row if place else None
        where = [str(place)] if place else []
        where += [f"field `{field}`"] if field else []
        super().__init__(": ".join([*where, reason]))

    def at(self, place: RowPlace) -> BadData:
        """The same complaint, placed in its file."""
        return BadData(self.reason, field=self.field, place=place)


JSON_KINDS = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


def kind_of(value: Any) -> str:
    """A value's type as JSON names it, for messages about rows."""
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in SAVED_DATASET_MARKERS)


def local_files(path: Path) -> list[Path]:
    """The data files at ``path`` in reading order: the file itself, or a folder's files of one type.

    Empty where ``path`` is neither (a Hub name, or a ``save_to_disk`` folder).
    """
    if path.is_file():
        if path.suffix not in LOCAL_BUILDERS:
            raise ValueError(f"datasets: {path}: unsupported file type {path.suffix!r} ({', '.join(LOCAL_BUILDERS)})")
        return [path]
    if path.suffix in LOCAL_BUILDERS and not path.exists():
        # Else it would be looked up on the Hub, which answers with a puzzling error.
        raise ValueError(f"datasets: {path}: no such file")
    if not path.is_dir() or _is_saved_dataset(path):
        return []
    files = sorted(file for file in path.iterdir() if file.is_file() and file.suffix in LOCAL_BUILDERS)
    if not files:
        raise ValueError(f"datasets: {path}: a folder with no data files ({', '.join(LOCAL_BUILDERS)})")
    suffixes = sorted({file.suffix for file in files})
    if len(suffixes) > 1:
        raise ValueError(f"datasets: {path}: a folder mixes {', '.join(suffixes)} files; keep one type per folder")
    return files


def check_local_paths(params: Params) -> None:
    """A dataset path that names no data fails now, not after the tokenizer and base model have loaded
    (minutes for a large model)."""
    for spec in [*params.datasets, *(params.test_datasets or [])]:
        if local_files(Path(spec.path).expanduser()):
            split_parts(spec.split, {LOCAL_SPLIT: 1}, spec.path)


def split_parts(split: str, lengths: dict[str, int], where: str) -> list[tuple[str, int, int]]:
    """The rows ``split`` names, as (split, start, stop), over splits of ``lengths`` rows. The syntax is
    ``load_dataset``'s, so a slice reads the same from local files as from the Hub: ``train``,
    ``train[:100]``, ``train[10%:]``, ``train[:50]+validation[:50]``."""
    from datasets import ReadInstruction

    try:
        parts = ReadInstruction.from_spec(split).to_absolute(lengths)
    except (ValueError, AssertionError) as error:
        raise ValueError(f"datasets: {where}: split {split!r}: {error}") from None
    return [(part.splitname, part.from_, part.to) for part in parts]


def _load_files(files: list[Path], split: str = LOCAL_SPLIT):
    from datasets import Features, Value, load_dataset

    builder = LOCAL_BUILDERS[files[0].suffix]
    options: dict[str, Any] = {}
    if builder == "csv":
        # Every cell as written: a CSV has no types, and inferring them would turn an output of
        # `42` into a number (a bad row) and an empty cell into null.
        with files[0].open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        options = {"features": Features({column: Value("string") for column in header}), "na_filter": False}
    return load_dataset(builder, data_files=[str(file) for file in files], split=split, **options)


def load_source(spec: DatasetSpec):
    """One ``datasets`` entry as a Dataset: a local file or folder, or the Hub."""
    from datasets import DatasetDict, concatenate_datasets, load_dataset, load_from_disk

    path = Path(spec.path).expanduser()
    if _is_saved_dataset(path):
        saved = load_from_disk(str(path))
        splits = saved if isinstance(saved, DatasetDict) else {LOCAL_SPLIT: saved}
        if spec.split in splits:
            return splits[spec.split]
        parts = split_parts(spec.split, {name: len(rows) for name, rows in splits.items()}, spec.path)
        return concatenate_datasets([splits[name].select(range(start, stop)) for name, start, stop in parts])
    files = local_files(path)
    if files:
        split_parts(spec.split, {LOCAL_SPLIT: 1}, spec.path)  # a wrong split told as iter_rows tells it
        return _load_files(files, spec.split)
    return load_dataset(spec.path, name=spec.name, split=spec.split, data_files=spec.data_files, revision=spec.revision)


def _json_lines(file: Path) -> Iterator[tuple[RowPlace, dict[str, Any] | BadData]]:
    # Read here rather than by `datasets`, which stops at a bad line without saying which.
    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            place = RowPlace(str(file), number, unit="line")
            try:
                values = json.loads(line)
            except json.JSONDecodeError as error:
                yield place, BadData(f"not valid JSON ({error.msg} at column {error.colno})", place=place)
                continue
            except UnicodeDecodeError as error:
                yield place, BadData(f"not UTF-8 text ({error.reason} at byte {error.start})", place=place)
                continue
            if not isinstance(values, dict):
                yield place, BadData(f"expected a JSON object, got {kind_of(values)}", place=place)
                continue
            yield place, values


def _local_rows(files: list[Path]) -> Iterator[tuple[RowPlace, dict[str, Any] | BadData]]:
    for file in files:
        if file.suffix == ".jsonl":
            yield from _json_lines(file)
        else:
            for number, values in enumerate(_load_files([file]), start=1):
                yield RowPlace(str(file), number), values


def iter_rows(spec: DatasetSpec) -> Iterator[tuple[RowPlace, dict[str, Any] | BadData]]:
    """Every row of one ``datasets`` entry with its place; a row that cannot be read comes as BadData.

    Unreadable rows are handed back rather than raised so that the caller decides, once for all
    formats, whether they stop the run or are skipped and counted (``dataset_bad_rows``).
    """
    path = Path(spec.path).expanduser()
    files = local_files(path)
    if files and spec.split == LOCAL_SPLIT:
        yield from _local_rows(files)
    elif files:
        rows = list(_local_rows(files))
        for _, start, stop in split_parts(spec.split, {LOCAL_SPLIT: len(rows)}, spec.path):
            yield from rows[start:stop]
    else:
        name = str(path) if _is_saved_dataset(path) else f"{spec.path} (split {spec.split})"
        for number, values in enumerate(load_source(spec), start=1):
            yield RowPlace(name, number), values
