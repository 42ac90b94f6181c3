"""Map a pruning policy found on one architecture onto another.

A policy file carries the *fingerprint* of the model it was found on (see
:func:`autoprune.graph.policy.model_fingerprint`): per unit its kind, relative depth,
resolution, stride and whether it is a residual stream; per droppable block its
depth and resolution. :func:`transfer_policy` uses it to give every unit of the
target model a ratio:

* **Same architecture** (identical unit and block names): the policy is returned
  as it is.
* **Stages.** A spatial unit's stage is the resolution of its *output* relative to
  the model input (``resolution / stride``), quantised to a power of two, so the
  stride-2 conv that opens a stage belongs to that stage. When both models have the
  same set of stages they are matched by resolution; otherwise by rank (the first
  target stage to the first source stage, the last to the last, the ones between
  proportionally). Linear units have no stage.
* **Compatible source units.** Units inside blocks the source dropped are left out
  (their ratio says nothing). A target unit takes its ratio from the source units
  of the same role: same kind (:class:`~autoprune.graph.units.UnitKind`: conv, depthwise, linear,
  heads, ffn) and same *stream* flag
  (a residual stream is a coupled, non-depthwise unit; a depthwise group is always
  coupled to its expansion conv, which does not make it a stream), in the matched
  stage. When there is none, the pool is widened step by step: conv and depthwise
  stand in for each other, then the other stream flag within the stage, then the
  same role anywhere in the network, then any unit.
* **Interpolation.** Within a stage, the target unit's relative position among the
  target units of its role in that stage (first 0, last 1) is matched with the same
  relative position in the source pool (first pool unit 0, last 1), and the ratio is
  linearly interpolated between the two source units around it (clamped to the
  first / last one). So ResNet-20's three blocks of a stage span ResNet-56's nine.
  Outside a stage (fallbacks, linear units) the plain relative depth is used.
* **Blocks.** Per stage, the fraction of droppable blocks the source dropped is
  applied to the target's droppable blocks of the matched stage (rounded to nearest,
  never every block of a stage unless the source dropped all of its blocks there),
  choosing the target blocks whose relative position in the stage is nearest to the
  dropped source blocks.

:func:`refit_to_budget` then scales the ratios uniformly so the predicted budget
metric just meets the target, :func:`drop_candidates` proposes shallower and deeper cuts
around the mapped drop set, and :func:`transfer` does it all for the CLI, keeping the best
measured candidate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprune.errors import PolicyError
from autoprune.formats.policy_file import policy_document
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.units import CHANNEL_KINDS, SPATIAL_KINDS, UnitKind

if TYPE_CHECKING:
    from autoprune.graph.prunable import PrunableGraph

_UNIT_KEYS = ("name", "kind", "depth", "resolution", "coupled")
_BLOCK_KEYS = ("name", "depth", "resolution")


@dataclass(frozen=True)
class MappingRow:
    """How one target unit (or droppable block) got its ratio (or drop decision).

    Attributes:
        name: Target unit or block name.
        kind: The unit's :class:`~autoprune.graph.units.UnitKind`, or ``block`` for a droppable block.
        depth: Relative depth in the target model, 0..1.
        stage: Output resolution relative to the model input (``1.0``, ``0.5``, ...); ``None`` for linear units.
        coupled: The target unit's ``coupled`` feature (several layers write into its channels).
        sources: Source units (or dropped source blocks) the value was taken from.
        ratio: Ratio mapped from the source (clipped to ``[0, max_ratio]``); ``None`` for blocks.
        refit: Ratio after :func:`refit_to_budget`; ``None`` before refitting and for blocks.
        how: Short explanation, e.g. ``"interp depth 0.47-0.57 (conv, stage 0.5)"``.
        dropped: For blocks, whether the block is dropped; ``None`` for units.
    """

    name: str
    kind: UnitKind
    depth: float
    stage: float | None
    coupled: bool
    sources: tuple[str, ...]
    ratio: float | None
    refit: float | None
    how: str
    dropped: bool | None = None


@dataclass
class TransferResult:
    """Outcome of :func:`transfer`.

    Attributes:
        policy: The mapped (and, unless ``refit=False``, refitted) policy for the target model.
        rows: One :class:`MappingRow` per target unit and droppable block.
        scale: Uniform ratio scale found by :func:`refit_to_budget` (1.0 without refit).
        predicted_value: Predicted budget metric of ``policy`` (latency or MAC ratio to dense).
        metric: The budget metric (``latency`` or ``macs``).
        target: The budget target as a fraction of dense.
        identity: Source and target have the same unit and block names (policy taken by name).
        fingerprint: The *target* model's fingerprint, for the new policy file.
        source: Where the policy came from: ``model``, ``data``, ``searcher``, ``arch_hash``, ``budget``.
        metrics: With ``measure=True``: the evaluator's metrics of ``policy`` (measured latency, proxy accuracy).
        candidates: Every re-fitted variant tried (one per drop set, see :func:`drop_candidates`); ``policy`` is one of them.
    """

    policy: Policy
    rows: list[MappingRow]
    scale: float
    predicted_value: float
    metric: str
    target: float
    identity: bool
    fingerprint: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    candidates: list[Candidate] = field(default_factory=list)

    def document(self, *, model: str, data: str, backend: dict, metrics: dict | None = None) -> dict:
        """The policy file of the transferred policy (``policy_document`` plus a ``transferred_from`` entry)."""
        doc = policy_document(
            self.policy, model=model, data=data, metric=self.metric, target=self.target, backend=backend,
            searcher="transfer", metrics=metrics, fingerprint=self.fingerprint,
        )
        doc["transferred_from"] = {**self.source, "scale": self.scale, "predicted_value": self.predicted_value}
        return doc


@dataclass
class Candidate:
    """One re-fitted variant of the mapped policy: a drop set, its channel scale, and (measured) metrics."""

    policy: Policy
    scale: float
    predicted_value: float
    metrics: dict[str, Any] | None = None


# ----------------------------------------------------------------- fingerprint parsing
@dataclass(frozen=True)
class _Unit:
    name: str
    kind: UnitKind
    depth: float
    level: int | None  # stage as -log2(output resolution); None for linear units
    stream: bool
    coupled: bool


@dataclass(frozen=True)
class _Block:
    name: str
    depth: float
    level: int


def _level(resolution: float, stride: int = 1) -> int:
    out = float(resolution) / max(1, int(stride))
    return int(round(-math.log2(max(out, 1e-9))))


def _stage_of(level: int | None) -> float | None:
    return None if level is None else 2.0 ** -level


def _parse_fingerprint(fp: Any) -> tuple[list[_Unit], list[_Block]]:
    if fp is None:
        raise PolicyError(
            "the policy has no model fingerprint, so it cannot be transferred to another architecture "
            "(it can only be applied by unit names to the model it was found on); "
            "re-run 'autoprune search' to get a policy file with a fingerprint"
        )
    if not isinstance(fp, dict) or not isinstance(fp.get("units"), list) or not isinstance(fp.get("blocks", []), list):
        raise PolicyError("the policy's fingerprint is malformed: expected an object with 'units' and 'blocks' lists")
    if not fp["units"]:
        raise PolicyError("the policy's fingerprint lists no units; it cannot be transferred")
    units = []
    for i, u in enumerate(fp["units"]):
        missing = [k for k in _UNIT_KEYS if not isinstance(u, dict) or k not in u]
        if missing:
            raise PolicyError(f"the policy's fingerprint is malformed: unit #{i} lacks {missing}")
        if str(u["kind"]) not in CHANNEL_KINDS:
            raise PolicyError(f"the policy's fingerprint is malformed: unit {u['name']!r} has kind {str(u['kind'])!r}; "
                              f"allowed: {[k.value for k in CHANNEL_KINDS]}")
        kind = UnitKind(str(u["kind"]))
        try:
            depth, res, stride = float(u["depth"]), float(u["resolution"]), int(u.get("stride", 1))
        except (TypeError, ValueError) as e:
            raise PolicyError(f"the policy's fingerprint is malformed: unit {u['name']!r} has a non-numeric feature ({e})") from e
        coupled = bool(u["coupled"])
        units.append(_Unit(str(u["name"]), kind, depth, _level(res, stride) if kind.spatial else None,
                           coupled and kind != UnitKind.DEPTHWISE, coupled))
    blocks = []
    for i, b in enumerate(fp.get("blocks", [])):
        missing = [k for k in _BLOCK_KEYS if not isinstance(b, dict) or k not in b]
        if missing:
            raise PolicyError(f"the policy's fingerprint is malformed: block #{i} lacks {missing}")
        try:
            blocks.append(_Block(str(b["name"]), float(b["depth"]), _level(float(b["resolution"]))))
        except (TypeError, ValueError) as e:
            raise PolicyError(f"the policy's fingerprint is malformed: block {b['name']!r} has a non-numeric feature ({e})") from e
    blocks.sort(key=lambda b: b.depth)
    return units, blocks


def _stage_map(source_levels: Iterable[int], target_levels: Iterable[int]) -> dict[int, int]:
    """Target stage level -> source stage level: by resolution when the sets agree, else by rank."""
    src, tgt = sorted(set(source_levels)), sorted(set(target_levels))
    if not src or not tgt:
        return {}
    if set(tgt) <= set(src):
        return {t: t for t in tgt}
    if len(tgt) == 1:
        return {tgt[0]: min(src, key=lambda s: (abs(s - tgt[0]), s))}
    return {t: src[int(math.floor(i * (len(src) - 1) / (len(tgt) - 1) + 0.5))] for i, t in enumerate(tgt)}


def _extent(depths: Sequence[float]) -> tuple[float, float]:
    return (min(depths), max(depths)) if depths else (0.0, 1.0)


def _position(depth: float, extent: tuple[float, float]) -> float:
    lo, hi = extent
    return (depth - lo) / (hi - lo) if hi > lo else 0.5


def _interpolate(x: float, points: list[tuple[float, float, str]]) -> tuple[float, tuple[str, ...], str]:
    """Linear interpolation of ``(x, ratio, name)`` points at ``x``, clamped; returns ratio, sources, how."""
    points = sorted(points, key=lambda p: p[0])
    if len(points) == 1 or x <= points[0][0]:
        return points[0][1], (points[0][2],), "nearest"
    if x >= points[-1][0]:
        return points[-1][1], (points[-1][2],), "nearest"
    for (x0, r0, n0), (x1, r1, n1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            w = (x - x0) / (x1 - x0) if x1 > x0 else 0.5
            return r0 + w * (r1 - r0), (n0, n1), "interp"
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------- transfer
def transfer_policy(
    policy: Policy,
    source_fingerprint: dict,
    target: PrunableGraph,
    *,
    max_ratio: float = 0.8,
    allow_drop: bool = True,
) -> tuple[Policy, list[MappingRow]]:
    """Map ``policy``, found on the model described by ``source_fingerprint``, onto ``target``.

    See the module docstring for the rules. Every target unit gets a ratio (0 where
    the source did not prune), clipped to ``[0, max_ratio]``.

    Args:
        policy: The source policy.
        source_fingerprint: ``payload["fingerprint"]`` of the source policy file.
        target: The target model's graph.
        max_ratio: Largest ratio of the mapped policy.
        allow_drop: Whether the mapped policy may drop blocks.

    Returns:
        The mapped policy and one :class:`MappingRow` per target unit and droppable block.

    Raises:
        PolicyError: missing or malformed fingerprint, or a policy naming units/blocks its fingerprint lacks.
        ConfigError: ``max_ratio`` outside ``(0, 1)``.
    """
    from autoprune.errors import ConfigError

    if not 0.0 < max_ratio < 1.0:
        raise ConfigError(f"max_ratio: {max_ratio!r} is out of range; allowed: 0 < max_ratio < 1")
    src_units, src_blocks = _parse_fingerprint(source_fingerprint)
    src_names, src_block_names = [u.name for u in src_units], [b.name for b in src_blocks]
    unknown = sorted(set(policy.ratios) - set(src_names)) + sorted(set(policy.drop) - set(src_block_names))
    if unknown:
        raise PolicyError(f"the policy names units or blocks its own fingerprint does not list: {unknown}; the policy file is inconsistent")
    tgt_units, tgt_blocks = _parse_fingerprint(model_fingerprint(target))
    drop_ok = allow_drop and bool(tgt_blocks)

    if src_names == [u.name for u in tgt_units] and (src_block_names == [b.name for b in tgt_blocks] or not tgt_blocks):
        return _identity(policy, tgt_units, tgt_blocks, drop_ok)

    ratios: dict[str, float] = {}
    rows: list[MappingRow] = []
    src_ratio = {u.name: float(policy.ratios.get(u.name, 0.0)) for u in src_units}
    spatial_levels = lambda units, blocks: [u.level for u in units if u.level is not None] + [b.level for b in blocks]  # noqa: E731
    stage_map = _stage_map(spatial_levels(src_units, src_blocks), spatial_levels(tgt_units, tgt_blocks))
    # Units inside a dropped source block have no ratio worth copying (the block is gone).
    live = [u for u in src_units if not any(u.name.startswith(b + ".") for b in policy.drop)] or src_units
    for u in tgt_units:
        r, sources, how = _map_unit(u, live, src_ratio, stage_map, tgt_units)
        r = min(max(r, 0.0), max_ratio)
        ratios[u.name] = r
        rows.append(MappingRow(u.name, u.kind, u.depth, _stage_of(u.level), u.coupled, sources, r, None, how))

    drop, block_rows = _map_blocks(set(policy.drop), src_blocks, tgt_blocks, stage_map, drop_ok, allow_drop)
    return Policy(ratios, tuple(drop)), rows + block_rows


def _identity(policy: Policy, units: list[_Unit], blocks: list[_Block], drop_ok: bool) -> tuple[Policy, list[MappingRow]]:
    rows = [
        MappingRow(u.name, u.kind, u.depth, _stage_of(u.level), u.coupled, (u.name,),
                   float(policy.ratios.get(u.name, 0.0)), None, "same name")
        for u in units
    ]
    dropped = set(policy.drop) if drop_ok else set()
    for b in blocks:
        how = "same name" if drop_ok else "keep: block dropping is off"
        rows.append(MappingRow(b.name, UnitKind.BLOCK, b.depth, _stage_of(b.level), False,
                               (b.name,) if b.name in dropped else (), None, None, how, b.name in dropped))
    if policy.drop and not drop_ok:
        if not blocks:
            rows.append(_no_blocks_row(len(policy.drop)))
        return Policy(dict(policy.ratios), ()), rows
    return policy, rows


def _no_blocks_row(n_dropped: int) -> MappingRow:
    return MappingRow("(blocks)", UnitKind.BLOCK, 1.0, None, False, (), None, None,
                      f"source drops {n_dropped} block(s); the target has no droppable blocks: none dropped", False)


def _describe(
    kinds: tuple[str, ...], own_kind: str, stream: bool, own_stream: bool, level: int | None, src_level: int | None
) -> str:
    kind = own_kind if kinds == (own_kind,) else (f"{'/'.join(kinds)} for {own_kind}" if kinds else f"any kind for {own_kind}")
    parts = [kind]
    if stream != own_stream:
        parts.append("stream for inner" if stream else "inner for stream")
    elif stream:
        parts.append("stream")
    if level is None and src_level is None:
        parts.append("all stages" if own_kind != UnitKind.LINEAR or kinds != (UnitKind.LINEAR,) else "head")
    else:
        stage = f"stage {_stage_of(level):g}"
        if src_level != level:
            stage += f" <- source {_stage_of(src_level):g}"
        parts.append(stage)
    return ", ".join(parts)


def _map_unit(
    u: _Unit,
    src_units: list[_Unit],
    src_ratio: dict[str, float],
    stage_map: dict[int, int],
    tgt_units: list[_Unit],
) -> tuple[float, tuple[str, ...], str]:
    """Ratio, sources and explanation for one target unit (see the module docstring)."""
    other_spatial = tuple(k for k in SPATIAL_KINDS if k != u.kind)
    staged: list[tuple[tuple[str, ...], bool]] = []
    if u.level is not None and u.level in stage_map:
        staged = [((u.kind,), u.stream), ((u.kind, *other_spatial), u.stream), (SPATIAL_KINDS, not u.stream)]
    for kinds, stream in staged:
        src_level = stage_map[u.level]
        pool = [s for s in src_units if s.kind in kinds and s.stream == stream and s.level == src_level]
        if pool:
            # first of its role in the stage <-> first of the pool, last <-> last
            peers = [t.depth for t in tgt_units if t.kind == u.kind and t.stream == u.stream and t.level == u.level]
            x = _position(u.depth, _extent(peers))
            ext = _extent([s.depth for s in pool])
            points = [(_position(s.depth, ext), src_ratio[s.name], s.name) for s in pool]
            return _finish(u, pool, points, x, _describe(kinds, u.kind, stream, u.stream, u.level, src_level))
    tiers: list[tuple[tuple[str, ...], bool | None]] = [((u.kind,), u.stream)]
    if u.kind in SPATIAL_KINDS:
        tiers.append((SPATIAL_KINDS, u.stream))
    tiers += [((), u.stream), ((), None)]
    for kinds, stream in tiers:
        pool = [s for s in src_units if (not kinds or s.kind in kinds) and (stream is None or s.stream == stream)]
        if pool:
            points = [(s.depth, src_ratio[s.name], s.name) for s in pool]
            desc = _describe(kinds, u.kind, bool(stream), u.stream, None, None) if stream is not None else f"any unit for {u.kind}, all stages"
            return _finish(u, pool, points, u.depth, desc)
    raise AssertionError("the source fingerprint has units")  # pragma: no cover


def _finish(u: _Unit, pool: list[_Unit], points: list[tuple[float, float, str]], x: float, desc: str) -> tuple[float, tuple[str, ...], str]:
    r, sources, mode = _interpolate(x, points)
    depth = {s.name: s.depth for s in pool}
    if mode == "interp":
        how = f"interp depth {depth[sources[0]]:.2f}-{depth[sources[1]]:.2f} ({desc})"
    elif len(pool) == 1:
        how = f"{'stage stream' if u.stream and 'stage' in desc else 'only match'} depth {depth[sources[0]]:.2f} ({desc})"
    else:
        how = f"nearest depth {depth[sources[0]]:.2f} ({desc})"
    return r, sources, how


def _map_blocks(
    dropped: set[str],
    src_blocks: list[_Block],
    tgt_blocks: list[_Block],
    stage_map: dict[int, int],
    drop_ok: bool,
    allow_drop: bool,
) -> tuple[list[str], list[MappingRow]]:
    """Per stage, drop the same fraction of target blocks as the source dropped, at the nearest positions."""
    if not tgt_blocks:
        return [], ([_no_blocks_row(len(dropped))] if dropped else [])
    decisions: dict[str, tuple[bool, tuple[str, ...], str]] = {}
    by_level: dict[int, list[_Block]] = {}
    for b in tgt_blocks:
        by_level.setdefault(b.level, []).append(b)
    for level, blocks in by_level.items():
        if not drop_ok:
            why = "keep: block dropping is off" if not allow_drop else "keep: no droppable blocks"
            decisions.update({b.name: (False, (), why) for b in blocks})
            continue
        src_level = stage_map.get(level)
        src_stage = [b for b in src_blocks if b.level == src_level]
        stage_txt = f"stage {_stage_of(level):g}" + (f" <- source {_stage_of(src_level):g}" if src_level not in (level, None) else "")
        if not src_stage:
            decisions.update({b.name: (False, (), f"keep: source has no droppable blocks in {stage_txt}") for b in blocks})
            continue
        src_pos = [(i + 0.5) / len(src_stage) for i, b in enumerate(src_stage) if b.name in dropped]
        src_dropped = tuple(b.name for b in src_stage if b.name in dropped)
        k = int(math.floor(len(blocks) * len(src_dropped) / len(src_stage) + 0.5))
        if k >= len(blocks) and len(src_dropped) < len(src_stage):
            k = len(blocks) - 1
        frac = f"{len(src_dropped)}/{len(src_stage)}"
        if k == 0:
            decisions.update({b.name: (False, (), f"keep: source dropped {frac} of {stage_txt}; 0/{len(blocks)} here") for b in blocks})
            continue
        tgt_pos = [(j + 0.5) / len(blocks) for j in range(len(blocks))]
        # nearest to a dropped source position first; ties go to the deeper block
        order = sorted(range(len(blocks)), key=lambda j: (min(abs(tgt_pos[j] - p) for p in src_pos), -j))
        chosen = set(order[:k])
        for j, b in enumerate(blocks):
            if j in chosen:
                decisions[b.name] = (True, src_dropped, f"drop: source dropped {frac} of {stage_txt}; {k}/{len(blocks)} here, nearest position")
            else:
                decisions[b.name] = (False, (), f"keep: source dropped {frac} of {stage_txt}; {k}/{len(blocks)} here")
    rows = [
        MappingRow(b.name, UnitKind.BLOCK, b.depth, _stage_of(b.level), False, decisions[b.name][1], None, None,
                   decisions[b.name][2], decisions[b.name][0])
        for b in tgt_blocks
    ]
    return [b.name for b in tgt_blocks if decisions[b.name][0]], rows


__all__ = ["Candidate", "MappingRow", "TransferResult", "transfer_policy"]
