"""How the adapter is folded into its base, and how closely the merged model must match (tunebook's
``merge_*`` keys: Axolotl's merge reloads the original base and checks nothing)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kit.core.params.base import Strict

# The merge check's default bound on merge/max_abs_logit_diff, by merge_dtype. Merged and unmerged models
# round differently: float32 only in the order of its sums; float16 keeps 11 significant bits and
# bfloat16 8, so at logits of 16 to 32 one rounding of the logit alone moves it by up to 0.016 and
# 0.125. The bounds leave room for that rounding through 32 layers of a 7B model, and stay below the
# logit changes of a broken merge (a missing or mis-scaled adapter). See reports/merge.md.
MERGE_LOGIT_DIFF_LIMITS = {"float32": 0.01, "float16": 0.25, "bfloat16": 2.0}


class MergeKeys(Strict):
    merge_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float16", description="the merged model's weights, as saved and exported"
    )
    merge_base: Literal["dequantized", "original"] | None = Field(
        None,
        description="the base a QLoRA adapter is merged into: `dequantized`, the NF4 base training used, "
        "dequantized to merge_dtype, so the merged model predicts as the adapter did in training; or "
        "`original`, the full-precision base, which the adapter never saw (see reports/merge.md). "
        "Default: dequantized for a 4-bit base; other adapters trained on the original",
    )
    merge_max_logit_diff: float | None = Field(
        None,
        gt=0,
        description="largest merge/max_abs_logit_diff (merged model vs base + adapter) the merge stage "
        "accepts; default by merge_dtype: float32 0.01, float16 0.25, bfloat16 2.0",
    )

    @property
    def merge_logit_diff_limit(self) -> float:
        """``merge_max_logit_diff``, else a bound for ``merge_dtype``'s rounding on a 7B-sized model."""
        return self.merge_max_logit_diff or MERGE_LOGIT_DIFF_LIMITS[self.merge_dtype]
