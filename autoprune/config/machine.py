"""Settings that size work to the machine, checked against it before any work starts.

A thread count or batch size the machine cannot give does not fail: it makes a search
crawl (999 threads on 2 cores ran at a load average of 126) or run out of memory after the
baseline has trained. So, before anything is trained or measured:

* **Threads** (``latency.threads``) above the CPUs this process may use
  (``os.sched_getaffinity``, else ``os.cpu_count``) are **refused** when the config sets
  them: latency is the objective, and timing with fewer threads than asked would optimise
  for another machine. The *default* thread count is lowered to the CPUs instead, with one
  warning line, so a default config runs on a one-CPU container.
* **Workers** (``search.workers``) above the CPUs are refused: each needs a core of its own.
  When ``workers x latency.threads`` exceeds the CPUs, the threads are lowered to
  ``cpus // workers`` (the documented split of ``--workers``) with one warning line.
* **Batch sizes** whose activations cannot fit in the available memory (``MemAvailable`` of
  ``/proc/meminfo``, or psutil when installed elsewhere) are refused. The estimate is measured
  from the layer outputs of one and two samples through the model, built untrained at the data
  set's shape before any data is loaded (:func:`check_batches_fit_before_work`): training and
  fine-tuning keep every layer's output for the backward pass; an eager forward (BN
  re-estimation) holds the tensors alive at once (a residual block keeps its input while its
  branch runs); latency timing holds two models' activations (the dense model and a candidate).
  Weights, the data set and the runtimes' own buffers come on top, so a refused batch truly
  cannot fit.

Every refusal is one :class:`~autoprune.errors.ConfigError` line naming the field, the value,
what the machine has and what is allowed.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoprune.config.schema import ExperimentConfig
from autoprune.errors import ConfigError
from autoprune.graph.hooks import hookable_leaves
from autoprune.graph.layers import ExampleInput
from autoprune.zoo import DATA_SHAPES, build_model, check_model_fits, is_encoder_name

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int, field: str = "latency.threads", *, cpus: int | None = None) -> int:
    """Return ``threads`` if this process may use that many CPUs.

    Raises:
        ConfigError: more threads than CPUs, naming ``field`` (a config field or a CLI option).
    """
    cpus = usable_cpus() if cpus is None else cpus
    if threads > cpus:
        raise ConfigError(f"{field}: {threads} is more than the {cpus} CPU(s) this process may use; allowed: 1 to {cpus}")
    return threads


def threads_per_worker(workers: int, *, cpus: int | None = None) -> int:
    """Each of ``workers`` processes' share of the CPUs (at least 1): ``cpus // workers``."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, workers))


def available_memory_bytes() -> int | None:
    """Memory that can be allocated without swapping: ``MemAvailable`` of ``/proc/meminfo`` (psutil elsewhere); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional; not a dependency
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def fit_to_machine(cfg: ExperimentConfig, *, cpus: int | None = None) -> ExperimentConfig:
    """Check the CPU-sized settings against the machine; lower the thread count where documented.

    Args:
        cfg: A validated config.
        cpus: CPUs available (default: :func:`usable_cpus`).

    Returns:
        ``cfg``, or a copy with ``latency.threads`` lowered (logged as one warning line).

    Raises:
        ConfigError: ``latency.threads`` set above the CPUs, or ``search.workers`` above them.
    """
    cpus = usable_cpus() if cpus is None else cpus
    threads, workers = cfg.latency.threads, cfg.search.workers
    explicit = "threads" in cfg.latency.model_fields_set
    if explicit:
        check_threads(threads, cpus=cpus)
    check_threads(workers, "search.workers", cpus=cpus)
    fitted = min(threads, threads_per_worker(workers, cpus=cpus))
    if fitted == threads:
        return cfg
    why = f"{workers} workers share {cpus} CPU(s)" if workers > 1 else f"this process may use {cpus} CPU(s)"
    log.warning("latency.threads %d -> %d: %s", threads, fitted, why)
    latency = cfg.latency.model_copy(update={"threads": fitted})
    return cfg.model_copy(update={"latency": latency})


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one sample through a model, in bytes.

    Attributes:
        total: Sum of every leaf module's output (kept for the backward pass when training).
        peak_layer: Largest input + output of one leaf module.
        inference: Peak of the tensors alive at once in one eager forward, input included (a
            residual block keeps its input while its branch runs); at least ``peak_layer``.
    """

    total: int
    peak_layer: int
    inference: int = 0


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors every operator creates while they are alive, and their peak.

    A storage is counted once, however many views share it, and leaves the count when its last
    tensor is freed. Tensors made before the mode was entered (weights, the input) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive]
        self.now = 0
        self.peak = 0

    def _track(self, t: object) -> None:
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key in self.live:
            self.live[key][1] += 1
        else:
            self.live[key] = [storage.nbytes(), 1]
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        weakref.finalize(t, self._free, key)

    def _free(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        return out


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _as_args(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _live_peak(model: nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """Peak bytes alive during one eager forward of ``args`` under ``no_grad``, the input included."""
    counter = _LiveBytes()
    with torch.no_grad(), counter:
        out = model(*args)
    del out
    return counter.peak + _nbytes(args)


def activation_bytes(model: nn.Module, example_input: ExampleInput) -> ActivationBytes:
    """Measure :class:`ActivationBytes` from the layer outputs of forward passes at batch 1 and 2.

    ``total`` and ``peak_layer`` come from forward hooks on every leaf module at batch 1;
    ``inference`` from the tensors every operator creates (a ``TorchDispatchMode``), at batch 1
    and 2: their difference is the part that grows with the batch (what weights alone cost, e.g.
    a transposed matrix, does not). No gradients; the model is in eval mode, then restored.

    Args:
        model: The model; not modified.
        example_input: One sample, e.g. a tensor of shape ``(1, C, H, W)`` (a tuple for several inputs).
    """
    total, peak = 0, 0

    def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total, peak
        out = _nbytes(output)
        total += out
        peak = max(peak, _nbytes(inputs) + out)

    one = _as_args(example_input)
    two = tuple(torch.cat([t, t]) for t in one)
    handles = [m.register_forward_hook(hook) for m in hookable_leaves(model)]  # not inside scripted/compiled modules
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*one)
        for h in handles:
            h.remove()
        handles = []
        at_one, at_two = _live_peak(model, one), _live_peak(model, two)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    first_input = _nbytes(example_input)
    peak_layer = max(peak, first_input)
    return ActivationBytes(total=total + first_input, peak_layer=peak_layer, inference=max(at_two - at_one, peak_layer))


def check_batches_fit(cfg: ExperimentConfig, model: nn.Module, example_input: ExampleInput, *, available: int | None = None) -> None:
    """Refuse batch sizes whose activations alone exceed the available memory.

    Per sample (:func:`activation_bytes`): training and fine-tuning keep every layer's output for
    the backward pass; BatchNorm re-estimation runs one eager forward; latency timing runs two
    (paired timing keeps the dense model and a candidate of its size ready at once, each runtime
    holding its activations).

    Args:
        cfg: A validated config.
        model: The dense model (built, not necessarily trained).
        example_input: One sample, shape ``(1, ...)``.
        available: Bytes available (default: :func:`available_memory_bytes`; unknown: no check).

    Raises:
        ConfigError: naming the first batch size that cannot fit, and the largest that could.
    """
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    act = activation_bytes(model, example_input)
    checks = (
        ("train.batch_size", cfg.train.batch_size, act.total, "training"),
        ("finetune.batch_size", cfg.finetune.batch_size, act.total, "fine-tuning"),
        ("latency.batch_size", cfg.latency.batch_size, 2 * act.inference, "paired inference (dense and candidate)"),
        ("proxy.bn_batch_size", cfg.proxy.bn_batch_size, act.inference, "BN re-estimation"),
    )
    for field, batch, per_sample, use in checks:
        if per_sample > 0 and batch * per_sample > available:
            raise ConfigError(
                f"{field}: {batch} needs at least {_gib(batch * per_sample)} for {use} activations "
                f"({_gib(per_sample)} per sample) but {_gib(available)} of memory is available; "
                f"allowed: at most {available // per_sample}"
            )


def check_batches_fit_before_work(cfg: ExperimentConfig, *, available: int | None = None) -> bool:
    """:func:`check_batches_fit` on the config's model built untrained at its data set's known shape, before any data is loaded.

    Layer shapes do not depend on weights, so a freshly built model (no checkpoint, no training)
    gives the baseline's activations. Only a built-in data set's shape is known without loading
    it (:data:`autoprune.zoo.DATA_SHAPES`); for a data plugin or a sentence encoder the check waits
    for the data (:func:`autoprune.app.experiment.load_baseline`).

    Returns:
        Whether the check ran.

    Raises:
        ConfigError: a batch size that cannot fit (see :func:`check_batches_fit`), or an unknown model.
        ModelError: a model plugin that fails to build or does not fit the data's shape (:func:`autoprune.zoo.check_model_fits`).
    """
    shape = DATA_SHAPES.get(cfg.data.name)
    if shape is None or is_encoder_name(cfg.model.name):
        return False
    channels, classes, size = shape
    with torch.random.fork_rng(devices=[]):  # the probe must not change the baseline's initialisation
        model = build_model(cfg.model.name, in_channels=channels, num_classes=classes, input_size=size)
    check_model_fits(model, cfg.model.name, in_channels=channels, num_classes=classes, input_size=size)
    check_batches_fit(cfg, model, torch.zeros(1, channels, size, size), available=available)
    return True


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


__all__ = [
    "ActivationBytes", "activation_bytes", "available_memory_bytes", "check_batches_fit", "check_batches_fit_before_work", "check_threads",
    "fit_to_machine", "threads_per_worker",
    "usable_cpus",
]
