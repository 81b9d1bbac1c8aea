"""Pipeline runs side by side, from MLflow: the params that differ, the metrics that matter, loss
curves, and the quality ledger (pass@1 from the base model through each artifact made from it).

Pipeline runs are the parent runs `kit run` makes (tag ``kit.kind=pipeline``); their stage runs
(``kit.kind=stage``, ``mlflow.parentRunId``) hold the metrics. Anything else in the experiment, such
as the runs `kit compare` logs its reports on, is left out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kit.core.params import GGUF_TYPES, GGUF_VARIANT_PREFIX
from kit.core.tracking import abandoned
from kit.pipeline.stage import STAGES

PIPELINE_FILTER = "tags.`kit.kind` = 'pipeline'"
STAGE_FILTER = "tags.`kit.kind` = 'stage'"
PASS_AT_K_METRIC = re.compile(r"^(?P<variant>[^/]+)/(?P<benchmark>[^/]+)/pass_at_(?P<k>\d+)$")
GGUF_METRIC = re.compile(r"^gguf/(?P<gguf_type>[^/]+)/(?P<name>size_mb|perplexity)$")
LOSS_CURVES = ("train/loss", "eval/loss")
# Shown between pass@k and the GGUF rows, in this order.
HEADLINE_METRICS = ("train/final_loss", "eval/final_loss", "prepare/packing_efficiency", "merged/perplexity")
# Provenance tags that belong beside the params when they differ: what a rerun must match.
PROVENANCE_TAGS = re.compile(r"^kit\.(git_commit|overrides|version\..+)$")


class CompareError(Exception):
    """The runs or the experiment asked for are not in the store."""


@dataclass
class Comparison:
    tracking_uri: str
    experiment: str
    experiment_id: str
    runs: pd.DataFrame  # one row per pipeline run, indexed by label: run id, status, start, commit
    params: pd.DataFrame  # params (and provenance tags) that differ: key x run label
    metrics: pd.DataFrame  # metric x run label
    ledger: pd.DataFrame  # (run label, benchmark) x variant in pipeline order: pass@1
    reruns: pd.DataFrame  # one row per run that reruns another here (kit rerun): do their metrics match
    curves: pd.DataFrame  # long form: run, metric, step, value


def default_tracking_uri() -> str:
    """Where `kit run` logs without a params file to say otherwise: MLFLOW_TRACKING_URI, else the local store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('.tunebook/mlflow.db').resolve()}"


def variant_order(variant: str) -> tuple[int, int, str]:
    """Pipeline order: base, the trained model, the merged model, then each GGUF from finest to coarsest."""
    if variant.startswith(GGUF_VARIANT_PREFIX):
        gguf_type = variant.removeprefix(GGUF_VARIANT_PREFIX)
        return (3, GGUF_TYPES.index(gguf_type) if gguf_type in GGUF_TYPES else len(GGUF_TYPES), variant)
    fixed = {"base": 0, "adapter": 1, "finetuned": 1, "merged": 2}
    return (fixed.get(variant, 4), 0, variant)


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every matching run, oldest first, across MLflow's result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def pipeline_run(client: MlflowClient, run_id: str) -> Run:
    """The run, which must be a pipeline (parent) run."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise CompareError(f"run {run_id} not found in {client.tracking_uri}") from None
    if run.data.tags.get("kit.kind") != "pipeline":
        kind = run.data.tags.get("kit.kind", "not a kit run")
        raise CompareError(f"run {run_id} is not a pipeline run ({kind}); name the parent runs `kit run` made")
    return run


def _pipeline_runs(client: MlflowClient, experiment: str | None, run_ids: list[str]) -> tuple[str, str, list[Run]]:
    """The experiment (name, id) and its pipeline runs, or the named ones."""
    if run_ids:
        runs = [pipeline_run(client, run_id) for run_id in run_ids]
        found = client.get_experiment_by_name(experiment) if experiment else None
        if experiment and found is None:
            raise CompareError(_unknown_experiment(client, experiment))
        found = found or client.get_experiment(runs[0].info.experiment_id)
        return found.name, found.experiment_id, runs
    if not experiment:
        raise CompareError(f"name an experiment (--experiment) or runs (--runs); {_experiment_list(client)}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(_unknown_experiment(client, experiment))
    runs = search_runs(client, [found.experiment_id], PIPELINE_FILTER)
    if not runs:
        raise CompareError(f"experiment {experiment!r} has no pipeline runs (kit run makes them)")
    return found.name, found.experiment_id, runs


def _experiment_list(client: MlflowClient) -> str:
    names = [experiment.name for experiment in client.search_experiments()]
    return f"experiments in {client.tracking_uri}: {', '.join(names) or 'none'}"


def _unknown_experiment(client: MlflowClient, experiment: str) -> str:
    return f"no experiment {experiment!r}; {_experiment_list(client)}"


def _labels(runs: list[Run]) -> list[str]:
    """Run names, with the run id's start where two runs share a name."""
    names = [run.info.run_name or run.info.run_id[:8] for run in runs]
    return [
        f"{name} ({run.info.run_id[:8]})" if names.count(name) > 1 else name
        for name, run in zip(names, runs, strict=True)
    ]


def _metric_order(name: str) -> tuple:
    """pass@k first (by benchmark, k, variant), then the headline metrics, GGUF size and perplexity,
    and stage times in pipeline order."""
    if match := PASS_AT_K_METRIC.match(name):
        return (0, match["benchmark"], int(match["k"]), variant_order(match["variant"]))
    if name in HEADLINE_METRICS:
        return (1, HEADLINE_METRICS.index(name))
    if match := GGUF_METRIC.match(name):
        return (2, variant_order(GGUF_VARIANT_PREFIX + match["gguf_type"]), match["name"])
    return (3, [*STAGES, "pipeline"].index(name.split("/")[0]))


def _is_reported(name: str) -> bool:
    stage_time = name.endswith("/seconds") and name.split("/")[0] in (*STAGES, "pipeline") and name.count("/") == 1
    return bool(PASS_AT_K_METRIC.match(name) or GGUF_METRIC.match(name)) or name in HEADLINE_METRICS or stage_time


def _differing(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose values are not all the same (a key missing from some runs counts as differing)."""
    if table.shape[1] < 2:
        return table.iloc[0:0]
    same = table.astype(str).nunique(axis=1, dropna=False) == 1
    return table[~same].sort_index()


def load_comparison(tracking_uri: str, experiment: str | None = None, run_ids: list[str] | None = None) -> Comparison:
    """The pipeline runs of ``experiment`` (or the runs named) with their stage runs, as tables."""
    # MLflow creates a SQLite store it is pointed at: a mistyped path would leave a new empty one.
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise CompareError(f"no MLflow store at {tracking_uri.removeprefix('sqlite:///')} (--tracking-uri); "
                           "`kit run` creates it, in .tunebook/mlflow.db by default")
    client = MlflowClient(tracking_uri)
    experiment, experiment_id, parents = _pipeline_runs(client, experiment, list(dict.fromkeys(run_ids or [])))
    labels = dict(zip((run.info.run_id for run in parents), _labels(parents), strict=True))
    experiment_ids = sorted({run.info.experiment_id for run in parents})
    # Metrics by pipeline: the parent's (pipeline/*) and every stage's; a stage run again under the
    # same parent counts with its latest run, the search being oldest first.
    metrics = {run.info.run_id: dict(run.data.metrics) for run in parents}
    train_runs = {}
    for stage_run in search_runs(client, experiment_ids, STAGE_FILTER):
        parent = stage_run.data.tags.get("mlflow.parentRunId")
        if parent in metrics:
            metrics[parent].update(stage_run.data.metrics)
            if stage_run.data.tags.get("kit.stage") == "train":
                train_runs[parent] = stage_run.info.run_id

    runs = pd.DataFrame(
        [
            {
                "run": labels[run.info.run_id],
                "run id": run.info.run_id,
                # A run its killed process left RUNNING says so, not that it still runs.
                "status": "KILLED (process gone)" if abandoned(run) else run.info.status,
                "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
                "git commit": run.data.tags.get("kit.git_commit", ""),
                "rerun of": run.data.tags.get("kit.rerun_of", ""),
            }
            for run in parents
        ]
    ).set_index("run")
    settings = pd.DataFrame(
        {
            labels[run.info.run_id]: {
                **run.data.params,
                **{key: value for key, value in run.data.tags.items() if PROVENANCE_TAGS.match(key)},
            }
            for run in parents
        }
    )
    reported = pd.DataFrame({labels[run_id]: values for run_id, values in metrics.items()})
    reported = reported.loc[sorted((name for name in reported.index if _is_reported(name)), key=_metric_order)]
    return Comparison(
        tracking_uri=tracking_uri,
        experiment=experiment,
        experiment_id=experiment_id,
        runs=runs,
        params=_differing(settings),
        metrics=reported,
        ledger=_ledger(reported),
        reruns=_reruns(runs, reported),
        curves=_curves(client, {labels[parent]: run_id for parent, run_id in train_runs.items()}),
    )


def _ledger(metrics: pd.DataFrame) -> pd.DataFrame:
    """pass@1 by run and benchmark, one column per variant in pipeline order."""
    rows = [
        {"run": run, "benchmark": match["benchmark"], "variant": match["variant"], "pass@1": value}
        for name in metrics.index
        if (match := PASS_AT_K_METRIC.match(name)) and match["k"] == "1"
        for run, value in metrics.loc[name].items()
    ]
    if not rows:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["run", "benchmark"]))
    ledger = pd.DataFrame(rows).pivot_table(index=["run", "benchmark"], columns="variant", values="pass@1")
    # pivot_table sorts runs by name; the tables keep them oldest first.
    ledger = ledger.loc[[run for run in metrics.columns if run in ledger.index.get_level_values("run")]]
    return ledger[sorted(ledger.columns, key=variant_order)].rename_axis(columns=None)


def _reruns(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run that reruns another in the comparison, against it: how many metrics are bitwise equal
    (stage times aside: no two runs take the same time), and which differ."""
    compared = metrics.loc[[name for name in metrics.index if not name.endswith("/seconds")]]
    labels = {run_id: label for label, run_id in runs["run id"].items()}
    rows = []
    for label, original in runs["rerun of"].items():
        if original in labels:
            before, after = compared[labels[original]], compared[label]
            same = (before == after) | (before.isna() & after.isna())
            rows.append(
                {
                    "rerun": label,
                    "of": labels[original],
                    "identical metrics": f"{int(same.sum())} of {len(compared)}",
                    "differing": ", ".join(compared.index[~same]) or "none",
                }
            )
    return pd.DataFrame(rows, columns=["rerun", "of", "identical metrics", "differing"]).set_index("rerun")


def _curves(client: MlflowClient, train_runs: dict[str, str]) -> pd.DataFrame:
    rows = [
        {"run": label, "metric": key, "step": point.step, "value": point.value}
        for label, run_id in train_runs.items()
        for key in LOSS_CURVES
        for point in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=["run", "metric", "step", "value"])
