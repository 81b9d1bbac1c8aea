"""The prepare benchmark's pieces, on tiny inputs: what keeps `python -m tests.benchmarks.prepare` from rotting."""

from __future__ import annotations

from .benchmarks import prepare as benchmark


def test_padding_to_the_longest_counts_each_batchs_padding():
    # Batches [4, 2] and [3]: 9 real tokens in 2 * 4 + 1 * 3 = 11 computed.
    assert benchmark.padded_to_longest_share([4, 2, 3], micro_batch_size=2) == 9 / 11


def test_repacking_keeps_every_sample_and_reaches_the_bound_where_best_fit_decreasing_does_not():
    # Best fit decreasing packs 5 4 4 3 2 2 into rows of 10 as [5, 4], [4, 3, 2], [2]; two rows suffice.
    packed = [[5, 4], [4, 3, 2], [2]]
    repacked = benchmark.repacked(packed, sequence_len=10)
    assert len(repacked) == benchmark.fewest_rows(20, 10) == 2
    assert sorted(length for row in repacked for length in row) == [2, 2, 3, 4, 4, 5]
    assert all(sum(row) <= 10 for row in repacked)


def test_timed_rows_are_distinct_beyond_one_pass_over_their_sources():
    rows = benchmark.timed_sample_rows(1000)
    assert len(benchmark.mbpp_train_rows()) == 374
    assert len({(row["instruction"], row["output"]) for row in rows}) == 1000


def test_the_benchmark_runs_end_to_end_on_a_few_samples(tmp_path):
    dataset = benchmark.write_jsonl(benchmark.mbpp_train_rows()[:24], tmp_path / "few.jsonl")
    padding = benchmark.measure_padding(dataset, tmp_path / "padding", micro_batch_size=10)
    packing = [benchmark.measure_packing(dataset, tmp_path / f"packing-{length}", length) for length in (2048, 512)]
    timing = benchmark.measure_time(dataset, tmp_path / "timing", repeats=1)

    assert 0 < padding["share"] <= 1
    for result in packing:
        assert result["samples"] == 24
        assert result["fewest_rows"] <= result["repacked_rows"] <= result["rows"]
    assert timing["cache_hit"] == 1.0 and timing["phases"]["render, tokenize, mask"] > 0
    report = benchmark.render_report(packing, padding, timing, startup_seconds=1.0)
    assert "| 512 | 24 |" in report and "## Preparing 10,000 alpaca samples" in report
