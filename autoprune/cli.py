"""The ``autoprune`` command line: a thin layer over the library's public functions.

A user's mistake (:class:`~autoprune.errors.AutopruneError`) is printed as one line,
``autoprune: error: <message>``, with exit code 2; usage errors also exit with 2;
Ctrl-C exits with 130. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from autoprune import __version__
from autoprune.errors import AutopruneError

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


def setup_logging(verbosity: int) -> None:
    """Log to stderr through rich: WARNING by default, INFO with ``-v``, DEBUG with ``-vv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v: info, -vv: debug).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find how much to prune each layer of a PyTorch model under a measured-latency budget."""
    setup_logging(verbose)


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
    import torch

    from autoprune.config.schema import check_data_name, check_model_name
    from autoprune.objective.proxy import accuracy
    from autoprune.app.experiment import baseline_checkpoint
    from autoprune.paths import writable_file
    from autoprune.training.baseline import TrainSettings, train_or_load
    from autoprune.zoo import load_data

    check_model_name(model)
    check_data_name(data)
    bundle = load_data(data, data_dir=str(data_dir) if data_dir else None, seed=seed)
    path = writable_file(checkpoint or baseline_checkpoint(model, bundle.name), "--checkpoint")
    settings = TrainSettings(epochs=epochs, augment=augment, seed=seed)
    progress = sys.stderr.isatty()
    torch.manual_seed(seed)
    if force and path.exists():
        # Train into a side file and replace only on success, so an interrupted run keeps the old weights.
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        net, meta = train_or_load(model, bundle, settings, checkpoint=fresh, progress=progress)
        os.replace(fresh, path)
        status = "trained"
    else:
        status = "loaded" if path.is_file() else "trained"
        net, meta = train_or_load(model, bundle, settings, checkpoint=path, progress=progress)
    val_acc = meta.get("val_accuracy")
    test_acc = meta.get("test_accuracy")
    if val_acc is None or test_acc is None:
        val_acc, test_acc = accuracy(net, bundle.val), accuracy(net, bundle.test)

    table = Table(title=f"{model} on {bundle.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("val accuracy", f"{val_acc:.4f}")
    table.add_row("test accuracy", f"{test_acc:.4f}")
    table.add_row("parameters", f"{sum(p.numel() for p in net.parameters()):,}")
    table.add_row("checkpoint", f"{path} ({status})")
    Console().print(table)


@app.command("config")
def config_cmd(
    path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a field, e.g. search.episodes=20 (repeatable).")
    ] = None,
    flat: Annotated[bool, typer.Option("--flat", help="Print dotted key=value lines instead of YAML.")] = False,
) -> None:
    """Validate an experiment config and print it with every default filled in."""
    from autoprune.config.schema import dump_config
    from autoprune.config.loading import load_config

    cfg = load_config(path, set_ or [])
    if flat:
        typer.echo("\n".join(f"{k}={v}" for k, v in cfg.flat().items()))
    else:
        typer.echo(dump_config(cfg), nl=False)


def _experiment_config(config: Path | None, model: str | None, data: str | None, overrides: list[str] | None):
    """A config from a file, or a minimal one from --model/--data, checked against the machine."""
    from autoprune.config.loading import load_config, parse_config
    from autoprune.config.machine import fit_to_machine
    from autoprune.errors import ConfigError

    if config is not None:
        if model is not None or data is not None:
            given = " and ".join(o for o, v in (("--model", model), ("--data", data)) if v is not None)
            raise ConfigError(f"{given}: give either {str(config)!r} or {given}, not both (override a config with --set model.name=...)")
        return fit_to_machine(load_config(config, overrides or []))
    if model is None:
        raise ConfigError("give a CONFIG.yaml or --model (e.g. --model resnet20 --data fashion_mnist)")
    return fit_to_machine(parse_config({"model": {"name": model}, "data": {"name": data or "fashion_mnist"}},
                                       source="command line", overrides=overrides or []))


def _parse_ratios(text: str) -> list[float]:
    from autoprune.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--ratios: {text!r} is not a comma-separated list of numbers such as 0.1,0.3,0.5") from e
    if not values:
        raise ConfigError(f"--ratios: {text!r} holds no ratio; give at least one, e.g. 0.1,0.3,0.5")
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ConfigError(f"--ratios: {bad} out of range; allowed: 0 <= ratio < 1")
    return values


@app.command()
def estimate(
    config: Annotated[Path | None, typer.Argument(metavar="[CONFIG.yaml]", help="Experiment config (or use --model/--data).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Zoo model or 'package.module:factory'.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set.")] = None,
    ratios: Annotated[str, typer.Option(help="Uniform pruning ratios to try, comma-separated.")] = "0.1,0.3,0.5",
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size timed (default: latency.batch_size).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field.")] = None,
) -> None:
    """Measure what uniform pruning really saves: params, MACs, size, latency, proxy accuracy."""
    from autoprune.app.experiment import estimate as run_estimate
    from autoprune.app.experiment import load_baseline
    from autoprune.config.settings import proxy_settings

    cfg = _experiment_config(config, model, data, set_)
    values = _parse_ratios(ratios)
    baseline = load_baseline(cfg, progress=sys.stderr.isatty())
    bs = batch_size or cfg.latency.batch_size
    rows = run_estimate(
        baseline, values, batch_size=bs, threads=cfg.latency.threads, proxy=proxy_settings(cfg),
        importance=cfg.pruning.importance, round_to=cfg.pruning.round_to, ignored=tuple(cfg.model.ignore),
    )
    table = Table(title=f"{cfg.model.name} on {baseline.data.name}: uniform channel pruning (batch {bs}, {cfg.latency.threads} threads)")
    for col in ("ratio", "params", "MACs", "size", "lat ms", "speed-up [95% CI]", "predicted", "proxy acc", "secs p/a/l"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            "dense" if r.ratio == 0 else f"{r.ratio:.0%}", f"{r.params:,}", f"{r.macs / 1e6:.2f} M", f"{r.size_bytes / 1024:.0f} KiB",
            f"{r.latency_ms:.3f}", f"{1 / r.latency_ratio:.2f}x [{1 / r.latency_ci[1]:.2f}-{1 / r.latency_ci[0]:.2f}]",
            f"{1 / r.predicted_ratio:.2f}x", f"{r.proxy_accuracy:.4f}",
            "/".join(f"{r.seconds[k]:.1f}" for k in ("prune", "accuracy", "latency")),
        )
    Console(width=max(120, Console().width)).print(table)
    typer.echo("speed-up = dense latency / pruned latency, measured paired (interleaved calls); predicted = lookup table; "
               "proxy acc = validation accuracy after BN re-estimation; secs = prune / accuracy / latency time.")


@app.command()
def search(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field (repeatable).")] = None,
    searcher: Annotated[str | None, typer.Option(help="Override search.searcher.")] = None,
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
    from autoprune.config.loading import load_config
    from autoprune.errors import ConfigError
    from autoprune.app.experiment import run_search

    overrides = list(set_ or [])
    for key, value in (("search.searcher", searcher), ("search.episodes", episodes), ("search.storage", storage),
                       ("search.study", study), ("search.workers", workers)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if zero_shot and not agent:
        raise ConfigError("--zero-shot needs --agent (the saved agent to run)")
    if agent:
        from autoprune.app.uris import locate_bundle

        if searcher not in (None, "ppo"):
            raise ConfigError(f"--agent: runs the PPO searcher; drop --searcher {searcher}")
        overrides += ["search.searcher=ppo", f"search.params.agent={locate_bundle(agent, tracking_uri=tracking_uri)}"]
        if zero_shot:
            overrides.append("search.params.zero_shot=true")
    cfg = load_config(config, overrides)
    warm = None
    if warm_start:
        from autoprune.app.uris import load_policy

        if cfg.search.searcher != "optuna":
            raise ConfigError(f"--warm-start: enqueues a policy in an Optuna study; search.searcher is {cfg.search.searcher!r}")
        warm = load_policy(warm_start, tracking_uri=tracking_uri)
    run = run_search(cfg, progress=_progress(), restart=restart, warm_start=warm)
    _print_search_summary(run)


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
    import torch

    from autoprune.app.experiment import run_worker
    from autoprune.config.machine import check_threads

    if threads:
        torch.set_num_threads(check_threads(threads, "--threads"))
    res = run_worker(storage, study, n_trials=n_trials, progress=_progress())
    mine = res.extras.get("trial_numbers", [])
    best = res.best
    typer.echo(f"worker done: ran {len(mine)} trial(s) of study {study!r} ({res.episodes} finished in all); "
               + (f"best reward so far {best.metrics.reward:.4f} (trial {best.index})" if best else "no successful trial"))


def _print_search_summary(run) -> None:  # noqa: ANN001
    res, ev = run.result, run.evaluator
    best = res.best
    table = Table(title=f"{res.searcher}: {res.episodes} episodes in {res.seconds:.0f} s ({60 * res.episodes / max(res.seconds, 1e-9):.1f}/min)")
    table.add_column("", style="bold")
    table.add_column("dense", justify="right")
    table.add_column("best policy", justify="right")
    if best is None:
        Console().print("no successful evaluation")
        return
    m = best.metrics
    table.add_row("proxy accuracy (val)", f"{ev.dense_accuracy:.4f}", f"{m.accuracy:.4f}")
    table.add_row("latency ratio (paired)", "1.000", f"{m.latency_ratio:.3f} [{m.latency_ci[0]:.3f}, {m.latency_ci[1]:.3f}]")
    table.add_row("latency ms", f"{ev.dense_ms:.3f}", f"{m.latency_ms:.3f}")
    table.add_row("MAC ratio", "1.000", f"{m.macs_ratio:.3f}")
    table.add_row("params", f"{ev.dense_params:,}", f"{m.params:,}")
    table.add_row(f"budget ({ev.budget.metric} <= {ev.target:.3f})", "", "met" if m.feasible else "NOT met")
    table.add_row("reward", "", f"{m.reward:.4f}")
    table.add_row("blocks dropped", "", ", ".join(best.policy.drop) or "-")
    Console().print(table)
    Console().print(f"policy: {run.policy_path}\nhistory: {run.history_path}")


def _progress() -> bool:
    return sys.stderr.isatty() or bool(os.environ.get("AUTOPRUNE_PROGRESS"))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="Experiment config file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config field (repeatable).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Start afresh instead of continuing an interrupted run of this config.")] = False,
) -> None:
    """The whole job: search, apply the best policy, fine-tune, test, export, log everything to MLflow.

    After a crash or Ctrl-C, the same command continues: finished trials are kept and the MLflow run is resumed.
    """
    from autoprune.config.loading import load_config
    from autoprune.app.pipeline import run_experiment

    cfg = load_config(config, set_ or [])
    res = run_experiment(cfg, progress=_progress(), restart=restart)
    _print_search_summary(res.search)
    d, p = res.dense, res.pruned
    table = Table(title=f"{cfg.name}: dense vs pruned (test split, batch {cfg.latency.batch_size}, {cfg.latency.threads} threads)")
    for col in ("", "dense", "pruned", "change"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row("test accuracy", f"{d.test_accuracy:.4f}", f"{p.test_accuracy:.4f}", f"{100 * (p.test_accuracy - d.test_accuracy):+.2f} pts")
    table.add_row("latency ms [95% CI]", f"{d.latency_ms:.3f}", f"{p.latency_ms:.3f} [{p.latency_ci_ms[0]:.3f}, {p.latency_ci_ms[1]:.3f}]", f"{d.latency_ms / p.latency_ms:.2f}x faster")
    table.add_row("MACs", f"{d.macs / 1e6:.2f} M", f"{p.macs / 1e6:.2f} M", f"{d.macs / max(1, p.macs):.2f}x fewer")
    table.add_row("params", f"{d.params:,}", f"{p.params:,}", f"{d.params / max(1, p.params):.2f}x fewer")
    table.add_row("size", f"{d.size_bytes / 1024:.0f} KiB", f"{p.size_bytes / 1024:.0f} KiB", f"{d.size_bytes / max(1, p.size_bytes):.2f}x smaller")
    Console(width=max(110, Console().width)).print(table)
    typer.echo(f"pruned model: {res.model_path}" + (f"\nonnx: {res.onnx['path']}" if res.onnx else ""))
    typer.echo(f"MLflow run {res.run_id}: see it with 'autoprune ui'")


@app.command()
def apply(
    policy: Annotated[str, typer.Option("--policy", "-p", help="policy.json, runs:/<run_id>/policy.json or models:/<name>@<alias>.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model or 'package.module:factory'.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data set.")] = "fashion_mnist",
    checkpoint: Annotated[Path | None, typer.Option(help="Dense weights (default: the cached baseline).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the pruned model (.pt, pickle-free).")] = Path("pruned.pt"),
    finetune_epochs: Annotated[float, typer.Option(min=0, help="Fine-tuning epochs after pruning.")] = 0,
    distill: Annotated[bool, typer.Option(help="Fine-tune with knowledge distillation from the dense model.")] = False,
    track: Annotated[bool, typer.Option(help="Log the result to MLflow (experiment 'apply').")] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: ./mlflow.db); also for runs:/ and models:/.")] = None,
) -> None:
    """Apply a saved policy to the same architecture (unit names must match), optionally fine-tune, save, log.

    A policy found on another architecture is refused: map it with `autoprune transfer` first.
    """
    from autoprune.config.loading import parse_config
    from autoprune.objective.proxy import evaluate as run_eval
    from autoprune.app.experiment import load_baseline
    from autoprune.formats.pruned import save_pruned
    from autoprune.training.finetune import FinetuneSettings, finetune
    from autoprune.graph.prunable import PrunableGraph
    from autoprune.measure.latency import count_macs_params
    from autoprune.paths import writable_file
    from autoprune.app.pipeline import apply_best
    from autoprune.app.uris import load_policy
    from autoprune.graph.policy import check_policy_fits

    cfg = parse_config({"name": "apply", "model": {"name": model, "checkpoint": str(checkpoint) if checkpoint else None},
                        "data": {"name": data}, "tracking": {"uri": tracking_uri, "register": False}}, source="command line")
    writable_file(out, "--out")
    pol, payload = load_policy(policy, tracking_uri=tracking_uri)
    baseline = load_baseline(cfg, progress=_progress())
    graph = PrunableGraph(baseline.model, baseline.data.example_input(1))
    check_policy_fits(pol, graph, fingerprint=payload.get("fingerprint"), source=f"--policy {policy}")
    pruned = apply_best(cfg, baseline, pol, graph=graph)
    if finetune_epochs > 0:
        finetune(pruned, baseline.data, FinetuneSettings(epochs=finetune_epochs, distill=distill),
                 teacher=baseline.model if distill else None, progress=_progress())
    acc = run_eval(pruned, baseline.data.test)["accuracy"]
    save_pruned(out, pruned, model_name=model, in_channels=baseline.data.in_channels, num_classes=baseline.data.num_classes,
                input_size=baseline.data.input_size, extra={"policy": pol.to_dict(), "test_accuracy": acc})
    dense_macs, dense_params = count_macs_params(baseline.model, baseline.data.example_input(1))
    macs, params = count_macs_params(pruned, baseline.data.example_input(1))
    typer.echo(f"pruned {model}: params {dense_params:,} -> {params:,}, MACs {dense_macs / 1e6:.2f} M -> {macs / 1e6:.2f} M; "
               f"test accuracy {acc:.4f}; written to {out}")
    if track:
        from autoprune.tracking.tracker import Tracker

        with Tracker(cfg, run_name=f"apply-{model}") as tracker:
            tracker.client.set_tag(tracker.run_id, "policy_source", policy)
            tracker.log_metrics({"test_accuracy": acc, "params": params, "macs": macs, "dense_params": dense_params,
                                 "dense_macs": dense_macs, "finetune_epochs": finetune_epochs})
            tracker.log_pruned_model(out, test_accuracy=acc)
        typer.echo(f"MLflow run {tracker.run_id} (experiment 'apply')")


@app.command()
def transfer(
    config: Annotated[Path | None, typer.Argument(metavar="[CONFIG.yaml]", help="Target experiment config (or use --model/--data).")] = None,
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

    Prints the mapping table, measures the result (latency, proxy accuracy) and writes the new policy.
    """
    from autoprune.app.experiment import build_evaluator, load_baseline
    from autoprune.paths import writable_file, write_json_atomic
    from autoprune.app.uris import load_policy
    from autoprune.transfer.refit import candidate_table, mapping_table
    from autoprune.transfer.refit import transfer as run_transfer

    overrides = list(set_ or [])
    if target is not None:
        overrides.append(f"budget.target={target}")
    if tracking_uri is not None:
        overrides.append(f"tracking.uri={tracking_uri}")
    cfg = _experiment_config(config, model, data, overrides)
    writable_file(out, "--out")
    src, payload = load_policy(policy, tracking_uri=tracking_uri)
    baseline = load_baseline(cfg, progress=_progress())
    evaluator = build_evaluator(cfg, baseline)
    res = run_transfer(src, payload, evaluator, refit=refit, measure=True, candidates=candidates)
    table = mapping_table(res.rows)
    typer.echo(table)
    if len(res.candidates) > 1:
        typer.echo("\n" + candidate_table(res) + "\n")
    doc = res.document(model=cfg.model.name, data=cfg.data.name, backend=cfg.latency.backend_info(), metrics=res.metrics)
    write_json_atomic(out, doc)
    m = res.metrics or {}
    how = "same architecture: taken by unit name" if res.identity else f"from {payload.get('model')}"
    typer.echo(f"{how}; scale {res.scale:.3f}; predicted {res.metric} {res.predicted_value:.3f}, measured "
               f"{m.get('value', float('nan')):.3f} (target {res.target:.3f}, {'met' if m.get('feasible') else 'NOT met'}); "
               f"proxy accuracy {m.get('accuracy', float('nan')):.4f} (dense {evaluator.dense_accuracy:.4f}); written to {out}")
    if track:
        from autoprune.tracking.tracker import Tracker

        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"experiment": "transfer", "register": False})})
        with Tracker(cfg, run_name=f"transfer-{payload.get('model')}-to-{cfg.model.name}") as tracker:
            tracker.client.set_tag(tracker.run_id, "policy_source", policy)
            tracker.log_metrics({"scale": res.scale, "predicted_value": res.predicted_value, "target": res.target,
                                 **{k: v for k, v in m.items() if k in ("accuracy", "value", "latency_ratio", "macs_ratio", "feasible")}})
            tracker.client.log_text(tracker.run_id, table, "transfer/mapping.md")
            tracker.client.log_text(tracker.run_id, candidate_table(res), "transfer/candidates.md")
            tracker.log_artifact(out, "transfer")
        typer.echo(f"MLflow run {tracker.run_id} (experiment 'transfer')")


@app.command("finetune")
def finetune_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    epochs: Annotated[float, typer.Option(min=0, default_factory=lambda: _default("training.finetune", "FinetuneSettings", "epochs"),
                                          show_default="same as finetune.epochs", help="Epochs (fractions allowed).")],
    lr: Annotated[float, typer.Option(min=0, default_factory=lambda: _default("training.finetune", "FinetuneSettings", "lr"),
                                      show_default="same as finetune.lr", help="Peak learning rate.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data set.")] = "fashion_mnist",
    distill: Annotated[bool, typer.Option(help="Distil from the dense baseline of the same model (cached checkpoint).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the fine-tuned model.")] = Path("finetuned.pt"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/.")] = None,
) -> None:
    """Fine-tune a saved pruned model (optionally with knowledge distillation) and save it."""
    from autoprune.config.loading import parse_config
    from autoprune.objective.proxy import evaluate as run_eval
    from autoprune.app.experiment import load_baseline
    from autoprune.formats.pruned import load_pruned, save_pruned
    from autoprune.training.finetune import FinetuneSettings, finetune
    from autoprune.tracking.artifacts import download_model_uri
    from autoprune.zoo import load_data

    net, meta = load_pruned(download_model_uri(model_file, tracking_uri=tracking_uri))
    spec = meta["model"]
    teacher = None
    if distill:
        teacher = load_baseline(parse_config({"model": {"name": spec["name"]}, "data": {"name": data}}, source="command line"), progress=_progress()).model
    bundle = load_data(data)
    finetune(net, bundle, FinetuneSettings(epochs=epochs, lr=lr, distill=distill), teacher=teacher, progress=_progress())
    acc = run_eval(net, bundle.test)["accuracy"]
    extra = dict(meta.get("extra") or {})
    extra["test_accuracy"] = acc
    save_pruned(out, net, model_name=spec["name"], in_channels=spec["in_channels"], num_classes=spec["num_classes"], input_size=spec["input_size"], extra=extra)
    typer.echo(f"fine-tuned for {epochs:g} epochs: test accuracy {acc:.4f}; written to {out}")


@app.command("evaluate")
def evaluate_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    threads: Annotated[int, typer.Option(min=1, default_factory=lambda: _default("measure.latency", "DEFAULT_THREADS"),
                                         show_default="same as latency.threads", help="Threads while timing.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Data set.")] = "fashion_mnist",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size timed.")] = 1,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/ (default: ./mlflow.db).")] = None,
) -> None:
    """Test accuracy and latency of a saved pruned model."""
    from autoprune.config.machine import check_threads
    from autoprune.objective.proxy import evaluate as run_eval
    from autoprune.formats.pruned import load_pruned
    from autoprune.measure.latency import count_macs_params, measure_latency
    from autoprune.tracking.artifacts import download_model_uri
    from autoprune.zoo import load_data

    check_threads(threads, "--threads")
    path = download_model_uri(model_file, tracking_uri=tracking_uri)
    net, meta = load_pruned(path)
    bundle = load_data(data)
    res = run_eval(net, bundle.test)
    lat = measure_latency(net, bundle.example_input(batch_size), threads=threads)
    macs, params = count_macs_params(net, bundle.example_input(1))
    typer.echo(f"{path}: test accuracy {res['accuracy']:.4f}, latency {lat.median_ms:.3f} ms (p10 {lat.p10_ms:.3f}, p90 {lat.p90_ms:.3f}) "
               f"at batch {batch_size}, {macs / 1e6:.2f} M MACs, {params:,} params")


@app.command("export")
def export_cmd(
    model_file: Annotated[str, typer.Argument(metavar="MODEL", help="Pruned model: .pt file, runs:/... or models:/name@alias.")],
    onnx: Annotated[Path, typer.Option(help="Destination ONNX file.")] = Path("model.onnx"),
    quantize: Annotated[bool, typer.Option(help="Also write a dynamically int8-quantised ONNX model.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for runs:/ and models:/.")] = None,
) -> None:
    """Export a pruned model to ONNX, checked against torch in ONNX Runtime (needs the 'onnx' extra)."""
    import torch

    from autoprune.formats.onnx import export_onnx, quantize_onnx
    from autoprune.formats.pruned import load_pruned
    from autoprune.tracking.artifacts import download_model_uri

    net, meta = load_pruned(download_model_uri(model_file, tracking_uri=tracking_uri))
    spec = meta["model"]
    info = export_onnx(net, torch.zeros(1, spec["in_channels"], spec["input_size"], spec["input_size"]), onnx)
    typer.echo(f"wrote {info['path']} (max |onnx - torch| = {info['max_abs_diff']:.2e})")
    if quantize:
        typer.echo(f"wrote {quantize_onnx(onnx, onnx.with_suffix('.int8.onnx'))}")


@app.command()
def ui(
    uri: Annotated[str | None, typer.Option(help="Tracking URI (default: sqlite:///./mlflow.db).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Start the MLflow UI on the experiment store."""
    import subprocess

    from autoprune.tracking.tracker import resolve_tracking_uri

    store = resolve_tracking_uri(uri)
    typer.echo(f"MLflow UI on http://{host}:{port} (store {store}); Ctrl-C to stop")
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", host, "--port", str(port)]))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="autoprune")
    except AutopruneError as e:
        _fail(" ".join(str(e).split()) or type(e).__name__, 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit as e:
        if e.code == 130:  # typer's exit code for Ctrl-C inside a command
            _fail("interrupted", 130)
        raise


def _fail(message: str, code: int) -> None:
    print(f"autoprune: error: {message}" if code == 2 else f"autoprune: {message}", file=sys.stderr)
    sys.exit(code)

