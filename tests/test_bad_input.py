"""A catalogue of bad inputs, each checked against the project's error contract.

The contract (see ``autoprune.cli.main``):

* the CLI prints exactly ONE line, ``autoprune: error: <message>``, on stderr, naming the
  culprit (field, option, file or value, and what is allowed), exits with code 2 and prints
  no traceback; usage errors (unknown option, missing argument) are click's and also exit 2;
* the Python API raises an :class:`autoprune.errors.AutopruneError` subclass;
* nothing half-written is left behind, and once the input is fixed the rerun works.

Sections (each a parametrised table whose ids are the case names; append new cases there):

1. config files and ``--set`` overrides
2. command-line arguments
3. model and data plugins
4. storage and tracking URIs
5. paths
6. policy files for ``autoprune apply --policy``
7. end to end in real subprocesses

Commands run in-process through ``autoprune.cli.main`` (fast), in a fresh working directory,
with a 1-epoch MLP baseline for digits in ``$AUTOPRUNE_CACHE`` so nothing trains for long.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import Result, assert_user_error, cli, fast_train, tiny_experiment, write_experiment
from torch import nn

from autoprune.cli import main
from autoprune.config.loading import load_config
from autoprune.errors import AutopruneError, BudgetError, ConfigError, DataError, ModelError, PolicyError
from autoprune.graph.prunable import PrunableGraph
from autoprune.zoo import build_model, check_model_fits, load_data

DIGITS = dict(in_channels=1, num_classes=10, input_size=8)

#: The tiny experiment (MLP on digits, MAC budget: exact) with 2 random episodes, writing under the working directory.
EXPERIMENT = tiny_experiment(name="bad", budget={"target": 0.8}, search={"searcher": "random", "episodes": 2}, train={"epochs": 1})

PLUGINS = '''\
import torch
from torch import nn

WIDTH = 32


def boom(in_channels, num_classes, input_size):
    raise RuntimeError("kaboom: no weights for this size")


def inner_typeerror(in_channels, num_classes, input_size):
    raise TypeError("width must be an int, got 'wide'")


def needs_depth(depth):
    return nn.Linear(depth, 2)


def returns_int(**kwargs):
    return 42


class Scale(nn.Module):
    """A learnable per-feature scale: a parameter the pruning graph cannot follow."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.weight


def with_scale(in_channels, num_classes, input_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, WIDTH), Scale(WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, num_classes))


def for_mnist(**kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def data_list(seed=0):
    return [1, 2, 3]


def data_boom(seed=0):
    raise FileNotFoundError("/data/my_set.npz")
'''


# ------------------------------------------------------------------ helpers and fixtures


def assert_usage_error(res: Result, *culprits: str) -> None:
    """Click's usage errors: exit code 2, an error box naming the culprit on stderr, no traceback."""
    assert res.code == 2, f"exit code {res.code}\nstderr: {res.err}"
    assert "Traceback" not in res.err + res.out, res.err
    assert "Error" in res.err and res.out == "", res.err
    for c in culprits:
        assert c in res.err, f"{c!r} not in: {res.err}"


def assert_one_line_error(exc: BaseException, *culprits: str) -> None:
    """The API side of the contract: a typed error whose message is one line naming the culprits."""
    assert isinstance(exc, AutopruneError), type(exc)
    text = str(exc)
    assert "\n" not in text, text
    for c in culprits:
        assert c in text, f"{c!r} not in: {text}"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


#: Nothing listens on TCP port 1 (tcpmux): connecting is refused at once, no timeout to wait for.
CLOSED = "127.0.0.1:1"


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``mlp-digits.pt``: an MLP trained for one epoch on digits (~1 s)."""
    from autoprune.training.baseline import save_checkpoint, train_model

    data = load_data("digits")
    torch.manual_seed(0)
    model = build_model("mlp", **DIGITS)
    metrics = train_model(model, data, fast_train(epochs=1), progress=False)
    cache = tmp_path_factory.mktemp("baseline-cache")
    save_checkpoint(cache / "mlp-digits.pt", model, {"model": "mlp", "data": "digits", **metrics})
    return cache


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, baseline_cache: Path) -> Path:
    """An empty working directory (the cwd) with ``exp.yaml``; baselines come from a private cache copy."""
    cache = tmp_path / "cache"
    shutil.copytree(baseline_cache, cache)
    wd = tmp_path / "work"
    wd.mkdir()
    write_experiment(wd / "exp.yaml", EXPERIMENT)
    monkeypatch.chdir(wd)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    monkeypatch.delenv("AUTOPRUNE_PROGRESS", raising=False)
    monkeypatch.delenv("AUTOPRUNE_DATA", raising=False)
    return wd


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Importable plugin modules: ``ap_bad_plugins`` (see PLUGINS) and ``ap_bad_import`` (raises on import)."""
    root = tmp_path / "plugins"
    root.mkdir()
    (root / "ap_bad_plugins.py").write_text(PLUGINS)
    (root / "ap_bad_import.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    monkeypatch.syspath_prepend(str(root))
    for name in ("ap_bad_plugins", "ap_bad_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return "ap_bad_plugins"


# ====================================================================== 1. config files


@dataclass
class ConfigCase:
    id: str
    text: str | bytes
    culprits: tuple[str, ...]
    marks: tuple = field(default=())


CONFIG_CASES = [
    ConfigCase("yaml_syntax_error_unclosed_quote", "name: x\nmodel:\n  name: 'mlp\nseed: 1\n",
               ("exp.yaml:5:1:", "YAML syntax error", "quoted scalar", "line 3")),
    ConfigCase("yaml_syntax_error_unclosed_brace", "model: {name: mlp\nseed: 1\n", ("exp.yaml:2:", "YAML syntax error", "line 1")),
    ConfigCase("yaml_tab_indentation", "model:\n\tname: mlp\n", ("exp.yaml:2:1:", "YAML syntax error", "'\\t'")),
    ConfigCase("yaml_duplicate_key", "model: {name: mlp}\nseed: 1\nmodel: {name: resnet20}\n",
               ("exp.yaml:3:1:", "duplicate key 'model'", "line 1")),
    ConfigCase("unknown_top_level_field_misspelt", "modle: {name: mlp}\n", ("modle: unknown field", "did you mean 'model'?")),
    ConfigCase("unknown_nested_field", "model: {name: mlp}\nsearch: {episode: 5}\n",
               ("search.episode: unknown field", "did you mean 'episodes'?", "allowed fields: searcher, episodes")),
    ConfigCase("unknown_field_no_close_match", "model: {name: mlp}\nbanana: 1\n", ("banana: unknown field", "allowed fields: name, seed")),
    ConfigCase("wrong_type_int", "model: {name: mlp}\nsearch: {episodes: many}\n", ("search.episodes", "'many'", "expected an integer")),
    ConfigCase("wrong_type_fractional_int", "model: {name: mlp}\nsearch: {episodes: 2.5}\n", ("search.episodes", "2.5", "expected an integer")),
    ConfigCase("wrong_type_bool", "model: {name: mlp}\nexport: {onnx: maybe}\n", ("export.onnx", "'maybe'", "true or false")),
    ConfigCase("wrong_type_list", "model: {name: mlp, ignore: fc}\n", ("model.ignore", "'fc'", "expected a list")),
    ConfigCase("section_is_a_number", "model: {name: mlp}\nbudget: 0.5\n", ("budget", "0.5", "expected a mapping with fields: metric")),
    ConfigCase("model_section_is_a_string", "model: mlp\n", ("model", "'mlp'", "expected a mapping with fields: name")),
    ConfigCase("budget_target_above_1", "model: {name: mlp}\nbudget: {target: 1.5}\n", ("budget.target", "1.5", "<= 1")),
    ConfigCase("budget_target_zero", "model: {name: mlp}\nbudget: {target: 0}\n", ("budget.target", "0", "> 0")),
    ConfigCase("negative_episodes", "model: {name: mlp}\nsearch: {episodes: -3}\n", ("search.episodes", "-3", ">= 1")),
    ConfigCase("max_ratio_1", "model: {name: mlp}\npruning: {max_ratio: 1.0}\n", ("pruning.max_ratio", "1.0", "< 1")),
    ConfigCase("both_budget_targets", "model: {name: mlp}\nbudget: {target: 0.5, target_ms: 3}\n",
               ("budget", "target=0.5", "target_ms=3", "exactly one")),
    ConfigCase("target_ms_with_mac_metric", "model: {name: mlp}\nbudget: {metric: macs, target_ms: 3}\n",
               ("budget", "target_ms=3", "'latency'")),
    ConfigCase("unknown_searcher", "model: {name: mlp}\nsearch: {searcher: ppo2}\n", ("search.searcher", "'ppo2'", "'optuna'")),
    ConfigCase("unknown_sampler", "model: {name: mlp}\nsearch: {sampler: bayes}\n", ("search.sampler", "'bayes'", "'tpe'")),
    ConfigCase("unknown_model", "model: {name: resnet21}\n", ("model.name", "'resnet21'", "6n+2", "resnet20")),
    ConfigCase("unknown_model_family", "model: {name: vgg16}\n", ("model.name", "'vgg16'", "'resnet20'", "package.module:factory")),
    ConfigCase("unknown_data_set", "model: {name: mlp}\ndata: {name: cifar10}\n", ("data.name", "'cifar10'", "'digits'")),
    ConfigCase("unknown_importance", "model: {name: mlp}\npruning: {importance: l3}\n", ("pruning.importance", "'l3'", "'l1'")),
    ConfigCase("unsafe_experiment_name", "name: my exp/1\nmodel: {name: mlp}\n", ("name", "'my exp/1'", "letters, digits")),
    ConfigCase("storage_not_an_rdb_url", "model: {name: mlp}\nsearch: {storage: study.db}\n",
               ("search.storage", "'study.db'", "sqlite:///study.db")),
    ConfigCase("empty_file", "", ("exp.yaml", "model: missing required section", "fields: name")),
    ConfigCase("comments_only", "# TODO\n", ("model: missing required section",)),
    ConfigCase("top_level_list", "- model: {name: mlp}\n", ("top level must be a mapping", "not a list")),
    ConfigCase("top_level_scalar", "resnet20\n", ("top level must be a mapping", "'resnet20'")),
    ConfigCase("not_utf8", b"model: {name: \xff\xfe}\n", ("exp.yaml", "cannot read", "UnicodeDecodeError")),
]


def _write_config(work: Path, case: ConfigCase) -> Path:
    path = work / "exp.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text)
    return path


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CONFIG_CASES])
def test_config_file_cli(case: ConfigCase, work: Path, capsys):
    _write_config(work, case)
    line = assert_user_error(cli(capsys, "config", "exp.yaml"), *case.culprits)
    assert line.startswith("autoprune: error: exp.yaml")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CONFIG_CASES])
def test_config_file_api(case: ConfigCase, work: Path):
    path = _write_config(work, case)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_error(info.value, *case.culprits)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CONFIG_CASES if c.id in (
    "yaml_syntax_error_unclosed_quote", "unknown_nested_field", "budget_target_above_1", "top_level_list")])
def test_search_with_a_bad_config_creates_nothing(case: ConfigCase, work: Path, capsys):
    _write_config(work, case)
    assert_user_error(cli(capsys, "search", "exp.yaml"), *case.culprits)
    assert files_under(work) == {"exp.yaml"} and not (work / "runs").exists()


OVERRIDE_CASES = [
    ("no_equals_sign", "search.episodes", ("override 'search.episodes'", "dotted.key=value")),
    ("empty_key", "=5", ("override '=5'", "dotted.key=value")),
    ("empty_key_part", "search..episodes=3", ("override 'search..episodes=3'", "dotted.key=value")),
    ("unknown_key_close_match", "search.episode=5", ("override 'search.episode=5'", "did you mean 'episodes'?")),
    ("unknown_section_misspelt", "serach.episodes=5", ("override 'serach.episodes=5'", "did you mean 'search'?")),
    ("value_not_yaml", "search.episodes=[1", ("override 'search.episodes=[1'", "not valid YAML")),
    ("key_into_a_scalar", "model.name.x=3", ("override 'model.name.x=3'", "model.name is 'mlp'", "not a section")),
    ("out_of_range", "budget.target=1.5", ("override 'budget.target=1.5'", "budget.target", "<= 1")),
    ("wrong_type", "search.episodes=lots", ("override 'search.episodes=lots'", "'lots'", "expected an integer")),
    ("section_replaced_by_scalar", "model=3", ("override 'model=3'", "expected a mapping with fields: name")),
    ("unknown_searcher", "search.searcher=bayes", ("override 'search.searcher=bayes'", "'bayes'", "'optuna'")),
]


@pytest.mark.parametrize("item, culprits", [pytest.param(i, c, id=n) for n, i, c in OVERRIDE_CASES])
def test_set_override_cli(item: str, culprits: tuple[str, ...], work: Path, capsys):
    assert_user_error(cli(capsys, "config", "exp.yaml", "--set", item), *culprits)


@pytest.mark.parametrize("item, culprits", [pytest.param(i, c, id=n) for n, i, c in OVERRIDE_CASES])
def test_set_override_api(item: str, culprits: tuple[str, ...], work: Path):
    with pytest.raises(ConfigError) as info:
        load_config("exp.yaml", [item])
    assert_one_line_error(info.value, *culprits)


def test_impossible_budget_leaves_no_result_files_and_the_fixed_rerun_works(work: Path, capsys):
    # With every unit at most 10% pruned an MLP keeps far more than 1% of its MACs.
    bad = ("--set", "budget.target=0.01", "--set", "pruning.max_ratio=0.1")
    assert_user_error(cli(capsys, "search", "exp.yaml", *bad), "budget.target", "unreachable", "pruning.max_ratio")
    out = work / "runs" / "bad"
    assert not (out / "policy.json").exists() and not (out / "history.csv").exists()
    assert not [p for p in work.rglob("*.tmp")]

    res = cli(capsys, "search", "exp.yaml", "--set", "budget.target=0.8")
    assert res.code == 0, res.err
    assert json.loads((out / "policy.json").read_text())["ratios"]
    assert (out / "history.csv").read_text().count("\n") >= 2


def test_impossible_budget_api_raises_budget_error(work: Path):
    from autoprune.app.experiment import run_search

    cfg = load_config("exp.yaml", ["budget.target=0.01", "pruning.max_ratio=0.1"])
    with pytest.raises(BudgetError) as info:
        run_search(cfg, progress=False)
    assert_one_line_error(info.value, "budget.target", "0.010", "pruning.max_ratio")


# ====================================================================== 2. command-line arguments

USAGE_CASES = [
    ("unknown_option", ("search", "--nosuch", "exp.yaml"), ("--nosuch",)),
    ("unknown_command", ("prune", "exp.yaml"), ("prune",)),
    ("missing_required_option", ("apply", "--model", "mlp"), ("--policy",)),
    ("missing_argument", ("search",), ("CONFIG.yaml",)),
    ("option_without_its_value", ("estimate", "--model"), ("--model",)),
    ("int_option_not_a_number", ("estimate", "--model", "mlp", "--batch-size", "abc"), ("--batch-size", "integer")),
    ("int_option_below_minimum", ("search", "exp.yaml", "--episodes", "0"), ("--episodes",)),
    ("float_option_negative", ("apply", "-p", "p.json", "-m", "mlp", "--finetune-epochs", "-1"), ("--finetune-epochs",)),
]


@pytest.mark.parametrize("argv, culprits", [pytest.param(a, c, id=n) for n, a, c in USAGE_CASES])
def test_usage_error(argv: tuple[str, ...], culprits: tuple[str, ...], work: Path, capsys):
    assert_usage_error(cli(capsys, *argv), *culprits)
    assert files_under(work) == {"exp.yaml"}


ARGUMENT_CASES = [
    pytest.param(("estimate", "--model", "mlp", "--data", "digits", "--ratios", "a,b"), ("--ratios", "'a,b'", "0.1,0.3,0.5"),
                 id="ratios_not_numbers"),
    pytest.param(("estimate", "--model", "mlp", "--data", "digits", "--ratios", "0.3,1.5"), ("--ratios", "1.5", "0 <= ratio < 1"),
                 id="ratios_out_of_range"),
    pytest.param(("estimate", "--model", "mlp", "--data", "digits", "--ratios", ","), ("--ratios",), id="ratios_empty"),
    pytest.param(("estimate", "exp.yaml", "--model", "resnet21"), ("model.name", "'resnet21'", "6n+2"), id="config_with_a_bad_model"),
    pytest.param(("estimate",), ("CONFIG.yaml", "--model"), id="estimate_without_config_or_model"),
    pytest.param(("config", "nosuch.yaml"), ("nosuch.yaml", "file not found"), id="config_path_missing"),
    pytest.param(("search", "nosuch.yaml"), ("nosuch.yaml", "file not found"), id="search_config_path_missing"),
    pytest.param(("run", "nosuch.yaml"), ("nosuch.yaml", "file not found"), id="run_config_path_missing"),
    pytest.param(("config", "confdir"), ("confdir", "is a directory", "YAML file"), id="config_path_is_a_directory"),
    pytest.param(("train", "--model", "resnet21", "--data", "digits"), ("model.name", "'resnet21'", "6n+2", "resnet20"),
                 id="train_unknown_model"),
    pytest.param(("evaluate", "nosuch.pt", "--data", "digits"), ("nosuch.pt", "no such file"), id="evaluate_missing_model_file"),
    pytest.param(("export", "nosuch.pt"), ("nosuch.pt", "no such file"), id="export_missing_model_file"),
]


@pytest.mark.parametrize("argv, culprits", ARGUMENT_CASES)
def test_bad_argument(argv: tuple[str, ...], culprits: tuple[str, ...], work: Path, capsys):
    (work / "confdir").mkdir()
    assert_user_error(cli(capsys, *argv), *culprits)
    assert files_under(work) == {"exp.yaml"}


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(work: Path, capsys, monkeypatch):
    """The other two exit codes of ``main``: Ctrl-C is 130, a non-AutopruneError propagates (exit 1 with a traceback)."""
    import autoprune.config.loading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(autoprune.config.loading, "load_config", interrupted)
    res = cli(capsys, "config", "exp.yaml")
    assert res.code == 130 and res.err.strip() == "autoprune: interrupted"

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(autoprune.config.loading, "load_config", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["config", "exp.yaml"])


# ====================================================================== 3. model and data plugins

PLUGIN_CASES = [
    pytest.param(("--model", "ap_no_such_module_xyz:net"), ("model.name", "cannot import module 'ap_no_such_module_xyz'"),
                 id="model_module_missing"),
    pytest.param(("--model", "ap_bad_import:net"), ("model.name", "cannot import module 'ap_bad_import'", "needs a GPU driver"),
                 id="model_module_raises_on_import"),
    pytest.param(("--model", "ap_bad_plugins:nosuch"), ("model.name", "has no attribute 'nosuch'", "'ap_bad_plugins:nosuch'"),
                 id="model_factory_missing"),
    pytest.param(("--model", "ap_bad_plugins:WIDTH"), ("model.name", "'ap_bad_plugins:WIDTH' is not callable"),
                 id="model_factory_not_callable"),
    pytest.param(("--model", "ap_bad_plugins:boom"), ("model.name", "'ap_bad_plugins:boom' raised RuntimeError", "kaboom"),
                 id="model_factory_raises"),
    pytest.param(("--model", "ap_bad_plugins:inner_typeerror"),
                 ("model.name", "raised TypeError", "width must be an int"), id="model_factory_raises_typeerror_inside"),
    pytest.param(("--model", "ap_bad_plugins:needs_depth"), ("model.name", "signature (depth)", "in_channels="),
                 id="model_factory_wrong_signature"),
    pytest.param(("--model", "ap_bad_plugins:returns_int"), ("model.name", "returned int", "torch.nn.Module"),
                 id="model_factory_returns_non_module"),
    pytest.param(("--model", "ap_bad_plugins:for_mnist", "--set", "train.epochs=1"), ("model.name", "(2, 1, 8, 8)"),
                 id="model_built_for_other_input_shape"),
    pytest.param(("--model", "mlp", "--set", "model.ignore=[fc]"), ("model.ignore", "['fc']", "net.1"),
                 id="model_ignore_names_a_missing_layer"),
    pytest.param(("--model", "mlp", "--data", "cifar10"), ("data.name", "'cifar10'", "'digits'"), id="data_unknown_name"),
    pytest.param(("--model", "mlp", "--data", "ap_bad_plugins:data_list"), ("data.name", "returned list", "DataBundle"),
                 id="data_factory_returns_wrong_type"),
    pytest.param(("--model", "mlp", "--data", "ap_bad_plugins:data_boom"), ("data.name", "FileNotFoundError", "my_set.npz"),
                 id="data_factory_raises"),
    pytest.param(("--model", "mlp", "--data", "fashion_mnist", "--set", "data.data_dir=missing_dir"),
                 ("data.data_dir", "'missing_dir'", "does not exist", "train-images-idx3-ubyte.gz"),
                 id="fashion_mnist_data_dir_missing"),
]


@pytest.mark.parametrize("args, culprits", PLUGIN_CASES)
def test_plugin_cli(args: tuple[str, ...], culprits: tuple[str, ...], work: Path, plugins: str, capsys):
    if "--data" not in args:
        args = (*args, "--data", "digits")
    assert_user_error(cli(capsys, "estimate", *args, "--ratios", "0.3"), *culprits)
    assert files_under(work) == {"exp.yaml"}


def test_a_layer_torch_pruning_cannot_prune_is_opaque_named_once_and_estimate_runs(work: Path, plugins: str, capsys):
    ref = f"{plugins}:with_scale"
    args = ("estimate", "--model", ref, "--data", "digits", "--ratios", "0.3", "--set", "train.epochs=1")
    res = cli(capsys, *args)
    assert res.code == 0, res.err
    assert "30%" in res.out and " ".join(res.err.split()).count("module '2' is opaque (Scale has parameters of its own") == 1
    res = cli(capsys, *args, "--set", "model.ignore=['2']")  # listed: hidden on purpose, no warning
    assert res.code == 0 and "30%" in res.out and "opaque" not in res.err


def _scale_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), _Scale(16), nn.ReLU(), nn.Linear(16, 10))


class _Scale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return self.fc(out[:, -1])


GRAPH_CASES = [
    pytest.param(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), {}, ("(2, 1, 8, 8)", "mat1 and mat2"),
                 id="model_for_another_input_shape"),
    pytest.param(lambda: build_model("mlp", **DIGITS), {"ignored": ["fc"]}, ("model.ignore", "['fc']", "net.1"),
                 id="ignore_names_a_missing_layer"),
]


@pytest.mark.parametrize(("make", "layer", "why"), [
    pytest.param(_scale_model, "2", "_Scale has parameters of its own", id="custom_layer_with_a_parameter"),
    pytest.param(_Recurrent, "rnn", "GRU: Torch-Pruning 1.6 cannot prune recurrent layers", id="recurrent_layer"),
])
def test_a_layer_the_pruning_graph_cannot_prune_is_opaque_and_named(make, layer, why):
    graph = PrunableGraph(make().eval(), torch.zeros(2, 1, 8, 8))
    assert why in graph.opaque[layer]
    assert graph.skipped and all(repr(layer) in reason for reason in graph.skipped.values())


@pytest.mark.parametrize("make, kwargs, culprits", GRAPH_CASES)
def test_pruning_graph_api_raises_model_error(make, kwargs, culprits):
    with pytest.raises(ModelError) as info:
        PrunableGraph(make().eval(), torch.zeros(2, 1, 8, 8), **kwargs)
    assert_one_line_error(info.value, *culprits)


@pytest.mark.parametrize("ref, error, culprits", [
    pytest.param("ap_no_such_module_xyz:net", ConfigError, ("cannot import module",), id="module_missing"),
    pytest.param("ap_bad_plugins:boom", ConfigError, ("raised RuntimeError", "kaboom"), id="factory_raises"),
    pytest.param("ap_bad_plugins:inner_typeerror", ConfigError, ("width must be an int",), id="factory_raises_typeerror_inside"),
    pytest.param("ap_bad_plugins:returns_int", ModelError, ("returned int",), id="factory_returns_non_module"),
])
def test_build_model_api(ref: str, error: type, culprits: tuple[str, ...], plugins: str):
    with pytest.raises(error) as info:
        build_model(ref, **DIGITS)
    assert_one_line_error(info.value, "model.name", repr(ref), *culprits)


def test_check_model_fits_api(plugins: str):
    import ap_bad_plugins

    with pytest.raises(ModelError) as info:
        check_model_fits(ap_bad_plugins.for_mnist(), "ap_bad_plugins:for_mnist", **DIGITS)
    assert_one_line_error(info.value, "model.name", "'ap_bad_plugins:for_mnist'", "(2, 1, 8, 8)", "in_channels=1")
    with pytest.raises(ModelError, match=r"outputs \(2, 5\)"):
        check_model_fits(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), "x:y", **DIGITS)


def test_load_data_api(plugins: str, tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_data("ap_bad_plugins:data_list")
    assert_one_line_error(info.value, "data.name", "DataBundle")
    with pytest.raises(DataError) as info:
        load_data("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
    assert_one_line_error(info.value, "data.data_dir", "nowhere", "does not exist")


# ====================================================================== 4. storage and tracking URIs


TRACKING_CASES = [
        pytest.param("ftp://host/mlruns", ("'ftp://host/mlruns'", "unsupported scheme 'ftp'", "sqlite:///"), (), id="wrong_scheme"),
        pytest.param("mlflow.db", ("'mlflow.db'", "has no scheme", "sqlite:///"), (), id="no_scheme"),
        pytest.param("http://[::1", ("'http://[::1'", "not a valid URI"), (), id="malformed_uri"),
        pytest.param(f"http://{CLOSED}", ("cannot reach", CLOSED, "Connection refused"), (), id="http_server_unreachable"),
        pytest.param("sqlite:///missing/dir/mlflow.db", ("'sqlite:///missing/dir/mlflow.db'", "does not exist"), (),
                     id="sqlite_in_a_missing_directory"),
        pytest.param("sqlite:///notes.db", ("notes.db", "not an SQLite database"), (), id="sqlite_file_is_not_a_database"),
        pytest.param("sqlite:///:memory:", ("in-memory",), (), id="sqlite_in_memory"),
        pytest.param(f"postgresql+psycopg2://u:secret@{CLOSED}/db", ("cannot connect", CLOSED, "refused"), ("secret",),
                     id="postgresql_unreachable"),
        pytest.param(f"postgresql://u:secret@{CLOSED}/db", (CLOSED,), ("secret",), id="postgresql_default_driver"),
]


@pytest.mark.parametrize("uri, culprits, absent", TRACKING_CASES)
def test_tracking_uri_cli(uri: str, culprits: tuple[str, ...], absent: tuple[str, ...], work: Path, capsys):
    (work / "notes.db").write_text("not a database\n")
    assert_user_error(cli(capsys, "run", "exp.yaml", "--set", f"tracking.uri={uri}"), "tracking.uri", *culprits, absent=absent)
    # no MLflow store, no result: at most the (empty) output directory
    assert files_under(work) == {"exp.yaml", "notes.db"}
    assert (work / "notes.db").read_text() == "not a database\n"


@pytest.mark.parametrize("uri, culprits, absent", TRACKING_CASES)
def test_tracking_uri_api(uri: str, culprits: tuple[str, ...], absent: tuple[str, ...], work: Path):
    from autoprune.tracking.tracker import resolve_tracking_uri

    (work / "notes.db").write_text("not a database\n")
    with pytest.raises(ConfigError) as info:
        resolve_tracking_uri(uri)
    assert_one_line_error(info.value, "tracking.uri", *culprits)
    assert not any(a in str(info.value) for a in absent)


STORAGE_CASES = [
        pytest.param("sqlite:///missing/dir/study.db", ("storage", "missing/dir/study.db", "unable to open database file"), (),
                     id="sqlite_in_a_missing_directory"),
        pytest.param(f"postgresql+psycopg2://u:secret@{CLOSED}/db", ("storage", CLOSED, "refused"), (), id="postgresql_unreachable"),
        pytest.param(f"postgresql://u:secret@{CLOSED}/db", ("storage", CLOSED, "psycopg"), ("secret",),
                     id="postgresql_default_driver_and_password"),
]


@pytest.mark.parametrize("url, culprits, absent", STORAGE_CASES)
def test_search_storage_cli(url: str, culprits: tuple[str, ...], absent: tuple[str, ...], work: Path, capsys):
    res = cli(capsys, "search", "exp.yaml", "--set", "search.searcher=optuna", "--set", f"search.storage={url}")
    assert_user_error(res, *culprits, absent=absent)
    assert not list((work / "runs").rglob("policy.json")) and not list((work / "runs").rglob("history.csv"))
    assert not (work / "missing").exists()


def test_bad_storage_then_fixed_storage_reruns(work: Path, capsys):
    base = ("search", "exp.yaml", "--set", "search.searcher=optuna", "--set", "search.episodes=2")
    assert_user_error(cli(capsys, *base, "--set", "search.storage=sqlite:///missing/dir/study.db"), "storage")
    res = cli(capsys, *base, "--set", "search.storage=sqlite:///study.db")
    assert res.code == 0, res.err
    assert (work / "runs" / "bad" / "policy.json").is_file() and (work / "study.db").is_file()


def test_storage_that_is_not_an_rdb_url_fails_before_anything_runs(work: Path, capsys):
    res = cli(capsys, "search", "exp.yaml", "--set", "search.storage=study.db")
    assert_user_error(res, "override 'search.storage=study.db'", "search.storage", "sqlite:///study.db")
    assert files_under(work) == {"exp.yaml"} and not (work / "runs").exists()


def test_failed_run_leaves_a_sound_mlflow_store(work: Path, capsys):
    """A run that fails after MLflow started is ended FAILED, and the SQLite store stays intact."""
    res = cli(capsys, "run", "exp.yaml", "--set", "tracking.uri=sqlite:///mlflow.db",
              "--set", "budget.target=0.01", "--set", "pruning.max_ratio=0.1")
    assert_user_error(res, "budget.target", "unreachable")
    with sqlite3.connect(work / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT status FROM runs").fetchall() == [("FAILED",)]
    assert not list(work.rglob("policy.json")) and not list(work.rglob("model.pt"))


# ====================================================================== 5. paths

PATH_CASES = [
    pytest.param(("estimate", "exp.yaml", "--set", "model.checkpoint=missing.pt"), ("model.checkpoint", "'missing.pt'", "does not exist"),
                 id="checkpoint_missing"),
    pytest.param(("estimate", "exp.yaml", "--set", "model.checkpoint=garbage.pt"), ("checkpoint", "'garbage.pt'", "cannot load"),
                 id="checkpoint_not_a_checkpoint"),
    pytest.param(("estimate", "exp.yaml", "--set", "model.name=resnet20", "--set", "model.checkpoint=mlp.pt"),
                 ("checkpoint", "'mlp.pt'", "does not match the model"), id="checkpoint_of_another_model"),
    pytest.param(("search", "exp.yaml", "--set", "output_dir=exp.yaml/sub"), ("output_dir", "exp.yaml/sub", "Not a directory"),
                 id="output_dir_under_a_regular_file"),
    pytest.param(("search", "exp.yaml", "--set", "output_dir=/proc/autoprune-bad-input"), ("output_dir", "/proc/autoprune-bad-input"),
                 id="output_dir_in_proc"),
    pytest.param(("apply", "--policy", "nosuch.json", "--model", "mlp", "--data", "digits"), ("--policy", "'nosuch.json'", "does not exist"),
                 id="apply_policy_file_missing"),
    pytest.param(("apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--out", "exp.yaml/pruned.pt"),
                 ("--out", "exp.yaml/pruned.pt"), id="apply_out_under_a_regular_file"),
    pytest.param(("train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--checkpoint", "exp.yaml/mlp.pt"),
                 ("checkpoint", "exp.yaml/mlp.pt"), id="train_checkpoint_under_a_regular_file"),
]


@pytest.mark.parametrize("argv, culprits", PATH_CASES)
def test_bad_path(argv: tuple[str, ...], culprits: tuple[str, ...], work: Path, baseline_cache: Path, capsys):
    (work / "garbage.pt").write_text("not a checkpoint")
    shutil.copy(baseline_cache / "mlp-digits.pt", work / "mlp.pt")
    (work / "policy.json").write_text(json.dumps({"ratios": {"net.1": 0.3}, "drop": []}))
    before = files_under(work)
    assert_user_error(cli(capsys, *argv), *culprits)
    assert files_under(work) == before
    assert not Path("/proc/autoprune-bad-input").exists()


def test_output_dir_fixed_then_search_works(work: Path, capsys):
    assert_user_error(cli(capsys, "search", "exp.yaml", "--set", "output_dir=exp.yaml/sub"), "output_dir")
    res = cli(capsys, "search", "exp.yaml", "--set", "output_dir=results/sub")
    assert res.code == 0, res.err
    assert {"results/sub/policy.json", "results/sub/history.csv"} <= files_under(work)


# ====================================================================== 6. policy files
# Cases for ``autoprune apply --policy FILE`` against autoprune/policy.py ``load_policy``.
# Append new cases (fingerprints, agent files, ...) to POLICY_CASES.

POLICY_CASES = [
    pytest.param('{"format": "autoprune-policy/2", "ratios": {"net.1": 0.', ("not valid JSON",), id="truncated_json"),
    pytest.param("", ("not valid JSON",), id="empty_file"),
    pytest.param(b"\xff\xfe\x00", ("not valid JSON",), id="not_utf8"),
    pytest.param("[0.3, 0.5]", ("JSON object",), id="not_an_object_but_a_list"),
    pytest.param("null", ("JSON object",), id="json_null"),
    pytest.param('{"format": "autoprune-policy/99", "ratios": {}}', ("format", "'autoprune-policy/99'"), id="wrong_format_version"),
    pytest.param('{"ratios": {"net.1": "lots"}}', ("ratio", "lots"), id="non_numeric_ratio"),
    pytest.param('{"ratios": {"net.1": null}}', ("ratio",), id="null_ratio"),
    pytest.param('{"ratios": [0.3, 0.5]}', ("'ratios'",), id="ratios_not_a_mapping"),
    pytest.param('{"ratios": {}, "drop": "layer1.0"}', ("'drop'",), id="drop_not_a_list"),
    pytest.param('{"ratios": {"net.1": 1.5}}', ("1.5",), id="ratio_out_of_range"),
]


@pytest.mark.parametrize("text, culprits", POLICY_CASES)
def test_policy_file_cli(text: str | bytes, culprits: tuple[str, ...], work: Path, capsys):
    path = work / "policy.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    res = cli(capsys, "apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--out", "pruned.pt")
    assert_user_error(res, "--policy", "'policy.json'", *culprits)
    assert files_under(work) == {"exp.yaml", "policy.json"}


@pytest.mark.parametrize("text, culprits", POLICY_CASES)
def test_policy_file_api(text: str | bytes, culprits: tuple[str, ...], work: Path):
    from autoprune.app.uris import load_policy

    path = work / "policy.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy("policy.json")
    assert_one_line_error(info.value, "'policy.json'", *culprits)


def test_policy_with_units_the_model_lacks(work: Path, capsys):
    (work / "policy.json").write_text(json.dumps({"ratios": {"layer9.conv": 0.3}, "drop": []}))
    res = cli(capsys, "apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--out", "pruned.pt")
    assert_user_error(res, "layer9.conv")
    assert not (work / "pruned.pt").exists()


def test_truncated_policy_fixed_then_apply_works(work: Path, capsys):
    argv = ("apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--out", "pruned.pt")
    (work / "policy.json").write_text('{"ratios": {"net.1": 0.3, "net.4"')
    assert_user_error(cli(capsys, *argv), "--policy", "not valid JSON")
    assert not (work / "pruned.pt").exists()
    units = PrunableGraph(build_model("mlp", **DIGITS).eval(), torch.zeros(2, 1, 8, 8)).unit_names
    (work / "policy.json").write_text(json.dumps({"ratios": {u: 0.3 for u in units}, "drop": []}))
    res = cli(capsys, *argv)
    assert res.code == 0, res.err
    assert (work / "pruned.pt").is_file() and "written to pruned.pt" in res.out


# ====================================================================== 7. end to end, real processes


def test_real_processes_print_one_line_and_exit_2(work: Path):
    """Three representative mistakes through ``python -m autoprune``: one line, exit 2, no traceback."""
    (work / "broken.yaml").write_text("model: {name: mlp\n")
    (work / "cut.json").write_text('{"ratios": {"net.1": 0.')
    cases = {
        "yaml_syntax_error": (["config", "broken.yaml"], ("broken.yaml:2:", "YAML syntax error")),
        "truncated_policy": (["apply", "--policy", "cut.json", "--model", "mlp", "--data", "digits"], ("--policy", "'cut.json'")),
        "output_dir_under_a_file": (["search", "exp.yaml", "--set", "output_dir=exp.yaml/sub"], ("output_dir", "Not a directory")),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "autoprune", *argv], cwd=work, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        line = assert_user_error(Result(proc.returncode, out, err), *cases[name][1])
        assert out == "", f"{name}: {out}"
        assert line
    assert files_under(work) == {"exp.yaml", "broken.yaml", "cut.json"}


def test_real_process_usage_error_exits_2(work: Path):
    proc = subprocess.run([sys.executable, "-m", "autoprune", "search", "--nosuch", "exp.yaml"], cwd=work, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_usage_error(Result.of(proc), "--nosuch")



# ====================================================================== 6b. agent files
# ``autoprune search CONFIG --agent FOLDER``: the folder a PPO search saves (agent.zip + agent.json).

AGENT_CASES = [
    pytest.param("missing", ("--agent", "'nosuch'", "does not exist"), id="agent_folder_missing"),
    pytest.param("empty", ("--agent", "holds no agent.zip"), id="agent_folder_without_zip"),
    pytest.param("no_manifest", ("--agent", "no agent.json"), id="agent_without_manifest"),
    pytest.param("truncated_zip", ("--agent", "truncated or not an SB3 agent"), id="agent_zip_truncated"),
    pytest.param("wrong_format", ("--agent", "'autoprune-agent/0'", "autoprune-agent/1"), id="agent_manifest_wrong_version"),
    pytest.param("other_features", ("--agent", "observes features"), id="agent_with_other_observations"),
]


def _agent_folder(work: Path, damage: str) -> str:
    from autoprune.search.agent import manifest

    if damage == "missing":
        return "nosuch"
    folder = work / "agent"
    folder.mkdir()
    if damage == "empty":
        return "agent"
    (folder / "agent.zip").write_bytes(b"PK\x03\x04 not really a zip")
    if damage == "no_manifest":
        return "agent"
    doc = manifest()
    if damage == "wrong_format":
        doc["format"] = "autoprune-agent/0"
    if damage == "other_features":
        doc["observation"]["features"] = ["depth", "progress"]
    (folder / "agent.json").write_text(json.dumps(doc))
    return "agent"


@pytest.mark.parametrize("damage, culprits", AGENT_CASES)
def test_agent_file_cli(damage: str, culprits: tuple[str, ...], work: Path, capsys):
    folder = _agent_folder(work, damage)
    before = files_under(work)
    res = cli(capsys, "search", "exp.yaml", "--agent", folder, "--zero-shot", "--episodes", "1")
    assert_user_error(res, *culprits)
    assert not any(f.endswith(("policy.json", "history.csv")) for f in files_under(work) - before)


def test_policy_of_another_architecture_is_refused_naming_missing_and_extra_units(work: Path, capsys):
    from autoprune.formats.policy_file import policy_document
    from autoprune.graph.policy import Policy, model_fingerprint
    from autoprune.graph.prunable import PrunableGraph
    from autoprune.zoo import build_model, load_data

    digits = load_data("digits")
    graph = PrunableGraph(build_model("resnet20", in_channels=1, num_classes=10, input_size=8).eval(), digits.example_input(1))
    doc = policy_document(Policy.uniform(graph.unit_names, 0.3), model="resnet20", data="digits", metric="macs", target=0.5,
                          backend={}, searcher="optuna", fingerprint=model_fingerprint(graph))
    (work / "policy.json").write_text(json.dumps(doc))
    res = cli(capsys, "apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--out", "pruned.pt")
    assert_user_error(res, "another architecture", "layer1.0.conv1", "net.1", "autoprune transfer")
    assert not (work / "pruned.pt").exists()


# ====================================================================== 8. damaged files, storage schemes, leftovers
# Every file-loading error names the file and says what is wrong with it; a failed command leaves no
# empty output folder behind; no message tells the user to call a Python function.

CHECKPOINT_DAMAGE = [
    pytest.param("empty", ("'base.pt'", "the file is empty (0 bytes)"), id="empty_checkpoint"),
    pytest.param("truncated", ("'base.pt'", "the file is truncated"), id="truncated_checkpoint"),
    pytest.param("text", ("'base.pt'", "not a PyTorch file"), id="text_file_as_checkpoint"),
]


def _damage_checkpoint(work: Path, baseline_cache: Path, damage: str) -> None:
    data = (baseline_cache / "mlp-digits.pt").read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"weights: none\n"}[damage]
    (work / "base.pt").write_bytes(content)


def _mlp_policy(work: Path) -> None:
    units = PrunableGraph(build_model("mlp", **DIGITS).eval(), torch.zeros(2, 1, 8, 8)).unit_names
    (work / "policy.json").write_text(json.dumps({"ratios": {u: 0.3 for u in units}, "drop": []}))


@pytest.mark.parametrize("command", ["search", "apply"])
@pytest.mark.parametrize("damage, culprits", CHECKPOINT_DAMAGE)
def test_damaged_checkpoint_is_one_line_naming_the_file_and_the_damage(command: str, damage: str, culprits: tuple[str, ...],
                                                                       work: Path, baseline_cache: Path, capsys):
    _damage_checkpoint(work, baseline_cache, damage)
    _mlp_policy(work)
    before = files_under(work)
    argv = {"search": ("search", "exp.yaml", "--set", "model.checkpoint=base.pt", "--set", "output_dir=results/bad"),
            "apply": ("apply", "--policy", "policy.json", "--model", "mlp", "--data", "digits", "--checkpoint", "base.pt",
                      "--out", "pruned.pt", "--no-track")}[command]
    assert_user_error(cli(capsys, *argv), "checkpoint", *culprits, absent=("Invalid argument", "EOFError"))
    assert files_under(work) == before
    assert not (work / "results").exists(), "a failed search leaves no (empty) output folder"


def test_empty_checkpoint_in_a_real_process_exits_2_with_one_line(work: Path):
    (work / "base.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "autoprune", "search", "exp.yaml", "--set", "model.checkpoint=base.pt"],
                          cwd=work, text=True, capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_user_error(Result.of(proc), "'base.pt'", "empty (0 bytes)")


def test_checkpoint_of_another_model_lists_the_first_missing_and_unexpected_keys(work: Path, baseline_cache: Path, capsys):
    shutil.copy(baseline_cache / "mlp-digits.pt", work / "mlp.pt")
    res = cli(capsys, "search", "exp.yaml", "--set", "model.name=resnet20", "--set", "model.checkpoint=mlp.pt")
    line = assert_user_error(res, "'mlp.pt'", "does not match the model 'resnet20'", "missing keys [conv1.weight, bn1.weight",
                             "unexpected keys [net.1.weight", "in all)")
    assert "Error(s) in loading state_dict" not in line


def test_a_file_that_is_not_a_pruned_model_names_the_commands_that_write_one(work: Path, capsys):
    torch.save({"state_dict": {}}, work / "plain.pt")
    line = assert_user_error(cli(capsys, "evaluate", "plain.pt", "--data", "digits"), "plain.pt", "not an autoprune pruned model")
    assert "autoprune apply" in line and "save_pruned" not in line


@pytest.mark.parametrize("argv", [
    ("search", "exp.yaml", "--set", "search.searcher=optuna", "--storage", "mongodb://user:secret@db.example/autoprune"),
    ("worker", "--storage", "mongodb://user:secret@db.example/autoprune", "--study", "bad"),
], ids=["search", "worker"])
def test_unknown_storage_scheme_lists_the_allowed_schemes(argv: tuple[str, ...], work: Path, capsys):
    line = assert_user_error(cli(capsys, *argv), "storage", "unsupported scheme 'mongodb'", "sqlite:///", "postgresql://", "mysql://")
    assert "secret" not in line
    assert not (work / "runs").exists()


@pytest.mark.parametrize("error", [EOFError(), ValueError(""), ValueError("\n  \n"), OSError(22, ""), KeyError(""),
                                   RuntimeError(None), ConfigError("")], ids=repr)
def test_error_formatting_never_fails_on_an_empty_or_odd_message(error: BaseException):
    from autoprune.errors import describe, one_line

    shown = describe(error)
    assert shown and "\n" not in shown
    assert "\n" not in one_line(error)


def test_a_failing_run_leaves_no_empty_output_folder(work: Path, capsys):
    res = cli(capsys, "run", "exp.yaml", "--set", "output_dir=results/{name}", "--set", "tracking.uri=sqlite:///mlflow.db",
              "--set", "budget.target=0.01", "--set", "pruning.max_ratio=0.1")
    assert_user_error(res, "budget.target", "unreachable")
    assert not (work / "results").exists()
