"""Modules autoprune cannot see into are opaque; honest MACs, latency-table layers and droppable blocks.

- scripted and compiled submodules, custom autograd functions that change the channel count, and
  modules holding an op Torch-Pruning cannot map (``torch.cat`` over the last dimension, as in a
  rotary embedding) are hidden from tracing and hooks: their channels are kept, everything around
  them is pruned, and the warning names the module and the operation; a model with a scripted or
  compiled submodule still exports to ONNX Runtime;
- ``model.ignore`` hides a listed container the same way;
- the same op in the model's own forward is refused in one line naming it;
- matmul, einsum and SDPA MACs are counted; a parameter-free layer of no known kind is rebuilt with
  its arguments and a custom layer with weights is timed in place;
- a same-shape block not offered as droppable says why at ``-v`` (INFO).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.config.machine import activation_bytes
from autoprune.errors import ModelError
from autoprune.formats.onnx import export_onnx
from autoprune.graph.hooks import is_unhookable
from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy, pruning_history, replay_history
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())


class WithInside(nn.Module):
    """c1 -> mid (a module autoprune cannot see into) -> c2 -> c3 -> classifier."""

    def __init__(self, mid: nn.Module) -> None:
        super().__init__()
        self.c1, self.mid, self.c2, self.c3 = cbr(1, 8), mid, cbr(8, 16), cbr(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.c3(self.c2(self.mid(self.c1(x)))).mean((2, 3)))


class _Halve(torch.autograd.Function):
    """A custom autograd function that keeps the first half of the channels."""

    @staticmethod
    def forward(ctx, x):
        return x[:, : x.shape[1] // 2].clone()

    @staticmethod
    def backward(ctx, g):
        return torch.cat([g, torch.zeros_like(g)], 1)


class HalveThenConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.conv(_Halve.apply(x))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, -1)
    return torch.cat((-b, a), -1)


class Rotary(nn.Module):
    def forward(self, x):
        return x + rotate_half(x)


class RotaryNet(nn.Module):
    """Tokens -> q projection -> rotary (cat over the last dim) -> out; an MLP beside: only the rotary's channels are kept."""

    def __init__(self, rotary_in_forward: bool = False) -> None:
        super().__init__()
        self.embed, self.q, self.rope, self.o = nn.Linear(8, 16), nn.Linear(16, 16), Rotary(), nn.Linear(16, 16)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 10)
        self.rotary_in_forward = rotary_in_forward

    def forward(self, x):
        t = self.embed(x[:, 0])
        q = self.q(t)
        q = q + rotate_half(q) if self.rotary_in_forward else self.rope(q)
        t = t + self.o(q)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t.mean(1))


class HalveInForward(nn.Module):
    """A custom autograd function that changes the channel count, called in the model's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = cbr(1, 8), nn.Conv2d(4, 16, 3, padding=1), cbr(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.c3(F.relu(self.c2(_Halve.apply(self.c1(x))))).mean((2, 3)))


class Fused(nn.Module):
    """Self-attention with one fused qkv projection of a private layout: its heads cannot be split (refused unless ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.proj = 2, nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, 2, 8).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class FusedNet(nn.Module):
    """Tokens -> a fused-QKV attention of private layout (residual) -> MLP -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.fc1, self.fc2, self.head = nn.Linear(8, 16), Fused(), nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x[:, 0])
        t = t + self.attn(t)
        return self.head((t + self.fc2(F.gelu(self.fc1(t)))).mean(1))


class GroupedQuery(nn.Module):
    """Llama-style grouped-query attention: 4 query heads share 2 key/value heads (``repeat_interleave``), rotary q and k, causal SDPA."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 2, seq: int = 8) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, dim // heads
        hd = self.head_dim
        self.q_proj, self.o_proj = nn.Linear(dim, heads * hd, bias=False), nn.Linear(heads * hd, dim, bias=False)
        self.k_proj, self.v_proj = nn.Linear(dim, kv_heads * hd, bias=False), nn.Linear(dim, kv_heads * hd, bias=False)
        freqs = torch.outer(torch.arange(seq).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
        emb = torch.cat((freqs, freqs), -1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x):
        (b, n, _), h, kv, hd = x.shape, self.num_heads, self.num_key_value_heads, self.head_dim
        q = self.q_proj(x).view(b, n, h, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, n, kv, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n, kv, hd).transpose(1, 2)
        q, k = q * self.cos + rotate_half(q) * self.sin, k * self.cos + rotate_half(k) * self.sin
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, n, -1))


class GQANet(nn.Module):
    """A pre-norm decoder layer over the 8 image rows: embed -> (+ GQA attention) -> (+ GELU MLP) -> classifier on the last token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.ln1, self.attn, self.ln2 = nn.Linear(8, 16), nn.LayerNorm(16), GroupedQuery(), nn.LayerNorm(16)
        self.mlp, self.head = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)), nn.Linear(16, 10)

    def forward(self, x):
        h = self.embed(x[:, 0])
        h = h + self.attn(self.ln1(h))
        h = h + self.mlp(self.ln2(h))
        return self.head(h[:, -1])


def _scripted() -> nn.Module:
    return WithInside(torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())))


def _compiled() -> nn.Module:
    return WithInside(torch.compile(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()), backend="eager"))


def _halving() -> nn.Module:
    return WithInside(HalveThenConv())


#: name -> (factory, model.ignore): the modules autoprune cannot see into (experiments/bench/coverage.py lists them)
OPAQUE = {
    "scripted_submodule": (_scripted, ()),
    "compiled_submodule": (_compiled, ()),
    "custom_autograd_function": (_halving, ()),
    "custom_function_in_own_forward": (HalveInForward, ()),
    "cat_over_last_dim": (RotaryNet, ()),
    "cat_over_last_dim_in_own_forward": (lambda: RotaryNet(rotary_in_forward=True), ()),
    "fused_attention_refused": (FusedNet, ()),
    "fused_attention_ignored": (FusedNet, ("attn",)),
    "gqa_repeat_kv_refused": (GQANet, ()),
    "gqa_repeat_kv_ignored": (GQANet, ("attn",)),
}


def build(factory):
    torch.manual_seed(0)
    return factory().eval()


@pytest.mark.parametrize(("name", "why"), [
    ("scripted_submodule", "a TorchScript module"),
    ("compiled_submodule", "compiled by torch.compile"),
    ("custom_autograd_function", "custom autograd function _Halve"),
])
def test_a_module_autoprune_cannot_see_into_is_opaque_and_the_rest_is_pruned(name, why, caplog):
    model = build(OPAQUE[name][0])
    with caplog.at_level(logging.WARNING):
        graph, report = verified_graph(model, X)
    assert why in report.opaque["mid"]
    assert graph.unit_names == ["c2.0", "c3.0"] and "'mid', which is opaque" in report.left_dense["c1.0"]
    assert [r.getMessage() for r in caplog.records if "module 'mid' is opaque" in r.getMessage()] != []
    pruned = apply_policy(model, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    assert pruned(X).shape == (1, 10) and pruned.c2[0].out_channels == 8


def test_a_scripted_submodule_takes_no_hooks_anywhere_and_its_model_replays_from_history():
    model = build(_scripted)
    assert activation_bytes(model, X).total > 0  # config/machine's memory check no longer crashes
    specs = record_layer_specs(model, X)
    assert [s.kind for s in specs if s.module_name == "mid"] == ["torchscript:sequential"]
    graph = PrunableGraph(model, X)
    pruned = apply_policy(model, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    fresh = replay_history(build(_scripted), pruning_history(pruned), X)
    fresh.load_state_dict(pruned.state_dict())
    assert torch.equal(fresh(X), pruned(X))
    table = LatencyTable(threads=1, warmup=0, repeats=1, passes=1)
    assert table.spec_ms(next(s for s in specs if s.module_name == "mid")) > 0  # timed in place


@pytest.mark.parametrize("name", ["scripted_submodule", "compiled_submodule"])
def test_a_model_with_a_scripted_or_compiled_submodule_is_served_on_onnx_runtime_with_the_rest_pruned(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = build(OPAQUE[name][0])
    graph, report = verified_graph(model, X, export_check=LatencySettings(backend="onnxruntime", threads=1).serving_check())
    assert graph.unit_names == ["c2.0", "c3.0"] and not report.failed["export"]  # not refused: the opaque module is kept as it is
    pruned = apply_policy(model, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    assert export_onnx(pruned, X, tmp_path / "pruned.onnx")["max_abs_diff"] < 1e-4  # ONNX Runtime computes what torch does
    assert is_unhookable(model.mid)  # the user's model keeps its scripted or compiled submodule


@pytest.mark.parametrize("name", ["scripted_submodule", "compiled_submodule"])
def test_the_pruned_copy_of_a_model_with_an_opaque_submodule_can_be_fine_tuned(name):
    model = build(OPAQUE[name][0])
    graph, _ = verified_graph(model, X)
    pruned = apply_policy(model, Policy.uniform(graph.unit_names, 0.5), graph=graph).train()
    assert all(p.is_leaf and p.requires_grad for p in pruned.parameters())  # an optimizer takes them (not copies' outputs)
    before = [p.detach().clone() for p in pruned.mid.parameters()]
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(torch.randn(4, 1, 8, 8)).square().mean().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, pruned.mid.parameters()))  # the opaque module's weights train too


def test_an_op_torch_pruning_cannot_map_makes_its_module_opaque_naming_module_and_op(caplog):
    with caplog.at_level(logging.WARNING):
        graph, report = verified_graph(build(RotaryNet), X)
    lines = [r.getMessage() for r in caplog.records if "module 'rope' is opaque" in r.getMessage()]
    assert len(lines) == 1 and "torch.cat over dim -1" in lines[0]
    assert "torch.cat over dim -1" in report.opaque["rope"]
    assert graph.unit_names == ["fc1", "fc2"]  # the MLP width and the stream (rooted at fc2); the rotary's input is kept
    assert "'rope', which is opaque" in report.left_dense["q"]


def test_the_same_op_in_the_models_own_forward_is_refused_in_one_line_naming_it():
    with pytest.raises(ModelError) as info:
        PrunableGraph(build(lambda: RotaryNet(rotary_in_forward=True)), X)
    message = str(info.value)
    assert message.startswith("Torch-Pruning cannot trace the model: torch.cat over dim -1") and "the model's own forward" in message
    assert "model.ignore" in message and "\n" not in message


def test_a_custom_function_changing_channels_in_the_models_own_forward_leaves_the_units_it_crosses_dense():
    graph, report = verified_graph(build(HalveInForward), X)
    assert graph.unit_names == ["c2", "c3.0"]
    assert "_Halve" in report.left_dense["c1.0"] and "model's own forward" in report.left_dense["c1.0"]


def test_model_ignore_hides_a_container_from_tracing_so_the_model_around_it_is_pruned():
    with pytest.raises(ModelError, match=r"attention attn \(Fused, heads=2\).*add it to model.ignore"):
        PrunableGraph(build(FusedNet), X)
    graph, report = verified_graph(build(FusedNet), X, ignored=("attn",))
    assert report.opaque == {"attn": "listed in model.ignore"} and graph.unit_names == ["fc1"]


def test_grouped_query_attention_with_rotary_is_refused_naming_it_then_ignored_with_the_mlp_pruned():
    """The gqa_repeat_kv report: after the advised ``model.ignore`` the run failed naming nothing; now the MLP is pruned."""
    make, ignored = OPAQUE["gqa_repeat_kv_ignored"]
    with pytest.raises(ModelError) as info:
        verified_graph(build(OPAQUE["gqa_repeat_kv_refused"][0]), X)
    message = str(info.value)
    assert message.startswith("attention attn (GroupedQuery, heads=4): autoprune cannot split its heads") and "\n" not in message
    assert message.endswith("add it to model.ignore")
    model = build(make)
    graph, report = verified_graph(model, X, ignored=ignored)
    assert report.opaque == {"attn": "listed in model.ignore"}
    assert graph.unit_names == ["mlp.0"]  # the MLP's hidden width
    assert list(report.left_dense) == ["mlp.2"] and "'attn', which is opaque" in report.left_dense["mlp.2"]  # the residual stream
    policy = Policy.uniform(graph.unit_names, 0.5)
    pruned = apply_policy(model, policy, graph=graph)
    assert pruned.mlp[0].out_features == 16 and pruned.attn.q_proj.weight.shape == (16, 16)
    assert graph.macs_for(policy.ratios) == count_macs(record_layer_specs(pruned, X))
    assert pruned(X).shape == (1, 10)


def test_matmul_einsum_and_sdpa_macs_are_counted_where_no_layer_makes_them():
    class Hand(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.fc = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 10)

        def forward(self, x):
            t = x[:, 0]  # (N, 8 tokens, 8)
            scores = (self.q(t) @ self.k(t).transpose(-2, -1)).softmax(-1)  # 8*8*8
            mixed = torch.einsum("nij,njd->nid", scores, t)  # 8*8*8
            return self.fc(F.scaled_dot_product_attention(mixed, mixed, mixed).mean(1))  # 2*8*8*8

    model = build(Hand)
    linears = 2 * 8 * 8 * 8 + 8 * 10
    assert count_macs(record_layer_specs(model, X)) == linears + 512 + 512 + 1024
    assert PrunableGraph(model, X).dense_macs == linears + 2048


def test_a_layer_without_a_builder_is_rebuilt_with_its_arguments_or_timed_in_place(caplog):
    from test_reported import DropPath, RMSNorm  # the REBUILT catalogue's layers

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Upsample(scale_factor=2), DropPath(0.1), RMSNorm(16)).eval()
    specs = record_layer_specs(model, X)
    upsample, drop, norm = specs[1], specs[2], specs[3]
    assert dict(upsample.options)["scale_factor"] == 2.0 and upsample.output_shape == (1, 4, 16, 16)
    assert dict(drop.options)["drop_prob"] == 0.1
    table = LatencyTable(threads=1, warmup=0, repeats=1, passes=1)
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.table"):
        assert all(table.spec_ms(s) > 0 for s in specs)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    from autoprune.measure.table import _build

    rebuilt = _build(upsample)
    assert rebuilt(torch.randn(upsample.input_shape)).shape == upsample.output_shape  # the factor survived
    assert _build(norm) is None  # weights of its own: timed in place


def test_a_same_shape_block_not_offered_as_droppable_says_why_at_info(caplog):
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return x + self.conv(x)
            return x

    model = build(lambda: nn.Sequential(cbr(1, 8), Gated(), nn.Flatten(), nn.Linear(8 * 64, 10)))
    with caplog.at_level(logging.INFO, logger="autoprune.graph.discovery"):
        graph = PrunableGraph(model, X)
    assert "1" not in graph.block_names
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("block '1'")]
    assert "not offered as droppable" in line and "data-dependent control flow" in line


def test_the_model_given_is_never_modified_by_opaque_tracing_or_head_splitting():
    model = build(RotaryNet)
    before = copy.deepcopy(model.state_dict())
    PrunableGraph(model, X)
    assert isinstance(model.rope, Rotary) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
