"""Pattern catalogue: the layer patterns users bring, each pruned exactly, searched and exported, or refused by name.

Every model is small and built for digits (1x8x8, 10 classes). For each pattern:

- every unit's surgery equals the masked dense model (float64, within 1e-5), and so does a policy
  cutting every unit at once (the concat/grouped bugs showed only with several units cut);
- a short search under a MAC budget runs, every candidate is built;
- the pruned model exports to ONNX and ONNX Runtime agrees with PyTorch;
- or, where a unit cannot be cut exactly, it is left dense with one reason naming the layer.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from helpers import fast_settings, search
from torch import nn

from autoprune.errors import ModelError
from autoprune.graph.check import TOLERANCE, check_units, masked_reference
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy, pruning_history, replay_history
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator

IN, CLASSES, SIZE = 1, 10, 8


def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Inception(nn.Module):
    """Three branches (1x1, 3x3, 5x5) concatenated, then a 1x1 conv: the concat offset bug."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 16)
        self.b1, self.b3, self.b5 = cbr(16, 8, k=1), cbr(16, 8, k=3), cbr(16, 8, k=5)
        self.fuse = cbr(24, 16, k=1)
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.fuse(torch.cat([self.b1(x), self.b3(x), self.b5(x)], 1)))


class DenseNet(nn.Module):
    """Each layer's output concatenated to its input (DenseNet growth)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(IN, 8)
        self.l1, self.l2 = cbr(8, 4), cbr(12, 4)
        self.trans = cbr(16, 12, k=1)
        self.head = Head(12)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.head(self.trans(x))


class Grouped(nn.Module):
    """Conv2d(16, 32, 3, groups=4) between ordinary convs (ResNeXt)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.g, self.c2 = cbr(IN, 16), cbr(16, 32, g=4), cbr(32, 32, k=1)
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.c2(self.g(self.c1(x))))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.dw, self.pw = cbr(IN, 16), cbr(16, 16, g=16), cbr(16, 32, k=1)
        self.dw2, self.pw2 = cbr(32, 32, g=32), cbr(32, 32, k=1)
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.pw2(self.dw2(self.pw(self.dw(self.c1(x))))))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(pool(x))))) on a conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.c2 = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.c1(x)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(self.c2(x * w))


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(IN, 16, 3, 1, 1), nn.PReLU(16)
        self.c2, self.a2 = nn.Conv2d(16, 16, 3, 1, 1), nn.PReLU(16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.a2(self.c2(self.a1(self.c1(x)))))


class LayerNormMLP(nn.Module):
    """flatten -> Linear -> LayerNorm -> GELU -> Linear -> LayerNorm -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln1 = nn.Linear(IN * SIZE * SIZE, 32), nn.LayerNorm(32)
        self.fc2, self.ln2 = nn.Linear(32, 32), nn.LayerNorm(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = F.gelu(self.ln1(self.fc1(x.flatten(1))))
        return self.fc(F.gelu(self.ln2(self.fc2(x))))


class FlattenLinear(nn.Module):
    """conv -> flatten (channels x 4 x 4) -> Linear: each channel is 16 input features."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = cbr(IN, 8), cbr(8, 8, s=2)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        return self.fc(F.relu(self.fc1(self.c2(self.c1(x)).flatten(1))))


class SharedModule(nn.Module):
    """One conv applied twice (weight sharing): its input and output channels are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 16)
        self.shared = nn.Conv2d(16, 16, 3, 1, 1)
        self.head = Head(16)

    def forward(self, x):
        x = self.c1(x)
        return self.head(F.relu(self.shared(F.relu(self.shared(x)))))


class Attention(nn.Module):
    """nn.MultiheadAttention(32, 4 heads) over conv tokens, residual + LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        t = self.c1(x).flatten(2).transpose(1, 2)
        a, _ = self.attn(t, t, t)
        return self.fc(self.norm(t + a).mean(1))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn1 = nn.Conv2d(IN, 16, 3, 1, 1), nn.GroupNorm(4, 16)
        self.c2, self.gn2 = nn.Conv2d(16, 32, 3, 1, 1), nn.GroupNorm(8, 32)
        self.head = Head(32)

    def forward(self, x):
        return self.head(F.relu(self.gn2(self.c2(F.relu(self.gn1(self.c1(x)))))))


class Chunk(nn.Module):
    """torch.chunk on channels, one half convolved, halves concatenated again (partial conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.part, self.fuse = cbr(IN, 32), cbr(16, 16), cbr(32, 32, k=1)
        self.head = Head(32)

    def forward(self, x):
        a, b = torch.chunk(self.c1(x), 2, dim=1)
        return self.head(self.fuse(torch.cat([self.part(a), b], 1)))


class TinyUnits(nn.Module):
    """A 1-channel spatial attention map and a 2-channel bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 16)
        self.att = nn.Conv2d(16, 1, 3, 1, 1)
        self.thin, self.wide = cbr(16, 2), cbr(2, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.c1(x)
        x = x * torch.sigmoid(self.att(x))
        return self.head(self.wide(self.thin(x)))


class DetachedProbe(nn.Module):
    """A linear probe run on detached features, beside the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = cbr(IN, 16), cbr(16, 16)
        self.fc = nn.Linear(16, CLASSES)
        self.probe = nn.Linear(16, 4)

    def forward(self, x):
        f = F.adaptive_avg_pool2d(self.c2(self.c1(x)), 1).flatten(1)
        logits = self.fc(f)
        self.probe_out = self.probe(f.detach())
        return logits


class Conv1dNet(nn.Module):
    """Image rows as a sequence: Conv1d x2 -> mean -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(IN * SIZE, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.c2, self.bn2 = nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        t = x.flatten(1, 2)  # (N, C*H, W)
        return self.fc(F.relu(self.bn2(self.c2(F.relu(self.bn1(self.c1(t)))))).mean(-1))


class Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(IN, 16, s=2)
        self.up, self.bn = nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16)
        self.c2 = cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.c2(F.relu(self.bn(self.up(self.c1(x))))))


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks (MLP-Mixer-like channel MLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(IN * SIZE * SIZE, 32)
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(32), nn.Linear(32, 64), nn.Linear(64, 32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.embed(x.flatten(1))
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.fc(x)


class Bottleneck(nn.Module):
    """Two 3x3 convs with a residual (YOLOv8's Bottleneck)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = cbr(c, c), cbr(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f block: stem -> cv1 -> chunk(2) -> a bottleneck on the last chunk -> cat(all three) -> cv2.

    The bottleneck's residual couples its output with cv1's second chunk, so that unit's channels
    pass through the chunk; stem, the bottleneck's first conv and cv2 are ordinary units.
    """

    def __init__(self, n: int = 1) -> None:
        super().__init__()
        self.stem, self.cv1 = cbr(IN, 16), cbr(16, 32, k=1)
        self.m = nn.ModuleList(Bottleneck(16) for _ in range(n))
        self.cv2 = cbr((2 + n) * 16, 32, k=1)
        self.head = Head(32)

    def forward(self, x):
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.head(self.cv2(torch.cat(y, 1)))


#: name -> (model class, {unit: words its refusal must contain}) for units left dense.
PATTERNS: dict[str, tuple[type[nn.Module], dict[str, tuple[str, ...]]]] = {
    "inception_concat": (Inception, {}),
    "densenet_concat": (DenseNet, {}),
    "grouped_conv": (Grouped, {}),
    "depthwise_separable": (DepthwiseSeparable, {}),
    "squeeze_excitation": (SqueezeExcite, {}),
    "prelu": (PReLUNet, {}),
    "layernorm": (LayerNormMLP, {}),
    "flatten_linear": (FlattenLinear, {}),
    "module_used_twice": (SharedModule, {}),
    "multihead_attention": (Attention, {}),
    "group_norm": (GroupNormNet, {}),
    "channel_chunk": (Chunk, {"c1.0": ("split/chunk",)}),
    "tiny_units": (TinyUnits, {"att": ("1 channel",)}),
    "detached_layer": (DetachedProbe, {"c2.0": ("'probe'", "outside the dependency graph")}),
    "conv1d": (Conv1dNet, {}),
    "conv_transpose": (Deconv, {}),
    "residual_mlp": (ResidualMLP, {}),
    "c2f_chunk_concat": (C2f, {"m.0.cv2.0": ("split/chunk",)}),
}


@pytest.fixture(scope="module")
def x(digits) -> torch.Tensor:
    return digits.val.x[:4]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return PATTERNS[name][0]().eval()


def refusals(graph: PrunableGraph, report) -> dict[str, str]:
    return {**graph.skipped, **report.failed}


@pytest.mark.parametrize("name", PATTERNS)
def test_pruned_output_equals_masked_dense_or_the_unit_is_refused_by_name(name, digits, x):
    graph = PrunableGraph(build(name), digits.example_input(1))
    report = check_units(graph, ratios=(0.3, 0.6))
    refused = refusals(graph, report)
    expected = PATTERNS[name][1]
    assert set(refused) == set(expected), refused
    for unit, words in expected.items():
        assert all(w in refused[unit] for w in words), refused[unit]
        assert "\n" not in refused[unit]
    for unit in report.failed:
        graph.exclude(unit, report.failed[unit])
    assert graph.units, "every pattern keeps something to prune"

    # all units cut at once, channels chosen by importance: the multi-unit case
    policy = Policy.uniform(graph.unit_names, 0.5)
    pruned = apply_policy(graph.model, policy, graph=graph)
    by_root = {u.root: u.name for u in graph.units}  # surgery records each unit's root layer (a head unit's query)
    cuts = {by_root[root]: idxs for root, _, idxs in pruning_history(pruned)[-1]["prune"]}
    assert cuts and all(len(cuts[u.name]) == u.features.channels - graph.kept(policy.ratios)[u.name] for u in graph.units if u.name in cuts)
    with torch.no_grad():
        got = pruned.double().eval()(x.double())
        want = masked_reference(graph, cuts).double().eval()(x.double())
    assert float((got - want).abs().max()) <= TOLERANCE

    # a fresh Torch-Pruning query per unit (how saved models are replayed) gives the very same
    # tensors as the surgery's dense-index replay: the fast path equals a fresh prune
    fresh = replay_history(build(name), pruning_history(pruned), digits.example_input(1)).double()
    mine, theirs = pruned.state_dict(), fresh.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("name", PATTERNS)
def test_every_kept_count_is_allowed_and_no_unit_is_emptied(name, digits):
    graph = PrunableGraph(build(name), digits.example_input(1))
    for ratio in (0.1, 0.37, 0.5, 0.8, 0.99):
        kept = graph.kept(Policy.uniform(graph.unit_names, ratio).ratios)
        for u in graph.units:
            assert kept[u.name] in u.allowed and kept[u.name] >= 1


@pytest.mark.parametrize("name", PATTERNS)
def test_a_short_search_under_a_mac_budget_builds_every_candidate(name, digits, tmp_path):
    model = build(name)
    evaluator = PolicyEvaluator(model, digits, budget=Budget(metric="macs", target=1.0), check_cache=str(tmp_path), **fast_settings())
    assert evaluator.latency_model.calibration_failures == []
    target = min(1.0, max(0.5, evaluator.min_reachable() + 0.1))
    ev = evaluator.with_budget(Budget(metric="macs", target=target))
    result = search("random", ev, 4)
    assert len(ev.history) == 4
    assert [e.metrics.error for e in ev.history if e.metrics.failed] == []
    assert result.best is not None


@pytest.mark.parametrize("name", PATTERNS)
def test_the_pruned_model_exports_to_onnx(name, digits, x, tmp_path):
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx

    graph = PrunableGraph(build(name), digits.example_input(1))
    for unit, why in check_units(graph).failed.items():
        graph.exclude(unit, why)
    pruned = apply_policy(graph.model, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    info = export_onnx(pruned, x, tmp_path / f"{name}.onnx")
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4


def test_a_model_with_nothing_to_prune_says_so_and_names_why(digits):
    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(IN * SIZE * SIZE, 32)
            self.gain = nn.Parameter(torch.ones(32))
            self.fc = nn.Linear(32, CLASSES)

        def forward(self, x):
            return self.fc(F.relu(self.fc1(x.flatten(1)) * self.gain))

    with pytest.raises(ModelError, match=r"nothing to prune: no unit passes the checks \(fc1: .*'gain'.*\) and no droppable block"):
        PolicyEvaluator(Gain().eval(), digits, budget=Budget(metric="macs", target=0.6), check_cache=None)


def test_a_failing_unit_is_excluded_with_one_warning_naming_it(digits, caplog, tmp_path):
    graph = PrunableGraph(build("channel_chunk"), digits.example_input(1))
    from autoprune.graph.check import verify_graph

    with caplog.at_level(logging.WARNING):
        report = verify_graph(graph, cache_dir=tmp_path)
    assert "c1.0" not in graph.unit_names and "fuse.0" in graph.unit_names
    lines = [r.getMessage() for r in caplog.records if "c1.0" in r.getMessage()]
    assert len(lines) == 1 and "split/chunk" in lines[0]
    # the verdict is cached by fingerprint: a second graph of the same model reads it
    again = PrunableGraph(build("channel_chunk"), digits.example_input(1))
    assert verify_graph(again, cache_dir=tmp_path).cached and again.unit_names == graph.unit_names
    assert report.failed.keys() == {"c1.0"}


def test_a_c2f_block_keeps_its_chunked_unit_dense_and_prunes_the_rest_at_uniform_30_percent(digits, x):
    """YOLOv8 C2f (the c2f_chunk_concat report): ``estimate --ratios 0.3`` pruned the unit the check rejects and crashed."""
    from autoprune.graph.layers import count_macs, record_layer_specs
    from autoprune.graph.safety import verified_graph

    model = build("c2f_chunk_concat")
    graph, report = verified_graph(model, digits.example_input(1))
    assert report.exact == ["stem.0", "m.0.cv1.0", "cv2.0"]
    assert list(report.left_dense) == ["m.0.cv2.0"] and "split/chunk" in report.left_dense["m.0.cv2.0"]
    policy = Policy.uniform(graph.unit_names, 0.3)
    pruned = apply_policy(model, policy, graph=graph).eval()
    assert pruned(x).shape == (len(x), CLASSES) and pruned.stem[0].out_channels == graph.kept(policy.ratios)["stem.0"] < 16
    assert graph.macs_for(policy.ratios) == count_macs(record_layer_specs(pruned, digits.example_input(1)))
