"""The smaller gaps of issue 22's reports, as catalogues of the project's own small models.

- ``HAND_MACS``: attention written by hand (``q @ kᵀ``, ``attn @ v``, ``torch.einsum``, SDPA): the
  MACs counted, and those the graph predicts, equal a hand count (they are a budget metric);
- ``REBUILT``: layers the latency table has no builder for (``nn.Upsample(scale_factor=2)``, a
  ``DropPath``, a norm with weights of its own) are rebuilt with their arguments or timed in
  place, never counted as 0 ms;
- ``NOT_DROPPABLE``: a same-shape block that is not offered as droppable says why at ``-v`` (INFO);
- ``NOT_FASTER``: a pruned model measured no faster than dense reads as "slower" / "not faster",
  never as a speed-up below 1 ("0.99x faster").

``experiments/bench/coverage.py`` (section "Patterns from the issue's reports") reads these catalogues.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.app.pipeline import ModelReport, not_faster_warning
from autoprune.app.tables import final_rows
from autoprune.errors import ModelError
from autoprune.graph.functional import FUNCTIONAL_KINDS
from autoprune.graph.layers import count_macs, record_layer_specs, spec_macs
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.compare import compare_to_dense
from autoprune.measure.latency import count_macs_params
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable, _build

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def build(factory):
    torch.manual_seed(0)
    return factory().eval()


# --- HAND_MACS -------------------------------------------------------------------------------


class HandAttention(nn.Module):
    """Single-head attention written by hand over the 8 image rows (tokens of 8 features): q, k, v projections, scores, mix, classifier.

    ``how``: ``matmul`` (``q @ k.transpose(-2, -1)``, ``attn @ v``), ``einsum`` (the same two
    products as ``torch.einsum``) or ``sdpa`` (``F.scaled_dot_product_attention``).
    """

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.q, self.k, self.v, self.fc = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        t = x[:, 0]  # (N, 8 tokens, 8 features)
        q, k, v = self.q(t), self.k(t), self.v(t)
        if self.how == "sdpa":
            mixed = F.scaled_dot_product_attention(q, k, v)
        elif self.how == "einsum":
            mixed = torch.einsum("nij,njd->nid", torch.einsum("nid,njd->nij", q, k).softmax(-1), v)
        else:
            mixed = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.fc(mixed.mean(1))


#: MACs per sample of the layers: 3 projections of 8 tokens x 8 x 8, and the 8 x 10 classifier.
_LINEAR_MACS = 3 * 8 * 8 * 8 + 8 * 10
#: MACs per sample of the two products: scores (8 x 8 tokens, 8 features each) and the mix (8 x 8 tokens, 8 features).
_PRODUCT_MACS = 8 * 8 * 8 + 8 * 8 * 8

#: name -> (factory, hand-counted MACs per sample of the whole model, of which the hand-written products,
#: the exact units of the safety net; ``()``: none, SDPA's default scale 1/sqrt(width) changes with the
#: pruned width, so the surgery check finds the pruned output unlike the masked dense one)
HAND_MACS = {
    "matmul_attention": (lambda: HandAttention("matmul"), _LINEAR_MACS + _PRODUCT_MACS, _PRODUCT_MACS, ("v",)),
    "einsum_attention": (lambda: HandAttention("einsum"), _LINEAR_MACS + _PRODUCT_MACS, _PRODUCT_MACS, ("v",)),
    "sdpa_attention": (lambda: HandAttention("sdpa"), _LINEAR_MACS + _PRODUCT_MACS, _PRODUCT_MACS, ()),
}


def product_macs(specs) -> int:
    """MACs per sample of the products no layer makes (``matmul``, ``einsum``, SDPA specs), of a model's recorded specs."""
    return sum(spec_macs(s) for s in specs if s.kind in FUNCTIONAL_KINDS)


@pytest.mark.parametrize("name", HAND_MACS)
def test_hand_written_attention_macs_equal_the_hand_count_counted_and_predicted(name):
    make, hand, products, _ = HAND_MACS[name]
    model = build(make)
    specs = record_layer_specs(model, X)
    assert count_macs(specs) == hand
    assert product_macs(specs) == products
    graph = PrunableGraph(model, X)
    assert graph.dense_macs == hand
    policy = Policy.uniform(graph.unit_names, 0.5)
    pruned = apply_policy(model, policy, graph=graph)
    assert graph.macs_for(policy.ratios) == count_macs(record_layer_specs(pruned, X)) < hand  # the products shrink with q, k, v


@pytest.mark.parametrize("name", HAND_MACS)
def test_the_safety_net_prunes_hand_written_attention_where_the_surgery_is_exact(name):
    make, _, _, exact = HAND_MACS[name]
    if exact:
        graph, report = verified_graph(build(make), X)
        assert tuple(report.exact) == exact and report.failed["macs"] == {}  # the products' MACs are predicted
        return
    with pytest.raises(ModelError, match=r"nothing to prune: no unit passes the checks \(v: surgery check failed: pruned output differs"):
        verified_graph(build(make), X)


# --- REBUILT ---------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): the identity in eval mode; no builder in the latency table."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x if not self.training or not self.drop_prob else x * (torch.rand(len(x), 1, 1, 1) > self.drop_prob)


class RMSNorm(nn.Module):
    """RMS norm with a weight of its own (as ``LlamaRMSNorm``): it cannot be rebuilt, so it is timed in place."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


#: name -> (factory of a model whose layer ``"1"`` is the case, how the table times it, {recorded option: value})
REBUILT = {
    "upsample_scale_factor": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Upsample(scale_factor=2)), "rebuilt",
                              {"scale_factor": 2.0}),
    "drop_path": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), DropPath(0.1)), "rebuilt", {"drop_prob": 0.1}),
    "rmsnorm_own_weight": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), RMSNorm(8)), "timed in place", {}),
}


def how_timed(spec) -> str:
    """How the latency table times a spec: ``"rebuilt"`` (a fresh module from its arguments) or ``"timed in place"``."""
    return "rebuilt" if _build(spec) is not None else "timed in place"


@pytest.mark.parametrize("name", REBUILT)
def test_a_layer_without_a_builder_is_rebuilt_with_its_arguments_or_timed_in_place(name, caplog):
    make, how, options = REBUILT[name]
    spec = next(s for s in record_layer_specs(build(make), X) if s.module_name == "1")
    assert how_timed(spec) == how
    assert {k: v for k, v in spec.options if k in options} == options
    if how == "rebuilt":  # the arguments survived: the fresh module gives the recorded output shape
        assert _build(spec)(torch.randn(spec.input_shape)).shape == spec.output_shape
    table = LatencyTable(threads=1, warmup=0, repeats=1, passes=1)
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.table"):
        assert table.spec_ms(spec) > 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_upsample_is_rebuilt_with_its_factor():
    spec = record_layer_specs(build(REBUILT["upsample_scale_factor"][0]), X)[1]
    assert spec.output_shape == (1, 4, 16, 16) and isinstance(_build(spec), nn.Upsample) and _build(spec).scale_factor == 2.0


# --- NOT_DROPPABLE ---------------------------------------------------------------------------


class Gated(nn.Module):
    """A residual block whose forward branches on the data: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow
            return x + self.conv(x)
        return x


class Flagged(nn.Module):
    """A residual block its author marks as not droppable (``residual = False``)."""

    residual = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def _around(block: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), block, nn.Flatten(), nn.Linear(8 * 64, 10))


#: name -> (factory, the block's name, words its INFO line must hold)
NOT_DROPPABLE = {
    "data_dependent_control_flow": (lambda: _around(Gated()), "2", ("data-dependent control flow",)),
    "residual_attribute_false": (lambda: _around(Flagged()), "2", ("residual attribute is False",)),
}


def not_droppable_lines(model: nn.Module, example_input) -> tuple[PrunableGraph, dict[str, str]]:
    """The graph of ``model`` and, per block not offered as droppable, the INFO line saying why (what ``-v`` shows)."""
    lines: dict[str, str] = {}

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.match(r"block '([^']*)' .* is not offered as droppable", record.getMessage())
            if found:
                lines[found.group(1)] = record.getMessage()

    log, handler = logging.getLogger("autoprune.graph.discovery"), Catch(logging.INFO)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        graph = PrunableGraph(model, example_input)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return graph, lines


@pytest.mark.parametrize("name", NOT_DROPPABLE)
def test_a_block_not_offered_as_droppable_says_why_at_info(name, caplog):
    make, block, words = NOT_DROPPABLE[name]
    with caplog.at_level(logging.INFO, logger="autoprune.graph.discovery"):
        graph = PrunableGraph(build(make), X)
    assert block not in graph.block_names
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"block '{block}'")]
    assert r"not offered as droppable" in line and all(w in line for w in words) and "\n" not in line
    assert caplog.records[0].levelno == logging.INFO
    assert not_droppable_lines(build(make), X)[1] == {block: line}


def test_the_same_block_without_the_control_flow_is_droppable():
    class Plain(Gated):
        def forward(self, x):
            return x + self.conv(x)

    assert PrunableGraph(build(lambda: _around(Plain())), X).block_names == ["2"]


# --- NOT_FASTER ------------------------------------------------------------------------------


class SwiGLULayer(nn.Module):
    """``x + down(silu(gate(norm(x))) * up(norm(x)))`` with an RMS norm of its own (a Llama MLP block)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d)
        self.gate_proj, self.up_proj = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class SwiGLUNet(nn.Module):
    """Two tiny SwiGLU layers on the flattened image (the speedup_wording report): per-call overhead dominates its latency."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.layers = nn.Linear(64, 32), nn.Sequential(SwiGLULayer(32, 64), SwiGLULayer(32, 64))
        self.norm, self.head = RMSNorm(32), nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.norm(self.layers(self.embed(x.flatten(1)))))


#: name -> (factory, model.ignore, uniform pruning ratio): pruned models whose MACs fall but whose latency hardly does
NOT_FASTER = {
    "swiglu_rmsnorm": (SwiGLUNet, ("layers.0.norm", "layers.1.norm", "norm"), 0.3),
}


def serving_settings() -> LatencySettings:
    """Batch 1, one thread on ONNX Runtime when installed (else eager PyTorch): the speedup_wording report's settings."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return LatencySettings(backend="torch", threads=1, batch_size=1)
    return LatencySettings(backend="onnxruntime", threads=1, batch_size=1)


def delivered_reports(name: str, *, rounds: int = 20) -> tuple[ModelReport, ModelReport]:
    """Dense and pruned figures of a ``NOT_FASTER`` case as the final table gets them: latency in ms per call at batch 1, paired on the serving runtime.

    The test accuracy is not measured (NaN): only the latency wording is under test.
    """
    make, ignored, ratio = NOT_FASTER[name]
    dense = build(make)
    graph = PrunableGraph(dense, X, ignored=ignored)
    pruned = apply_policy(dense, Policy.uniform(graph.unit_names, ratio), graph=graph).eval()
    settings = serving_settings()
    (timed,) = compare_to_dense([pruned], dense, X, settings, rounds=rounds)
    reports = []
    for model, ms, ci, eager in ((dense, timed.serving_dense_ms, (timed.serving_dense_ms,) * 2, timed.eager_dense_ms),
                                 (pruned, timed.serving_ms, timed.serving_ci_ms, timed.eager_ms)):
        macs, params = count_macs_params(model, X)
        reports.append(ModelReport(test_accuracy=float("nan"), latency_ms=ms, latency_ci_ms=ci, macs=int(macs), params=int(params),
                                   size_bytes=0, eager_latency_ms=eager, backend=settings.backend))
    return reports[0], reports[1]


#: A speed-up below 1 printed as one ("0.99x faster"): what the wording must never say.
SPEED_UP_BELOW_ONE = re.compile(r"\b0\.\d+x faster")


@pytest.mark.parametrize("name", NOT_FASTER)
def test_a_pruned_model_measured_no_faster_reads_as_slower_or_not_faster_never_as_a_speed_up_below_one(name):
    dense, pruned = delivered_reports(name)
    assert pruned.macs < dense.macs
    latency = final_rows(dense, pruned)[1]
    words, line = latency.cells()[3], not_faster_warning(dense, pruned)
    assert not SPEED_UP_BELOW_ONE.search(words) and not SPEED_UP_BELOW_ONE.search(line or "")
    assert ("slower" in words) == (pruned.latency_ms > dense.latency_ms)
    assert (line is None) == (pruned.latency_ci_ms[1] < dense.latency_ms)  # no warning only when measurably faster
    if line is not None:
        assert "not faster than dense" in line and "\n" not in line and words in line
