"""Reuse: policy files round-trip, refuse other architectures, transfer to siblings, warm-start Optuna, run saved agents."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from helpers import FAST_TRAIN, assert_user_error, cli, merge, tiny_experiment, write_experiment

from autoprune.app.experiment import load_baseline, run_search
from autoprune.app.uris import load_policy
from autoprune.config.loading import parse_config
from autoprune.formats.policy_file import POLICY_FORMAT
from autoprune.formats.pruned import load_pruned
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.objective.proxy import recalibrate_bn
from autoprune.training.baseline import train_or_load
from autoprune.zoo import load_data


def config(tmp, model, name, **over):
    """The tiny experiment on ``model``'s trained baseline in ``tmp``, writing to ``tmp/name``, under a 0.5 MAC budget."""
    cfg = tiny_experiment(tmp, name=name, output_dir=str(tmp / name), model={"name": model, "checkpoint": str(tmp / f"{model}.pt")},
                          budget={"target": 0.5}, search={"episodes": 5})
    return merge(cfg, **over)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two trained digits baselines (ResNet-20 and ResNet-32) and a ResNet-20 search's policy.json."""
    tmp = tmp_path_factory.mktemp("reuse")
    digits = load_data("digits")
    for name in ("resnet20", "resnet32"):
        torch.manual_seed(0)
        train_or_load(name, digits, FAST_TRAIN, checkpoint=tmp / f"{name}.pt", progress=False)
    yaml_path = tmp / "r20.yaml"
    write_experiment(yaml_path, config(tmp, "resnet20", "r20"))
    run = run_search(parse_config(config(tmp, "resnet20", "r20")), progress=False)
    return tmp, run.policy_path


def test_search_writes_a_versioned_policy_with_the_model_fingerprint(workspace):
    _, policy_path = workspace
    doc = json.loads(policy_path.read_text())
    assert doc["format"] == POLICY_FORMAT
    fp = doc["fingerprint"]
    assert len(fp["arch_hash"]) == 16 and fp["dense_macs"] > 0
    assert [u["name"] for u in fp["units"]] == sorted(doc["ratios"], key=[u["name"] for u in fp["units"]].index)
    assert {"kind", "depth", "resolution", "coupled", "channels"} <= set(fp["units"][0])
    assert doc["budget"] == {"metric": "macs", "target": 0.5}


def test_apply_on_the_same_architecture_is_exact_and_logged(workspace, capsys):
    tmp, policy_path = workspace
    out = tmp / "applied.pt"
    code, stdout, err = cli(capsys, "apply", "--policy", str(policy_path), "--model", "resnet20", "--data", "digits",
                            "--checkpoint", str(tmp / "resnet20.pt"), "--out", str(out), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db")
    assert code in (0, None), err
    net, meta = load_pruned(out)
    policy, _ = load_policy(str(policy_path))
    baseline = load_baseline(parse_config(config(tmp, "resnet20", "r20")), progress=False)
    expected = apply_policy(baseline.model, policy, example_input=baseline.data.example_input(1))
    # apply delivers the model with BN re-estimated exactly as the search's proxy did (its config's proxy settings)
    proxy = parse_config({"model": {"name": "resnet20"}, "data": {"name": "digits"}}).proxy
    recalibrate_bn(expected, baseline.data.train, batches=proxy.bn_batches, batch_size=proxy.bn_batch_size, seed=0)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}
    x = baseline.data.example_input(4)
    assert torch.allclose(net.eval()(x), expected.eval()(x), atol=1e-5)
    assert meta["extra"]["policy"] == policy.to_dict()
    runs = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_experiment_by_name("apply").experiment_id])
    assert runs and runs[0].info.status == "FINISHED" and "test_accuracy" in runs[0].data.metrics


def test_apply_refuses_a_policy_of_another_architecture_naming_the_units(workspace, capsys):
    tmp, policy_path = workspace
    res = cli(capsys, "apply", "--policy", str(policy_path), "--model", "resnet32", "--data", "digits",
              "--checkpoint", str(tmp / "resnet32.pt"), "--no-track", "--out", str(tmp / "x.pt"))
    assert_user_error(res, "another architecture", "layer3.4.conv1", "autoprune transfer")  # after the baseline's stage line
    assert not (tmp / "x.pt").exists()


def test_old_policy_format_is_refused_with_the_reason(workspace, tmp_path):
    _, policy_path = workspace
    doc = json.loads(policy_path.read_text())
    doc["format"] = "autoprune-policy/1"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    with pytest.raises(Exception, match=r"format 'autoprune-policy/1'; this version reads 'autoprune-policy/2' \(it has no model fingerprint"):
        load_policy(str(old))


def test_transfer_to_resnet32_gives_a_feasible_policy_and_prints_the_mapping(workspace, capsys):
    tmp, policy_path = workspace
    cfg_path = tmp / "r32.yaml"
    write_experiment(cfg_path, config(tmp, "resnet32", "r32"))
    out = tmp / "r32_policy.json"
    code, stdout, err = cli(capsys, "transfer", str(cfg_path), "--policy", str(policy_path), "--out", str(out))
    assert code in (0, None), err
    assert "| layer3.4.conv1 | conv |" in stdout and "scale" in stdout
    assert "| blocks dropped | scale | predicted | measured |" in stdout  # the drop sets tried (--candidates 3)
    doc = json.loads(out.read_text())
    assert doc["searcher"] == "transfer" and doc["transferred_from"]["model"] == "resnet20"
    assert doc["metrics"]["feasible"] and doc["metrics"]["value"] <= 0.5
    graph = PrunableGraph(load_baseline(parse_config(config(tmp, "resnet32", "r32")), progress=False).model,
                          load_data("digits").example_input(1))
    assert set(doc["ratios"]) == set(graph.unit_names)
    assert [u["name"] for u in doc["fingerprint"]["units"]] == graph.unit_names
    # The transferred file now applies to ResNet-32 by name.
    code, _, err = cli(capsys, "apply", "--policy", str(out), "--model", "resnet32", "--data", "digits",
                       "--checkpoint", str(tmp / "resnet32.pt"), "--no-track", "--out", str(tmp / "r32.pt"))
    assert code in (0, None), err


def test_warm_start_enqueues_the_transferred_candidates_as_the_first_trials(workspace):
    tmp, policy_path = workspace
    cfg = parse_config(config(tmp, "resnet32", "r32warm", search={"episodes": 3, "seed_baselines": False}))  # the warm start alone
    run = run_search(cfg, progress=False, warm_start=load_policy(str(policy_path)))
    first = run.result.history[0]
    assert first.index == 0 and first.metrics.feasible
    # the trials are the re-fitted drop sets (mapped, then shallower / deeper cuts), each distinct
    drops = [frozenset(e.policy.drop) for e in run.result.history]
    assert len(run.result.history) == 3 and len(set(drops)) == 3 and {e.index for e in run.result.history} == {0, 1, 2}
    assert set(first.policy.ratios) == set(run.evaluator.unit_names)
    src, _ = load_policy(str(policy_path))
    # Later stages keep the source's ordering of ratios between the first convs of the stages.
    assert (first.policy.ratios["layer3.0.conv1"] > first.policy.ratios["layer1.0.conv1"]) == (src.ratios["layer3.0.conv1"] > src.ratios["layer1.0.conv1"])


def test_search_with_a_saved_agent_runs_it_zero_shot_on_another_model(workspace, capsys):
    tmp, _ = workspace
    ppo = config(tmp, "resnet20", "ppo20", search={"searcher": "ppo", "episodes": 3, "seed_baselines": False})  # 3 episodes of its own
    write_experiment(tmp / "ppo20.yaml", ppo)
    code, _, err = cli(capsys, "search", str(tmp / "ppo20.yaml"))
    assert code in (0, None), err
    agent = tmp / "ppo20" / "agent"
    assert (agent / "agent.zip").is_file() and (agent / "agent.json").is_file()
    # no baseline seeds: the policy returned must be the agent's own
    write_experiment(tmp / "r32z.yaml", config(tmp, "resnet32", "r32z", search={"episodes": 2, "seed_baselines": False}))
    code, stdout, err = cli(capsys, "search", str(tmp / "r32z.yaml"), "--agent", str(agent), "--zero-shot")
    assert code in (0, None), err
    doc = json.loads((tmp / "r32z" / "policy.json").read_text())
    assert doc["searcher"] == "ppo" and doc["metrics"]["feasible"]
    # ResNet-32's own last block (ResNet-20 has none) is pruned or dropped by name
    assert set(doc["ratios"]) <= {u["name"] for u in doc["fingerprint"]["units"]}
    assert "layer3.4.conv1" in doc["ratios"] or "layer3.4" in doc["drop"]


def test_zero_shot_without_an_agent_is_a_usage_error(workspace, capsys):
    tmp, _ = workspace
    write_experiment(tmp / "z.yaml", config(tmp, "resnet20", "z"))
    code, _, err = cli(capsys, "search", str(tmp / "z.yaml"), "--zero-shot")
    assert code == 2 and "--zero-shot needs --agent" in err


def test_a_policy_searched_with_ignored_layers_applies_and_transfers_keeping_them_unpruned(workspace, capsys):
    tmp, _ = workspace
    raw = config(tmp, "resnet20", "r20ign", search={"episodes": 2})
    raw["model"]["ignore"] = ["layer1.0.conv1"]
    run = run_search(parse_config(raw), progress=False)
    doc = json.loads(run.policy_path.read_text())
    assert doc["ignore"] == ["layer1.0.conv1"] and "layer1.0.conv1" not in doc["ratios"]
    out = tmp / "r20ign.pt"
    code, stdout, err = cli(capsys, "apply", "--policy", str(run.policy_path), "--model", "resnet20", "--data", "digits",
                            "--checkpoint", str(tmp / "resnet20.pt"), "--no-track", "--out", str(out))
    assert code in (0, None), err
    assert "layer1.0.conv1" in stdout
    net, meta = load_pruned(out)
    dense = load_baseline(parse_config(config(tmp, "resnet20", "r20")), progress=False).model
    assert net.get_submodule("layer1.0.conv1").out_channels == dense.get_submodule("layer1.0.conv1").out_channels
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in dense.parameters())
    assert meta["extra"]["ignore"] == ["layer1.0.conv1"]
    # transfer honours them too: the ResNet-32 policy leaves the same layer alone and records it
    write_experiment(tmp / "r32ign.yaml", config(tmp, "resnet32", "r32ign"))
    moved = tmp / "r32ign_policy.json"
    code, _, err = cli(capsys, "transfer", str(tmp / "r32ign.yaml"), "--policy", str(run.policy_path), "--out", str(moved),
                       "--candidates", "1", "--no-track")
    assert code in (0, None), err
    moved_doc = json.loads(moved.read_text())
    assert moved_doc["ignore"] == ["layer1.0.conv1"] and "layer1.0.conv1" not in moved_doc["ratios"]


def test_apply_uses_the_data_and_rounding_the_policy_records(workspace, capsys, tmp_path):
    """apply gives the channel counts the search measured: the policy's round_to and data set, with no flag repeated."""
    tmp, _ = workspace
    run = run_search(parse_config(config(tmp, "resnet20", "r20-round4", pruning={"round_to": 4}, budget={"target": 0.4})), progress=False)
    doc = json.loads(run.policy_path.read_text())
    assert doc["pruning"]["round_to"] == 4 and doc["data"] == "digits"
    # ratios whose widths rounding changes (16 x 0.7 = 11.2 -> 12), whatever policy the search returned
    doc.update(ratios={name: 0.3 for name in doc["ratios"]}, drop=[])
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(doc))
    out = tmp_path / "applied.pt"
    code, _, err = cli(capsys, "apply", "--policy", str(policy_path), "--model", "resnet20", "--checkpoint", str(tmp / "resnet20.pt"),
                       "--out", str(out), "--no-track")
    assert code in (0, None), err
    net, _ = load_pruned(out)
    policy, _ = load_policy(str(policy_path))
    baseline = load_baseline(parse_config(config(tmp, "resnet20", "r20")), progress=False)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    rounded = apply_policy(baseline.model, policy, example_input=baseline.data.example_input(1), round_to=4)
    unrounded = apply_policy(baseline.model, policy, example_input=baseline.data.example_input(1), round_to=None)
    assert shapes(net) == shapes(rounded)
    assert shapes(rounded) != shapes(unrounded), "the policy must prune a width that rounding changes, or this test proves nothing"


def test_apply_refuses_another_data_set_than_the_policys(workspace, capsys):
    tmp, policy_path = workspace
    code, _, err = cli(capsys, "apply", "--policy", str(policy_path), "--model", "resnet20", "--data", "fashion_mnist", "--no-track")
    assert code == 2 and err.count("\n") == 1 and "--data: 'fashion_mnist'" in err and "'digits'" in err
