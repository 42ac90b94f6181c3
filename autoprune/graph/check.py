"""Differential check of surgery: a pruned model must compute what the masked dense model computes.

For a set of channels to cut, the *masked dense model* is the dense model in which those channels
are switched off without changing any shape: the producing layers write zeros there (weights,
biases and affine norm parameters zeroed), the consuming layers ignore them (their input slices
zeroed), attention heads that are cut attend to nothing, and a ``LayerNorm``/``GroupNorm`` over
the cut channels normalises over the surviving channels only. Real surgery must give the same
output (in float64, within ``1e-5``). This is the test pruning papers use to validate structured
pruning (e.g. the masked-vs-pruned equivalence of Torch-Pruning's tests, Fang et al. 2023).

:func:`check_units` cuts each unit alone at a few allowed counts (random channels), then all
passing units together; :func:`verify_graph` excludes every unit that fails from the graph, with
one warning line naming it and why, and caches the verdict by model fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.graph.layers import ExampleInput, as_args, input_shapes, with_batch_size
from autoprune.graph.policy import architecture_hash
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import prune_channels

log = logging.getLogger(__name__)

CHECK_VERSION = 1
TOLERANCE = 1e-5


class _Unmaskable(Exception):
    """A layer whose channels the masked reference cannot switch off."""


@dataclass
class CheckReport:
    """Outcome of :func:`check_units`.

    Attributes:
        passed: Units whose surgery matched the masked dense model.
        failed: Per failing unit, one line saying why.
        max_diff: Largest output difference seen per unit (float64).
        cached: Whether the verdict came from the cache.
    """

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)
    cached: bool = False


class _MaskedLayerNorm(nn.Module):
    """``LayerNorm`` over the last dimension restricted to the kept features (zeros elsewhere)."""

    def __init__(self, ln: nn.LayerNorm, keep: torch.Tensor) -> None:
        super().__init__()
        self.ln, self.keep = ln, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.keep.to(x.device)
        w = self.ln.weight[k] if self.ln.weight is not None else None
        b = self.ln.bias[k] if self.ln.bias is not None else None
        out = torch.zeros_like(x)
        out[..., k] = F.layer_norm(x[..., k], (len(k),), w, b, self.ln.eps)
        return out


class _MaskedGroupNorm(nn.Module):
    """``GroupNorm`` whose statistics per group use the group's kept channels only."""

    def __init__(self, gn: nn.GroupNorm, keep: torch.Tensor) -> None:
        super().__init__()
        self.gn, self.keep = gn, set(keep.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn, out = self.gn, torch.zeros_like(x)
        size = gn.num_channels // gn.num_groups
        for g in range(gn.num_groups):
            ch = [c for c in range(g * size, (g + 1) * size) if c in self.keep]
            if ch:
                w = gn.weight[ch] if gn.affine else None
                b = gn.bias[ch] if gn.affine else None
                out[:, ch] = F.group_norm(x[:, ch], 1, w, b, gn.eps)
        return out


def _zero(t: torch.Tensor | None, idxs: list[int], dim: int) -> None:
    if t is not None and idxs:
        t.index_fill_(dim, torch.tensor(idxs, dtype=torch.long, device=t.device), 0.0)


def _mask_layer(m: nn.Module, name: str, idxs: list[int], out: bool, norm_cuts: dict[str, set[int]]) -> None:
    """Switch off channels ``idxs`` of ``m`` (its outputs if ``out``, else its inputs), in place."""
    if isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        if out or (m.groups == m.in_channels == m.out_channels and m.groups > 1):
            _zero(w, idxs, 1 if m.transposed else 0)
            _zero(m.bias, idxs, 0)
        elif m.transposed:
            _zero(w, idxs, 0)
        else:
            in_per_group, out_per_group = m.in_channels // m.groups, m.out_channels // m.groups
            for i in idxs:
                g, p = divmod(i, in_per_group)
                w[g * out_per_group:(g + 1) * out_per_group, p] = 0.0
    elif isinstance(m, nn.Linear):
        if out:
            _zero(m.weight, idxs, 0)
            _zero(m.bias, idxs, 0)
        else:
            _zero(m.weight, idxs, 1)
    elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        _zero(m.weight, idxs, 0)
        _zero(m.bias, idxs, 0)
    elif isinstance(m, nn.PReLU):
        return  # prelu(0) == 0
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise _Unmaskable(f"LayerNorm {name!r} normalises over {len(m.normalized_shape)} dimensions")
        norm_cuts.setdefault(name, set()).update(idxs)
    elif isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim or m.in_proj_weight is None:
            raise _Unmaskable(f"attention {name!r} has separate q/k/v projections")
        e = m.embed_dim
        rows = [i + k * e for k in range(3) for i in idxs]
        _zero(m.in_proj_weight, rows, 0)
        _zero(m.in_proj_weight, idxs, 1)
        _zero(m.in_proj_bias, rows, 0)
        _zero(m.out_proj.weight, idxs, 0)
        _zero(m.out_proj.weight, idxs, 1)
        _zero(m.out_proj.bias, idxs, 0)
    elif isinstance(m, nn.Embedding):
        _zero(m.weight, idxs, 1)
    elif list(m.parameters(recurse=False)):
        raise _Unmaskable(f"layer {name!r} ({type(m).__name__}) cannot be masked for the check")


def masked_reference(graph: PrunableGraph, cuts: dict[str, list[int]]) -> nn.Module:
    """The dense model with the channels in ``cuts`` switched off, shapes unchanged.

    Args:
        graph: The dense model's graph (its dependency groups give every layer a cut reaches).
        cuts: Per unit, the channel indices to switch off (root-layer coordinates).

    Returns:
        A modified deep copy of ``graph.network`` (laid out like it: attention heads split).

    Raises:
        _Unmaskable: a layer in a cut's group has parameters the reference cannot mask.
    """
    ref = graph.dense_copy(graph.model)
    modules = dict(ref.named_modules())
    norm_cuts: dict[str, set[int]] = {}
    with torch.no_grad():
        for unit, idxs in cuts.items():
            for mname, handler, _dim, ix in graph.pruning_plan(unit, sorted(idxs)):
                _mask_layer(modules[mname], mname, ix, graph.dg.is_out_channel_pruning_fn(handler), norm_cuts)
    for name, cut in norm_cuts.items():
        m = modules[name]
        size = m.normalized_shape[0] if isinstance(m, nn.LayerNorm) else m.num_channels
        keep = torch.tensor([c for c in range(size) if c not in cut], dtype=torch.long)
        wrapper = _MaskedLayerNorm(m, keep) if isinstance(m, nn.LayerNorm) else _MaskedGroupNorm(m, keep)
        parent, _, attr = name.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, attr, wrapper)
    return ref


def _outputs(model: nn.Module, x: ExampleInput) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        y = model(*as_args(x))
    items = y if isinstance(y, (tuple, list)) else (y.values() if isinstance(y, dict) else [y])
    return [t for t in items if isinstance(t, torch.Tensor)]


def _difference(graph: PrunableGraph, cuts: dict[str, list[int]], x: ExampleInput) -> float:
    """Largest absolute output difference between surgery and the masked dense model (float64)."""
    with warnings.catch_warnings():  # .double() of a scripted submodule reads its non-leaf .grad
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        pruned = prune_channels(graph.model, graph, cuts).double()
        ref = masked_reference(graph, cuts).double()
    got, want = _outputs(pruned, x), _outputs(ref, x)
    if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
        return float("inf")
    return max((float((a - b).abs().max()) for a, b in zip(got, want) if a.numel()), default=0.0)


def _group(graph: PrunableGraph, unit: str) -> tp.dependency.Group:
    # ``group`` is being renamed ``dependency_group``: accept either name
    return (getattr(graph, "dependency_group", None) or graph.group)(unit)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _random_cut(graph: PrunableGraph, unit: str, keep: int, gen: torch.Generator) -> list[int]:
    u = graph.unit(unit)
    return u.constraint.choose(torch.rand(u.features.channels, generator=gen, dtype=torch.float64), keep)


def check_units(graph: PrunableGraph, *, ratios: tuple[float, ...] = (0.5,), seed: int = 0, batch: int = 4) -> CheckReport:
    """Compare surgery with the masked dense model, each unit alone then all passing units together.

    Each unit is cut at the allowed counts nearest to ``ratios`` and at its smallest allowed
    count, with random channels. Units that pass are then cut together at the first ratio; if
    that fails, they are added one at a time and the first one that breaks agreement fails.

    Args:
        graph: The dense model's graph.
        ratios: Pruning ratios to try per unit.
        seed: Seed of the random channels and the random input.
        batch: Batch size of the random input (shaped like ``graph.example_input``).

    Returns:
        A :class:`CheckReport`.
    """
    gen = torch.Generator().manual_seed(seed)
    x = with_batch_size(graph.example_input, batch, generator=gen)
    x = tuple(t.double() if t.is_floating_point() else t for t in x) if isinstance(x, tuple) else (x.double() if x.is_floating_point() else x)
    report = CheckReport()
    for u in graph.units:
        keeps = sorted(({u.constraint.kept(r) for r in ratios} | {u.allowed[0]}) - {u.features.channels})
        worst = 0.0
        try:
            for keep in keeps:
                worst = max(worst, _difference(graph, {u.name: _random_cut(graph, u.name, keep, gen)}, x))
                if not worst <= TOLERANCE:
                    report.failed[u.name] = f"pruned output differs from the masked dense model by {worst:.2g} (keeping {keep} of {u.features.channels} channels)"
                    break
        except Exception as e:  # noqa: BLE001 - any failure of surgery or forward fails the unit
            report.failed[u.name] = f"surgery fails ({_one_line(e)})"
        if u.name in report.failed and any(dep.target.type == tp.ops.OPTYPE.SPLIT for dep, _ in _group(graph, u.name)):
            report.failed[u.name] += "; its channels pass through a torch.split/chunk"
        report.max_diff[u.name] = worst
    together = [u.name for u in graph.units if u.name not in report.failed]
    cuts = {n: _random_cut(graph, n, graph.unit(n).constraint.kept(ratios[0]), gen) for n in together}
    if together and not _passes(graph, cuts, x):
        kept: dict[str, list[int]] = {}
        for n in together:
            trial = {**kept, n: cuts[n]}
            if _passes(graph, trial, x):
                kept = trial
            else:
                report.failed[n] = f"cut together with {sorted(kept) or 'no other unit'}, the pruned output differs from the masked dense model"
    report.passed = [u.name for u in graph.units if u.name not in report.failed]
    return report


def _passes(graph: PrunableGraph, cuts: dict[str, list[int]], x: ExampleInput) -> bool:
    try:
        return _difference(graph, cuts, x) <= TOLERANCE
    except Exception:  # noqa: BLE001
        return False


def default_cache_dir() -> Path:
    """Where check verdicts are cached: ``$AUTOPRUNE_CACHE/checks`` (default ``.autoprune/checkpoints/checks``)."""
    return Path(os.environ.get("AUTOPRUNE_CACHE", ".autoprune/checkpoints")) / "checks"


def cache_key(graph: PrunableGraph, ratios: tuple[float, ...], seed: int) -> str:
    """The fingerprint a verdict is cached under: architecture, units and constraints, input shape, ratios, seed."""
    units = [(u.name, u.features.channels, u.constraint.segments, u.constraint.whole) for u in graph.units]
    text = json.dumps([CHECK_VERSION, tp.__version__ if hasattr(tp, "__version__") else "", architecture_hash(graph.model),
                       [list(s[1:]) for s in input_shapes(graph.example_input)] if isinstance(graph.example_input, tuple)
                       else list(graph.example_input.shape[1:]), units, list(ratios), seed])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def verify_graph(
    graph: PrunableGraph, *, cache_dir: str | os.PathLike | None = None, ratios: tuple[float, ...] = (0.5,), seed: int = 0
) -> CheckReport:
    """Run :func:`check_units` (or read its cached verdict) and exclude every failing unit from ``graph``.

    Args:
        graph: The dense model's graph; failing units are removed with :meth:`PrunableGraph.exclude`
            (one warning line each, naming the unit and why).
        cache_dir: Folder of cached verdicts, keyed by the model's fingerprint (architecture hash,
            units and their constraints, input shape); ``None``: no cache.
        ratios, seed: See :func:`check_units`.

    Returns:
        The report (``cached`` says whether it was read from the cache).
    """
    path = Path(cache_dir) / f"{cache_key(graph, ratios, seed)}.json" if cache_dir is not None else None
    report = None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            report = CheckReport(data["passed"], data["failed"], data.get("max_diff", {}), cached=True)
        except (OSError, ValueError, KeyError):
            report = None
    if report is None:
        report = check_units(graph, ratios=ratios, seed=seed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"passed": report.passed, "failed": report.failed, "max_diff": report.max_diff}))
                tmp.replace(path)
            except OSError as e:
                log.debug("check verdict not cached (%s)", e)
    for name, why in report.failed.items():
        graph.exclude(name, f"surgery check failed: {why}")
    return report


__all__ = ["CheckReport", "TOLERANCE", "cache_key", "check_units", "default_cache_dir", "masked_reference", "verify_graph"]
