"""`kit sweep`: the pipeline once per combination of a grid of params values, one after another, in
the params file's one experiment, then the compare report of the sweep's runs.

A sweep is named by an id derived from the params file's content, the grid's keys, the --set
overrides and the stages; its pipeline runs carry it as the tag ``kit.sweep``, and each its
combination as ``kit.sweep_combination``. The grid's values are left out of the id, so that adding a
value extends the same sweep: a combination already FINISHED in it, here or on another machine
logging to the same MLflow server, is skipped, and a failed one runs again.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from kit.core import tracking
from kit.core.params import Params, ParamsError, load_params, parse_overrides
from kit.pipeline.compare import PASS_AT_K_METRIC, PIPELINE_FILTER, load_comparison, search_runs
from kit.pipeline.report import ReportFiles, log_report, write_report
from kit.pipeline.runner import run_pipeline
from kit.pipeline.stage import STAGES

SWEEP_TAG = "kit.sweep"
COMBINATION_TAG = "kit.sweep_combination"
# The sweep sets these itself: one store and experiment for all its runs, a name and folder for each.
UNSWEPT_KEYS = ("mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name", "output_dir")


@dataclass
class CombinationOutcome:
    combination: str  # its overrides, space-separated, as the kit.sweep_combination tag holds them
    status: str  # the MLflow status of its chosen run, or "NOT RUN"
    run_id: str = ""
    skipped: bool = False  # finished before this sweep started
    adapter_pass_at_1: dict[str, float] = field(default_factory=dict)  # by benchmark


@dataclass
class SweepResult:
    sweep_id: str
    outcomes: list[CombinationOutcome]
    report: ReportFiles | None = None
    compare_run_id: str = ""

    @property
    def failed(self) -> bool:
        return any(outcome.status == "FAILED" for outcome in self.outcomes)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["lora_r=4,8", "learning_rate=1e-3,2e-4"]`` -> ``{"lora_r": ["4", "8"], ...}``. The values stay
    text: each becomes a ``key=value`` override, read as YAML like those of --set."""
    if not items:
        raise ParamsError("--grid: name at least one key and its values, key=v1,v2")
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, listed = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"--grid `{item}`: expected key=v1,v2,...")
        if key not in Params.model_fields:
            close = difflib.get_close_matches(key, Params.model_fields, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ParamsError(f"--grid `{item}`: unknown key `{key}`{hint}")
        if key in UNSWEPT_KEYS:
            raise ParamsError(f"--grid `{item}`: `{key}` cannot be swept: the sweep sets it for each run")
        if key in grid:
            raise ParamsError(f"--grid `{item}`: `{key}` is swept twice; list all its values in one --grid")
        values = [value.strip() for value in listed.split(",")]
        if not all(values):
            raise ParamsError(f"--grid `{item}`: an empty value; expected key=v1,v2,...")
        if len(set(values)) < len(values):
            raise ParamsError(f"--grid `{item}`: a value is listed twice")
        grid[key] = values
    return grid


def combinations(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination as overrides, keys sorted so that the order of the --grid options does not
    change a combination or its index; the last key's values vary fastest."""
    keys = sorted(grid)
    return [
        [f"{key}={value}" for key, value in zip(keys, values, strict=True)]
        for values in itertools.product(*(grid[key] for key in keys))
    ]


def sweep_id(params_file: str | Path, grid: dict[str, list[str]], overrides: list[str], stages: list[str]) -> str:
    """The same for the same params file content, grid keys, --set overrides and stages, on any machine."""
    identity = {
        "params": hashlib.sha256(Path(params_file).read_bytes()).hexdigest(),
        "keys": sorted(grid),
        "set": list(overrides),
        "stages": [stage for stage in STAGES if stage in stages],
    }
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def run_name(combination: list[str]) -> str:
    """The combination as a run name and run folder name: what the report labels the run with."""
    return re.sub(r"[^\w.,=+-]+", "_", ",".join(combination))


def _runs_by_combination(client: MlflowClient, experiment_id: str, identity: str) -> dict[str, list[Run]]:
    """The sweep's pipeline runs, oldest first, by combination."""
    runs = search_runs(client, [experiment_id], f"{PIPELINE_FILTER} and tags.`{SWEEP_TAG}` = '{identity}'")
    found: dict[str, list[Run]] = {}
    for run in runs:
        found.setdefault(run.data.tags.get(COMBINATION_TAG, ""), []).append(run)
    return found


def _chosen_run(runs: list[Run]) -> Run | None:
    """The latest FINISHED run of a combination, else its latest attempt."""
    finished = [run for run in runs if run.info.status == "FINISHED"]
    return (finished or runs or [None])[-1]


def _planned_overrides(
    params_file: Path, grid: dict[str, list[str]], overrides: list[str], sweep_dir: Path
) -> list[tuple[list[str], list[str]]]:
    """Each combination with the overrides its run gets; every one validated before any runs."""
    both = sorted(set(grid) & set(parse_overrides(overrides)))
    if both:
        raise ParamsError(f"`{both[0]}` is both swept (--grid) and set (--set)")
    planned = []
    for combination in combinations(grid):
        # JSON strings read back from YAML unchanged, whatever characters the path holds.
        named = [f"output_dir={json.dumps(str(sweep_dir))}", f"mlflow_run_name={json.dumps(run_name(combination))}"]
        run_overrides = [*overrides, *named, *combination]
        try:
            load_params(params_file, run_overrides)
        except ParamsError as error:
            raise ParamsError(f"combination {' '.join(combination)}: {error}") from None
        planned.append((combination, run_overrides))
    return planned


def run_sweep(
    params_file: str | Path,
    grid: dict[str, list[str]],
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    shard: tuple[int, int] = (0, 1),
    report_dir: Path | None = None,
    echo: Callable = print,
) -> SweepResult:
    """Run each combination not yet FINISHED in the sweep (of this shard: index modulo n), then write
    and log the compare report of the sweep's runs, the latest finished (else latest) of each."""
    params_file = Path(params_file).resolve()
    overrides, stages = list(overrides or []), list(stages or STAGES)
    params = load_params(params_file, overrides)
    identity = sweep_id(params_file, grid, overrides, stages)
    planned = _planned_overrides(params_file, grid, overrides, Path(params.output_dir) / f"sweep-{identity}")
    client = tracking.configure(params)
    experiment_id = client.get_experiment_by_name(params.experiment_name).experiment_id
    earlier = _runs_by_combination(client, experiment_id, identity)
    finished_before = {tag for tag, runs in earlier.items() if any(run.info.status == "FINISHED" for run in runs)}
    echo(f"sweep {identity}: {len(planned)} combination(s) in experiment {params.experiment_name!r}")

    shard_index, shards = shard
    tags = [" ".join(combination) for combination, _ in planned]
    for index, (tag, (_, run_overrides)) in enumerate(zip(tags, planned, strict=True)):
        heading = f"[{index + 1}/{len(planned)}] {tag}"
        if tag in finished_before:
            echo(f"{heading}: finished before, skipped")
        elif index % shards != shard_index:
            echo(f"{heading}: shard {index % shards}/{shards}'s, not this one's")
        else:
            echo(heading)
            sweep_tags = {SWEEP_TAG: identity, COMBINATION_TAG: tag}
            run_pipeline(params_file, stages, run_overrides, echo=echo, tags=sweep_tags)

    # Read back from MLflow: other machines may have run this sweep's other combinations meanwhile.
    chosen = {tag: _chosen_run(runs) for tag, runs in _runs_by_combination(client, experiment_id, identity).items()}
    outcomes = [
        CombinationOutcome(tag, chosen[tag].info.status, chosen[tag].info.run_id, tag in finished_before)
        if chosen.get(tag)
        else CombinationOutcome(tag, "NOT RUN")
        for tag in tags
    ]
    result = SweepResult(identity, outcomes)
    ran = [outcome.run_id for outcome in outcomes if outcome.run_id]
    if ran:
        comparison = load_comparison(params.tracking_uri, run_ids=ran)
        labels = {run_id: label for label, run_id in comparison.runs["run id"].items()}
        for outcome in outcomes:
            if outcome.run_id:
                outcome.adapter_pass_at_1 = _adapter_pass_at_1(comparison.metrics, labels[outcome.run_id])
        result.report = write_report(comparison, report_dir)
        result.compare_run_id = log_report(comparison, result.report)
    return result


def _adapter_pass_at_1(metrics: pd.DataFrame, label: str) -> dict[str, float]:
    """The adapter's pass@1 by benchmark, for runs that evaluated it."""
    found = {}
    for name, value in metrics[label].dropna().items():
        match = PASS_AT_K_METRIC.match(name)
        if match and match["variant"] == "adapter" and match["k"] == "1":
            found[match["benchmark"]] = float(value)
    return found


def format_summary(result: SweepResult) -> str:
    """A line per combination: status, combination, run id and the adapter's pass@1 where evaluated."""
    width = max(len(outcome.combination) for outcome in result.outcomes)
    lines = []
    for outcome in result.outcomes:
        status = outcome.status + (" (before)" if outcome.skipped else "")
        scores = ", ".join(f"{benchmark} {value:.3f}" for benchmark, value in outcome.adapter_pass_at_1.items())
        line = f"{status:<17} {outcome.combination:<{width}}  {outcome.run_id or '-':<32}"
        lines.append(f"{line}  adapter pass@1 {scores}" if scores else line.rstrip())
    return "\n".join(lines)
