"""The GGUF files the merged model is exported to (tunebook's ``gguf_*`` keys)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kit.core.params.base import Strict

# llama.cpp's file types, lower case, as llama-quantize names them.
GGUF_TYPES = (
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s",
    "q4_0", "q4_1", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_nl", "iq4_xs",
)
# An evaluated GGUF file is named by its type: gguf_q4_k_m.
GGUF_VARIANT_PREFIX = "gguf_"


class GgufKeys(Strict):
    gguf_quantizations: list[Literal[GGUF_TYPES]] = Field(  # type: ignore[valid-type]
        ["q8_0", "q4_k_m"], description="llama.cpp file types written after the f16 file, each checked against "
        "the merged model"
    )
