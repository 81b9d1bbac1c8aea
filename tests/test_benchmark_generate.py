"""The generation benchmark at a tiny size: what keeps `python -m tests.benchmarks.generate` from rotting."""

from __future__ import annotations

from .benchmarks import generate as benchmark


def test_the_benchmark_runs_end_to_end_on_a_few_prompts() -> None:
    result = benchmark.measure(num_problems=3, max_new_tokens=6, batch_sizes=(1, 2), repeats=2)
    one, two = result["measured"]
    assert result["problems"] == 3 and [one["batch_size"], two["batch_size"]] == [1, 2]
    # Every prompt generates up to the limit, fewer where it stopped; both sizes count the same text alike.
    assert 3 <= one["tokens"] <= 3 * 6 and result["full_length"] <= 3
    assert len(one["seconds"]) == len(two["seconds"]) == 2 and one["repeatable"] and two["repeatable"]
    assert one["identical"] == 3 and one["differing"] == {}
    assert two["identical"] + len(two["differing"]) == 3
    if two["identical"] == 3:
        assert two["tokens"] == one["tokens"]
    report = benchmark.render_report(result)
    assert "| 1 | " in report and "| 2 | " in report and "**1.00x**" in report
    assert "torch on 1 thread" in report and "The first 3 HumanEval prompts" in report


def test_where_two_completions_part_is_counted_in_tokens() -> None:
    from kit.core.models import load_tokenizer, resolve_base_model

    params = benchmark.benchmark_params(1, 4)
    tokenizer = load_tokenizer(resolve_base_model(params), params)
    text = "    return sorted(numbers)\n"
    prefix = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert benchmark.first_difference(tokenizer, text, text) == len(prefix)
    assert benchmark.first_difference(tokenizer, text, "x = 1\n") == 0
    assert 0 < benchmark.first_difference(tokenizer, text, text + "    # and more\n") <= len(prefix)
