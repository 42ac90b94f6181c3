"""Train a baseline model and save/load checkpoints that load with ``weights_only=True``."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.errors import ConfigError, DataError, ModelError, describe
from autoprune.formats.torch_file import load_torch_file
from autoprune.objective.proxy import accuracy
from autoprune.zoo import DATA_SHAPES, DataBundle, build_model, check_initial_weights, check_model_fits

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """How to train a baseline: SGD with Nesterov momentum and a one-cycle schedule.

    These defaults are the only ones: the config's ``train`` section reads them.
    """

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0


def train_model(model: nn.Module, data: DataBundle, settings: TrainSettings, *, progress: bool = True) -> dict[str, float]:
    """Train ``model`` in place on ``data.train``; returns final val and test accuracy.

    Raises:
        ModelError: the training loss becomes NaN or infinite (the run diverged).
    """
    torch.manual_seed(settings.seed)
    params_bn = [p for n, p in model.named_parameters() if p.ndim <= 1]
    params_w = [p for n, p in model.named_parameters() if p.ndim > 1]
    opt = torch.optim.SGD(
        [{"params": params_w, "weight_decay": settings.weight_decay}, {"params": params_bn, "weight_decay": 0.0}],
        lr=settings.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    bar = tqdm(total=settings.epochs * steps_per_epoch, disable=not progress, desc="train", unit="batch")
    for epoch in range(settings.epochs):
        model.train()
        for x, y in data.train.batches(settings.batch_size, shuffle=True, seed=settings.seed * 1000 + epoch, augment=settings.augment and data.augment_ok):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                bar.close()
                raise ModelError(
                    f"baseline training diverged (loss {loss.item()} at epoch {epoch + 1}); "
                    f"lower train.lr (now {settings.lr})"
                )
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        val_acc = accuracy(model, data.val)
        bar.set_postfix(epoch=epoch + 1, val_acc=f"{val_acc:.4f}")
        log.info("epoch %d: val accuracy %.4f", epoch + 1, val_acc)
    bar.close()
    return {"val_accuracy": accuracy(model, data.val), "test_accuracy": accuracy(model, data.test)}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Save ``{"state_dict", "meta"}``, atomically, in a form that loads with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": "autoprune-checkpoint/1", "state_dict": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Args:
        path: A file written by :func:`save_checkpoint`, or a bare state dict saved with ``torch.save``.

    Returns:
        ``{"state_dict": {name: tensor}, "meta": {...}}``.

    Raises:
        ConfigError: missing file.
        ModelError: an empty, truncated or foreign file, or one that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint: file {str(path)!r} does not exist")
    ckpt = load_torch_file(path, context=f"checkpoint: cannot load {str(path)!r}")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"state_dict": ckpt, "meta": {}}
    raise ModelError(f"checkpoint: {str(path)!r} is not a state dict or autoprune checkpoint "
                     f"(it holds a {type(ckpt).__name__}{' without tensors' if isinstance(ckpt, dict) else ''})")


def _show_keys(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, model_name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model``; returns the checkpoint's meta.

    Args:
        model: The freshly built model.
        path: The checkpoint (see :func:`load_checkpoint`).
        model_name: Named in the error message when the weights do not fit.

    Raises:
        ConfigError: missing file.
        ModelError: unreadable file, or weights that do not fit ``model``: the message lists the first
            missing and unexpected keys and differing shapes.
    """
    ckpt = load_checkpoint(path)
    state, own = ckpt["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing keys [{_show_keys(missing)}]" if missing else "",
                 f"unexpected keys [{_show_keys(unexpected)}]" if unexpected else "",
                 f"shapes differ [{_show_keys(shapes, 3)}]" if shapes else ""]
        name = f" {model_name!r}" if model_name else ""
        raise ModelError(f"checkpoint: {str(path)!r} does not match the model{name}: " + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"checkpoint: {str(path)!r} does not match the model ({describe(e)})") from e
    return dict(ckpt.get("meta", {}))


def default_checkpoint_path(model_name: str, data_name: str, cache_dir: str | os.PathLike = ".autoprune/checkpoints") -> Path:
    """Where the cached baseline for ``model_name`` on ``data_name`` lives."""
    safe = model_name.replace(":", "_").replace("/", "_")
    return Path(cache_dir) / f"{safe}-{data_name}.pt"


def input_shape(data: DataBundle) -> list[int]:
    """One input sample's shape, ``[C, H, W]``: what a checkpoint records it was trained on."""
    return [data.in_channels, data.input_size, data.input_size]


def trained_input_shape(meta: dict[str, Any]) -> list[int] | None:
    """The ``[C, H, W]`` a checkpoint was trained on: recorded, or the fixed shape of the built-in data set it names."""
    if meta.get("input_shape"):
        return [int(d) for d in meta["input_shape"]]
    known = DATA_SHAPES.get(str(meta.get("data")))
    return [known[0], known[2], known[2]] if known else None


def check_input_shape(meta: dict[str, Any], data: DataBundle, path: Path) -> None:
    """Refuse a checkpoint trained on inputs of another shape than ``data``'s (a model with global pooling would run, at chance).

    Raises:
        DataError: naming the checkpoint, both shapes and the data set.
    """
    trained, given = trained_input_shape(meta), input_shape(data)
    if trained is not None and trained != given:
        raise DataError(f"checkpoint: {str(path)!r} was trained on {'x'.join(map(str, trained))} inputs, but data {data.name!r} "
                        f"holds {'x'.join(map(str, given))} images; use data of that shape, or train a baseline for this data "
                        "(model.checkpoint: a new file)")


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def train_or_load(
    model_name: str,
    data: DataBundle,
    settings: TrainSettings,
    *,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    settings_must_match: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return the trained baseline, training it only if no usable checkpoint exists yet.

    With ``settings_must_match`` (the caller's training settings were chosen by the user), a
    checkpoint trained by autoprune with other settings is trained again. A *cached* checkpoint
    (named like :func:`default_checkpoint_path`) holding non-finite weights is trained again; a
    checkpoint the user names otherwise is loaded as it is. A newly trained baseline that diverged is refused and not cached (one at
    chance is refused before a search, see :func:`autoprune.objective.evaluator.check_baseline_accuracy`).

    Returns:
        ``(model in train mode or as loaded, checkpoint meta)``.

    Raises:
        ConfigError: training is needed but ``settings.epochs < 1``, or an unknown model name.
        DataError: the checkpoint was trained on inputs of another shape than ``data``'s.
        ModelError: the model does not fit the data, the checkpoint does not match the model, the
            model holds NaN/inf weights as built, training diverged, or a given checkpoint holds NaN/inf weights.
    """
    model = build_model(model_name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    check_model_fits(model, model_name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    path = Path(checkpoint) if checkpoint else default_checkpoint_path(model_name, data.name)
    cached = path.name == default_checkpoint_path(model_name, data.name).name
    if path.is_file():
        meta = load_model_weights(model, path, model_name=model_name)
        check_input_shape(meta, data, path)
        stale = settings_must_match and meta.get("settings") not in (None, asdict(settings))
        if not _weights_finite(model):
            if not cached:
                raise ModelError(f"checkpoint: {str(path)!r} holds NaN or infinite weights (its training diverged)")
            stale = True
        if not stale:
            log.info("baseline: loaded %s from %s", model_name, path, extra={"stage": True})
            return model, meta
        log.warning("cached baseline %s was trained with other settings (or diverged); training it again", path)
        model = build_model(model_name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    if settings.epochs < 1:
        raise ConfigError(f"train.epochs: {settings.epochs!r} must be >= 1")
    check_initial_weights(model, model_name)
    log.info("baseline: training %s on %s for %d epoch(s) (then cached in %s)", model_name, data.name, settings.epochs, path,
             extra={"stage": True})
    t0 = time.perf_counter()
    metrics = train_model(model, data, settings, progress=progress)
    if not _weights_finite(model):
        raise ModelError(f"baseline training diverged (NaN or infinite weights); lower train.lr (now {settings.lr})")
    meta = {"model": model_name, "data": data.name, "input_shape": input_shape(data), **metrics,
            "train_seconds": time.perf_counter() - t0, "settings": asdict(settings)}
    save_checkpoint(path, model, meta)
    return model, meta
