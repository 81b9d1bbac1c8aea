"""llama.cpp, as every stage that runs a GGUF file opens it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def llama_model(path: Path, **options: Any) -> Iterator[Any]:
    """A GGUF file in llama.cpp (``llama_cpp.Llama`` with ``options``), its load log silenced, closed after use.

    Every layer goes to the GPU where llama.cpp was built with one (llama-cpp-python offloads none by default).
    It computes on as many threads as torch does: the physical cores, or OMP_NUM_THREADS where set
    (llama-cpp-python's own default, half the logical CPUs, is one thread on a 2-core machine).
    """
    import llama_cpp
    import torch

    options.setdefault("n_threads", torch.get_num_threads())
    model = llama_cpp.Llama(model_path=str(path), n_gpu_layers=-1, verbose=False, **options)
    try:
        yield model
    finally:
        model.close()
