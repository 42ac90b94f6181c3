"""Zoo: data splits, the Fashion-MNIST IDX reader, name resolution, plugins, models, checkpoints."""

import gzip
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError, DataError, ModelError
from autoprune.training.baseline import load_model_weights, save_checkpoint
from autoprune.zoo import DATASET_NAMES, MODEL_NAMES, Split, build_model, load_data
from autoprune.zoo import data as zoo_data

DIGITS_TOTAL = 1797
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def _rows(*splits) -> list[bytes]:
    """Each sample as bytes (image then label), sorted: a multiset that ignores order."""
    rows = []
    for s in splits:
        for x, y in zip(s.x, s.y):
            rows.append(x.numpy().tobytes() + int(y).to_bytes(1, "big"))
    return sorted(rows)


# ----------------------------------------------------------------------- digits


def test_digits_splits_partition_the_whole_data_set(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy((raw.images.astype(np.float32) / 16.0 - 0.5) / 0.5).unsqueeze(1)
    everything = Split(x, torch.from_numpy(raw.target.astype(np.int64)))

    assert len(digits.test) == round(DIGITS_TOTAL * 0.2) == 359
    assert len(digits.val) == round((DIGITS_TOTAL - 359) * 0.15) == 216
    assert len(digits.train) == DIGITS_TOTAL - 359 - 216
    # every sample lands in exactly one split
    assert _rows(digits.train, digits.val, digits.test) == _rows(everything)


def test_digits_tensors_have_the_documented_shapes_and_ranges(digits):
    assert (digits.in_channels, digits.num_classes, digits.input_size) == (1, 10, 8)
    assert digits.train.x.shape[1:] == (1, 8, 8)
    assert digits.train.x.dtype == torch.float32 and digits.train.y.dtype == torch.int64
    assert digits.train.x.min() == -1.0 and digits.train.x.max() == 1.0
    assert set(digits.train.y.tolist()) == set(range(10))
    assert digits.example_input(3).shape == (3, 1, 8, 8)


def test_digits_split_is_reproducible_for_the_same_seed():
    a, b = load_data("digits", seed=7), load_data("digits", seed=7)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)
    assert torch.equal(a.train.x, b.train.x)


def test_digits_val_split_changes_with_the_seed_but_the_test_split_does_not(digits):
    other = load_data("digits", seed=1)
    assert len(other.val) == len(digits.val)
    assert _rows(other.val) != _rows(digits.val)
    assert torch.equal(other.test.x, digits.test.x) and torch.equal(other.test.y, digits.test.y)
    # the search-visible data (train + val) is the same pool, only divided differently
    assert _rows(other.train, other.val) == _rows(digits.train, digits.val)


def test_val_fraction_sets_the_val_size():
    bundle = load_data("digits", val_fraction=0.5)
    assert len(bundle.val) == round((DIGITS_TOTAL - 359) * 0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_outside_zero_one_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match=r"data\.val_fraction.*0 < val_fraction < 1"):
        load_data("digits", val_fraction=fraction)


# ----------------------------------------------------------------- Fashion-MNIST


def _write_idx(path: Path, array: np.ndarray, *, truncate_body_to: int | None = None) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, optionally cutting the body short."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    body = array.astype(np.uint8).tobytes()
    if truncate_body_to is not None:
        body = body[:truncate_body_to]
    with gzip.open(path, "wb") as f:
        f.write(header + body)


def _fake_fashion(root: Path, n_train: int = 20, n_test: int = 5) -> Path:
    """A tiny Fashion-MNIST: image i is filled with the value 10 * i and labelled i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 100)):
        values = np.arange(n) + offset // 10
        images = np.repeat((values * 10 % 256).astype(np.uint8), 28 * 28).reshape(n, 28, 28)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (values % 10).astype(np.uint8))
    return root


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Hide Debian's Fashion-MNIST package so only the directories under test are searched."""
    monkeypatch.setattr(zoo_data, "DEBIAN_FASHION_MNIST", tmp_path / "no-system-copy")
    monkeypatch.delenv("AUTOPRUNE_DATA", raising=False)


def _recover_index(x: torch.Tensor) -> int:
    """The i of a fake image, from its (constant) normalised pixel value."""
    pixel = float(x.flatten()[0]) * FASHION_STD + FASHION_MEAN
    return int(round(pixel * 255 / 10))


def test_fashion_mnist_reads_idx_files_from_autoprune_data(tmp_path, monkeypatch, no_system_fashion):
    _fake_fashion(tmp_path / "data")
    monkeypatch.setenv("AUTOPRUNE_DATA", str(tmp_path / "data"))

    bundle = load_data("fashion_mnist", seed=0)

    assert (bundle.in_channels, bundle.num_classes, bundle.input_size) == (1, 10, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 2, 5)
    assert bundle.train.x.shape == (18, 1, 28, 28) and bundle.train.x.dtype == torch.float32
    # pixel 10 * i is normalised with the Fashion-MNIST mean and std
    expected_zero = (0.0 - FASHION_MEAN) / FASHION_STD
    all_x = torch.cat([bundle.train.x, bundle.val.x])
    assert torch.isclose(all_x.min(), torch.tensor(expected_zero))
    # labels stay attached to their images through the shuffle
    indices = []
    for split in (bundle.train, bundle.val):
        for x, y in zip(split.x, split.y):
            i = _recover_index(x)
            assert int(y) == i % 10
            indices.append(i)
    assert sorted(indices) == list(range(20))
    assert [_recover_index(x) for x in bundle.test.x] == [10, 11, 12, 13, 14]


def test_fashion_mnist_also_looks_in_a_fashion_mnist_subdirectory(tmp_path, monkeypatch, no_system_fashion):
    _fake_fashion(tmp_path / "root" / "fashion-mnist")
    monkeypatch.setenv("AUTOPRUNE_DATA", str(tmp_path / "root"))
    assert len(load_data("fashion_mnist").test) == 5


def test_fashion_mnist_data_dir_argument_wins_over_the_environment(tmp_path, monkeypatch, no_system_fashion):
    _fake_fashion(tmp_path / "env", n_test=5)
    _fake_fashion(tmp_path / "arg", n_test=3)
    monkeypatch.setenv("AUTOPRUNE_DATA", str(tmp_path / "env"))
    assert len(load_data("fashion_mnist", data_dir=str(tmp_path / "arg")).test) == 3


def test_truncated_idx_body_is_a_data_error(tmp_path, monkeypatch, no_system_fashion):
    root = _fake_fashion(tmp_path / "data")
    images = np.zeros((20, 28, 28), dtype=np.uint8)
    _write_idx(root / "train-images-idx3-ubyte.gz", images, truncate_body_to=10 * 28 * 28)
    monkeypatch.setenv("AUTOPRUNE_DATA", str(root))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is truncated: expected 15680 values, found 7840"):
        load_data("fashion_mnist")


def test_idx_file_cut_inside_its_header_is_a_data_error(tmp_path, monkeypatch, no_system_fashion):
    root = _fake_fashion(tmp_path / "data")
    with gzip.open(root / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, 1) + b"\x00\x00")  # dimension cut in half
    monkeypatch.setenv("AUTOPRUNE_DATA", str(root))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_data("fashion_mnist")


def test_idx_file_with_a_cut_gzip_stream_is_a_data_error(tmp_path, monkeypatch, no_system_fashion):
    root = _fake_fashion(tmp_path / "data")
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])  # a partial download
    monkeypatch.setenv("AUTOPRUNE_DATA", str(root))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_data("fashion_mnist")


def test_missing_fashion_mnist_says_where_to_put_the_files(tmp_path, monkeypatch, no_system_fashion):
    monkeypatch.setenv("AUTOPRUNE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        load_data("fashion_mnist")
    message = str(info.value)
    assert str(tmp_path / "empty") in message
    assert "AUTOPRUNE_DATA" in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message


@pytest.mark.skipif(not zoo_data.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_has_54000_train_6000_val_10000_test(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_DATA", raising=False)
    bundle = load_data("fashion_mnist")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.test.x.shape[1:] == (1, 28, 28)
    assert torch.bincount(bundle.test.y).tolist() == [1000] * 10


# ------------------------------------------------------------------ name lookup


def test_unknown_model_name_is_a_config_error_listing_the_zoo():
    with pytest.raises(ConfigError) as info:
        build_model("vgg99", in_channels=1, num_classes=10, input_size=8)
    message = str(info.value)
    assert "'vgg99'" in message and "model.name" in message
    assert all(name in message for name in MODEL_NAMES)


def test_unknown_data_name_is_a_config_error_listing_the_zoo():
    with pytest.raises(ConfigError) as info:
        load_data("cifar10")
    message = str(info.value)
    assert "'cifar10'" in message and "data.name" in message
    assert all(name in message for name in DATASET_NAMES)


# --------------------------------------------------------------------- plugins


def _plugin(tmp_path: Path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_model_plugin_factory_receives_the_data_shape(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_model", """
        from torch import nn

        def tiny(in_channels, num_classes, input_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, num_classes))
    """)
    model = build_model(f"{mod}:tiny", in_channels=2, num_classes=5, input_size=4)
    assert model[1].in_features == 2 * 4 * 4 and model[1].out_features == 5
    assert model(torch.zeros(3, 2, 4, 4)).shape == (3, 5)


def test_model_plugin_factory_without_arguments_is_called_bare(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_bare", """
        from torch import nn

        def fixed():
            return nn.Linear(3, 2)
    """)
    assert build_model(f"{mod}:fixed", in_channels=1, num_classes=10, input_size=8).out_features == 2


def test_data_plugin_factory_receives_the_seed(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_data", """
        import torch
        from autoprune.zoo import DataBundle, Split

        def blobs(seed):
            g = torch.Generator().manual_seed(seed)
            split = lambda n: Split(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
            return DataBundle("blobs", split(30), split(10), split(10), in_channels=1, num_classes=3, input_size=8)
    """)
    a, b, c = load_data(f"{mod}:blobs", seed=1), load_data(f"{mod}:blobs", seed=1), load_data(f"{mod}:blobs", seed=2)
    assert a.name == "blobs" and (len(a.train), len(a.val), len(a.test)) == (30, 10, 10)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("ref", ["nomodule:", ":factory", "ap_no_such_module_xyz:factory"])
def test_malformed_or_unimportable_reference_is_a_config_error_naming_it(ref):
    with pytest.raises(ConfigError, match="model.name") as info:
        build_model(ref, in_channels=1, num_classes=10, input_size=8)
    assert repr(ref) in str(info.value)


def test_reference_to_a_missing_attribute_is_a_config_error_naming_it(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_noattr", "x = 1\n")
    with pytest.raises(ConfigError, match=r"no attribute 'factory'.*'ap_plugin_noattr:factory'"):
        load_data(f"{mod}:factory")


def test_reference_to_a_non_callable_is_a_config_error(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_notcallable", "x = 1\n")
    with pytest.raises(ConfigError, match="'ap_plugin_notcallable:x' is not callable"):
        build_model(f"{mod}:x", in_channels=1, num_classes=10, input_size=8)


def test_module_failing_at_import_is_a_config_error_naming_the_reference(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_broken", "raise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"cannot import module 'ap_plugin_broken'.*RuntimeError: no GPU here"):
        build_model(f"{mod}:net", in_channels=1, num_classes=10, input_size=8)


def test_factory_raising_is_a_config_error_naming_the_reference_and_the_cause(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_raises", """
        def net(in_channels, num_classes, input_size):
            raise ValueError("depth must be even")
    """)
    with pytest.raises(ConfigError, match=r"'ap_plugin_raises:net' raised ValueError: depth must be even") as info:
        build_model(f"{mod}:net", in_channels=1, num_classes=10, input_size=8)
    assert isinstance(info.value.__cause__, ValueError)


def test_factory_returning_the_wrong_type_is_rejected(tmp_path, monkeypatch):
    mod = _plugin(tmp_path, monkeypatch, "ap_plugin_wrongtype", """
        def net(in_channels, num_classes, input_size):
            return "a model"

        def data(seed):
            return [1, 2, 3]
    """)
    with pytest.raises(ModelError, match=r"'ap_plugin_wrongtype:net' returned str, expected torch.nn.Module"):
        build_model(f"{mod}:net", in_channels=1, num_classes=10, input_size=8)
    with pytest.raises(ConfigError, match=r"'ap_plugin_wrongtype:data' returned list"):
        load_data(f"{mod}:data")


# ---------------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_follows_in_channels_and_num_classes(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=7, input_size=8).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 8, 8))
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56"])
def test_cifar_resnets_have_6n_plus_2_weighted_layers(name):
    model = build_model(name, in_channels=1, num_classes=10, input_size=8)
    # 3x3 convs on the main path plus the classifier (1x1 shortcut convs do not count)
    main = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(main) + 1 == int(name.removeprefix("resnet"))


def test_checkpoint_loads_with_weights_only_and_restores_the_model(tmp_path, make_model, example_input):
    model = make_model("vgg_small", seed=3)
    path = tmp_path / "ckpt" / "vgg.pt"
    save_checkpoint(path, model, {"model": "vgg_small", "val_accuracy": 0.5, "settings": {"epochs": 2}})

    raw = torch.load(path, weights_only=True)
    assert raw["meta"] == {"model": "vgg_small", "val_accuracy": 0.5, "settings": {"epochs": 2}}
    assert raw["state_dict"].keys() == model.state_dict().keys()
    assert not path.with_suffix(".pt.tmp").exists()

    fresh = make_model("vgg_small", seed=4)
    meta = load_model_weights(fresh, path)
    assert meta["model"] == "vgg_small"
    with torch.no_grad():
        assert torch.equal(fresh.eval()(example_input), model(example_input))
