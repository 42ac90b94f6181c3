"""The ``autoprune`` command line: a thin layer over the library's public functions.

A user's mistake (:class:`~autoprune.errors.AutopruneError`) is printed as one line,
``autoprune: error: <message>``, with exit code 2; usage errors also exit with 2;
Ctrl-C exits with 130. SIGTERM (what ``kill``, ``timeout``, docker and Slurm send) is handled
exactly like Ctrl-C: the MLflow run ends ``KILLED``, a running Optuna trial is marked failed, the
same command resumes; it prints one line and exits with 143 (128 + 15, the code a shell and a
job scheduler read as "ended by SIGTERM"). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from autoprune import __version__
from autoprune.errors import AutopruneError, ConfigError, describe

app = typer.Typer(
    name="autoprune",
    help="Find how much to prune each layer of a PyTorch model under a measured-latency budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # a bug prints a plain traceback
)

def _default(module: str, *attrs: str) -> object:
    """A default read from the library when a command runs (``--help`` stays free of torch imports)."""
    import importlib

    value: object = importlib.import_module(f"autoprune.{module}")
    for attr in attrs:
        value = getattr(value, attr)
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autoprune {__version__}")
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to the ``sys.stderr`` of the moment (a test's capture, then the real one)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


STAGE_PREFIX = "autoprune: stage: "


def setup_logging(verbosity: int) -> None:
    """Log to stderr through rich: WARNING by default, INFO with ``-v``, DEBUG with ``-vv``.

    When stdout is not a terminal, the stage lines of :mod:`autoprune.app.stages` go to stderr
    as plain ``autoprune: stage: ...`` lines at any verbosity (a long ``run`` otherwise prints
    nothing for minutes into a log file).
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
    _reset_stages()
    if not sys.stdout.isatty():
        stages = logging.getLogger("autoprune.stages")
        plain = _StderrHandler()
        plain.setFormatter(logging.Formatter(STAGE_PREFIX + "%(message)s"))
        stages.addHandler(plain)
        stages.setLevel(logging.INFO)
        stages.propagate = False


def _reset_stages() -> None:
    stages = logging.getLogger("autoprune.stages")
    stages.handlers.clear()
    stages.setLevel(logging.NOTSET)
    stages.propagate = True


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v: info, -vv: debug).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find how much to prune each layer of a PyTorch model under a measured-latency budget."""
    setup_logging(verbose)


def _progress() -> bool:
    return sys.stderr.isatty() or bool(os.environ.get("AUTOPRUNE_PROGRESS"))


def _show(shown: list) -> None:
    """Print what :mod:`autoprune.app.tables` returns: tables through rich, lines as they are."""
    for item in shown:
        if isinstance(item, str):
            typer.echo(item)
        else:
            Console(width=max(120, Console().width)).print(item)


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model or 'package.module:factory'.")],
    epochs: Annotated[int, typer.Option(min=1, default_factory=lambda: _default("training.baseline", "TrainSettings", "epochs"),
                                        show_default="same as train.epochs", help="Training epochs.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data set: fashion_mnist, digits or 'package.module:factory'.")] = "fashion_mnist",
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding the Fashion-MNIST IDX files.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Where to save (or load) the weights (default: .autoprune/checkpoints/MODEL-DATA.pt).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the data split, initialisation and training.")] = 0,
    augment: Annotated[bool, typer.Option(help="Random crops and flips while training.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if the checkpoint exists.")] = False,
) -> None:
    """Train a baseline model (or load the cached one) and report its accuracy."""
    from autoprune.app.commands import train_baseline
    from autoprune.app.tables import train_table

    _show(train_table(train_baseline(model, data, data_dir=data_dir, epochs=epochs, checkpoint=checkpoint, seed=seed,
                                     augment=augment, force=force, progress=sys.stderr.isatty())))


@app.command("config")
def config_cmd(
    path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a field, e.g. search.episodes=20 (repeatable).")
    ] = None,
    flat: Annotated[bool, typer.Option("--flat", help="Print dotted key=value lines instead of YAML.")] = False,
) -> None:
    """Validate an experiment config, run every check that needs no trained model, and print the values a run uses.

    Every default is filled in, and what the run derives is written out: ``export.onnx`` is true
    when the serving backend runs the ONNX file, ``pruning.round_to: auto`` is the backend's
    multiple, ``latency.threads`` is what this machine allows, ``tracking.uri`` is the store used.
    """
    from autoprune.app.preflight import effective_config, preflight
    from autoprune.config.loading import load_config
    from autoprune.config.schema import dump_config

    cfg = effective_config(preflight(load_config(path, set_ or [])))
    if flat:
        typer.echo("\n".join(f"{k}={v}" for k, v in cfg.flat().items()))
    else:
        typer.echo(dump_config(cfg), nl=False)
    for line in cfg.notes():
        typer.echo(line)


@app.command()
def estimate(
    config: Annotated[Path | None, typer.Argument(metavar="[CONFIG.yaml]", help="Experiment config (or use --model/--data).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Zoo model or 'package.module:factory'.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set.")] = None,
    ratios: Annotated[str, typer.Option(help="Uniform pruning ratios to try, comma-separated.")] = "0.1,0.3,0.5",
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size timed (default: latency.batch_size).")] = None,
    backend: Annotated[str | None, typer.Option(help="Override latency.backend: torch, onnxruntime, openvino or 'package.module:Class'.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field.")] = None,
    mode: Annotated[str | None, typer.Option(help="Decoder LLMs: latency mode, prefill or decode (default decode).")] = None,
) -> None:
    """Measure what uniform pruning really saves on the serving runtime: params, MACs, size, latency, proxy accuracy.

    A last row of unstructured magnitude masks, as many zeros as the largest ratio removes, shows that masks alone are not faster.
    A decoder LLM (--model smollm2 or hf:/path to a Llama/Qwen2/Mistral folder) gets rows per unit kind, KL and perplexity on fortunes.
    """
    from autoprune.app.commands import estimate_uniform, parse_ratios
    from autoprune.app.decoder_estimate import estimate_decoder_command
    from autoprune.app.tables import decoder_estimate_table, estimate_table
    from autoprune.zoo.decoder import is_decoder_name

    if config is None and model is not None and is_decoder_name(model):
        unused = {"--data": data, "--set": set_, "--backend": backend, "--batch-size": batch_size}  # refused, not ignored
        return _show(decoder_estimate_table(estimate_decoder_command(model, parse_ratios(ratios), mode=mode, unused=unused)))
    if mode is not None:
        raise ConfigError(f"--mode: {mode!r} applies to decoder LLMs only (smollm2 or hf:/path to a decoder), not to {model or config}")

    overrides = [*(set_ or []), *([f"latency.backend={backend}"] if backend is not None else [])]
    _show(estimate_table(estimate_uniform(config, ratios, model=model, data=data, overrides=overrides, batch_size=batch_size,
                                          progress=sys.stderr.isatty())))


@app.command()
def search(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field (repeatable).")] = None,
    searcher: Annotated[str | None, typer.Option(help="Override search.searcher; the config's search.params that only its own "
                                                      "searcher takes are dropped (listed at -v).")] = None,
    episodes: Annotated[int | None, typer.Option(min=1, help="Override search.episodes.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db "
                                                     "(default: an SQLite file in the output directory).")] = None,
    study: Annotated[str | None, typer.Option(help="Optuna study to create or join (default: the experiment's name).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Local worker processes (Optuna only); threads are split between them.")] = None,
    agent: Annotated[str | None, typer.Option(help="Start PPO from a saved agent: folder, runs:/<run_id>/agent or models:/...")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="With --agent: only run the agent (no training); "
                                                                 "the first episode is its deterministic policy.")] = False,
    warm_start: Annotated[str | None, typer.Option(help="Evaluate this policy first (Optuna): policy.json, runs:/ or models:/; "
                                                        "a policy of another architecture is transferred.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Forget the stored study / PPO checkpoint and start afresh.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/ sources.")] = None,
) -> None:
    """Search per-unit pruning ratios under the config's budget; write policy.json and history.csv.

    Run again with the same config (and storage), it continues where it stopped.
    """
    from autoprune.app.commands import search_command
    from autoprune.app.tables import search_summary

    overrides = [*(set_ or []), *(f"{key}={value}" for key, value in (
        ("search.episodes", episodes), ("search.storage", storage),
        ("search.study", study), ("search.workers", workers)) if value is not None)]
    _show(search_summary(search_command(config, overrides, searcher=searcher, agent=agent, zero_shot=zero_shot, warm_start=warm_start,
                                        restart=restart, tracking_uri=tracking_uri, progress=_progress())))


@app.command()
def worker(
    storage: Annotated[str, typer.Option(help="The study's storage URL, e.g. postgresql://user@host/db.")],
    study: Annotated[str, typer.Option(help="Name of a study created by `autoprune search`.")],
    n_trials: Annotated[int | None, typer.Option(min=1, help="Run at most this many trials (default: until the study is done).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads of this process (default: torch's).")] = None,
) -> None:
    """Join a distributed search: run trials of a stored study until it has all its episodes.

    The experiment config comes from the study, so any machine that reaches the database
    (and has the baseline checkpoint) can join. Trials are logged to the search's MLflow run.
    """
    from autoprune.app.commands import worker_command
    from autoprune.app.tables import worker_line

    _show(worker_line(worker_command(storage, study, n_trials=n_trials, threads=threads, progress=_progress()), study))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field (repeatable).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Start afresh instead of continuing an interrupted run of this config.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Local worker processes of the search (Optuna only); threads are split between them.")] = None,
) -> None:
    """The whole job: search, apply the best policy, fine-tune, test, export, log everything to MLflow.

    After a crash or Ctrl-C, the same command continues: finished trials are kept and the MLflow run is resumed.
    """
    from autoprune.app.commands import run_command
    from autoprune.app.tables import run_tables

    overrides = [*(set_ or []), *([f"search.workers={workers}"] if workers is not None else [])]
    _show(run_tables(run_command(config, overrides, restart=restart, progress=_progress())))


@app.command()
def apply(
    policy: Annotated[str, typer.Option("--policy", "-p", help="policy.json, runs:/<run_id>/policy.json or models:/<name>@<alias>.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model or 'package.module:factory'.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set (default: the one the policy was found on).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Dense weights (default: the cached baseline).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pruned model (.pt, pickle-free).")] = Path("pruned.pt"),
    finetune_epochs: Annotated[float, typer.Option(min=0, help="Fine-tuning epochs after pruning.")] = 0,
    distill: Annotated[bool, typer.Option(help="Fine-tune with knowledge distillation from the dense model.")] = False,
    track: Annotated[bool, typer.Option(help="Log the result to MLflow (experiment 'apply').")] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: ./mlflow.db); also for runs:/ and models:/.")] = None,
) -> None:
    """Apply a saved policy to the same architecture (unit names must match), optionally fine-tune, save, log.

    The layers the policy's search left unpruned (model.ignore) stay unpruned. A policy found on
    another architecture is refused: map it with `autoprune transfer` first.
    """
    from autoprune.app.model_files import apply_policy_file
    from autoprune.app.tables import apply_lines

    _show(apply_lines(apply_policy_file(policy, model, data=data, checkpoint=checkpoint, out=out, finetune_epochs=finetune_epochs,
                                        distill=distill, track=track, tracking_uri=tracking_uri, progress=_progress())))


@app.command()
def transfer(
    config: Annotated[Path | None, typer.Argument(metavar="[CONFIG.yaml]", help="Target experiment config; --model/--data "
                                                                                "stand for its model.name/data.name, or replace it.")] = None,
    policy: Annotated[str, typer.Option("--policy", "-p", help="Source policy: policy.json, runs:/... or models:/...")] = ...,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Target zoo model or 'package.module:factory'.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set.")] = None,
    target: Annotated[float | None, typer.Option(help="Budget of the target model as a fraction of dense (default: the config's).")] = None,
    refit: Annotated[bool, typer.Option(help="Re-fit to the target model's budget: one uniform ratio scale found by bisection.")] = True,
    candidates: Annotated[int, typer.Option(min=1, help="Drop sets to re-fit and measure (the mapped one, then shallower and "
                                                        "deeper cuts); the best by reward is kept.")] = 3,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the transferred policy.")] = Path("transferred_policy.json"),
    track: Annotated[bool, typer.Option(help="Log the mapping table, policy and metrics to MLflow (experiment 'transfer').")] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: ./mlflow.db); also for runs:/ and models:/.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field.")] = None,
) -> None:
    """Map a policy found on one architecture onto another (by depth, type, stage, coupling) and re-fit its budget.

    Latency is measured on the backend the policy was searched on, unless the config sets latency.backend. Prints the mapping table, measures the result (latency, proxy accuracy) and writes the new policy.
    """
    from autoprune.app.commands import transfer_command
    from autoprune.app.tables import transfer_lines

    overrides = [*(set_ or []), *([f"budget.target={target}"] if target is not None else []),
                 *([f"tracking.uri={tracking_uri}"] if tracking_uri is not None else [])]
    _show(transfer_lines(transfer_command(config, policy, model=model, data=data, overrides=overrides, out=out, refit=refit,
                                          candidates=candidates, track=track, tracking_uri=tracking_uri, progress=_progress())))


@app.command("finetune")
def finetune_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    epochs: Annotated[float, typer.Option(min=0, default_factory=lambda: _default("training.finetune", "FinetuneSettings", "epochs"),
                                          show_default="same as finetune.epochs", help="Epochs (fractions allowed).")],
    lr: Annotated[float, typer.Option(min=0, default_factory=lambda: _default("training.finetune", "FinetuneSettings", "lr"),
                                      show_default="same as finetune.lr", help="Peak learning rate.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set (default: the one recorded in the model file).")] = None,
    distill: Annotated[bool, typer.Option(help="Distil from the dense baseline of the same model (cached checkpoint).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the fine-tuned model.")] = Path("finetuned.pt"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/.")] = None,
) -> None:
    """Fine-tune a saved pruned model (optionally with knowledge distillation) and save it."""
    from autoprune.app.model_files import finetune_file
    from autoprune.app.tables import finetune_lines

    _show(finetune_lines(finetune_file(model_file, data=data, epochs=epochs, lr=lr, distill=distill, out=out,
                                       tracking_uri=tracking_uri, progress=_progress())))


@app.command("evaluate")
def evaluate_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    threads: Annotated[int, typer.Option(min=1, default_factory=lambda: _default("measure.latency", "DEFAULT_THREADS"),
                                         show_default="same as latency.threads", help="Threads while timing.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set (default: the one recorded in the model file).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size timed.")] = 1,
    backend: Annotated[str | None, typer.Option(help="Serving runtime, stands for latency.backend: torch, onnxruntime, openvino "
                                                     "or 'package.module:Class' (default: the one the model was searched for).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Dense weights to compare with (default: the cached baseline).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                   help="Override a config field, e.g. latency.backend_options.spinning=false.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/ (default: ./mlflow.db).")] = None,
) -> None:
    """Test accuracy and latency of a saved pruned model against its dense baseline, on the serving runtime and eager PyTorch."""
    from autoprune.app.model_files import evaluate_file
    from autoprune.app.tables import evaluate_lines

    _show(evaluate_lines(evaluate_file(model_file, data=data, batch_size=batch_size, threads=threads, backend=backend, checkpoint=checkpoint,
                                       overrides=set_ or [], tracking_uri=tracking_uri, progress=_progress())))


@app.command("export")
def export_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    onnx: Annotated[Path, typer.Option(help="Destination ONNX file.")] = Path("model.onnx"),
    quantize: Annotated[bool, typer.Option(help="Also write a dynamically int8-quantised ONNX model.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/.")] = None,
) -> None:
    """Export a pruned model to ONNX, checked against torch in ONNX Runtime (needs the 'onnx' extra)."""
    from autoprune.app.model_files import export_file
    from autoprune.app.tables import export_lines

    _show(export_lines(export_file(model_file, onnx=onnx, quantize=quantize, tracking_uri=tracking_uri)))


@app.command()
def ui(
    uri: Annotated[str | None, typer.Option(help="Tracking URI (default: sqlite:///./mlflow.db).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Start the MLflow UI on the experiment store; SIGTERM or Ctrl-C stops it and its server."""
    from autoprune.tracking.ui import serve_ui

    code = serve_ui(uri, host=host, port=port, announce=typer.echo, access_log=logging.getLogger("autoprune").isEnabledFor(logging.INFO))
    if code == 130:
        raise KeyboardInterrupt
    raise typer.Exit(code)


@app.command("check")
def check_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Zoo model or 'package.module:factory'.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data set the model is built for.")] = "digits",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="A module not to prune (repeatable).")] = None,
    backend: Annotated[str, typer.Option(help="Serving runtime whose export is checked (latency.backend).")] = "torch",
) -> None:
    """The safety net on every unit: exact surgery, a forward that runs, exact MACs, export to the runtime."""
    from autoprune.app.commands import check_command
    from autoprune.app.tables import check_table

    _show(check_table(model, *check_command(model, data, ignored=tuple(ignore or ()), backend=backend)))


_stopped_by: list[int] = []  # the stop signal received, if any


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C: raise KeyboardInterrupt where the command is, once (a second SIGTERM must not break the cleanup)."""
    _stopped_by.append(signum)
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def _interrupted() -> None:
    if _stopped_by:
        name = signal.Signals(_stopped_by[0]).name
        _fail(f"stopped by {name}; run the same command again to continue where it stopped", 128 + _stopped_by[0])
    _fail("interrupted", 130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2.

    SIGTERM is turned into the KeyboardInterrupt of Ctrl-C for the command's duration (exit 143).
    """
    _stopped_by.clear()
    main_thread = threading.current_thread() is threading.main_thread()  # only it may handle signals
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        app(args=argv, prog_name="autoprune")
    except AutopruneError as e:
        _fail(describe(e, None), 2)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as e:
        if e.code == 130:  # typer's exit code for Ctrl-C inside a command
            _interrupted()
        raise
    finally:
        _reset_stages()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int) -> None:
    print(f"autoprune: error: {message}" if code == 2 else f"autoprune: {message}", file=sys.stderr)
    sys.exit(code)

