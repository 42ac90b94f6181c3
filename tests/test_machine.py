"""Settings that size work to the machine are checked against it before any work starts."""

from __future__ import annotations

import logging

import pytest
from helpers import assert_user_error, cli

from autoprune.app.experiment import load_baseline, run_search
from autoprune.config.loading import parse_config
from autoprune.config.machine import activation_bytes, available_memory_bytes, check_batches_fit, fit_to_machine, usable_cpus
from autoprune.errors import ConfigError

CPUS = usable_cpus()


def config(tmp_path, **sections):
    data = {"name": "machine", "output_dir": str(tmp_path / "out"), "model": {"name": "mlp"}, "data": {"name": "digits"}}
    data.update(sections)
    return parse_config(data)


def test_usable_cpus_is_this_process_affinity():
    assert 1 <= CPUS <= (__import__("os").cpu_count() or CPUS)


def test_threads_beyond_the_cpus_are_refused_before_any_work(tmp_path):
    cfg = config(tmp_path, latency={"threads": 999})
    with pytest.raises(ConfigError) as info:
        run_search(cfg, progress=False)
    assert str(info.value) == f"latency.threads: 999 is more than the {CPUS} CPU(s) this process may use; allowed: 1 to {CPUS}"
    assert not (tmp_path / "out").exists()  # refused before the output folder, the baseline or the search


def test_workers_beyond_the_cpus_are_refused_before_any_work(tmp_path):
    cfg = config(tmp_path, search={"workers": CPUS + 1}, latency={"threads": 1})
    with pytest.raises(ConfigError, match=rf"^search.workers: {CPUS + 1} is more than the {CPUS} CPU\(s\) this process may use; allowed: 1 to {CPUS}$"):
        run_search(cfg, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CPUS < 2, reason="needs two CPUs for two workers")
def test_workers_times_threads_over_the_cpus_lowers_threads_with_one_warning(tmp_path, caplog):
    cfg = config(tmp_path, search={"workers": CPUS}, latency={"threads": CPUS})
    with caplog.at_level(logging.WARNING, logger="autoprune.config.machine"):
        fitted = fit_to_machine(cfg)
    assert fitted.latency.threads == 1 and cfg.latency.threads == CPUS
    assert [r.getMessage() for r in caplog.records] == [f"latency.threads {CPUS} -> 1: {CPUS} workers share {CPUS} CPU(s)"]
    assert fit_to_machine(fitted) is fitted  # settings that fit are left alone


def test_the_default_thread_count_is_lowered_on_a_smaller_machine_but_a_chosen_one_is_refused(tmp_path, caplog):
    default = config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="autoprune.config.machine"):
        fitted = fit_to_machine(default, cpus=1)
    assert fitted.latency.threads == 1
    assert [r.getMessage() for r in caplog.records] == ["latency.threads 2 -> 1: this process may use 1 CPU(s)"]
    with pytest.raises(ConfigError, match="^latency.threads: 2 is more than the 1 CPU"):
        fit_to_machine(config(tmp_path, latency={"threads": 2}), cpus=1)


def test_available_memory_is_read_from_the_machine():
    available = available_memory_bytes()
    assert available is None or available > 2**20


def test_activation_bytes_of_one_sample(make_model, example_input):
    model = make_model("mlp")
    one = example_input[:1]
    act = activation_bytes(model, one)
    assert one.numel() * 4 <= act.peak_layer <= act.total
    assert model.training is False  # restored to what it was (eval)


@pytest.mark.parametrize(("field", "section"), [
    ("train.batch_size", "train"), ("finetune.batch_size", "finetune"), ("latency.batch_size", "latency"), ("proxy.bn_batch_size", "proxy"),
])
def test_a_batch_that_cannot_fit_in_memory_is_refused_naming_the_largest_that_could(tmp_path, field, section, make_model, example_input):
    huge = 10**12
    cfg = config(tmp_path, **{section: {field.split(".")[1]: huge}})
    with pytest.raises(ConfigError) as info:
        check_batches_fit(cfg, make_model("mlp"), example_input[:1])
    message = str(info.value)
    assert message.startswith(f"{field}: {huge} needs at least ") and "of memory is available; allowed: at most " in message
    check_batches_fit(config(tmp_path), make_model("mlp"), example_input[:1])  # the defaults fit


def test_an_oversized_training_batch_is_refused_before_the_baseline_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, train={"batch_size": 10**12})
    with pytest.raises(ConfigError, match=r"^train.batch_size: 1000000000000 needs at least"):
        load_baseline(cfg, progress=False)
    assert not (tmp_path / "cache").exists()  # nothing trained, no checkpoint written


def test_cli_threads_beyond_the_cpus_exit_2_with_one_line(tmp_path, capsys):
    message = assert_user_error(cli(capsys, "evaluate", str(tmp_path / "missing.pt"), "--threads", "999"))
    assert message == f"autoprune: error: --threads: 999 is more than the {CPUS} CPU(s) this process may use; allowed: 1 to {CPUS}"


def test_cli_estimate_refuses_config_threads_beyond_the_cpus(capsys):
    message = assert_user_error(cli(capsys, "estimate", "--model", "mlp", "--data", "digits", "--set", "latency.threads=999"))
    assert message == f"autoprune: error: latency.threads: 999 is more than the {CPUS} CPU(s) this process may use; allowed: 1 to {CPUS}"
