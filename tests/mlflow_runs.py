"""Hand-made pipeline runs in an MLflow store: a parent run and one child run per stage, tagged and
named as `kit run` does, with the metric names the stages log, and no model trained."""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

VARIANTS = ("base", "adapter", "merged", "gguf_q8_0", "gguf_q4_k_m")
GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
# What quantizing loses, by variant, from the trained model's pass@1; base scores half of it.
PASS_AT_1_LOSS = {"base": None, "adapter": 0.0, "merged": 0.0, "gguf_q8_0": 0.01, "gguf_q4_k_m": 0.05}


def pass_at_1(quality: float, variant: str) -> float:
    loss = PASS_AT_1_LOSS[variant]
    return quality / 2 if loss is None else quality - loss


def _metrics(values: dict[str, float], timestamp: int, step: int = 0) -> list[Metric]:
    return [Metric(key, float(value), timestamp, step) for key, value in values.items()]


def _log_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=items[start : start + 100])


def stage_metrics(quality: float, final_loss: float, benchmarks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The last value of each metric each stage logs, as the stage notebooks name them."""
    return {
        "prepare": {"prepare/packing_efficiency": 0.89, "prepare/num_train": 190, "prepare/seconds": 1.5},
        "train": {
            "train/final_loss": final_loss,
            "eval/final_loss": final_loss + 0.1,
            "train/runtime_seconds": 12.0,
            "train/peak_memory_mb": 900.0,
            "train/seconds": 14.0,
        },
        "merge": {"merge/max_abs_logit_diff": 1e-4, "merge/top1_agreement": 1.0, "merge/seconds": 7.0},
        "quantize": {
            "merged/perplexity": 1700.0,
            **{f"gguf/{gguf_type}/size_mb": 5.0 / (index + 1) for index, gguf_type in enumerate(GGUF_TYPES)},
            **{f"gguf/{gguf_type}/perplexity": 1700.0 + index for index, gguf_type in enumerate(GGUF_TYPES)},
            **{f"gguf/{gguf_type}/top1_agreement": 0.99 for gguf_type in GGUF_TYPES},
            "quantize/seconds": 5.0,
        },
        "evaluate": {
            **{
                f"{variant}/{benchmark}/{name}": value
                for benchmark in benchmarks
                for variant in VARIANTS
                for name, value in (("pass_at_1", pass_at_1(quality, variant)), ("generation_seconds", 2.0))
            },
            "evaluate/seconds": 10.0,
        },
    }


def log_pipeline_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: dict[str, object],
    quality: float = 0.5,
    final_loss: float = 6.6,
    steps: int = 20,
    benchmarks: tuple[str, ...] = ("humaneval",),
    started_ms: int | None = None,
    git_commit: str = "0123abc",
) -> str:
    """A finished pipeline run with its five stage runs; returns the parent's run id."""
    started_ms = started_ms or int(time.time() * 1000)
    parent = client.create_run(
        experiment_id,
        start_time=started_ms,
        run_name=name,
        tags={
            "kit.kind": "pipeline", "kit.git_commit": git_commit, "kit.overrides": "-", "kit.version.torch": "2.13.0"
        },
    ).info.run_id
    _log_params(client, parent, params)
    client.log_batch(parent, metrics=_metrics({"pipeline/seconds": 50.0, "pipeline/train_seconds": 14.0}, started_ms))
    for offset, (stage, values) in enumerate(stage_metrics(quality, final_loss, benchmarks).items(), start=1):
        run_id = client.create_run(
            experiment_id,
            start_time=started_ms + offset,
            run_name=stage,
            tags={"kit.kind": "stage", "kit.stage": stage, "mlflow.parentRunId": parent},
        ).info.run_id
        _log_params(client, run_id, params)  # every stage run records the resolved params, as kit's do
        logged = _metrics(values, started_ms)
        if stage == "train":
            # A loss falling linearly to final_loss, and eval every 10 steps, as the trainer logs them.
            for step in range(1, steps + 1):
                loss = final_loss + (steps - step) * 0.05
                logged += _metrics({"train/loss": loss, "train/tokens_per_second": 900.0}, started_ms, step)
                if step % 10 == 0 or step == steps:
                    logged += _metrics({"eval/loss": loss + 0.1}, started_ms, step)
        client.log_batch(run_id, metrics=logged)
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent
