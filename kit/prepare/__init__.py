"""Prepare: the params' datasets -> the exact token rows the trainer sees, with every count reported.

Features and the keys that switch them:
- reading local jsonl, json, csv and parquet files, ``save_to_disk`` folders or Hub datasets
  (``datasets``: ``path``, ``type``, ``split``, ``name``, ``data_files``, ``revision``);
- prompt formats (``type``: alpaca, completion, sharegpt, chat_template, or a user format with its
  own fields and template), ``train_on_inputs``;
- rows too long for ``sequence_len`` dropped or truncated (``excess_length_strategy``); unreadable
  rows stopping the run or counted (``dataset_bad_rows``);
- a validation split (``test_datasets``, else ``val_set_size`` of the training rows, by ``seed``);
- decontamination against the benchmarks' problems by word n-grams (``dataset_decontamination``,
  ``dataset_decontamination_ngram``, ``dataset_decontamination_benchmarks``, ``eval_mbpp_path``);
- packing samples into rows of ``sequence_len`` with position ids restarting per sample
  (``sample_packing``);
- a cache of prepared rows keyed by the data, the tokenizer and these keys (``dataset_prepared_path``).

Metrics logged (``prepare/``): num_samples, num_train, num_val, num_empty, num_duplicates,
num_bad_rows, num_truncated, num_dropped_too_long, num_contaminated, train_tokens, num_packed_rows,
packing_efficiency, cache_hit.
"""

from kit.prepare.stage import SUMMARY_METRICS, run_prepare
from kit.prepare.views import contamination, dataset_counts, sample_lengths, show_masking, show_row

__all__ = ["SUMMARY_METRICS", "contamination", "dataset_counts", "run_prepare", "sample_lengths", "show_masking",
           "show_row"]
