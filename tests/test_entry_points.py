"""Every entry point gets its graph from the one safety net, so a faulty model ends the same way in each.

The fault-injection plug-ins of ``tests/fault_plugins.py`` go through ``check``, ``estimate``,
``search``, ``run``, ``apply``, ``transfer`` and ``worker`` as a user would run them:

- a model whose only prunable unit's pruned forward raises (``build_raising`` with its two healthy
  convs in ``model.ignore``) is refused by every command with the same one line and exit 2, no
  traceback, before any baseline training when no checkpoint exists;
- a model whose stem Torch-Pruning silently mis-prunes (``build_corrupting``) has that unit left
  dense by every command, with the same warning line naming it, and never pruned;
- a model no ONNX runtime can serve (``build_unexportable``: ``torch.sinc``, which the ONNX exporter
  lacks) is refused by every command that serves or delivers ONNX (``latency.backend:
  onnxruntime``, or ``export.onnx`` on eager PyTorch) in one line naming the module, the operation
  and the runtime, before any baseline training or search, with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from helpers.cli import assert_user_error, cli
from helpers.experiments import tiny_experiment, write_experiment

from autoprune.app.commands import train_baseline
from autoprune.app.experiment import baseline_checkpoint
from autoprune.config.loading import parse_config
from autoprune.search.distributed import publish_study

RAISING, CORRUPTING, UNEXPORTABLE = "fault_plugins:build_raising", "fault_plugins:build_corrupting", "fault_plugins:build_unexportable"
HEALTHY = ["mid.0", "out.0"]
REFUSAL = ("autoprune: error: the model has nothing to prune: no unit passes the checks (stem.0: surgery check failed: "
           "surgery fails (RuntimeError: expected 16 channels, got ")
LEFT_DENSE = "unit 'stem.0' is not pruned: surgery check failed: pruned output differs from the masked dense model by "


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained dense weights of the plug-ins (three epochs on digits: above chance, so every command accepts them)."""
    folder = tmp_path_factory.mktemp("faulty-baselines")
    out = {}
    for model in (RAISING, CORRUPTING, UNEXPORTABLE):
        path = folder / f"{model.split(':')[1]}.pt"
        torch.manual_seed(0)
        train_baseline(model, "digits", epochs=3, checkpoint=path, augment=False, progress=False)
        out[model] = path
    return out


def experiment(tmp_path: Path, model: str, checkpoint: Path | None, ignore: list[str], **sections: object) -> Path:
    cfg = tiny_experiment(tmp_path, model={"name": model, "checkpoint": str(checkpoint) if checkpoint else None, "ignore": ignore},
                          budget={"metric": "macs", "target": 0.9}, search={"searcher": "optuna", "episodes": 3},
                          finetune={"epochs": 1}, **sections)
    return write_experiment(tmp_path / "exp.yaml", cfg)


def policy_file(tmp_path: Path, ratios: dict[str, float], ignore: list[str], backend: str | None = None) -> Path:
    path = tmp_path / "given_policy.json"
    path.write_text(json.dumps({"ratios": ratios, "drop": [], "ignore": ignore, **({"backend": {"name": backend}} if backend else {})}))
    return path


def stored_study(tmp_path: Path, config: Path) -> tuple[str, str]:
    """An Optuna study as ``autoprune search`` publishes it for workers (the experiment's config, 3 episodes)."""
    import yaml

    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(storage=storage, study_name="faulty", direction="maximize")
    publish_study(study, parse_config(yaml.safe_load(config.read_text())).model_dump(mode="json"), 3)
    return storage, "faulty"


def every_entry_point(tmp_path: Path, model: str, checkpoint: Path, ignore: list[str], policy: Path,
                      **sections: object) -> dict[str, list[str]]:
    """The argv of each command on ``model`` (its dense weights at ``checkpoint``; ``sections`` of the config, e.g. its latency backend)."""
    config = experiment(tmp_path, model, checkpoint, ignore, **sections)
    storage, study = stored_study(tmp_path, config)
    backend = sections.get("latency", {}).get("backend")  # type: ignore[union-attr]
    return {
        "check": ["check", model, "--data", "digits", *(a for name in ignore for a in ("--ignore", name)),
                  *(["--backend", backend] if backend else [])],
        "estimate": ["estimate", str(config), "--ratios", "0.5"],
        "search": ["search", str(config)],
        "run": ["run", str(config)],
        "apply": ["apply", "--policy", str(policy), "--model", model, "--data", "digits", "--checkpoint", str(checkpoint),
                  "--out", str(tmp_path / "pruned.pt"), "--no-track"],
        "transfer": ["transfer", str(config), "--policy", str(policy), "--out", str(tmp_path / "transferred.json"), "--no-track"],
        "worker": ["worker", "--storage", storage, "--study", study, "--n-trials", "1"],
    }


def warnings_about_stem(err: str) -> int:
    """How often stderr says the stem is left dense (rich wraps log lines: whitespace is normalised first)."""
    return " ".join(err.split()).count(LEFT_DENSE)


def test_a_model_with_nothing_left_after_the_checks_is_refused_by_every_entry_point_with_the_same_line(tmp_path, capsys, checkpoints):
    policy = policy_file(tmp_path, {"stem.0": 0.5}, HEALTHY)
    lines = {}
    for command, argv in every_entry_point(tmp_path, RAISING, checkpoints[RAISING], HEALTHY, policy).items():
        line = assert_user_error(cli(capsys, *argv))
        assert line.startswith(REFUSAL), f"{command}: {line}"
        lines[command] = line
    assert len(set(lines.values())) == 1, lines


@pytest.mark.parametrize("command", ["estimate", "run"])
def test_without_a_checkpoint_the_refusal_comes_before_the_baseline_is_trained(tmp_path, capsys, command):
    config = experiment(tmp_path, RAISING, None, HEALTHY)
    line = assert_user_error(cli(capsys, command, str(config), *(["--ratios", "0.5"] if command == "estimate" else [])))
    assert line.startswith(REFUSAL)
    assert not baseline_checkpoint(RAISING, "digits").exists()  # nothing was trained


def test_a_unit_the_net_leaves_dense_is_left_dense_by_every_entry_point_with_one_warning_naming_it(tmp_path, capsys, checkpoints):
    found = tmp_path / "out" / "policy.json"  # written by search (then by run), applied and transferred after them
    argvs = every_entry_point(tmp_path, CORRUPTING, checkpoints[CORRUPTING], [], found)
    for command, argv in argvs.items():
        res = cli(capsys, *argv)
        assert res.code == 0 and "Traceback" not in res.err, f"{command}: exit {res.code}\n{res.err}"
        assert warnings_about_stem(res.err) == 1, f"{command}:\n{res.err}"
        if command == "check":
            assert "left dense: surgery check failed" in " ".join(res.out.split())
    policy = json.loads(found.read_text())
    assert set(policy["ratios"]) == set(HEALTHY) and {u["name"] for u in policy["fingerprint"]["units"]} == set(HEALTHY)
    assert set(json.loads((tmp_path / "transferred.json").read_text())["ratios"]) <= set(HEALTHY)
    trials = optuna.load_study(study_name="faulty", storage=f"sqlite:///{tmp_path}/study.db").trials
    assert trials and all(not any("stem" in p for p in t.params) for t in trials)


#: The config sections that make a run serve or deliver ONNX, and the runtime its refusal names.
SERVED_AS_ONNX = {
    "onnxruntime": ({"latency": {"backend": "onnxruntime"}}, "onnxruntime (latency.backend)"),
    "export.onnx": ({"export": {"onnx": True}}, "ONNX (model.onnx, export.onnx)"),
}
NOT_EXPORTABLE = "module 'act' (Sinc) calls aten::sinc, which the ONNX exporter does not support"


@pytest.mark.parametrize("served", SERVED_AS_ONNX)
@pytest.mark.parametrize("command", ["estimate", "search", "run"])
def test_a_model_onnx_cannot_serve_is_refused_before_training_naming_module_operation_and_runtime(tmp_path, capfd, command, served):
    sections, runtime = SERVED_AS_ONNX[served]
    config = experiment(tmp_path, UNEXPORTABLE, None, [], **sections)
    res = cli(capfd, command, str(config), *(["--ratios", "0.5"] if command == "estimate" else []))
    line = assert_user_error(res, NOT_EXPORTABLE)
    assert line.startswith(f"autoprune: error: the dense model does not export to {runtime}: "), line
    assert "Torch IR graph" not in res.out  # the exporter's graph dump on file descriptor 1 is silenced
    assert not baseline_checkpoint(UNEXPORTABLE, "digits").exists()  # nothing was trained
    assert not (tmp_path / "out").exists()  # no policy, no model, no folder


def test_with_trained_weights_every_entry_point_refuses_a_model_onnxruntime_cannot_serve_before_any_search(tmp_path, capfd, checkpoints):
    policy = policy_file(tmp_path, {"a.0": 0.5}, [], backend="onnxruntime")
    argvs = every_entry_point(tmp_path, UNEXPORTABLE, checkpoints[UNEXPORTABLE], [], policy, latency={"backend": "onnxruntime"})
    for command, argv in argvs.items():
        line = assert_user_error(cli(capfd, *argv), NOT_EXPORTABLE)
        assert line.startswith("autoprune: error: the dense model does not export to onnxruntime (latency.backend): "), f"{command}: {line}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "pruned.pt").exists() and not (tmp_path / "transferred.json").exists()
    assert not optuna.load_study(study_name="faulty", storage=f"sqlite:///{tmp_path}/study.db").trials  # the worker ran no trial
