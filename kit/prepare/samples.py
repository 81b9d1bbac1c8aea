"""Samples: every dataset's rows rendered, tokenized and cleaned, with a count of everything dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

from kit.core.formats import IGNORE_INDEX, render, tokenize
from kit.core.params import DatasetSpec, Params
from kit.core.sources import BadData, iter_rows

# Per dataset: loaded == bad_rows + empty + duplicates + too_long + kept; truncated ones are kept.
COUNT_KEYS = ("loaded", "bad_rows", "empty", "duplicates", "too_long", "truncated", "kept")
# A text this many characters per allowed token long is first tokenized in part (_surely_too_long).
CHARS_CHECKED_PER_TOKEN = 16


@dataclass
class SampleSet:
    """The kept samples in dataset order, each with its rendered text, and per-dataset counts."""

    samples: list[dict[str, list[int]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    counts: list[dict[str, int]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        """The counts summed over all datasets."""
        return {key: sum(counts[key] for counts in self.counts) for key in COUNT_KEYS}


def collect_samples(params: Params, tokenizer, specs: list[DatasetSpec] | None = None) -> SampleSet:
    """Load, render and tokenize every row of ``specs`` (``params.datasets`` unless given) in order,
    keeping the clean ones.

    Dropped: rows that cannot be read or rendered (unless ``dataset_bad_rows: error``, where the
    first one stops the run), rows with no trained text, exact repeats of an earlier rendered text
    (in any dataset), and samples over ``sequence_len``, which ``excess_length_strategy: truncate``
    cuts instead while anything trained is left.
    """
    collected = SampleSet()
    seen: set[str] = set()
    for spec in params.datasets if specs is None else specs:
        counts = dict.fromkeys(COUNT_KEYS, 0)
        collected.counts.append(counts)
        for place, values in iter_rows(spec):
            counts["loaded"] += 1
            try:
                if isinstance(values, BadData):
                    raise values
                segments = render(values, spec, tokenizer)
            except BadData as error:
                if params.dataset_bad_rows == "error":
                    raise error.at(place) from None
                counts["bad_rows"] += 1
                continue
            if not "".join(text for text, trained in segments if trained).strip():
                counts["empty"] += 1
                continue
            text = "".join(text for text, _ in segments)
            if text in seen:
                counts["duplicates"] += 1
                continue
            seen.add(text)
            if params.excess_length_strategy == "drop" and _surely_too_long(text, tokenizer, params.sequence_len):
                counts["too_long"] += 1
                continue
            sample = tokenize(segments, tokenizer, params.train_on_inputs)
            if len(sample["input_ids"]) > params.sequence_len:
                if params.excess_length_strategy == "truncate":
                    sample = {key: ids[: params.sequence_len] for key, ids in sample.items()}
                # Dropped too where the cut left nothing trained (a prompt longer than the limit).
                if params.excess_length_strategy == "drop" or all(label == IGNORE_INDEX for label in sample["labels"]):
                    counts["too_long"] += 1
                    continue
                counts["truncated"] += 1
            counts["kept"] += 1
            collected.samples.append(sample)
            collected.texts.append(text)
    return collected


def _surely_too_long(text: str, tokenizer, sequence_len: int) -> bool:
    """Whether a long text's beginning alone is over ``sequence_len`` tokens: a 10 MB row is dropped
    after tokenizing a few kB of it, not after gigabytes of offsets for all of it. The beginning's
    tokens are at most one more than the same span's in the whole text (only the cut can split a token)."""
    checked = sequence_len * CHARS_CHECKED_PER_TOKEN
    if len(text) <= checked:
        return False
    return len(tokenizer(text[:checked], add_special_tokens=False)["input_ids"]) > sequence_len + 1
