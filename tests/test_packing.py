"""The repair pass over loose packed rows: never more rows, every sample kept whole, once."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.prepare.packing import _fullest_subset, minimum_slack_rows, repack_rows


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), max_size=12), capacity=st.integers(0, 120))
def test_the_fullest_subset_is_the_best_fit(lengths, capacity):
    chosen = _fullest_subset(lengths, capacity)
    assert len(set(chosen)) == len(chosen) and sum(lengths[index] for index in chosen) <= capacity
    best = max(
        (sum(combo) for size in range(len(lengths) + 1) for combo in itertools.combinations(lengths, size)
         if sum(combo) <= capacity),
        default=0,
    )
    assert sum(lengths[index] for index in chosen) == best


def test_minimum_slack_fills_rows_that_best_fit_decreasing_leaves_loose():
    # The longest sample is completed by the subset that fills its row exactly: 6 + 4, then 5 + 5.
    lengths = [6, 5, 5, 4]
    rows = minimum_slack_rows(lengths, 10)
    assert sorted(sorted(lengths[index] for index in row) for row in rows) == [[4, 6], [5, 5]]


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=1, max_size=80), capacity=st.sampled_from([64, 100, 128]))
def test_repacking_keeps_every_sample_whole_once_and_never_adds_rows(lengths, capacity):
    # Rows as TRL's packer leaves them: samples in a row, their lengths in seq_lengths (first fit here).
    rows, free = [], []
    for sample, length in enumerate(lengths):
        target = next((at for at, space in enumerate(free) if space >= length), None)
        if target is None:
            rows.append({"input_ids": [], "seq_lengths": []})
            free.append(capacity)
            target = len(rows) - 1
        rows[target]["input_ids"] += [sample] * length
        rows[target]["seq_lengths"].append(length)
        free[target] -= length
    repacked = repack_rows(rows, capacity)
    assert len(repacked) <= len(rows)
    seen = []
    for row in repacked:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= capacity
        start = 0
        for length in row["seq_lengths"]:
            piece = row["input_ids"][start : start + length]
            assert len(set(piece)) == 1
            seen.append(piece)
            start += length
    assert sorted(seen) == sorted([[sample] * length for sample, length in enumerate(lengths)])
