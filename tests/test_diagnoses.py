"""Foreign data and broken models are named for what they are (issue 24, item 5): one line, exit 2, the field or file.

Before, IDX images of another shape, image and label counts that differ, and a plugin whose
weights are NaN before training all ended in advice about ``train.lr``.
"""

from __future__ import annotations

import gzip
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, cli, tiny_experiment, write_experiment

from autoprune.errors import DataError
from autoprune.formats.onnx import export_onnx
from autoprune.formats.pruned import save_pruned
from autoprune.training.baseline import save_checkpoint
from autoprune.zoo import DataBundle, Split, build_model, load_data

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped, as Fashion-MNIST ships them."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def idx_folder(root: Path, *, train: int = 60, labels: int | None = None, height: int = 28, width: int = 28) -> Path:
    """A Fashion-MNIST-like folder of four IDX files: ``train`` images of ``height`` x ``width``, ``labels`` labels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / FILES[0], rng.integers(0, 255, (train, height, width)))
    write_idx(root / FILES[1], rng.integers(0, 10, (train if labels is None else labels,)))
    write_idx(root / FILES[2], rng.integers(0, 255, (20, height, width)))
    write_idx(root / FILES[3], rng.integers(0, 10, (20,)))
    return root


def test_idx_images_of_another_shape_are_named_with_their_file_and_both_shapes(tmp_path, capsys):
    folder = idx_folder(tmp_path / "idx", height=64, width=48)
    res = cli(capsys, "train", "--model", "resnet20", "--data", "fashion_mnist", "--data-dir", str(folder), "--epochs", "1",
              "--checkpoint", str(tmp_path / "ckpt.pt"))
    assert_user_error(res, "data.data_dir", FILES[0], "64x48", "28x28", absent=("train.lr", "chance"))
    assert not (tmp_path / "ckpt.pt").exists()


def test_idx_labels_fewer_than_images_are_named_with_both_files_and_counts(tmp_path, capsys):
    folder = idx_folder(tmp_path / "idx", train=2000, labels=1500)
    res = cli(capsys, "train", "--model", "resnet20", "--data", "fashion_mnist", "--data-dir", str(folder), "--epochs", "1",
              "--checkpoint", str(tmp_path / "ckpt.pt"))
    assert_user_error(res, "data.data_dir", FILES[1], "1500 labels", "2000 images", absent=("train.lr", "chance"))


def test_a_small_idx_folder_of_the_right_shape_loads(tmp_path):
    bundle = load_data("fashion_mnist", data_dir=str(idx_folder(tmp_path / "idx")))
    assert bundle.train.x.shape[1:] == (1, 28, 28) and len(bundle.train) + len(bundle.val) == 60 and len(bundle.test) == 20


def test_a_checkpoint_trained_on_other_inputs_is_refused_naming_both_shapes(tmp_path, capsys):
    """ResNets pool globally, so 28x28 weights run on 8x8 digits: at chance, unless refused."""
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10, input_size=28)
    save_checkpoint(tmp_path / "fmnist.pt", model, {"model": "resnet20", "data": "fashion_mnist"})
    res = cli(capsys, "train", "--model", "resnet20", "--data", "digits", "--checkpoint", str(tmp_path / "fmnist.pt"))
    assert_user_error(res, "checkpoint", "fmnist.pt", "1x28x28", "1x8x8", "'digits'", absent=("train.lr",))


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_plugin_model_with_nan_weights_before_training_is_named_as_such(tmp_path, monkeypatch, capsys):
    mod = _plugin(tmp_path, monkeypatch, "ap_nan_init", """
        import torch
        from torch import nn

        def net(in_channels, num_classes, input_size):
            model = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))
            with torch.no_grad():
                model[1].weight.fill_(float("nan"))
            return model
    """)
    res = cli(capsys, "train", "--model", f"{mod}:net", "--data", "digits", "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt"))
    assert_user_error(res, "model.name", f"'{mod}:net'", "NaN", "before any training", "1.weight", absent=("train.lr",))
    assert not (tmp_path / "c.pt").exists()


def test_a_data_plugin_with_fewer_labels_than_images_is_named(tmp_path, monkeypatch, capsys):
    mod = _plugin(tmp_path, monkeypatch, "ap_short_labels", """
        import torch
        from autoprune.zoo import DataBundle, Split

        def data(seed):
            split = lambda n, m: Split(torch.zeros(n, 1, 8, 8), torch.zeros(m, dtype=torch.long))
            return DataBundle("short", split(20, 15), split(5, 5), split(5, 5), in_channels=1, num_classes=2, input_size=8)
    """)
    res = cli(capsys, "train", "--model", "mlp", "--data", f"{mod}:data", "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt"))
    assert_user_error(res, "data.name", f"'{mod}:data'", "20 images but 15 labels", absent=("train.lr",))


def test_a_bundle_whose_images_differ_from_its_declared_shape_is_refused():
    split = Split(torch.zeros(4, 1, 64, 48), torch.zeros(4, dtype=torch.long))
    bundle = DataBundle("odd", split, split, split, in_channels=1, num_classes=2, input_size=28)
    with pytest.raises(DataError, match=r"holds images of 1x64x48, but the data set declares 1x28x28"):
        bundle.check()


def test_example_input_repeats_images_to_the_batch_asked_for(digits):
    n = len(digits.train)
    batch = digits.example_input(n + 5)
    assert batch.shape == (n + 5, 1, 8, 8)
    assert torch.equal(batch[n:], digits.train.x[:5])


def test_the_zoo_builds_any_resnet_depth_of_the_form_6n_plus_2():
    for depth in (8, 44, 110):
        model = build_model(f"resnet{depth}", in_channels=1, num_classes=10, input_size=8)
        convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
        assert convs == depth - 1  # the stem and two per basic block; the last layer is the classifier
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_resnet_depth_that_is_not_6n_plus_2_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: {name: resnet45}\n")
    line = assert_user_error(cli(capsys, "config", str(tmp_path / "c.yaml")), "model.name", "'resnet45'", "6n+2", "resnet44")
    assert "allowed: 'resnet20'" not in line
    (tmp_path / "c.yaml").write_text("model: {name: resnet44}\n")
    res = cli(capsys, "config", str(tmp_path / "c.yaml"))
    assert res.code == 0 and "name: resnet44" in res.out


def test_an_unreachable_target_in_ms_is_reported_as_the_field_and_value_the_user_set(tmp_path, capsys):
    """Before: ``budget.target: 0.000`` for ``budget.target_ms: 0.0001``."""
    path = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, budget={"metric": "latency", "target": None, "target_ms": 0.0001}))
    line = assert_user_error(cli(capsys, "search", str(path)), "budget.target_ms: 0.0001 ms", "of dense's", "raise budget.target_ms",
                             absent=("budget.target:",))
    assert " ms, predicted)" in line


def test_evaluate_given_the_onnx_export_asks_for_the_pruned_model_beside_it(tmp_path, capsys):
    model = build_model("mlp", in_channels=1, num_classes=10, input_size=8)
    save_pruned(tmp_path / "model.pt", model, model_name="mlp", in_channels=1, num_classes=10, input_size=8)
    export_onnx(model, torch.zeros(1, 1, 8, 8), tmp_path / "model.onnx")
    for name in ("model.onnx", "model.int8.onnx"):
        (tmp_path / name).touch(exist_ok=True)
        res = cli(capsys, "evaluate", str(tmp_path / name), "--data", "digits")
        assert_user_error(res, name, "ONNX export", f"'{tmp_path / 'model.pt'}'")
