"""``autoprune transfer``: every form the README shows works, and the source policy's backend is kept (issue 24, item 8).

Before, ``transfer CONFIG --model M`` was refused, and ``--model`` without a config timed on eager
PyTorch although the policy recorded ONNX Runtime.
"""

from __future__ import annotations

import json
import re

import torch
from helpers import cli, tiny_experiment, write_experiment

from autoprune.app.commands import source_backend
from autoprune.config.loading import parse_config
from autoprune.formats.policy_file import policy_document, write_policy_file
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.zoo import build_model


def _policy_file(tmp_path, backend: str):
    graph = PrunableGraph(build_model("mlp", in_channels=1, num_classes=10, input_size=8).eval(), torch.zeros(2, 1, 8, 8))
    doc = policy_document(Policy.uniform(graph.unit_names, 0.3), model="mlp", data="digits", metric="macs", target=0.6,
                          backend={"name": backend, "batch_size": 1, "threads": 1, "options": {}}, searcher="optuna",
                          fingerprint=model_fingerprint(graph))
    path = tmp_path / "policy.json"
    write_policy_file(path, doc)
    return path


def test_transfer_with_model_only_times_on_the_backend_the_policy_records(tmp_path, capsys):
    policy = _policy_file(tmp_path, "onnxruntime")
    res = cli(capsys, "transfer", "--policy", str(policy), "--model", "mlp", "--data", "digits", "--no-track", "--candidates", "1",
              "--set", "budget.metric=macs", "--set", "budget.target=0.6", "--set", "train.epochs=2", "--out", str(tmp_path / "t.json"))
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "t.json").read_text())["backend"]["name"] == "onnxruntime"


def test_transfer_config_with_model_runs_the_config_on_that_model(tmp_path, capsys):
    """The README's ``transfer CONFIG.yaml --policy SRC --model M``: the config's other sections, M as model.name."""
    policy = _policy_file(tmp_path, "onnxruntime")
    config = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, model={"name": "resnet20"}, latency={"backend": "torch"}))
    res = cli(capsys, "transfer", str(config), "--policy", str(policy), "--model", "mlp", "--no-track", "--candidates", "1",
              "--out", str(tmp_path / "t.json"))
    assert res.code == 0, res.err
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["model"] == "mlp" and doc["backend"]["name"] == "torch"  # a backend the config sets wins over the policy's


def test_source_backend_only_fills_what_the_config_leaves_unset():
    payload = {"backend": {"name": "onnxruntime", "batch_size": 4, "options": {"spinning": False}}}
    unset = source_backend(parse_config(tiny_experiment()), payload)
    assert (unset.latency.backend, unset.latency.batch_size, unset.latency.backend_options) == ("onnxruntime", 4, {"spinning": False})
    chosen = parse_config(tiny_experiment(latency={"backend": "torch", "batch_size": 2}))
    assert source_backend(chosen, payload) is chosen
    assert source_backend(parse_config(tiny_experiment()), {}).latency.backend == parse_config(tiny_experiment()).latency.backend


def test_a_second_transfer_reuses_the_first_ones_layer_timings_and_says_how_much_time_it_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    policy = _policy_file(tmp_path, "torch")
    args = ("transfer", "--policy", str(policy), "--model", "mlp", "--data", "digits", "--no-track", "--candidates", "1",
            "--set", "budget.metric=macs", "--set", "budget.target=0.6", "--set", "train.epochs=2", "--out", str(tmp_path / "t.json"))
    first, second = cli(capsys, *args), cli(capsys, *args)
    off = cli(capsys, *args, "--set", "latency.table_cache=false")
    assert first.code == second.code == off.code == 0, (first.err, second.err, off.err)
    counts = [re.search(r"latency table cache \(layer timings\): (\d+) reused \(([\d.e+-]+) s of measurement saved\), (\d+) measured", r.out)
              for r in (first, second, off)]
    assert all(counts), [r.out for r in (first, second, off)]
    (reused1, _, measured1), (reused2, saved2, _), (reused_off, _, measured_off) = (m.groups() for m in counts)
    assert int(reused1) == 0 and int(measured1) > 0
    assert int(reused2) >= int(measured1) and float(saved2) > 0
    assert int(reused_off) == 0 and int(measured_off) > 0
