"""Re-measure latency in a fresh process: candidates timed paired against the dense model in a new interpreter.

A search times hundreds of candidates in one process, whose runtime sessions, thread pools,
allocator and caches are warm in ways a served model's are not. Its finalists are confirmed in
a process that has seen none of that: :func:`remeasure_in_fresh_process` writes the models to a
temporary folder (pickle-free pruned-model files, :mod:`autoprune.formats.pruned`, or the ONNX
files given), runs ``python -m autoprune.measure.fresh SPEC.json`` and reads back the JSON the
child writes: per candidate the paired latency ratio to the dense model
(:class:`~autoprune.measure.latency.PairedTimer`) with its 95% confidence interval, the dense
model's milliseconds and the backend's settings. Optional int8 ONNX files are timed in the same
child against the dense model's fp32 ONNX file, on the runtime that would serve them.

The child imports the same ``autoprune`` as the caller (its folder is put first on
``PYTHONPATH``, then the caller's ``sys.path``), so a backend or model given as
``package.module:Name`` that the caller imports imports there too; a backend registered at run
time with :func:`~autoprune.measure.backends.register_backend` is not known to the child: give it
as its ``package.module:Class`` reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import errors
from autoprune.errors import AutopruneError, ConfigError, ModelError, one_line
from autoprune.graph.layers import ExampleInput
from autoprune.measure.backends import BACKENDS, DEFAULT_THREADS
from autoprune.measure.compare import INT8_FALLBACK
from autoprune.measure.uncertainty import pooled_interval
from autoprune.paths import write_json_atomic

#: The runtime int8 ONNX files are timed on when the serving backend cannot open ONNX files itself.
INT8_FALLBACK_BACKEND = INT8_FALLBACK
#: Timing protocols of :func:`remeasure_in_fresh_process`: the backend's ratio protocol, or its serving settings as given.
PROTOCOLS = ("ratio", "serving")
#: Fresh processes behind every ratio that decides or reports the budget (a search's finalists, the final
#: table, ``estimate``): the median over them with an order-statistic interval (:func:`pooled_interval`).
#: Five is the fewest whose [min, max] covers the median process at >= 93% (1 - 2 / 2**5).
FRESH_PROCESSES = 5
#: At most this many when the first :data:`FRESH_PROCESSES` disagree by more than ``rel_ci``: with nine, one
#: process at either end no longer decides the interval ([2nd, 8th] of 9 covers the median at 96%).
MAX_FRESH_PROCESSES = 9
#: Model file suffixes the child reads: ONNX files (opened by the backend's ``prepare_file``) and pruned-model files.
ONNX_SUFFIX, PRUNED_SUFFIX = ".onnx", ".pt"

ModelLike = nn.Module | str | os.PathLike
"""A model to time: a module (written as a pruned-model file), or the path of an ``.onnx`` or pruned-model ``.pt`` file."""


@dataclass(frozen=True)
class ZooModel:
    """How the child rebuilds a module: the zoo name (or ``package.module:factory``) and its arguments.

    The same fields as :func:`autoprune.formats.pruned.save_pruned` takes; ``input_size`` is the
    side of a square image, ``in_channels`` its channels.
    """

    name: str
    in_channels: int
    num_classes: int
    input_size: int


@dataclass(frozen=True)
class FreshRatio:
    """One model's latency relative to its reference, measured in the child.

    Attributes:
        ratio: Median over rounds of the paired ratio (model / reference; :meth:`PairedTimer.ratio`).
        ci_low, ci_high: Its distribution-free ~95% confidence interval (``ci_low <= ratio <= ci_high``).
        rounds: Paired rounds measured.
        ms: ``ratio`` times the reference's median milliseconds per call.
    """

    ratio: float
    ci_low: float
    ci_high: float
    rounds: int
    ms: float


@dataclass(frozen=True)
class FreshGroup:
    """Models timed against one reference on one backend in the child.

    Attributes:
        ratios: One per model, in the order given.
        reference_ms: The reference's median milliseconds per call during the measurement
            (at the example input's batch size).
        settings: The backend's settings and threads (:meth:`PairedTimer.settings`).
    """

    ratios: tuple[FreshRatio, ...]
    reference_ms: float
    settings: dict[str, Any]


@dataclass(frozen=True)
class FreshMeasurement:
    """What :func:`remeasure_in_fresh_process` measured.

    Attributes:
        fp32: The candidates against the dense model on the serving backend.
        int8: The int8 ONNX files against the dense model's fp32 ONNX file on the int8 runtime
            (None without ``int8_files``).
        pid: The child's process id (never the caller's).
    """

    fp32: FreshGroup
    int8: FreshGroup | None
    pid: int

    @property
    def ratios(self) -> tuple[FreshRatio, ...]:
        """The candidates' ratios to the dense model on the serving backend."""
        return self.fp32.ratios

    @property
    def dense_ms(self) -> float:
        """The dense model's median milliseconds per call on the serving backend."""
        return self.fp32.reference_ms

    @property
    def settings(self) -> dict[str, Any]:
        """The serving backend's settings (record them with the figures)."""
        return self.fp32.settings

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return dataclasses.asdict(self)


def _backend_class(name: object, field: str) -> Any:
    if not isinstance(name, str):
        raise ConfigError(f"{field}: expected a backend name or 'package.module:Class' (the child builds it), got {type(name).__name__}")
    return BACKENDS.get(name)


def _opens_files(factory: Any) -> bool:
    """Whether the backend class opens ONNX files itself (it serves them: ``LatencyBackend.artifact``)."""
    return getattr(factory, "artifact", None) == "onnx"


def _write_model(model: ModelLike, folder: Path, stem: str, zoo: ZooModel | None, field: str) -> dict[str, str]:
    """Where the child finds ``model``: a pruned-model file written here, or the file given."""
    if isinstance(model, nn.Module):
        if zoo is None:
            raise ConfigError(f"{field}: a module needs zoo=ZooModel(name, in_channels, num_classes, input_size) to be rebuilt without pickle")
        from autoprune.formats.pruned import save_pruned

        path = save_pruned(folder / f"{stem}{PRUNED_SUFFIX}", model, model_name=zoo.name, in_channels=zoo.in_channels,
                           num_classes=zoo.num_classes, input_size=zoo.input_size)
        return {"kind": "pruned", "path": str(path)}
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"{field}: expected a torch.nn.Module or the path of an .onnx or pruned-model .pt file, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{field}: {str(path)!r}: no such file")
    if path.suffix not in (ONNX_SUFFIX, PRUNED_SUFFIX):
        raise ConfigError(f"{field}: {str(path)!r}: expected an {ONNX_SUFFIX} or pruned-model {PRUNED_SUFFIX} file")
    return {"kind": "onnx" if path.suffix == ONNX_SUFFIX else "pruned", "path": str(path.resolve())}


def _example_tensors(example_input: ExampleInput | Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The input as a tuple of tensors; a shape such as ``(1, 1, 8, 8)`` becomes seeded normal noise."""
    if isinstance(example_input, torch.Tensor):
        return (example_input.detach().cpu(),)
    if isinstance(example_input, (tuple, list)) and example_input and all(isinstance(d, int) and not isinstance(d, bool) for d in example_input):
        if any(d < 1 for d in example_input):
            raise ConfigError(f"example_input: a shape needs positive sizes, got {tuple(example_input)}")
        return (torch.randn(*example_input, generator=torch.Generator().manual_seed(0)),)
    if isinstance(example_input, tuple) and example_input and all(isinstance(t, torch.Tensor) for t in example_input):
        return tuple(t.detach().cpu() for t in example_input)
    raise ConfigError("example_input: expected a tensor (N, ...), a tuple of tensors or a shape such as (1, 3, 32, 32)")


def remeasure_in_fresh_process(
    dense: ModelLike,
    candidates: Sequence[ModelLike],
    example_input: ExampleInput | Sequence[int],
    *,
    backend: str = "torch",
    threads: int = DEFAULT_THREADS,
    backend_options: Mapping[str, Any] | None = None,
    rounds: int = 30,
    warmup_rounds: int = 5,
    schedule: Mapping[str, Any] | None = None,
    int8_files: Sequence[str | os.PathLike] | None = None,
    int8_backend: str | None = None,
    zoo: ZooModel | None = None,
    timeout_s: float | None = None,
    protocol: str = "ratio",
    processes: int = 1,
    max_processes: int | None = None,
    rel_ci: float | None = None,
) -> FreshMeasurement:
    """Time each candidate paired against ``dense`` in a new Python process, on one backend.

    In the child, for each candidate in turn: ``warmup_rounds`` paired rounds that are thrown
    away (both models warm after loading), then ``rounds`` measured ones. Then, with
    ``int8_files``, each file against the dense model's fp32 ONNX file (``dense`` itself when it
    is an ``.onnx`` file, else exported here at ``example_input``'s shape) on ``int8_backend``.

    Args:
        dense: The reference: a module, or an ``.onnx`` / pruned-model ``.pt`` file.
        candidates: The models to confirm, same kinds (may be empty: only ``dense_ms`` is measured).
        example_input: The input batch (a tensor ``(N, ...)`` or a tuple of them, e.g. token ids and
            attention mask), or a shape whose seeded normal noise is the input; its batch size is the
            one measured.
        backend: A registered backend name or ``package.module:Class``; ``.onnx`` models need one that
            opens files (``prepare_file``: ``onnxruntime``, ``openvino``).
        threads: Intra-op threads of the backend and of torch in the child.
        backend_options: The backend's options (as ``latency.backend_options``).
        rounds: Measured paired rounds per candidate.
        warmup_rounds: Paired rounds thrown away before them (0: none).
        schedule: More scheduling keywords of :meth:`PairedTimer.ratio` (e.g. ``calls_per_round``);
            None: the backend's own schedule.
        int8_files: int8 ONNX files, timed against the dense fp32 ONNX file.
        int8_backend: Where they are timed (None: ``backend`` when it opens ONNX files, else
            :data:`INT8_FALLBACK_BACKEND`); ``backend_options`` apply when it is ``backend``.
        zoo: How the child rebuilds modules (needed when ``dense`` or a candidate is a module).
        timeout_s: Give up on the child after this many seconds (None: wait).
        protocol: ``ratio`` (default): the backend's ratio protocol,
            :meth:`~autoprune.measure.backends.LatencyBackend.ratio_options` over ``backend_options``
            (e.g. ONNX Runtime's shared pool), as every ratio of a search is measured; ``serving``:
            exactly ``backend_options`` (the deployed runtime's own settings).
        processes: Fresh processes measuring the same models one after another. A process has a
            lasting state of its own on a runtime's speed: on 2 cores (a VM), 8 fresh processes
            timing one pair on ONNX Runtime's shared pool gave 0.397-0.632, each within +-0.2%
            (``experiments/results/process_spread.md``). With several, each ratio is the median
            over the processes and its interval the distribution-free one of the median process
            (:func:`pooled_interval`), so it covers the process-to-process spread and not only
            each process's own noise.
        max_processes: With ``rel_ci``, more processes (up to this many) while some ratio's
            pooled interval is wider than ``+-rel_ci`` of it (None: ``processes``).
        rel_ci: The relative half-width at which measuring stops (None: after ``processes``).

    Returns:
        The ratios with their confidence intervals, the dense milliseconds and the backend settings.

    Raises:
        ConfigError: a bad backend, option, count, input or model kind (e.g. an ``.onnx`` model on
            ``torch``, a module without ``zoo``); also raised for the child's configuration errors.
        ModelError: a missing file, or one the child cannot read or run (naming it).
        RuntimeError: the child crashed or timed out (its stderr's end is in the message).
    """
    factory = _backend_class(backend, "backend")
    int8_name = None
    if int8_files:
        int8_name = int8_backend if int8_backend is not None else (backend if _opens_files(factory) else INT8_FALLBACK_BACKEND)
        if not _opens_files(_backend_class(int8_name, "int8_backend")):
            raise ConfigError(f"int8_backend: {int8_name!r} cannot time ONNX files; use a backend with prepare_file such as {INT8_FALLBACK_BACKEND!r}")
    for field, value, minimum in (("threads", threads, 1), ("rounds", rounds, 1), ("warmup_rounds", warmup_rounds, 0), ("processes", processes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{field}: expected an integer >= {minimum}, got {value!r}")
    most = processes if max_processes is None else max_processes
    if isinstance(most, bool) or not isinstance(most, int) or most < processes:
        raise ConfigError(f"max_processes: expected an integer >= processes ({processes}), got {max_processes!r}")
    if rel_ci is not None and not (isinstance(rel_ci, (int, float)) and 0 < rel_ci < 1):
        raise ConfigError(f"rel_ci: expected a number in (0, 1), got {rel_ci!r}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown timing protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    options, schedule = dict(backend_options or {}), dict(schedule or {})
    if protocol == "ratio":
        options = factory.ratio_options(options, timing_only=True)
    args = _example_tensors(example_input)
    with tempfile.TemporaryDirectory(prefix="autoprune-fresh-") as tmp:
        folder = Path(tmp)
        models = [_write_model(dense, folder, "dense", zoo, "dense")]
        models += [_write_model(m, folder, f"candidate-{i}", zoo, f"candidates[{i}]") for i, m in enumerate(candidates)]
        if any(m["kind"] == "onnx" for m in models) and not _opens_files(factory):
            raise ConfigError(f"backend: {backend!r} cannot time ONNX files; use a backend with prepare_file (onnxruntime, openvino) or give modules")
        spec: dict[str, Any] = {
            "input": str(folder / "input.pt"), "threads": threads, "rounds": rounds, "warmup_rounds": warmup_rounds,
            "schedule": schedule, "out": str(folder / "result.json"),
            "fp32": {"backend": backend, "options": options, "reference": models[0], "models": models[1:]},
            "int8": None,
        }
        torch.save(args, spec["input"])
        if int8_files:
            reference = models[0] if models[0]["kind"] == "onnx" else _export_dense(dense, folder, args, zoo)
            spec["int8"] = {"backend": int8_name, "options": options if int8_name == backend else {}, "reference": reference,
                            "models": [_write_model(p, folder, f"int8-{i}", None, f"int8_files[{i}]") for i, p in enumerate(int8_files)]}
        write_json_atomic(folder / "spec.json", spec)
        runs: list[FreshMeasurement] = []
        while True:
            Path(spec["out"]).unlink(missing_ok=True)
            runs.append(_run_child(folder / "spec.json", Path(spec["out"]), threads, timeout_s))
            found = runs[0] if len(runs) == 1 else _pooled(runs)  # one process: its own interval
            if len(runs) >= processes and (len(runs) >= most or _tight(found, rel_ci)):
                return found


def _tight(m: FreshMeasurement, rel_ci: float | None) -> bool:
    return rel_ci is None or all((r.ci_high - r.ci_low) / 2 <= rel_ci * r.ratio for r in m.ratios)


def _pooled_group(groups: Sequence[FreshGroup]) -> FreshGroup:
    """One group from the same group measured in several processes: median ratios, order-statistic intervals (:func:`pooled_interval`).

    An interval is never narrower than the median of the processes' own intervals.
    """
    ref_ms = statistics.median(g.reference_ms for g in groups)
    ratios, per_process = [], []
    for per_model in zip(*(g.ratios for g in groups)):
        values = [m.ratio for m in per_model]
        r, low, high = pooled_interval(values)
        # never narrower than a typical process's own interval (processes that happen to agree exactly, e.g. a seeded backend)
        low, high = min(low, statistics.median(m.ci_low for m in per_model)), max(high, statistics.median(m.ci_high for m in per_model))
        ratios.append(FreshRatio(ratio=r, ci_low=min(low, r), ci_high=max(high, r), rounds=sum(m.rounds for m in per_model), ms=r * ref_ms))
        per_process.append([round(v, 4) for v in values])
    return FreshGroup(ratios=tuple(ratios), reference_ms=ref_ms,
                      settings={**groups[0].settings, "processes": len(groups), "process_ratios": per_process})


def _pooled(runs: Sequence[FreshMeasurement]) -> FreshMeasurement:
    int8 = _pooled_group([r.int8 for r in runs]) if all(r.int8 is not None for r in runs) else None  # type: ignore[misc]
    return FreshMeasurement(fp32=_pooled_group([r.fp32 for r in runs]), int8=int8, pid=runs[0].pid)


def _export_dense(dense: ModelLike, folder: Path, args: tuple[torch.Tensor, ...], zoo: ZooModel | None) -> dict[str, str]:
    """The dense model's fp32 ONNX file, the reference of the int8 files."""
    from autoprune.formats.onnx import export_onnx

    if isinstance(dense, nn.Module):
        model = dense
    else:
        from autoprune.formats.pruned import load_pruned

        model, _ = load_pruned(dense)
    path = folder / f"dense{ONNX_SUFFIX}"
    export_onnx(model, args if len(args) > 1 else args[0], path)
    return {"kind": "onnx", "path": str(path)}


def _run_child(spec_path: Path, out: Path, threads: int, timeout_s: float | None) -> FreshMeasurement:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this autoprune package
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # the caller's own import path too, so a plug-in it imports as ``package.module:Name`` imports in the child
    extra = [p for p in sys.path if p and Path(p).is_dir() and p != root]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([root, *filter(None, [os.environ.get("PYTHONPATH")]), *extra]))
    cmd = [sys.executable, "-m", "autoprune.measure.fresh", str(spec_path)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"fresh-process re-measure: no result after {timeout_s:g} s ({' '.join(cmd)})") from e
    result = json.loads(out.read_text()) if out.is_file() else None
    if result is not None and "error" in result:
        kind = getattr(errors, result["error"]["type"], AutopruneError)
        kind = kind if isinstance(kind, type) and issubclass(kind, AutopruneError) else AutopruneError
        raise kind(f"fresh-process re-measure: {result['error']['message']}")
    if done.returncode != 0 or result is None:
        stderr = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"fresh-process re-measure: the child exited with code {done.returncode} and no result:\n{stderr}")
    return FreshMeasurement(fp32=_group(result["fp32"]), int8=_group(result["int8"]) if result["int8"] else None, pid=int(result["pid"]))


def _group(doc: Mapping[str, Any]) -> FreshGroup:
    return FreshGroup(ratios=tuple(FreshRatio(**r) for r in doc["ratios"]), reference_ms=float(doc["reference_ms"]), settings=dict(doc["settings"]))


# ------------------------------------------------------------------ the child


def _open(model: Mapping[str, str], timer_backend: Any, example_input: ExampleInput) -> Any:
    """A module (pruned-model file) or a runner (ONNX file, opened by the backend) for a PairedTimer."""
    if model["kind"] == "onnx":
        return timer_backend.prepare_file(model["path"], example_input)
    from autoprune.formats.pruned import load_pruned

    return load_pruned(model["path"])[0]


def _measure_group(group: Mapping[str, Any], example_input: ExampleInput, spec: Mapping[str, Any]) -> dict[str, Any]:
    from autoprune.measure.backends import get_backend
    from autoprune.measure.latency import PairedTimer
    from autoprune.measure.schedule import PairedSchedule

    threads = spec["threads"]
    runtime = get_backend(group["backend"], threads=threads, **group["options"])
    timer = PairedTimer(_open(group["reference"], runtime, example_input), example_input, backend=runtime, threads=threads)
    stats = []
    for model in group["models"]:
        cand = _open(model, runtime, example_input)
        cand = timer.prepare(cand) if isinstance(cand, nn.Module) else cand  # exported / compiled once for both measurements
        if spec["warmup_rounds"]:
            timer.ratio(cand, PairedSchedule(rounds=spec["warmup_rounds"], **spec["schedule"]))
        stats.append(timer.ratio(cand, PairedSchedule(rounds=spec["rounds"], **spec["schedule"])))
    reference_ms = timer.reference_ms()
    ratios = [{"ratio": s.ratio, "ci_low": s.ci_low, "ci_high": s.ci_high, "rounds": s.rounds, "ms": s.ratio * reference_ms} for s in stats]
    return {"ratios": ratios, "reference_ms": reference_ms, "settings": timer.settings()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of the child: ``python -m autoprune.measure.fresh SPEC.json``; writes the result (or the error) to the spec's ``out``.

    Returns:
        0, or 2 after an autoprune error (its type and one-line message are in the result file).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        raise SystemExit("usage: python -m autoprune.measure.fresh SPEC.json (written by remeasure_in_fresh_process)")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        torch.set_num_threads(spec["threads"])
        args = tuple(torch.load(spec["input"], weights_only=True))
        example_input = args if len(args) > 1 else args[0]
        fp32 = _measure_group(spec["fp32"], example_input, spec)
        int8 = _measure_group(spec["int8"], example_input, spec) if spec["int8"] else None
    except AutopruneError as e:
        write_json_atomic(spec["out"], {"error": {"type": type(e).__name__, "message": one_line(e, None)}})
        return 2
    write_json_atomic(spec["out"], {"fp32": fp32, "int8": int8, "pid": os.getpid()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "MAX_FRESH_PROCESSES", "FreshGroup", "FreshMeasurement", "FreshRatio", "ModelLike", "FRESH_PROCESSES", "ZooModel", "remeasure_in_fresh_process"]
