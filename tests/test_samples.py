"""Samples: rows become token samples in order, and every row not kept is counted under its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.core.formats import IGNORE_INDEX, render, tokenize
from kit.core.models import load_tokenizer
from kit.core.params import DatasetSpec, load_params
from kit.core.sources import BadData
from kit.prepare.samples import collect_samples
from tests.conftest import SMOKE, TINY_SPEC, TINY_TOKENIZER

LONG_OUTPUT = "total = total + 1\n" * 40


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_TOKENIZER), load_params(SMOKE))


def params_for(folder: Path, datasets: list[dict], **changes):
    return load_params(SMOKE, {"output_dir": str(folder / "out"), "datasets": datasets, **changes})


def write_jsonl(path: Path, lines: list[object]) -> Path:
    """Objects as JSON, strings as written (to make bad lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def task(number: int, output: str | None = None) -> dict[str, str]:
    return {"instruction": f"Task {number}.", "input": "", "output": f"x + {number}" if output is None else output}


def counts(**nonzero: int) -> dict[str, int]:
    return {"loaded": 0, "bad_rows": 0, "empty": 0, "duplicates": 0, "too_long": 0, "truncated": 0, "kept": 0,
            **nonzero}


def test_empty_duplicate_and_too_long_rows_are_dropped_and_counted(tmp_path, tokenizer):
    rows = [task(1), task(1), task(2, ""), task(3, " \n"), task(4, LONG_OUTPUT), task(5)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    params = params_for(tmp_path, [{"path": str(data)}], sequence_len=128)
    collected = collect_samples(params, tokenizer)
    assert collected.counts == [counts(loaded=6, empty=2, duplicates=1, too_long=1, kept=2)]
    kept = [render(rows[0], DatasetSpec(path="d")), render(rows[5], DatasetSpec(path="d"))]
    assert collected.samples == [tokenize(segments, tokenizer) for segments in kept]
    assert collected.texts == ["".join(text for text, _ in segments) for segments in kept]


def test_a_huge_row_is_dropped_after_tokenizing_only_its_beginning(tmp_path, tokenizer, monkeypatch):
    import kit.prepare.samples

    huge = task(6, "total = total + 1\n" * 600_000)  # about 11 MB of code
    data = write_jsonl(tmp_path / "data.jsonl", [huge, task(7)])
    tokenized = []
    monkeypatch.setattr(kit.prepare.samples, "tokenize", lambda segments, *args: tokenized.append(segments) or tokenize(
        segments, *args))
    collected = collect_samples(params_for(tmp_path, [{"path": str(data)}], sequence_len=128), tokenizer)
    assert collected.counts == [counts(loaded=2, too_long=1, kept=1)]
    assert len(tokenized) == 1  # the small row only: the huge one was never tokenized whole


def test_truncate_cuts_a_long_sample_to_sequence_len(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "data.jsonl", [task(4, LONG_OUTPUT)])
    params = params_for(tmp_path, [{"path": str(data)}], sequence_len=128, excess_length_strategy="truncate")
    collected = collect_samples(params, tokenizer)
    assert collected.counts == [counts(loaded=1, truncated=1, kept=1)]
    full = tokenize(render(task(4, LONG_OUTPUT), DatasetSpec(path="d")), tokenizer)
    assert collected.samples == [{key: ids[:128] for key, ids in full.items()}]
    assert len(full["input_ids"]) > 128 and collected.samples[0]["input_ids"][-1] != tokenizer.eos_token_id


def test_truncate_drops_a_sample_whose_prompt_alone_is_too_long(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "data.jsonl", [{"instruction": LONG_OUTPUT, "output": "done"}])
    params = params_for(tmp_path, [{"path": str(data)}], sequence_len=128, excess_length_strategy="truncate")
    collected = collect_samples(params, tokenizer)
    assert collected.counts == [counts(loaded=1, too_long=1)] and collected.samples == []


def test_datasets_are_collected_in_order_with_duplicates_found_across_them(tmp_path, tokenizer):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [task(2)])
    write_jsonl(folder / "a.jsonl", [task(1)])
    pd.DataFrame([task(2), task(3)]).to_csv(tmp_path / "more.csv", index=False)
    params = params_for(tmp_path, [{"path": str(folder)}, {"path": str(tmp_path / "more.csv")}])
    collected = collect_samples(params, tokenizer)
    assert collected.counts == [counts(loaded=2, kept=2), counts(loaded=2, duplicates=1, kept=1)]
    assert [text.split("### Instruction:\n")[1].split("\n")[0] for text in collected.texts] == [
        "Task 1.", "Task 2.", "Task 3."]
    assert collected.totals == counts(loaded=4, duplicates=1, kept=3)


def test_conversations_from_parquet_are_collected(tmp_path, tokenizer):
    conversation = [{"from": "human", "value": "Add one."}, {"from": "gpt", "value": "x + 1"}]
    pd.DataFrame({"conversations": [conversation, []]}).to_parquet(tmp_path / "chat.parquet")
    params = params_for(tmp_path, [{"path": str(tmp_path / "chat.parquet"), "type": "sharegpt",
                                    "chat_template": "chatml"}])
    collected = collect_samples(params, tokenizer)
    assert collected.counts == [counts(loaded=2, empty=1, kept=1)]
    assert collected.texts == ["<|im_start|>user\nAdd one.<|im_end|>\n<|im_start|>assistant\nx + 1<|im_end|>\n"]


def test_a_bad_json_line_stops_the_run_naming_file_and_line_unless_skipped(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "data.jsonl", [task(1), '{"instruction": "Task 2.", "output": ', task(3)])
    with pytest.raises(BadData, match=rf"^{data}: line 2: not valid JSON") as raised:
        collect_samples(params_for(tmp_path, [{"path": str(data)}]), tokenizer)
    assert (raised.value.file, raised.value.row) == (str(data), 2)
    skipped = collect_samples(params_for(tmp_path, [{"path": str(data)}], dataset_bad_rows="skip"), tokenizer)
    assert skipped.counts == [counts(loaded=3, bad_rows=1, kept=2)]


def test_a_mistyped_field_stops_the_run_naming_file_line_and_field_unless_skipped(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "data.jsonl", [task(1), {"instruction": "Task 2.", "output": 3}])
    with pytest.raises(BadData) as raised:
        collect_samples(params_for(tmp_path, [{"path": str(data)}]), tokenizer)
    assert (raised.value.file, raised.value.row, raised.value.field) == (str(data), 2, "output")
    assert str(raised.value) == f"{data}: line 2: field `output`: expected a string, got a number"
    skipped = collect_samples(params_for(tmp_path, [{"path": str(data)}], dataset_bad_rows="skip"), tokenizer)
    assert skipped.counts == [counts(loaded=2, bad_rows=1, kept=1)]


def test_the_tiny_rows_are_collected_whole(smoke_params, tokenizer):
    collected = collect_samples(smoke_params, tokenizer)
    assert collected.counts == [counts(loaded=TINY_SPEC.num_samples,
                                       kept=TINY_SPEC.num_samples)]
    assert all(text.startswith("Below is an instruction") for text in collected.texts)
    assert all(len(sample["input_ids"]) <= smoke_params.sequence_len for sample in collected.samples)


ROW_KINDS = st.tuples(st.sampled_from(["good", "empty", "bad_json", "wrong_type", "long"]), st.integers(0, 3))


@settings(max_examples=25, deadline=None)
@given(kinds=st.lists(ROW_KINDS, max_size=12), truncate=st.booleans())
def test_every_row_is_kept_or_counted_once_under_its_reason(tmp_path_factory, tokenizer, kinds, truncate):
    lines = {
        "good": lambda n: task(n), "empty": lambda n: task(n, ""), "bad_json": lambda n: "{" * (n + 1),
        "wrong_type": lambda n: task(n, [n]), "long": lambda n: task(n, LONG_OUTPUT * (n + 1)),
    }
    folder = tmp_path_factory.mktemp("rows")
    data = write_jsonl(folder / "data.jsonl", [lines[kind](n) for kind, n in kinds])
    strategy = "truncate" if truncate else "drop"
    params = params_for(folder, [{"path": str(data)}], sequence_len=128, dataset_bad_rows="skip",
                        excess_length_strategy=strategy)
    collected = collect_samples(params, tokenizer)

    expected, seen = counts(loaded=len(kinds)), set()
    for kind, n in kinds:
        if kind in ("bad_json", "wrong_type"):
            expected["bad_rows"] += 1
        elif kind == "empty":
            expected["empty"] += 1
        elif (kind, n) in seen:
            expected["duplicates"] += 1
        elif kind == "long" and not truncate:
            expected["too_long"] += 1
        else:
            expected["truncated"] += kind == "long"
            expected["kept"] += 1
        seen.add((kind, n))
    assert collected.counts == [expected]
    assert len(collected.samples) == len(collected.texts) == expected["kept"]
    for sample in collected.samples:
        assert len(sample["input_ids"]) <= 128 and any(label != IGNORE_INDEX for label in sample["labels"])
