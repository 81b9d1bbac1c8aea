"""Many prompts through one llama.cpp model at once, each sequence in its own slot of the KV cache.

llama-cpp-python's ``Llama`` generates for one prompt at a time, so each decode carries one token and
a CPU spends it on per-operation overhead. llama.cpp batches sequences itself (its ``batched`` and
``parallel`` examples): one decode takes the next token of every sequence going, and a slot whose
sequence ends takes the next prompt at once. llama-cpp-python has no high-level API for that, so it is
written here on its low-level bindings, with the ``Llama`` object's own context settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A sequence's share of the KV cache is rounded up to this many cells; llama.cpp splits n_ctx evenly.
CONTEXT_ROUNDING = 256
PIECE_BUFFER_BYTES = 256


@dataclass
class Sampling:
    """Greedy when ``temperature`` is 0, else nucleus sampling with a seed per prompt."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class _Sequence:
    request: int
    sampler: Any
    # Tokens the model has not seen yet: the prompt at first, then the token just sampled.
    pending: list[int]
    position: int = 0
    text: bytes = b""
    generated: int = 0


def batched_texts(
    llama: Any,
    prompts: list[str],
    stop_sequences: list[tuple[str, ...]],
    max_new_tokens: int,
    slots: int,
    sampling: Sampling,
    on_done: Callable[[], None] | None = None,
) -> list[str]:
    """The text ``llama`` generates after each prompt, up to ``max_new_tokens`` tokens, an end-of-generation
    token, or the first of that prompt's stop sequences (kept in the text); ``slots`` prompts at a time.

    Prompts are tokenized as ``Llama.create_completion`` tokenizes them, and one slot generates exactly
    what it does. With more slots a row's sums are taken in another order, which can tip greedy
    decoding where the two likeliest tokens are nearly tied. A sampled prompt draws from its own seed,
    ``sampling.seed`` plus its index, so its text does not depend on what else shares the batch.
    """
    import llama_cpp

    token_lists = [llama.tokenize(prompt.encode(), add_bos=True, special=True) for prompt in prompts]
    if not token_lists:
        return []
    if not all(token_lists):
        raise ValueError("an empty prompt: llama.cpp needs at least one token to generate from")
    slots = max(1, min(slots, len(prompts)))
    per_sequence = max(map(len, token_lists)) + max_new_tokens
    per_sequence = -(-per_sequence // CONTEXT_ROUNDING) * CONTEXT_ROUNDING
    settings = type(llama.context_params).from_buffer_copy(llama.context_params)
    settings.n_ctx, settings.n_seq_max, settings.kv_unified = per_sequence * slots, slots, False
    with contextlib.redirect_stderr(io.StringIO()):
        context = llama_cpp.llama_init_from_model(llama.model, settings)
    if not context:
        raise MemoryError(f"llama.cpp could not make a context of {per_sequence * slots} tokens for {slots} slots")
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    memory = llama_cpp.llama_get_memory(context)
    batch_capacity = settings.n_batch
    batch = llama_cpp.llama_batch_init(batch_capacity, 0, 1)
    greedy = llama_cpp.llama_sampler_init_greedy()
    piece_buffer = ctypes.create_string_buffer(PIECE_BUFFER_BYTES)
    texts = [""] * len(prompts)
    waiting = list(range(len(prompts)))[::-1]
    running: dict[int, _Sequence] = {}

    def sampler_for(request: int):
        if sampling.temperature == 0:
            return greedy
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(sampling.seed + request))
        return chain

    def finish(slot: int) -> None:
        sequence = running.pop(slot)
        texts[sequence.request] = sequence.text.decode("utf-8", errors="ignore")
        if sequence.sampler is not greedy:
            llama_cpp.llama_sampler_free(sequence.sampler)
        if on_done is not None:
            on_done()

    try:
        while waiting or running:
            for slot in range(slots):
                if slot not in running and waiting:
                    request = waiting.pop()
                    llama_cpp.llama_memory_seq_rm(memory, slot, -1, -1)
                    running[slot] = _Sequence(request, sampler_for(request), list(token_lists[request]))
            size, logits_at = 0, {}
            # In slot order: llama.cpp cuts a batch into pieces wherever its sequence ids are out of order,
            # and each piece costs a whole pass over the weights (2x the time per token measured here).
            for slot, sequence in sorted(running.items()):
                taken = sequence.pending[: batch_capacity - size]
                for offset, token in enumerate(taken):
                    batch.token[size], batch.pos[size] = token, sequence.position + offset
                    batch.n_seq_id[size], batch.seq_id[size][0] = 1, slot
                    batch.logits[size] = False
                    size += 1
                sequence.position += len(taken)
                sequence.pending = sequence.pending[len(taken) :]
                if taken and not sequence.pending:  # its whole input is in: the next token is due
                    batch.logits[size - 1] = True
                    logits_at[slot] = size - 1
                if size == batch_capacity:
                    break
            batch.n_tokens = size
            status = llama_cpp.llama_decode(context, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp could not decode a batch of {size} tokens (status {status})")
            for slot, index in logits_at.items():
                sequence = running[slot]
                token = llama_cpp.llama_sampler_sample(sequence.sampler, context, index)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish(slot)
                    continue
                length = llama_cpp.llama_token_to_piece(vocab, token, piece_buffer, PIECE_BUFFER_BYTES, 0, False)
                sequence.text += piece_buffer.raw[:length]
                sequence.generated += 1
                sequence.pending = [token]
                text = sequence.text.decode("utf-8", errors="ignore")
                stopped = any(stop in text for stop in stop_sequences[sequence.request])
                if stopped or sequence.generated >= max_new_tokens:
                    finish(slot)
    finally:
        for sequence in running.values():
            if sequence.sampler is not greedy:
                llama_cpp.llama_sampler_free(sequence.sampler)
        llama_cpp.llama_sampler_free(greedy)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(context)
    return texts
