"""Fail before work (issue 24, item 4): every check that needs no trained model runs in ``autoprune config``
and at the start of every command, before a baseline is loaded or an output folder is created.

Before, ``--searcher uniform`` on the demo config ran 3 min 40 s before refusing the Optuna-only
``seed_baselines``, a bad storage scheme was refused after 75 s, ``autoprune config`` accepted
``latency.threads: 999`` and a batch of 100000 filled 10 GB of memory with nothing printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_user_error, cli, tiny_experiment, write_experiment

from autoprune.app.preflight import effective_config, preflight
from autoprune.config.loading import load_config, parse_config, switch_searcher
from autoprune.config.machine import activation_bytes, check_batches_fit_before_work
from autoprune.errors import ConfigError
from autoprune.search import searcher_class
from autoprune.tracking.store import resolve_tracking_uri
from autoprune.zoo import build_model

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.yaml"


def _never_loaded(tmp_path: Path, **sections: object) -> Path:
    """The tiny experiment with a checkpoint that does not exist: any command that got as far as the baseline would say so."""
    return write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, model={"checkpoint": str(tmp_path / "absent.pt")}, **sections))


# ------------------------------------------------------------------ searcher params
def test_a_searcher_checks_its_params_without_an_evaluator():
    with pytest.raises(ConfigError, match=r"search.params: unknown hyper-parameter\(s\) \['n_startup_trials'\] for searcher 'uniform'"):
        searcher_class("uniform").check_params({"n_startup_trials": 5})
    with pytest.raises(ConfigError, match=r"search.params.drop_prob: 2 is out of range"):
        searcher_class("random").check_params({"drop_prob": 2})
    with pytest.raises(ConfigError, match=r"search.params.zero_shot needs search.params.agent"):
        searcher_class("ppo").check_params({"zero_shot": True})
    assert searcher_class("uniform").check_params({"max_evals": 3}) == {"tolerance": 0.01, "max_evals": 3}


@pytest.mark.parametrize("command", ["run", "search"])
def test_params_another_searcher_takes_are_refused_before_the_baseline_and_the_output_folder(tmp_path, capsys, command):
    path = _never_loaded(tmp_path, search={"searcher": "uniform", "params": {"n_startup_trials": 5}})
    assert_user_error(cli(capsys, command, str(path)), "search.params", "n_startup_trials", "'uniform'", absent=("checkpoint",))
    assert not (tmp_path / "out").exists()


def test_searcher_option_drops_the_params_only_the_replaced_searcher_takes(caplog):
    data = yaml.safe_load(DEMO.read_text())
    data["search"]["params"] = {"n_startup_trials": 5}  # a parameter only Optuna takes
    with caplog.at_level(logging.INFO, logger="autoprune.config.loading"):
        switched = switch_searcher(data, "uniform")
    assert switched["search"]["searcher"] == "uniform" and switched["search"]["params"] == {}
    assert data["search"]["params"] == {"n_startup_trials": 5}  # the caller's mapping is not changed
    assert "search.params n_startup_trials dropped" in caplog.text
    for name in ("uniform", "ppo", "random"):  # the README's forms on the shipped demo config
        cfg = preflight(load_config(DEMO, searcher=name), memory=False)
        assert cfg.search.searcher == name and "n_startup_trials" not in cfg.search.params


def test_searcher_option_keeps_a_param_the_new_searcher_takes_and_a_typo_is_still_refused():
    data = {"search": {"searcher": "uniform", "params": {"max_evals": 4, "tolerence": 0.1}}}
    switched = switch_searcher(data, "global")
    assert switched["search"]["params"] == {"max_evals": 4, "tolerence": 0.1}
    with pytest.raises(ConfigError, match=r"unknown hyper-parameter\(s\) \['tolerence'\] for searcher 'global'"):
        preflight(parse_config({**tiny_experiment(), **switched}), memory=False)


def test_search_with_searcher_option_runs_the_tiny_experiment_written_for_optuna(tmp_path, capsys):
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, search={"params": {"n_startup_trials": 5}}))
    res = cli(capsys, "search", str(path), "--searcher", "random", "--episodes", "3")
    assert res.code == 0, res.err
    assert (tmp_path / "out" / "policy.json").is_file()


# ------------------------------------------------------------------ URL schemes
def test_a_tracking_scheme_is_checked_without_contacting_anything():
    assert resolve_tracking_uri("http://127.0.0.1:9/", reach=False) == "http://127.0.0.1:9/"  # port 9: nobody answers
    with pytest.raises(ConfigError, match=r"tracking.uri: 'foo://x' has unsupported scheme 'foo'"):
        resolve_tracking_uri("foo://x", reach=False)


@pytest.mark.parametrize(("field", "value", "culprits"), [
    ("tracking", {"uri": "foo://host/x"}, ("tracking.uri", "'foo'")),
    ("search", {"storage": "mongodb://host/db"}, ("search.storage", "'mongodb'")),
])
def test_a_bad_url_scheme_is_refused_before_the_baseline_and_the_output_folder(tmp_path, capsys, field, value, culprits):
    path = _never_loaded(tmp_path, **{field: value})
    assert_user_error(cli(capsys, "run", str(path)), *culprits, absent=("checkpoint",))
    assert not (tmp_path / "out").exists()
    assert_user_error(cli(capsys, "config", str(path)), *culprits)


# ------------------------------------------------------------------ threads and memory
def test_config_refuses_more_threads_than_the_machine_has(tmp_path, capsys):
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, latency={"threads": 999}))
    assert_user_error(cli(capsys, "config", str(path)), "latency.threads", "999", "CPU")


def test_a_huge_latency_batch_is_refused_in_one_line_before_any_data_or_folder(tmp_path, capsys):
    """ResNet-20 on Fashion-MNIST at batch 100000 needs tens of GiB; the data set is not even loaded (no IDX files here)."""
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(
        tmp_path, model={"name": "resnet20"}, data={"name": "fashion_mnist", "data_dir": str(tmp_path / "no-data")},
        latency={"batch_size": 100000}))
    for command in ("config", "run", "estimate"):
        assert_user_error(cli(capsys, command, str(path)), "latency.batch_size", "100000", "GiB", "allowed: at most")
    assert not (tmp_path / "out").exists()


def test_the_memory_estimate_before_work_is_the_one_of_the_built_model():
    """Latency timing holds two models' activations per sample; the refusal comes at the first batch that exceeds memory."""
    cfg = parse_config(tiny_experiment(model={"name": "resnet20"}, data={"name": "fashion_mnist"}))
    act = activation_bytes(build_model("resnet20", in_channels=1, num_classes=10, input_size=28), torch.zeros(1, 1, 28, 28))
    assert act.inference >= act.peak_layer > 0 and act.total > act.peak_layer
    enough = max(cfg.train.batch_size * act.total, cfg.finetune.batch_size * act.total, cfg.proxy.bn_batch_size * act.inference)
    fits = enough // (2 * act.inference)
    assert check_batches_fit_before_work(cfg.model_copy(update={"latency": cfg.latency.model_copy(update={"batch_size": fits})}),
                                         available=enough)
    too_big = cfg.model_copy(update={"latency": cfg.latency.model_copy(update={"batch_size": fits + 1})})
    with pytest.raises(ConfigError, match=rf"latency.batch_size: {fits + 1} needs .* allowed: at most {fits}$"):
        check_batches_fit_before_work(too_big, available=enough)


# ------------------------------------------------------------------ effective values
def test_config_prints_the_values_a_run_uses(tmp_path, capsys):
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, latency={"backend": "onnxruntime"},
                                                                   pruning={"round_to": "auto"}, tracking=None))
    res = cli(capsys, "config", str(path))
    assert res.code == 0, res.err
    printed = yaml.safe_load(res.out)
    assert printed["export"]["onnx"] is True  # ONNX Runtime serves model.onnx: a run always exports it
    assert printed["pruning"]["round_to"] == 16  # auto: the backend's channel multiple
    assert printed["tracking"]["uri"].startswith("sqlite:////") and printed["tracking"]["uri"].endswith("/mlflow.db")
    assert load_config(_write(tmp_path / "again.yaml", res.out)).export.onnx is True  # what it prints reads back


def test_on_eager_torch_the_onnx_export_stays_as_set():
    cfg = parse_config(tiny_experiment(latency={"backend": "torch"}))
    assert effective_config(cfg).export.onnx is False
    assert effective_config(parse_config(tiny_experiment(latency={"backend": "torch"}, export={"quantize": True}))).export.onnx is True


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
