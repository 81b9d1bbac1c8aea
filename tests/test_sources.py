"""Sources: local files and folders read in a fixed order, every row with the place it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from kit.core.params import DatasetSpec, Params
from kit.core.sources import BadData, RowPlace, check_local_paths, iter_rows, load_source
from tests.conftest import TINY_ROWS, TINY_SPEC


def write_jsonl(path: Path, lines: list[object]) -> Path:
    """Objects as JSON, strings as written (to make bad lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def rows(path: Path) -> list[tuple[RowPlace, object]]:
    return list(iter_rows(DatasetSpec(path=str(path))))


def test_a_bad_json_line_comes_back_as_bad_data_naming_file_and_line(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"a": 1}, "", '{"a": 2,', "[1, 2]", {"a": 3}])
    read = rows(data)
    assert [(place.row, values) for place, values in read if not isinstance(values, BadData)] == [(1, {"a": 1}),
                                                                                                    (5, {"a": 3})]
    bad_json, not_object = (values for _, values in read if isinstance(values, BadData))
    assert (bad_json.file, bad_json.row, bad_json.field) == (str(data), 3, None)
    assert str(bad_json).startswith(f"{data}: line 3: not valid JSON")
    assert str(not_object) == f"{data}: line 4: expected a JSON object, got a list"


def test_bytes_that_are_not_utf8_are_a_bad_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    (_, first), (_, second) = rows(data)
    assert first == {"a": 1} and isinstance(second, BadData) and second.row == 2 and "not UTF-8" in str(second)


def test_a_folder_is_read_file_by_file_in_sorted_order(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"n": 3}])
    write_jsonl(folder / "a.jsonl", [{"n": 1}, {"n": 2}])
    (folder / "README.md").write_text("not data")
    read = rows(folder)
    assert [(Path(place.file).name, place.row, values["n"]) for place, values in read] == [
        ("a.jsonl", 1, 1), ("a.jsonl", 2, 2), ("b.jsonl", 1, 3)]
    assert load_source(DatasetSpec(path=str(folder)))["n"] == [1, 2, 3]


def test_empty_or_mixed_folders_and_missing_or_unknown_files_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no data files"):
        rows(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", [{"n": 1}])
    (mixed / "b.csv").write_text("n\n2\n")
    with pytest.raises(ValueError, match=r"mixes \.csv, \.jsonl"):
        rows(mixed)
    with pytest.raises(ValueError, match="no such file"):
        rows(tmp_path / "missing.jsonl")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        rows(notes)


def test_csv_cells_are_read_as_written(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text('instruction,input,output\nAdd one.,,42\n"Two\nlines",x,007\n')
    read = rows(data)
    assert [(place.row, values) for place, values in read] == [
        (1, {"instruction": "Add one.", "input": "", "output": "42"}),
        (2, {"instruction": "Two\nlines", "input": "x", "output": "007"}),
    ]
    assert str(read[1][0]) == f"{data}: row 2"


def test_parquet_rows_keep_their_types(tmp_path):
    data = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["a", "b"], "score": [1, 2]}).to_parquet(data)
    assert [(place.row, values) for place, values in rows(data)] == [
        (1, {"text": "a", "score": 1}), (2, {"text": "b", "score": 2})]


def test_saved_datasets_are_read_with_their_split(tmp_path):
    DatasetDict({"train": Dataset.from_dict({"n": [1]}), "test": Dataset.from_dict({"n": [2, 3]})}).save_to_disk(
        str(tmp_path / "dict"))
    Dataset.from_dict({"n": [4]}).save_to_disk(str(tmp_path / "one"))
    read = list(iter_rows(DatasetSpec(path=str(tmp_path / "dict"), split="test")))
    assert [(place.file, place.row, values["n"]) for place, values in read] == [
        (str(tmp_path / "dict"), 1, 2), (str(tmp_path / "dict"), 2, 3)]
    assert [values["n"] for _, values in rows(tmp_path / "one")] == [4]


def test_a_slice_of_a_local_file_keeps_each_rows_line_and_reads_as_load_dataset_slices(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"n": number} for number in range(10)])
    for split, numbers in (("train[2:4]", [2, 3]), ("train[-2:]", [8, 9]), ("train[:30%]", [0, 1, 2]),
                           ("train[:1]+train[9:]", [0, 9])):
        read = list(iter_rows(DatasetSpec(path=str(data), split=split)))
        assert [(place.row, values["n"]) for place, values in read] == [(number + 1, number) for number in numbers]
        assert load_source(DatasetSpec(path=str(data), split=split))["n"] == numbers
    dataset = DatasetDict({"train": Dataset.from_dict({"n": [1]}), "test": Dataset.from_dict({"n": [2, 3, 4]})})
    dataset.save_to_disk(str(tmp_path / "dict"))
    sliced = iter_rows(DatasetSpec(path=str(tmp_path / "dict"), split="test[1:]"))
    assert [values["n"] for _, values in sliced] == [3, 4]


@pytest.mark.parametrize("split", ["test", "train[:x]"])
def test_a_split_a_local_file_lacks_is_refused_naming_the_file_before_anything_loads(tmp_path, split):
    data = write_jsonl(tmp_path / "data.jsonl", [{"n": 1}])
    spec = DatasetSpec(path=str(data), split=split)
    params = Params.model_validate({"base_model": "m", "datasets": [spec.model_dump()]})
    with pytest.raises(ValueError, match=f"^datasets: {data}: split '"):
        check_local_paths(params)
    for read in (lambda: list(iter_rows(spec)), lambda: load_source(spec)):
        with pytest.raises(ValueError, match=f"^datasets: {data}: split '"):
            read()


def test_the_tiny_rows_are_a_jsonl_of_alpaca_rows(smoke_params):
    read = list(iter_rows(DatasetSpec(path=str(TINY_ROWS))))
    assert len(read) == TINY_SPEC.num_samples
    assert [place.row for place, _ in read] == list(range(1, len(read) + 1))
    assert all(set(values) == {"instruction", "input", "output"} for _, values in read)
