"""`kit compare` on hand-made pipeline runs in a temporary SQLite store: tables, report files, the
compare run, the command's errors, and the notebook."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import papermill
import pytest
from mlflow.tracking import MlflowClient

from kit.cli import main
from kit.pipeline.compare import load_comparison
from kit.pipeline.report import log_report, write_report

from .conftest import ROOT
from .mlflow_runs import VARIANTS, log_pipeline_run, pass_at_1

PARAMS = {"base_model": "tiny-llama", "learning_rate": 0.001, "lora_r": 8, "seed": 42}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made: copied, it saves each test the seconds of MLflow's migrations."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def new_store(empty_store: Path, tmp_path: Path) -> tuple[str, MlflowClient]:
    path = Path(shutil.copy(empty_store, tmp_path / "mlflow.db"))
    return f"sqlite:///{path}", MlflowClient(f"sqlite:///{path}")


@pytest.fixture()
def store(new_store) -> tuple[str, MlflowClient, str, list[str]]:
    """Experiment ``sweep``: two pipeline runs differing in learning rate, quality, loss and commit."""
    uri, client = new_store
    experiment_id = client.create_experiment("sweep")
    run_ids = [
        log_pipeline_run(client, experiment_id, "lr-high", PARAMS, quality=0.5, final_loss=6.6, started_ms=1_000_000),
        log_pipeline_run(
            client,
            experiment_id,
            "lr-low",
            {**PARAMS, "learning_rate": 0.0002, "lora_dropout": 0.05},
            quality=0.25,
            final_loss=7.1,
            steps=30,
            started_ms=2_000_000,
            git_commit="4567def",
        ),
    ]
    return uri, client, experiment_id, run_ids


def test_params_table_holds_only_the_keys_that_differ(store):
    uri, _, _, _ = store
    params = load_comparison(uri, "sweep").params
    assert list(params.columns) == ["lr-high", "lr-low"]
    # A key one run lacks (lora_dropout) differs too; the commit is provenance a rerun must match.
    assert list(params.index) == ["kit.git_commit", "learning_rate", "lora_dropout"]
    assert params.loc["learning_rate"].tolist() == ["0.001", "0.0002"]
    assert params.loc["kit.git_commit"].tolist() == ["0123abc", "4567def"]


def test_metrics_table_orders_pass_at_k_by_variant_then_losses_gguf_and_stage_times(store):
    uri, _, _, _ = store
    metrics = load_comparison(uri, "sweep").metrics
    assert list(metrics.index) == [
        *(f"{variant}/humaneval/pass_at_1" for variant in VARIANTS),
        "train/final_loss",
        "eval/final_loss",
        "prepare/packing_efficiency",
        "merged/perplexity",
        *(f"gguf/{gguf_type}/{name}" for gguf_type in ("f16", "q8_0", "q4_k_m") for name in ("perplexity", "size_mb")),
        *(f"{stage}/seconds" for stage in ("prepare", "train", "merge", "quantize", "evaluate", "pipeline")),
    ]
    assert metrics.loc["gguf_q4_k_m/humaneval/pass_at_1"].tolist() == pytest.approx([0.45, 0.20])
    assert metrics.loc["train/final_loss"].tolist() == pytest.approx([6.6, 7.1])
    assert metrics.loc["pipeline/seconds"].tolist() == pytest.approx([50.0, 50.0])


def test_a_stage_run_again_under_its_pipeline_counts_with_its_latest_run(store):
    uri, client, experiment_id, run_ids = store
    rerun = client.create_run(
        experiment_id,
        start_time=3_000_000,
        tags={"kit.kind": "stage", "kit.stage": "train", "mlflow.parentRunId": run_ids[0]},
    ).info.run_id
    client.log_metric(rerun, "train/final_loss", 5.9)
    assert load_comparison(uri, "sweep").metrics.loc["train/final_loss", "lr-high"] == pytest.approx(5.9)


def test_ledger_is_pass_at_1_per_run_and_benchmark_in_pipeline_order(new_store):
    uri, client = new_store
    experiment_id = client.create_experiment("two-benchmarks")
    for index, quality in enumerate((0.6, 0.3)):
        log_pipeline_run(
            client, experiment_id, f"run-{index}", PARAMS, quality, benchmarks=("mbpp", "humaneval"),
            started_ms=1_000_000 * (index + 1),
        )
    ledger = load_comparison(uri, "two-benchmarks").ledger
    assert list(ledger.columns) == list(VARIANTS)
    assert list(ledger.index) == [
        ("run-0", "humaneval"), ("run-0", "mbpp"), ("run-1", "humaneval"), ("run-1", "mbpp"),
    ]
    assert ledger.loc[("run-1", "mbpp")].tolist() == pytest.approx([pass_at_1(0.3, variant) for variant in VARIANTS])


def test_a_rerun_is_checked_against_its_original_metric_by_metric(store):
    uri, client, experiment_id, run_ids = store
    again = log_pipeline_run(client, experiment_id, "lr-high-again", PARAMS, quality=0.5, final_loss=6.6,
                             started_ms=3_000_000)
    client.set_tag(again, "kit.rerun_of", run_ids[0])
    comparison = load_comparison(uri, "sweep")
    assert comparison.reruns.to_dict("index") == {
        "lr-high-again": {"of": "lr-high", "identical metrics": "15 of 15", "differing": "none"}
    }
    train = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{again}' and tags.`kit.stage` = 'train'")
    client.log_metric(train[0].info.run_id, "train/final_loss", 6.600001)
    assert load_comparison(uri, "sweep").reruns.loc["lr-high-again", "differing"] == "train/final_loss"


def test_loss_curves_come_from_each_train_run(store):
    uri, _, _, _ = store
    curves = load_comparison(uri, "sweep").curves
    counts = curves.groupby(["run", "metric"]).size().to_dict()
    assert counts == {
        ("lr-high", "train/loss"): 20, ("lr-high", "eval/loss"): 2,
        ("lr-low", "train/loss"): 30, ("lr-low", "eval/loss"): 3,
    }
    last = curves[(curves["run"] == "lr-low") & (curves["metric"] == "train/loss")].sort_values("step").iloc[-1]
    assert (last["step"], last["value"]) == (30, pytest.approx(7.1))


def test_a_pipeline_that_failed_before_any_metric_still_gets_a_report(new_store, tmp_path):
    uri, client = new_store
    experiment_id = client.create_experiment("failed")
    run_id = client.create_run(experiment_id, run_name="broken", tags={"kit.kind": "pipeline"}).info.run_id
    client.set_terminated(run_id, "FAILED")
    comparison = load_comparison(uri, "failed")
    assert comparison.runs["status"].tolist() == ["FAILED"]
    assert comparison.metrics.empty and comparison.ledger.empty and comparison.curves.empty
    summary = write_report(comparison, tmp_path / "report").summary.read_text()
    assert "No metrics logged." in summary and "No pass@1 logged." in summary


class _Sources(HTMLParser):
    """Every src and href in a page, and its tables' header cells."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.headers: list[str] = []
        self._in_header = False

    def handle_starttag(self, tag, attrs):
        self.links += [(tag, name, value) for name, value in attrs if name in ("src", "href")]
        self._in_header = tag == "th"

    def handle_data(self, data):
        if self._in_header and data.strip():
            self.headers.append(data.strip())

    def handle_endtag(self, tag):
        self._in_header = False


def test_html_report_is_self_contained_with_the_tables_and_figures(store, tmp_path):
    uri, _, _, _ = store
    files = write_report(load_comparison(uri, "sweep"), tmp_path / "report")
    page = _Sources()
    page.feed(files.html.read_text())
    assert [(tag, name) for tag, name, _ in page.links] == [("img", "src"), ("img", "src")]
    for _, _, value in page.links:
        assert value.startswith("data:image/png;base64,")
        assert base64.b64decode(value.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    for header in ("lr-high", "lr-low", "learning_rate", "adapter/humaneval/pass_at_1", "gguf_q4_k_m", "benchmark"):
        assert header in page.headers


def test_summary_holds_the_tables_in_markdown(store, tmp_path):
    uri, _, _, _ = store
    summary = write_report(load_comparison(uri, "sweep"), tmp_path / "report").summary.read_text()
    assert summary.startswith("# tunebook: sweep\n\n2 pipeline run(s).")
    headings = ("Runs", "Params that differ", "Metrics", "Quality ledger (pass@1)", "Reruns against their original")
    for heading in (f"## {heading}" for heading in headings):
        assert heading in summary
    learning_rate = next(line for line in summary.splitlines() if line.startswith("| learning_rate"))
    assert "0.001" in learning_rate and "0.0002" in learning_rate
    ledger = next(line for line in summary.splitlines() if line.startswith("| lr-low ") and "humaneval" in line)
    assert [cell.strip() for cell in ledger.strip("|").split("|")][2:] == ["0.125", "0.25", "0.25", "0.24", "0.2"]


def test_report_is_logged_on_a_compare_run_that_later_compares_leave_out(store, tmp_path):
    uri, client, experiment_id, run_ids = store
    comparison = load_comparison(uri, "sweep")
    compare_run = client.get_run(log_report(comparison, write_report(comparison, tmp_path / "report")))
    assert compare_run.info.experiment_id == experiment_id
    assert compare_run.data.tags["kit.kind"] == "compare" and compare_run.data.tags["kit.compare"] == "true"
    assert compare_run.data.tags["kit.compared_runs"] == ",".join(run_ids)
    logged = {artifact.path for artifact in client.list_artifacts(compare_run.info.run_id, "report")}
    assert logged == {"report/report.html", "report/summary.md"}
    assert load_comparison(uri, "sweep").runs["run id"].tolist() == run_ids


def test_cli_compares_an_experiment_or_chosen_runs(store, tmp_path, capsys):
    uri, client, _, run_ids = store
    assert main(["compare", "--tracking-uri", uri, "--experiment", "sweep", "--out", str(tmp_path / "all")]) == 0
    assert "compared 2 run(s) of 'sweep'" in capsys.readouterr().out
    assert (tmp_path / "all" / "report.html").exists() and (tmp_path / "all" / "summary.md").exists()

    assert main(["compare", "--tracking-uri", uri, "--runs", run_ids[1], "--out", str(tmp_path / "one")]) == 0
    assert "compared 1 run(s) of 'sweep'" in capsys.readouterr().out
    assert "lr-high" not in (tmp_path / "one" / "summary.md").read_text()
    experiment_id = client.get_experiment_by_name("sweep").experiment_id
    assert len(client.search_runs([experiment_id], "tags.`kit.compare` = 'true'")) == 2


def test_cli_writes_to_reports_experiment_by_default(store, tmp_path, monkeypatch):
    uri, _, _, _ = store
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--tracking-uri", uri, "--experiment", "sweep"]) == 0
    assert (tmp_path / "reports" / "sweep" / "report.html").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--experiment", "nope"], "no experiment 'nope'; experiments in sqlite:"),
        (["--runs", "f" * 32], f"run {'f' * 32} not found"),
        ([], "name an experiment (--experiment) or runs (--runs)"),
        (["--experiment", "empty"], "experiment 'empty' has no pipeline runs"),
    ],
)
def test_cli_errors_exit_2_with_the_reason(store, capsys, arguments, message):
    uri, client, _, _ = store
    client.create_experiment("empty")
    assert main(["compare", "--tracking-uri", uri, *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error
    if arguments[:1] == ["--experiment"] and arguments[1] == "nope":
        assert "sweep" in error  # the experiments there are


def test_a_mistyped_store_is_refused_and_never_created(tmp_path, capsys):
    typo = tmp_path / "mlfow.db"
    assert main(["compare", "--tracking-uri", f"sqlite:///{typo}", "--experiment", "smoke"]) == 2
    assert f"no MLflow store at {typo} (--tracking-uri)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_stage_run_in_place_of_a_pipeline_run(store, capsys):
    uri, client, experiment_id, _ = store
    stage_run = client.search_runs([experiment_id], "tags.`kit.stage` = 'train'")[0].info.run_id
    assert main(["compare", "--tracking-uri", uri, "--runs", stage_run]) == 2
    assert f"run {stage_run} is not a pipeline run (stage)" in capsys.readouterr().err


def test_compare_notebook_shows_the_tables_and_figures(store, tmp_path):
    uri, _, _, _ = store
    executed = tmp_path / "06_compare.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "06_compare.ipynb"),
        str(executed),
        parameters={"experiment": "sweep", "tracking_uri": uri, "out_dir": str(tmp_path / "report")},
        kernel_name="python3",
        progress_bar=False,
    )
    code = [cell for cell in json.loads(executed.read_text())["cells"] if cell["cell_type"] == "code"]
    shown = [output for cell in code[1:] for output in cell["outputs"]]
    assert sum("image/png" in output.get("data", {}) for output in shown) == 2
    assert sum("text/html" in output.get("data", {}) for output in shown) == 4  # runs, params, metrics, ledger
    assert (tmp_path / "report" / "report.html").exists()
