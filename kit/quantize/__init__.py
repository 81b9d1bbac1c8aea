"""Quantize: the merged model as GGUF files for llama.cpp, each checked against the merged model.

Features and the keys that switch them:
- an f16 GGUF exported from the merged folder, and each type of ``gguf_quantizations`` (q8_0,
  q4_k_m, ...) made from it by llama.cpp's own quantizer;
- each file loaded in llama.cpp and run on held-out code: perplexity, top-1 agreement with the
  merged model, size and bits per weight.

Metrics logged: merged/perplexity; per type, gguf/<type>/perplexity, top1_agreement, size_mb,
bits_per_weight, seconds.
"""

from kit.quantize.stage import SUMMARY_METRICS, run_quantize
from kit.quantize.views import gguf_generations, gguf_table

__all__ = ["SUMMARY_METRICS", "gguf_generations", "gguf_table", "run_quantize"]
