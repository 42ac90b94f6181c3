"""Data sets held in memory as tensors: Fashion-MNIST (IDX files), scikit-learn digits, user plugins.

Text data sets for encoders (``fortunes``, :data:`TEXT_DATASET_NAMES`) live in :mod:`autoprune.zoo.text`.

Every data set is split three ways. ``train`` and ``val`` are carved from the
original training set with a fixed seed; the search only ever sees ``val``.
``test`` is the original test split, used only for final evaluation.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import ConfigError, DataError
from autoprune.zoo.plugins import call_factory, is_reference
from autoprune.zoo.text import TEXT_DATASET_NAMES

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DATASET_NAMES = ("fashion_mnist", "digits")

#: ``(in_channels, num_classes, input_size)`` of each built-in data set, known without loading it
#: (the memory check before any work builds the model at this shape).
DATA_SHAPES: dict[str, tuple[int, int, int]] = {"fashion_mnist": (1, 10, 28), "digits": (1, 10, 8)}


@dataclass
class Split:
    """Inputs ``x`` (N, C, H, W float32, normalised) and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int | None) -> Split:
        """The first ``n`` samples (all when ``n`` is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, augment: bool = False, flip: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches: ``x`` of shape ``(B, C, H, W)``, ``y`` of shape ``(B,)``, ``B <= batch_size``.

        ``augment`` adds random crops (pad 2) and, if ``flip``, horizontal flips.
        """
        n = len(self)
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = self.x[idx], self.y[idx]
            if augment and x.dim() == 4:
                x = _augment(x, seed + start, flip)
            yield x, y


def _augment(x: torch.Tensor, seed: int, flip_ok: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    pad = 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=g) < (0.5 if flip_ok else 0.0)
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


@dataclass
class DataBundle:
    """A data set split for pruning search: ``train``, ``val`` (search only) and ``test`` (final only)."""

    name: str
    train: Split
    val: Split
    test: Split
    in_channels: int
    num_classes: int
    input_size: int
    augment_ok: bool = True  # False where crops/flips change the meaning (8x8 digits)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A batch shaped like the model's input, ``(batch_size, C, H, W)``, taken from the training split.

        This is the ``example_input`` the graph, the MAC counter and the latency timer are given
        (MACs are per sample, so its batch size does not change them). A batch larger than the
        training split repeats its images, so latency is timed at the batch size asked for.
        """
        x = self.train.x
        if batch_size <= len(x) or len(x) == 0:
            return x[:batch_size].clone()
        return x.repeat(-(-batch_size // len(x)), *([1] * (x.dim() - 1)))[:batch_size].contiguous()

    def check(self, source: str = "data.name") -> DataBundle:
        """Return this bundle if every split's images fit its declared shape and match its labels in number.

        Raises:
            DataError: naming ``source``, the split, what it holds and what was declared.
        """
        declared = (self.in_channels, self.input_size, self.input_size)
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            n_x, n_y = int(split.x.shape[0]) if split.x.dim() else 0, int(split.y.shape[0]) if split.y.dim() else 0
            if n_x != n_y:
                raise DataError(f"{source}: the {split_name} split of {self.name!r} holds {n_x} images but {n_y} labels; "
                                "each image needs one label")
            if n_x and tuple(split.x.shape[1:]) != declared:
                shape = "x".join(str(d) for d in split.x.shape[1:])
                raise DataError(f"{source}: the {split_name} split of {self.name!r} holds images of {shape}, but the data set "
                                f"declares {'x'.join(map(str, declared))} (in_channels x input_size x input_size)")
        return self


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # EOFError: gzip stream cut short (partial download)
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated")
    _, _, dtype_code, ndim = struct.unpack(">BBBB", data[:4])
    if dtype_code != 0x08:
        raise DataError(f"IDX file {path}: unsupported element type 0x{dtype_code:02x}, expected unsigned bytes")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"IDX file {path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the Fashion-MNIST IDX files: ``data_dir`` (only there when given), else ``$AUTOPRUNE_DATA``, then Debian's package.

    Raises:
        DataError: naming where the four files are expected.
    """
    if data_dir is not None:
        # An explicit directory is used as given: falling back to another copy would hide the mistake.
        d = Path(data_dir)
        for candidate in (d, d / "fashion-mnist"):
            if all((candidate / f).is_file() for f in FASHION_FILES.values()):
                return candidate
        what = "does not exist" if not d.exists() else "is not a directory" if not d.is_dir() else "lacks some of the files"
        raise DataError(
            f"data.data_dir: {str(d)!r} {what}; expected a directory holding {', '.join(FASHION_FILES.values())} "
            f"(or null to use $AUTOPRUNE_DATA, then {DEBIAN_FASHION_MNIST})"
        )
    candidates: list[Path] = []
    if os.environ.get("AUTOPRUNE_DATA"):
        root = Path(os.environ["AUTOPRUNE_DATA"])
        candidates += [root / "fashion-mnist", root]
    candidates.append(DEBIAN_FASHION_MNIST)
    for d in candidates:
        if all((d / f).is_file() for f in FASHION_FILES.values()):
            return d
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {tried}); install it with "
        f"'apt-get install -y dataset-fashion-mnist' or put {', '.join(FASHION_FILES.values())} "
        f"in a directory and set AUTOPRUNE_DATA to it"
    )


def _split_train_val(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    n_val = int(round(len(y) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _check_fashion_arrays(d: Path, arrays: dict[str, np.ndarray]) -> None:
    """Fashion-MNIST's images are 28x28, one label each: anything else is another data set, named by its file.

    Raises:
        DataError: naming the file, what it holds and what Fashion-MNIST holds.
    """
    _, _, size = DATA_SHAPES["fashion_mnist"]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_file, label_file = d / FASHION_FILES[f"{split}_images"], d / FASHION_FILES[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (size, size):
            shape = "x".join(map(str, images.shape[1:])) if images.ndim == 3 else f"an array of {images.ndim} dimension(s)"
            raise DataError(f"data.data_dir: {str(image_file)!r} holds images of {shape}; Fashion-MNIST's are {size}x{size}, "
                            "the input the fashion_mnist models and checkpoints are built for")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"data.data_dir: {str(label_file)!r} holds {labels.shape[0] if labels.ndim else 0} labels for the "
                            f"{images.shape[0]} images of {str(image_file)!r}; each image needs one label")


def load_fashion_mnist(*, data_dir: str | None = None, val_fraction: float = 0.1, seed: int = 0) -> DataBundle:
    """Fashion-MNIST, 1x28x28, normalised; ``val`` is a seeded ``val_fraction`` of the training set.

    Raises:
        DataError: files missing or unreadable, images that are not 28x28, or label and image counts that differ.
    """
    d = fashion_mnist_dir(data_dir)
    arrays = {k: _read_idx(d / f) for k, f in FASHION_FILES.items()}
    _check_fashion_arrays(d, arrays)
    mean, std = 0.2860, 0.3530

    def images(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a.astype(np.float32) / 255.0) - mean) / std).unsqueeze(1).contiguous()

    train_x, train_y = images(arrays["train_images"]), torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test = Split(images(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    train, val = _split_train_val(train_x, train_y, val_fraction, seed)
    c, k, size = DATA_SHAPES["fashion_mnist"]
    return DataBundle("fashion_mnist", train, val, test, in_channels=c, num_classes=k, input_size=size)


def load_digits(*, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits (1797 images): tiny and fast, for tests."""
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = torch.from_numpy((raw.images.astype(np.float32) / 16.0 - 0.5) / 0.5).unsqueeze(1).contiguous()
    y = torch.from_numpy(raw.target.astype(np.int64))
    g = torch.Generator().manual_seed(12345)  # the test split is fixed, whatever the search seed
    order = torch.randperm(len(y), generator=g)
    n_test = int(round(len(y) * test_fraction))
    test = Split(x[order[:n_test]], y[order[:n_test]])
    rest = order[n_test:]
    train, val = _split_train_val(x[rest], y[rest], val_fraction, seed)
    c, k, size = DATA_SHAPES["digits"]
    return DataBundle("digits", train, val, test, in_channels=c, num_classes=k, input_size=size, augment_ok=False)


def load_data(name: str, *, data_dir: str | None = None, val_fraction: float | None = None, seed: int = 0) -> DataBundle:
    """Load a data set by zoo name (``fashion_mnist``, ``digits``) or ``"module:factory"`` reference.

    A factory is called with ``seed=`` and must return a :class:`DataBundle`.

    Raises:
        ConfigError: unknown name or bad reference.
        DataError: files missing or unreadable, or images that do not fit their declared shape or labels.
    """
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {val_fraction!r} is out of range; allowed: 0 < val_fraction < 1")
    kwargs = {"seed": seed}
    if val_fraction is not None:
        kwargs["val_fraction"] = val_fraction
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir=data_dir, **kwargs)
    if name == "digits":
        return load_digits(**kwargs)
    if name in TEXT_DATASET_NAMES:
        raise ConfigError(
            f"data.name: {name!r} is a text data set, for a sentence encoder; load it with "
            f"autoprune.zoo.load_text_data; allowed image data sets: {', '.join(DATASET_NAMES)}"
        )
    if is_reference(name):
        bundle = call_factory(name, field="data.name", seed=seed)
        if not isinstance(bundle, DataBundle):
            raise ConfigError(f"data.name: factory {name!r} returned {type(bundle).__name__}, expected autoprune.zoo.DataBundle")
        return bundle.check(f"data.name: factory {name!r}")
    raise ConfigError(f"data.name: unknown data set {name!r}; allowed: {', '.join(DATASET_NAMES)} or 'package.module:factory'")
