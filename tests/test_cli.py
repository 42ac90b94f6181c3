"""The command line, run as a user would: exit codes, one-line errors, real training on digits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from helpers import Result, assert_user_error

from autoprune import __version__
from autoprune.zoo import build_model


def autoprune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoprune", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_version_prints_the_package_version(tmp_path):
    result = autoprune("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"autoprune {__version__}"


def test_config_with_bad_value_is_one_line_error_with_exit_code_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {name: resnet20}\nsearch: {searcher: ppo2}\n")
    line = assert_user_error(Result.of(autoprune("config", "bad.yaml", cwd=tmp_path)))
    assert line.startswith("autoprune: error: bad.yaml: search.searcher: 'ppo2' is not allowed; allowed: 'ppo'")


def test_config_with_yaml_syntax_error_is_one_line_error(tmp_path):
    (tmp_path / "broken.yaml").write_text("model: {name: resnet20\n")
    line = assert_user_error(Result.of(autoprune("config", "broken.yaml", cwd=tmp_path)))
    assert "broken.yaml:2:" in line and "YAML syntax error" in line


def test_config_prints_the_resolved_config_with_overrides(tmp_path):
    (tmp_path / "good.yaml").write_text("name: demo\nmodel: {name: resnet20}\n")
    result = autoprune("config", "good.yaml", "--set", "search.episodes=7", "--set", "budget.target=0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "episodes: 7" in result.stdout
    assert "target: 0.25" in result.stdout
    assert "output_dir: runs/demo" in result.stdout


def test_config_flat_prints_dotted_keys(tmp_path):
    (tmp_path / "good.yaml").write_text("model: {name: mlp}\n")
    result = autoprune("config", "good.yaml", "--flat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model.name=mlp" in result.stdout.splitlines()


def test_config_with_bad_override_is_one_line_error(tmp_path):
    (tmp_path / "good.yaml").write_text("model: {name: resnet20}\n")
    line = assert_user_error(Result.of(autoprune("config", "good.yaml", "--set", "train.epochs=0", cwd=tmp_path)))
    assert line == "autoprune: error: override 'train.epochs=0': train.epochs: 0 is not allowed; must be >= 1"


def test_unknown_command_is_a_usage_error(tmp_path):
    result = autoprune("nosuch", cwd=tmp_path)
    assert result.returncode == 2
    assert "nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_with_unknown_model_names_it_in_one_line(tmp_path):
    line = assert_user_error(Result.of(autoprune("train", "--model", "nosuch", "--data", "digits", cwd=tmp_path)))
    assert "'nosuch'" in line and "'resnet20'" in line


def test_train_saves_a_checkpoint_that_loads_safely_and_is_reused(tmp_path):
    result = autoprune("train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--checkpoint", "tmp/x.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tmp/x.pt (trained)" in result.stdout
    assert "test accuracy" in result.stdout

    ckpt = torch.load(tmp_path / "tmp" / "x.pt", map_location="cpu", weights_only=True)
    model = build_model("mlp", in_channels=1, num_classes=10, input_size=8)
    model.load_state_dict(ckpt["state_dict"])
    assert ckpt["meta"]["model"] == "mlp" and ckpt["meta"]["data"] == "digits"

    again = autoprune("train", "--model", "mlp", "--data", "digits", "--checkpoint", "tmp/x.pt", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "tmp/x.pt (loaded)" in again.stdout
