"""The train benchmark's pieces, on tiny inputs: what keeps `python -m tests.benchmark_train` from rotting."""

from __future__ import annotations

from kit.formats import IGNORE_INDEX

from . import benchmark_train as benchmark


def test_the_plain_collator_pads_packed_rows_as_the_kit_does():
    from kit.train import PackedRowsCollator

    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9],
         "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [3, 4], "labels": [IGNORE_INDEX, 4], "position_ids": [0, 1]},
    ]
    plain = benchmark.pad_packed_rows(rows, pad_token_id=0)
    kit = PackedRowsCollator(pad_token_id=0, packed=True)(rows)
    assert set(plain) == {"input_ids", "labels", "position_ids"}
    assert all(plain[key].tolist() == kit[key].tolist() for key in plain)


def test_the_report_states_both_ratios_against_their_targets():
    result = {
        "seconds": {"kit packed": [10.0, 11.0, 9.0], "kit padded": [30.0, 31.0, 29.0], "plain packed": [10.5] * 3},
        "steps": {"kit packed": 8, "kit padded": 16, "plain packed": 8},
        "tokens": 7000, "samples": 64, "packed_rows": 30, "packing_efficiency": 0.91,
    }
    report = benchmark.render_report(result)
    assert "| packing: kit packed / kit padded throughput | **3.00x** | >= 1.5x met |" in report
    assert "| overhead: kit packed / plain Trainer + peft packed throughput | **1.05x** | >= 0.95x met |" in report
    assert "| kit padded | 16 | 30.0, 31.0, 29.0 | 30.0 | 233 |" in report
