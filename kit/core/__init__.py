"""The bottom layer: what more than one stage needs, importing nothing from kit outside ``kit.core``.

params (the schema, one part per concern), hardware (what this machine can do, and what training runs
with on it), models (loading, 4-bit, adapters), gguf_base (a GGUF file as a base model), formats and
sources (rows to text and tokens), benchmarks (HumanEval, MBPP and HumanEval-format task files as
problems), logits (held-out code for checking merge and quantize), llama (llama.cpp), generate (asking a
trained model), manifest, tracking (MLflow), staging (caches and written-aside folders), progress.
"""
