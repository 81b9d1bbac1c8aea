"""Evaluate: pass@k of every artifact of the pipeline on HumanEval and MBPP, by running the code.

Features and the keys that switch them:
- the variants scored (``eval_variants``: base, adapter, merged, gguf_<type>), in transformers or,
  for a GGUF file, in llama.cpp;
- the benchmarks (``eval_benchmarks``; MBPP's file ``eval_mbpp_path``), their prompt format;
- decoding: greedy for one sample, else sampled (``eval_num_samples``, ``eval_temperature``,
  ``eval_top_p``), ``eval_max_new_tokens``, ``eval_batch_size``;
- the sandbox that runs each completion with its tests (``eval_timeout``, ``eval_workers``,
  ``eval_allow_weak_isolation``): see ``kit.evaluate.sandbox``.

Metrics logged: <variant>/<benchmark>/pass_at_<k>, generation_seconds and execution_seconds.
"""

from kit.evaluate.stage import evaluation_isolation, run_evaluate
from kit.evaluate.views import failing_completions, pass_fail_grid, quality_ledger, results_table, styled_grid

__all__ = ["evaluation_isolation", "failing_completions", "pass_fail_grid", "quality_ledger", "results_table",
           "run_evaluate", "styled_grid"]
