"""A searcher and an importance criterion named as ``"module:Class"`` work through ``autoprune run``.

The plug-ins (``tests/plugins_for_tests.py``) are real and leave traces: the searcher evaluates
every unit at one ratio, the criterion makes surgery keep a unit's *first* channels. Nothing
outside their own file names them, so the whole job (search, apply, fine-tune, evaluate, save,
MLflow) reaching the end with their traces shows that no hidden edit is needed.
"""

from __future__ import annotations

import csv
import json

import mlflow
import torch
from helpers import cli, tiny_experiment, write_experiment

from autoprune.app.experiment import load_baseline
from autoprune.config.loading import parse_config
from autoprune.formats.pruned import load_pruned

SEARCHER = "plugins_for_tests:HalfEverywhereSearcher"
IMPORTANCE = "plugins_for_tests:LastChannelsFirstImportance"


def test_a_module_class_searcher_and_importance_run_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    raw = tiny_experiment(tmp_path, name="plugged", train={"epochs": 1}, pruning={"importance": IMPORTANCE},
                          search={"searcher": SEARCHER, "episodes": 2, "params": {"ratio": 0.5}},
                          finetune={"epochs": 0})  # no fine-tuning: the pruned weights are the dense ones the criterion kept
    write_experiment(tmp_path / "exp.yaml", raw)

    res = cli(capsys, "run", str(tmp_path / "exp.yaml"))

    assert res.code == 0, res.err
    out = tmp_path / "out"
    policy = json.loads((out / "policy.json").read_text())
    assert policy["searcher"] == "half-everywhere"
    assert set(policy["ratios"].values()) == {0.5}
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(r["policy"])["ratios"] == policy["ratios"] for r in rows] == [True, True]
    # The criterion chose the channels: the pruned first layer is the dense one's first rows.
    pruned, meta = load_pruned(out / "model.pt")
    dense = load_baseline(parse_config(raw), progress=False).model
    kept = pruned.net[1].weight.shape[0]
    assert kept < dense.net[1].weight.shape[0]
    assert torch.equal(pruned.net[1].weight, dense.net[1].weight[:kept])
    assert meta["extra"]["policy"]["ratios"] == policy["ratios"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plugged").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["searcher"] == SEARCHER and run.data.params["pruning.importance"] == IMPORTANCE
