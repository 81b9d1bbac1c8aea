"""The train benchmark's pieces, on tiny inputs: what keeps `python -m tests.benchmarks.train` from rotting."""

from __future__ import annotations

import cProfile
import statistics
from pathlib import Path

import pytest

from kit.core.formats import IGNORE_INDEX

from .benchmarks import train as benchmark

TASKS = [
    {"instruction": "Add two numbers.", "input": "", "output": "def add(a, b):\n    return a + b\n"},
    {"instruction": "Negate a number.", "input": "", "output": "def negate(x):\n\n    return -x\n"},
    {"instruction": "Say hello.", "input": "", "output": "def hello():\n    print('hello')\n    return None\n"},
]


def words(row: dict[str, str]) -> int:
    return len(f"{row['instruction']} {row['output']}".split())


def test_the_plain_collator_pads_packed_rows_as_the_kit_does():
    from kit.train.stage import PackedRowsCollator

    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9],
         "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [3, 4], "labels": [IGNORE_INDEX, 4], "position_ids": [0, 1]},
    ]
    plain = benchmark.pad_packed_rows(rows, pad_token_id=0)
    kit = PackedRowsCollator(pad_token_id=0, packed=True)(rows)
    assert set(plain) == {"input_ids", "labels", "position_ids"}
    assert all(plain[key].tolist() == kit[key].tolist() for key in plain)


def test_drawn_lengths_are_long_tailed_repeatable_and_within_the_sequence():
    lengths = benchmark.target_lengths(2000, sequence_len=512, seed=7)
    assert lengths == benchmark.target_lengths(2000, sequence_len=512, seed=7)
    assert len(lengths) == 2000 and max(lengths) <= 512
    assert statistics.median(lengths) == pytest.approx(benchmark.MEDIAN_LENGTH_SHARE * 512, rel=0.1)
    # A long right tail: the mean sits above the median, and some samples reach past three times it.
    assert statistics.fmean(lengths) > statistics.median(lengths)
    assert max(lengths) > 3 * statistics.median(lengths)


def test_sized_rows_grow_each_answer_line_by_line_up_to_its_target():
    rows = benchmark.sized_rows([4, 8, 20], TASKS, words)
    assert [row["instruction"] for row in rows] == [task["instruction"] for task in TASKS]
    # Too short a target still gets one line; the others stop at the last line that fits.
    assert rows[0]["output"] == "def add(a, b):\n"
    assert rows[1]["output"] == "def negate(x):\n    return -x\n"
    assert words(rows[1]) <= 8 < words({**rows[1], "output": rows[1]["output"] + "def hello():\n"})
    # The third runs on past its own code into the next tasks', from the start again.
    assert rows[2]["output"].startswith(TASKS[2]["output"] + "def add(a, b):\n")
    assert words(rows[2]) <= 20


def test_sized_rows_refuse_to_repeat_a_question():
    with pytest.raises(ValueError, match="repeat"):
        benchmark.sized_rows([5] * 4, TASKS, words)


def test_length_summary_and_padded_share():
    assert benchmark.length_summary([5, 1, 3, 9, 7, 2, 4, 8, 6, 10]) == {
        "min": 1, "median": 5.5, "p90": 9, "max": 10, "mean": 5.5
    }
    # One batch: order cannot matter; 6 real tokens in 2 x 4 computed.
    assert benchmark.padded_batches_share([2, 4], batch_size=2) == pytest.approx(0.75)
    assert benchmark.padded_batches_share([3, 3, 3, 3], batch_size=2) == 1.0
    # Two batches of two: {1, 3} with {1, 3} (2 x 3 + 2 x 3) or {1, 1} with {3, 3} (2 + 6) in one third of orders.
    share = benchmark.padded_batches_share([1, 1, 3, 3], batch_size=2, shuffles=3000)
    expected_computed = 2 / 3 * 12 + 1 / 3 * 8
    assert share == pytest.approx(8 / expected_computed, rel=0.02)


def test_attention_share_of_code_llama_7b_at_2048():
    assert benchmark.attention_share(4096, 11008, 2048) == pytest.approx(0.0829, abs=1e-4)
    assert benchmark.attention_share(4096, 11008, 4096) == pytest.approx(2 * 0.0829, abs=2e-4)


def busy() -> int:
    return sum(index * index for index in range(200_000))


def test_own_seconds_counts_only_the_folder_s_code():
    profile = cProfile.Profile()
    profile.runcall(busy)
    assert benchmark.own_seconds(profile, Path(__file__).parent) > 0
    assert benchmark.own_seconds(profile, benchmark.ROOT / "kit") == 0


def test_every_variant_takes_every_place_in_turn():
    orders = [benchmark.rotated(benchmark.VARIANTS, repeat) for repeat in range(3)]
    assert [order[0] for order in orders] == list(benchmark.VARIANTS)
    assert all(sorted(order) == sorted(benchmark.VARIANTS) for order in orders)


def fake_result(packed: list[float], padded: list[float], plain: list[float]) -> dict:
    def runs(seconds: list[float], steps: int) -> list[dict[str, float]]:
        return [{"seconds": value, "cpu_seconds": value - 0.5, "steps": steps, "final_loss": 2.5} for value in seconds]

    lengths = {"min": 75, "median": 100, "p90": 217, "max": 461, "mean": 126}
    return {
        "runs": {"kit packed": runs(packed, 6), "kit padded": runs(padded, 20), "plain packed": runs(plain, 6)},
        "tokens": 25_000, "samples": 200, "lengths": lengths, "drawn_lengths": {**lengths, "min": 11},
        "packed_rows": 51, "packing_efficiency": 0.97, "packed_share": 0.97, "padded_share": 0.5,
        "smoke_micro_batch_size": 4, "smoke_padded_share": 0.66, "drawn_padded_share": 0.41, "kit_loop_seconds": 0.002,
        "profiled_loop_seconds": 7.0, "load_at_start": 1.0,
    }


def test_the_report_states_both_ratios_against_their_targets():
    report = benchmark.render_report(fake_result([10.0, 11.0, 9.0], [30.0, 31.0, 29.0], [10.5] * 3))
    assert "| packing: kit packed / kit padded throughput | **3.00x** | >= 1.5x met | 3.11x |" in report
    assert "| overhead: kit packed / plain Trainer + peft packed throughput | **1.05x** | >= 0.95x met |" in report
    assert "| kit padded | 20 | 30.0, 31.0, 29.0 | 30.0 | 833 | 29.5, 30.5, 28.5 | 29.5 | 2.5000 |" in report
    assert "repeat by repeat (plain seconds / kit seconds): 1.05, 0.95, 1.17" in report
    assert "| the 200 samples, as prepared | 75 | 100 | 217 | 461 | 126 |" in report


def test_the_report_says_when_a_target_is_missed():
    report = benchmark.render_report(fake_result([10.0] * 3, [12.0] * 3, [9.0] * 3))
    assert "| **1.20x** | >= 1.5x **missed** |" in report
    assert "| **0.90x** | >= 0.95x **missed** |" in report
