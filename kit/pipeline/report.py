"""A comparison as files a person opens: one self-contained HTML page (figures embedded as PNG, so it
opens from disk or as a mailed attachment) and a Markdown summary, both also logged to MLflow on a
run of their own."""

from __future__ import annotations

import base64
import html
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from kit.core.staging import written_aside
from kit.pipeline.compare import PASS_AT_K_METRIC, Comparison, variant_order

COMPARE_TAGS = {"kit.kind": "compare", "kit.compare": "true"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
"""


@dataclass
class ReportFiles:
    html: Path
    summary: Path


def _new_figure(width: float, height: float):
    """A figure drawn without pyplot, so no GUI backend or global figure state is involved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_colours(comparison: Comparison) -> dict[str, tuple]:
    """A colour per run, the same in every figure: distinct for up to 20 runs, from tab10 where it suffices
    (its colours are the easier to tell apart)."""
    from matplotlib import colormaps

    runs = list(comparison.runs.index)
    palette = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    return {run: palette(index % palette.N) for index, run in enumerate(runs)}


def loss_curves_png(comparison: Comparison) -> bytes:
    """Every run's train loss (solid) and eval loss (dashed, with points) on one axes, a colour per run."""
    figure = _new_figure(9, 5)
    axes = figure.subplots()
    colours = run_colours(comparison)
    for run, curves in comparison.curves.groupby("run", sort=False):
        colour = colours[run]
        # One legend entry per run: the title tells train from eval, so 20 runs still fit beside the axes.
        for metric, style, label in (("train/loss", "-", run), ("eval/loss", "--o", None)):
            points = curves[curves["metric"] == metric].sort_values("step")
            if not points.empty:
                axes.plot(points["step"], points["value"], style, color=colour, markersize=3, label=label)
    axes.set(xlabel="step", ylabel="loss", title="train (solid) and eval (dashed) loss")
    axes.grid(True)
    if axes.lines:
        axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(figure)


def pass_at_k_png(comparison: Comparison) -> bytes:
    """One panel per benchmark and k: bars per variant in pipeline order, one bar per run."""
    panels: dict[tuple[str, int], dict[str, pd.Series]] = {}
    for name in comparison.metrics.index:
        if match := PASS_AT_K_METRIC.match(name):
            panel = panels.setdefault((match["benchmark"], int(match["k"])), {})
            panel[match["variant"]] = comparison.metrics.loc[name]
    figure = _new_figure(9, 1 + 3 * max(len(panels), 1))
    if not panels:
        figure.text(0.5, 0.5, "no pass@k logged", ha="center")
        return _png(figure)
    # Runs that logged no pass@k (an evaluate stage not run) would only widen every group with gaps.
    scored = comparison.metrics.loc[[name for name in comparison.metrics.index if PASS_AT_K_METRIC.match(name)]]
    runs = [run for run in scored.columns if scored[run].notna().any()]
    colours = run_colours(comparison)
    width = 0.8 / len(runs)
    grid = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for axes, ((benchmark, k), by_variant) in zip(grid, sorted(panels.items())):
        variants = sorted(by_variant, key=variant_order)
        for index, run in enumerate(runs):
            heights = [by_variant[variant].get(run) for variant in variants]
            positions = [slot + (index - (len(runs) - 1) / 2) * width for slot in range(len(variants))]
            axes.bar(positions, heights, width, color=colours[run], label=run)
        axes.set_xticks(range(len(variants)), variants)
        axes.set(xlim=(-0.5, len(variants) - 0.5), ylim=(0, 1), ylabel=f"pass@{k}", title=f"{benchmark} pass@{k}")
        axes.grid(True, axis="y")
    figure.axes[0].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(figure)


def _html_table(table: pd.DataFrame, empty: str) -> str:
    if table.empty:
        return f"<p>{html.escape(empty)}</p>"
    return table.to_html(float_format="{:.4g}".format, na_rep="–", border=0)


def render_html(comparison: Comparison) -> str:
    figures = {
        "Loss curves": loss_curves_png(comparison),
        "pass@k by variant": pass_at_k_png(comparison),
    }
    sections = [
        ("Runs", _html_table(comparison.runs, "no runs")),
        ("Params that differ", _html_table(comparison.params, "every param is the same in these runs")),
        ("Metrics", _html_table(comparison.metrics, "no metrics logged")),
        (
            "Quality ledger (pass@1, base → adapter → merged → each GGUF)",
            _html_table(comparison.ledger, "no pass@1 logged"),
        ),
        ("Reruns (kit rerun) against their original", _html_table(comparison.reruns, "no run here reruns another")),
        *(
            (title, f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
            for title, png in figures.items()
        ),
    ]
    title = f"tunebook: {comparison.experiment}"
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>{len(comparison.runs)} pipeline run(s) from {html.escape(comparison.tracking_uri)}, "
        f"compared {time.strftime('%Y-%m-%d %H:%M')}.</p>\n{body}\n</body>\n</html>\n"
    )


def _markdown_table(table: pd.DataFrame, empty: str, index: bool = True) -> str:
    return table.to_markdown(index=index, floatfmt=".4g") if not table.empty else empty


def render_summary(comparison: Comparison) -> str:
    sections = [
        ("Runs", _markdown_table(comparison.runs, "No runs.")),
        ("Params that differ", _markdown_table(comparison.params, "Every param is the same in these runs.")),
        ("Metrics", _markdown_table(comparison.metrics, "No metrics logged.")),
        ("Quality ledger (pass@1)", _markdown_table(comparison.ledger.reset_index(), "No pass@1 logged.", index=False)),
        ("Reruns against their original", _markdown_table(comparison.reruns, "No run here reruns another.")),
    ]
    body = "\n\n".join(f"## {heading}\n\n{content}" for heading, content in sections)
    return f"# tunebook: {comparison.experiment}\n\n{len(comparison.runs)} pipeline run(s).\n\n{body}\n"


def default_report_dir(experiment: str) -> Path:
    """``reports/<experiment>/``, the name made safe as a folder name."""
    return Path("reports") / (re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment")


def write_report(comparison: Comparison, out_dir: Path | None = None) -> ReportFiles:
    out_dir = Path(out_dir or default_report_dir(comparison.experiment))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(html=out_dir / "report.html", summary=out_dir / "summary.md")
    # Each written aside and renamed once complete: a failed render keeps the previous report whole.
    for path, text in ((files.html, render_html(comparison)), (files.summary, render_summary(comparison))):
        with written_aside(path) as partial:
            partial.write_text(text, encoding="utf-8")
    return files


def log_report(comparison: Comparison, files: ReportFiles) -> str:
    """A compare run in the comparison's experiment holding the report; tagged ``kit.kind=compare``,
    so later comparisons, which read pipeline runs only, leave it out."""
    client = MlflowClient(comparison.tracking_uri)
    run = client.create_run(
        comparison.experiment_id,
        run_name="compare",
        tags={**COMPARE_TAGS, "kit.compared_runs": ",".join(comparison.runs["run id"])},
    )
    for path in (files.html, files.summary):
        client.log_artifact(run.info.run_id, str(path), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
