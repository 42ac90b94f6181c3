"""Latency backends: the base class whose attributes say what a backend can do, the registry of their names, and PyTorch eager.

A backend turns a model into a zero-argument runner of one inference; all one-off work
(export, compilation, session) happens in :meth:`LatencyBackend.prepare`. Everything else
a caller may need to know (how it is best timed, which channel multiple it runs fastest
with, whether it is eager PyTorch, which file it serves, whether it can time an int8 ONNX
file) is an attribute with a default on :class:`LatencyBackend`, so code elsewhere asks the
backend (or, where no instance exists, :func:`backend_class`) and never compares names.
Serving runtimes live in their own modules (:mod:`autoprune.measure.onnx_file`,
:mod:`autoprune.measure.onnxruntime`, :mod:`autoprune.measure.openvino`) and are imported
only when named, so their extras stay optional.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.layers import ExampleInput
from autoprune.measure.schedule import PairedSchedule
from autoprune.registry import Registry

#: Intra-op threads used for timing unless told otherwise: the one default of every ``threads``
#: argument in :mod:`autoprune.measure`, of :class:`autoprune.measure.settings.LatencySettings` and of ``latency.threads``.
DEFAULT_THREADS = 2

Runner = Callable[[], object]
"""A zero-argument callable that runs one inference of a prepared model (its return value is ignored by the timers)."""


def check_threads(threads: int | None) -> None:
    """Refuse a thread count that is neither None nor an integer >= 1.

    Raises:
        ConfigError: ``latency.threads: expected an integer >= 1, got ...``.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"latency.threads: expected an integer >= 1, got {threads!r}")


class LatencyBackend(abc.ABC):
    """Runs a model for timing; its class attributes say what it can do.

    Subclass it and implement :meth:`prepare`; override an attribute only where the default
    is wrong for the runtime. A subclass named as ``"package.module:Class"`` in
    ``latency.backend`` works through the whole pipeline with no edit elsewhere.

    Attributes:
        name: The name its results are recorded under (default: the class name).
        eager: True only for PyTorch eager: the reference runtime shown beside a serving runtime,
            and the runtime whose latency is a per-layer sum, so the micro-benchmark lookup table
            (:class:`autoprune.measure.table.LatencyTable`) models it; any other backend is
            predicted by a table fitted to measurements on it.
        artifact: The file format it serves (``"onnx"``: ``autoprune run`` exports ``model.onnx``
            for it); None: it runs the PyTorch model itself.
        runs_int8: It can time a QDQ int8 ONNX file (:meth:`prepare_file`), so an int8 artifact is
            timed where it will be served.
        paired_schedule: How a paired measurement on it is best scheduled: its ``interleave`` and
            ``calls_per_round`` fill a :class:`~autoprune.measure.schedule.PairedSchedule` that
            leaves them None (default: single calls interleaved, 3 per round).
        threads: Intra-op threads it computes with.
    """

    name: ClassVar[str]
    eager: ClassVar[bool] = False
    artifact: ClassVar[str | None] = None
    runs_int8: ClassVar[bool] = False
    paired_schedule: ClassVar[PairedSchedule] = PairedSchedule(interleave="calls", calls_per_round=3)

    threads: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "name", None), str):
            cls.name = cls.__name__

    @abc.abstractmethod
    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Return a zero-argument runner of one inference of ``model`` on ``example_input`` (all one-off work done here).

        Raises:
            ModelError: the runtime cannot run the model.
        """

    def prepare_file(self, path: str | Path, example_input: ExampleInput) -> Runner:
        """A runner of one inference of the ONNX file at ``path`` on ``example_input`` (backends that serve ONNX files).

        Raises:
            ConfigError: this backend does not open ONNX files (the default), naming those that do.
        """
        allowed = ", ".join(backends_that(lambda c: c.artifact == "onnx")) or "none"
        raise ConfigError(f"latency.backend: {self.name!r} cannot time ONNX files; allowed: {allowed}")

    def settings(self) -> dict[str, object]:
        """The runtime settings (threads, spinning, optimisation level, precision, library version) every result measured on it is recorded with."""
        return {"backend": self.name}

    @property
    def runs_on_calling_thread(self) -> bool:
        """True when an inference computes entirely on the calling thread, so a ``thread`` clock is valid (default False)."""
        return False

    def clock(self) -> Callable[[], int] | None:
        """The nanosecond clock a paired measurement reads on this backend; None (the default): the schedule's ``clock``.

        Only a simulated backend, whose runners advance a clock of their own instead of computing,
        returns one: its ratios are then exact functions of what it simulates, whatever the load.
        """
        return None

    @classmethod
    def ratio_options(cls, options: Mapping[str, object], *, timing_only: bool = False) -> dict[str, object]:
        """The options every paired ratio on it is measured with, given the serving ``options`` (default: the same).

        A backend whose serving settings make two models timed side by side disturb each other
        (ONNX Runtime's per-session spinning pools) returns settings that do not. ``timing_only``:
        the process does nothing but time (a fresh child), so settings that would constrain the
        rest of a process (ONNX Runtime's process-wide pool) are allowed. Chosen by data,
        with :attr:`paired_schedule`: ``experiments/bench/protocols.py`` ("Timing protocols" in
        ``experiments/results/runtimes.md``). The serving ``options`` still give the deployed
        artifact's absolute milliseconds (:func:`autoprune.measure.fresh_compare.compare_in_fresh_process`).
        """
        return dict(options)

    @classmethod
    def channel_multiple(cls) -> int | None:
        """The channel multiple it runs fastest with (``pruning.round_to: auto``); None: no rounding (the default)."""
        return None


class TorchEagerBackend(LatencyBackend):
    """PyTorch eager mode: ``model.eval()`` and ``torch.inference_mode()``.

    Args:
        threads: Intra-op threads recorded in :meth:`settings` (the timers set
            ``torch.set_num_threads`` themselves; None: the current count).

    Raises:
        ConfigError: ``threads`` is not an integer >= 1.
    """

    name = "torch"
    eager = True

    def __init__(self, threads: int | None = None) -> None:
        check_threads(threads)
        self.threads = threads or torch.get_num_threads()

    @property
    def runs_on_calling_thread(self) -> bool:
        """With one thread, eager PyTorch computes on the caller (what a ``thread`` clock needs)."""
        return self.threads == 1

    def settings(self) -> dict[str, object]:
        """The runtime settings every result measured on this backend is recorded with."""
        return {"backend": self.name, "version": torch.__version__, "threads": self.threads, "mode": "eager, inference_mode"}

    def prepare(self, model: nn.Module, example_input: ExampleInput) -> Runner:
        """Put ``model`` in eval mode and return a runner; the model is not copied."""
        model.eval()
        args = example_input if isinstance(example_input, tuple) else (example_input,)

        def run() -> None:
            with torch.inference_mode():
                model(*args)

        return run


#: The latency backends: the one list of their names (``latency.backend`` is checked against it).
BACKENDS: Registry[type[LatencyBackend]] = Registry(
    "latency backend",
    "latency.backend",
    {
        "torch": "autoprune.measure.backends:TorchEagerBackend",
        "onnxruntime": "autoprune.measure.onnxruntime:OnnxRuntimeBackend",
        "openvino": "autoprune.measure.openvino:OpenVinoBackend",
    },
    extras={"onnxruntime": "onnx", "openvino": "openvino"},
)


def register_backend(name: str, cls: type[LatencyBackend] | str) -> None:
    """Make a backend available to :func:`get_backend` and to configs under ``name``.

    Args:
        name: The name a config uses (``latency.backend: NAME``).
        cls: A :class:`LatencyBackend` subclass (it may accept ``threads=`` and backend options
            as keywords), or its ``"package.module:Class"`` reference.

    Raises:
        ConfigError: an empty name or one containing ``:``.
    """
    BACKENDS.register(name, cls)


def backend_class(name: str) -> type[LatencyBackend]:
    """The :class:`LatencyBackend` subclass behind a registered name or ``"package.module:Class"``, to ask what it can do.

    Importing a class needs no optional extra (only building a serving backend does).

    Raises:
        ConfigError: unknown name, an import failure, or an entry that is not a LatencyBackend subclass.
    """
    cls = BACKENDS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, LatencyBackend)):
        raise ConfigError(f"{BACKENDS.field}: {name!r} is {cls!r}, not a subclass of autoprune.measure.backends.LatencyBackend")
    return cls


def backends_that(can: Callable[[type[LatencyBackend]], bool]) -> list[str]:
    """The registered names whose backend class can do something, e.g. ``backends_that(lambda c: c.runs_int8)``.

    For messages that say what is allowed; backends whose class does not import are left out.
    """
    names = []
    for name in BACKENDS.names():
        try:
            if can(backend_class(name)):
                names.append(name)
        except ConfigError:
            continue
    return names


def _keyword_names(cls: type[LatencyBackend]) -> tuple[tuple[str, ...], bool]:
    """``(keyword parameters of cls.__init__, whether it takes any keyword)``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return (), False
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return tuple(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)), takes_any


def backend_option_names(name: str) -> tuple[str, ...] | None:
    """The options (``latency.backend_options`` keys) the backend registered as ``name`` accepts.

    Read from the signature of its class, as :func:`get_backend` passes them (``threads`` is
    a field of its own and not listed).

    Returns:
        The option names, or None when the class takes any keyword (``**options``).

    Raises:
        ConfigError: unknown backend, or not a LatencyBackend subclass.
    """
    names, takes_any = _keyword_names(backend_class(name))
    return None if takes_any else tuple(k for k in names if k != "threads")


def get_backend(name: str | LatencyBackend, *, threads: int | None = None, **options: object) -> LatencyBackend:
    """Return a new backend by registered name or ``"package.module:Class"`` (an instance is returned unchanged).

    Args:
        name: Registered name, reference, or a backend instance.
        threads: Intra-op threads, passed as ``threads=`` when the class accepts it.
        **options: Backend settings (e.g. ``spinning=True`` for ``onnxruntime``,
            ``performance_hint="LATENCY"`` for ``openvino``), passed as keywords.

    Raises:
        ConfigError: unknown backend name, a class that is not a :class:`LatencyBackend` subclass,
            its optional extra is not installed (naming it), or an option the backend does not
            take or accept.
    """
    if not isinstance(name, str):
        if not isinstance(name, LatencyBackend):
            raise ConfigError(f"latency.backend: {name!r} is not a subclass of autoprune.measure.backends.LatencyBackend")
        if options:
            raise ConfigError(f"latency.backend_options: options {sorted(options)} given with a backend instance; configure the instance instead")
        return name
    cls = backend_class(name)
    names, takes_any = _keyword_names(cls)
    unknown = [k for k in options if k not in names and not takes_any]
    if unknown:
        allowed = [k for k in names if k != "threads"]
        raise ConfigError(f"latency.backend_options: {name!r} has no option {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}")
    kwargs = dict(options)
    if threads is not None and ("threads" in names or takes_any):
        kwargs["threads"] = threads
    return cls(**kwargs)


def settings_label(settings: Mapping[str, object]) -> str:
    """One line naming a backend and its settings, e.g. ``onnxruntime(threads=2, spinning=True, ...)``."""
    rest = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "backend")
    return f"{settings.get('backend', '?')}({rest})"


__all__ = [
    "BACKENDS", "DEFAULT_THREADS", "LatencyBackend", "Runner", "TorchEagerBackend", "backend_class", "backend_option_names",
    "backends_that", "check_threads", "get_backend", "register_backend", "settings_label",
]  # fmt: skip
