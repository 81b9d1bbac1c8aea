"""Merge: fold the trained LoRA adapter into its base and save one plain model folder.

Features and the keys that switch them:
- the dtype of the merged weights (``merge_dtype``) and the base they are folded into: the NF4 base
  dequantized, as trained, or the original base (``merge_base``);
- a check against base + adapter on held-out code, stopping above ``merge_max_logit_diff``;
- the tokenizer and the chat template saved beside the weights, as training used them;
- a push to the Hub (``hub_model_id``), where it can reach it.

Metrics logged: merge/max_abs_logit_diff, merge/top1_agreement.
"""

from kit.merge.stage import SUMMARY_METRICS, run_merge

__all__ = ["SUMMARY_METRICS", "run_merge"]
