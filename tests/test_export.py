"""Specification of autoprune.formats.export: the pickle-free pruned-model file, ONNX export, int8, the ORT backend."""

from __future__ import annotations

import copy
import sys
import textwrap

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.formats.onnx import export_onnx, quantize_onnx
from autoprune.formats.pruned import FORMAT, load_pruned, save_pruned
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy, pruning_history
from autoprune.measure.backends import get_backend
from autoprune.measure.latency import measure_latency

DIGITS = {"in_channels": 1, "num_classes": 10, "input_size": 8}

# Set when an unpickled _Trap runs its __setstate__: proves a file was (not) unpickled.
UNPICKLED: list[str] = []


class _Trap:
    def __init__(self) -> None:
        self.armed = True

    def __setstate__(self, state: dict) -> None:
        UNPICKLED.append("trap")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def pruned_resnet20(trained_resnet20, example_input) -> nn.Module:
    """The trained digits resnet20 with every unit at 40% and one block dropped."""
    g = PrunableGraph(trained_resnet20, example_input)
    return apply_policy(trained_resnet20, Policy.uniform(g.unit_names, 0.4, drop=g.block_names[1:2]), graph=g).eval()


@pytest.fixture
def saved(tmp_path, pruned_resnet20):
    return save_pruned(tmp_path / "out" / "pruned.pt", pruned_resnet20, model_name="resnet20", extra={"test_accuracy": 0.9}, **DIGITS)


# ------------------------------------------------------------------ save / load


def test_saved_pruned_model_loads_back_with_the_same_structure_and_outputs(saved, pruned_resnet20, example_input):
    model, meta = load_pruned(saved)
    assert not model.training
    assert n_params(model) == n_params(pruned_resnet20)
    with torch.no_grad():
        assert torch.allclose(model(example_input), pruned_resnet20(example_input), atol=1e-6)
    assert meta["format"] == FORMAT
    assert meta["model"] == {"name": "resnet20", **DIGITS}
    assert meta["history"] == pruning_history(pruned_resnet20)
    assert meta["extra"] == {"test_accuracy": 0.9}
    assert "state_dict" not in meta
    assert not list(saved.parent.glob(".*tmp")), "the temporary file must be renamed away"


def test_a_file_holding_pickled_objects_is_refused_without_running_them(tmp_path, pruned_resnet20):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {"name": "resnet20", **DIGITS}, "history": [], "state_dict": {}, "extra": _Trap()}, path)
    with pytest.raises(ModelError, match=r"evil\.pt: .*pickled Python objects \(\S*_Trap\)"):
        load_pruned(path)
    assert UNPICKLED == []


def test_extra_that_would_need_pickle_is_refused_when_saving(tmp_path, pruned_resnet20):
    with pytest.raises(ConfigError, match=r"extra\.policy: Policy cannot be stored without pickle"):
        save_pruned(tmp_path / "p.pt", pruned_resnet20, model_name="resnet20", extra={"policy": Policy()}, **DIGITS)
    assert not (tmp_path / "p.pt").exists()


def test_truncated_file_raises_one_line_model_error_naming_it(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"pruned\.pt: cannot read as an autoprune pruned model: the file is truncated") as err:
        load_pruned(saved)
    assert "\n" not in str(err.value)


def test_missing_file_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"nothing\.pt: no such file"):
        load_pruned(tmp_path / "nothing.pt")


def test_wrong_format_tag_is_refused(tmp_path, pruned_resnet20):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": pruned_resnet20.state_dict()}, path)
    with pytest.raises(ModelError, match=r"plain\.pt: not an autoprune pruned model \(format tag None"):
        load_pruned(path)
    torch.save({"format": "autoprune-pruned/99"}, path)
    with pytest.raises(ModelError, match="'autoprune-pruned/99'"):
        load_pruned(path)


def test_weights_that_do_not_fit_the_model_are_a_model_error(tmp_path, pruned_resnet20):
    path = save_pruned(tmp_path / "p.pt", pruned_resnet20, model_name="resnet20", **DIGITS)
    data = torch.load(path, weights_only=True)
    data["history"] = []  # dense structure, pruned weights
    torch.save(data, path)
    with pytest.raises(ModelError, match=r"p\.pt: the saved weights do not fit the rebuilt model 'resnet20'"):
        load_pruned(path)


def test_user_model_factory_reference_round_trips(tmp_path, monkeypatch, example_input):
    (tmp_path / "ap_export_plugin.py").write_text(textwrap.dedent("""
        from torch import nn

        def net(in_channels, num_classes, input_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, 32), nn.ReLU(), nn.Linear(32, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ap_export_plugin", raising=False)
    from autoprune.zoo import build_model

    torch.manual_seed(0)
    dense = build_model("ap_export_plugin:net", **DIGITS).eval()
    g = PrunableGraph(dense, example_input)
    pruned = apply_policy(dense, Policy.uniform(g.unit_names, 0.5), graph=g).eval()
    path = save_pruned(tmp_path / "user.pt", pruned, model_name="ap_export_plugin:net", **DIGITS)
    model, _ = load_pruned(path)
    assert model[1].out_features == 16
    with torch.no_grad():
        assert torch.allclose(model(example_input), pruned(example_input), atol=1e-6)


def test_unknown_model_name_in_file_names_the_file(tmp_path, pruned_resnet20):
    path = save_pruned(tmp_path / "p.pt", pruned_resnet20, model_name="resnet20", **DIGITS)
    data = torch.load(path, weights_only=True)
    data["model"]["name"] = "nosuchnet"
    torch.save(data, path)
    with pytest.raises(ConfigError, match=r"p\.pt: model\.name: unknown model 'nosuchnet'"):
        load_pruned(path)


# ------------------------------------------------------------------ ONNX


def test_onnx_export_of_a_pruned_model_matches_torch(tmp_path, pruned_resnet20, example_input):
    pytest.importorskip("onnxruntime")
    model = copy.deepcopy(pruned_resnet20).train()
    out = export_onnx(model, example_input, tmp_path / "m.onnx")
    assert out["path"] == str(tmp_path / "m.onnx")
    assert out["max_abs_diff"] < 1e-4
    assert out["opset"] >= 13
    assert model.training, "the caller's training flag is restored"
    import onnxruntime

    session = onnxruntime.InferenceSession(out["path"], providers=["CPUExecutionProvider"])
    batch5 = torch.randn(5, 1, 8, 8)
    got = session.run(None, {"input": batch5.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), pruned_resnet20(batch5), atol=1e-4), "the batch axis is dynamic"


def test_int8_quantised_onnx_is_smaller_and_still_runs(tmp_path, pruned_resnet20, example_input):
    onnxruntime = pytest.importorskip("onnxruntime")
    src = export_onnx(pruned_resnet20, example_input, tmp_path / "m.onnx", check=False)["path"]
    dst = quantize_onnx(src, tmp_path / "int8" / "m.int8.onnx")
    assert 0 < dst.stat().st_size < 0.6 * (tmp_path / "m.onnx").stat().st_size
    session = onnxruntime.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": example_input.numpy()})[0].shape == (2, 10)


def test_quantising_a_missing_file_is_a_config_error(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match=r"no ONNX file at .*missing\.onnx"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx")


def test_onnxruntime_latency_backend_times_a_model(pruned_resnet20, example_input):
    pytest.importorskip("onnxruntime")
    backend = get_backend("onnxruntime")
    assert backend.name == "onnxruntime"
    stats = measure_latency(pruned_resnet20, example_input, backend=backend, warmup=1, repeats=5, threads=1)
    assert stats.n == 5 and stats.median_ms > 0


class _Sinc(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sinc(x)


class _SincNet(nn.Module):
    """conv -> act (torch.sinc: no ONNX symbolic in torch 2.13's exporter) -> conv, and the same op once more in its own forward."""

    def __init__(self, in_forward: bool = False) -> None:
        super().__init__()
        self.c1, self.act, self.c2, self.in_forward = nn.Conv2d(1, 4, 3), _Sinc(), nn.Conv2d(4, 4, 3), in_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        return self.c2(torch.sinc(h) if self.in_forward else self.act(h))


@pytest.mark.parametrize(("in_forward", "who"), [(False, "module 'act' (_Sinc)"), (True, "_SincNet.forward")])
def test_an_operation_the_onnx_exporter_lacks_is_named_with_the_module_calling_it_in_one_line(tmp_path, capfd, in_forward, who):
    with pytest.raises(ModelError) as info:
        export_onnx(_SincNet(in_forward).eval(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    message = str(info.value)
    assert message.startswith(f"cannot export _SincNet to ONNX: {who} calls aten::sinc, which the ONNX exporter does not support")
    assert "\n" not in message and not (tmp_path / "m.onnx").exists()
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump is kept off standard output
