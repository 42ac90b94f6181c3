"""``PolicyEvaluator``: policy -> :class:`Metrics`, the one objective every searcher optimises.

The evaluator owns the budget and the reward, so PPO, Optuna and the baselines
are compared on exactly the same numbers. Evaluations are cached by rounded
policy.

The budget metric is a fraction of the dense model: the measured latency ratio (paired,
interleaved calls at the configured batch size), or the MAC ratio. MACs are **per input
sample** and counted by one counter for every layer kind (Conv1d/2d/3d, ConvTranspose1d/2d/3d,
Linear, MultiheadAttention: :func:`autoprune.graph.layers.spec_macs`), so the MAC budget value
of a pruned model is exactly ``count_macs_params(pruned) / count_macs_params(dense)``
(:func:`autoprune.measure.latency.count_macs_params`), and the graph's prediction without
surgery gives the same number.

The proxy accuracy follows EagleEye's adaptive BN (Li et al. 2020, :mod:`autoprune.objective.proxy`)
for a classifier; for a sentence encoder on text it is the label-free fidelity to the dense
embeddings (:class:`autoprune.objective.proxies.FidelityProxy`), chosen by the data
(:func:`autoprune.objective.proxies.make_proxy`).

Latency comes from one :class:`~autoprune.measure.latency_model.LatencyModel` (the backend's
paired timer, the dense latency, the lookup table): the evaluator asks it to predict a ratio
and to measure a candidate, and does not know how either is done. The budget and the reward
are :class:`~autoprune.objective.budget.Budget` and :class:`~autoprune.objective.budget.Reward`.
A model family pruned without Torch-Pruning subclasses it and overrides how a policy is applied
(:meth:`PolicyEvaluator.prune`) and counted (:meth:`PolicyEvaluator.cost`): the decoder LLMs'
:class:`~autoprune.objective.decoder_evaluator.DecoderEvaluator`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import BudgetError, ConfigError, ModelError, PolicyError
from autoprune.graph.check import default_cache_dir
from autoprune.graph.importance import DEFAULT_IMPORTANCE
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.safety import nothing_to_prune, verified_graph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.fresh import ZooModel
from autoprune.measure.latency import count_macs_params
from autoprune.measure.latency_model import LatencyModel
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.measure.uncertainty import LatencyEstimate
from autoprune.objective.budget import Budget, Reward
from autoprune.objective.metrics import Evaluation, Metrics
from autoprune.objective.proxies import AccuracyProxy, make_proxy
from autoprune.objective.proxy import ProxySettings
from autoprune.zoo import DataBundle

log = logging.getLogger(__name__)


#: Largest pruning ratio of any unit unless told otherwise (``pruning.max_ratio``).
DEFAULT_MAX_RATIO = 0.8
#: Fraction of a latency target a proposal is aimed at (:attr:`PolicyEvaluator.aim`): a measured interval's
#: half-width is about 2-3% of the ratio (``latency.rel_ci``), and the budget check uses its upper end.
LATENCY_AIM = 0.97


def check_baseline_accuracy(val_accuracy: float, labels: torch.Tensor, model_name: str) -> None:
    """Refuse a baseline whose validation accuracy is not finite or at chance.

    Chance is the accuracy of always answering the most frequent class of ``labels`` (what a
    diverged model with constant output scores).

    Args:
        val_accuracy: Validation accuracy in [0, 1].
        labels: The validation labels, shape ``(N,)`` int64.
        model_name: Named in the message.

    Raises:
        ModelError: naming the model, its accuracy and the chance level.
    """
    counts = torch.bincount(labels.flatten().long()) if labels.numel() else torch.ones(1)
    chance = float(counts.max()) / max(1, int(counts.sum()))
    if not math.isfinite(val_accuracy) or val_accuracy <= chance:
        raise ModelError(
            f"baseline {model_name!r}: validation accuracy {val_accuracy:.3f} is at chance ({chance:.3f}, always the most "
            f"frequent class); there is nothing to preserve by pruning: train it longer or change train.lr"
        )


FAILED_REWARD = -1.0


class PolicyEvaluator:
    """Evaluate pruning policies of one dense model against one budget.

    Args:
        model: Trained dense model (never modified).
        data: Data bundle; the proxy uses ``train`` (BN statistics) and ``val`` only. A
            :class:`~autoprune.zoo.text.TokenizedCorpus` for a sentence encoder (proxy: fidelity).
        budget: Target latency or MACs.
        reward: Reward definition.
        proxy: Accuracy-proxy sizes.
        latency: Latency measurement settings.
        importance: Channel-importance criterion for surgery.
        round_to: Channel multiple for surgery.
        max_ratio: Largest per-unit ratio searchers may use.
        allow_drop: Whether policies may drop residual blocks.
        ignored: Module names never pruned.
        graph: The graph of ``model``, as the caller got it from
            :func:`autoprune.graph.safety.verified_graph` (used as it is; built here otherwise).
        table: A calibrated latency table (calibrated here otherwise).
        seed: Seed of the BN-recalibration batches.
        check: Build the graph with the safety net (:func:`autoprune.graph.safety.verified_graph`:
            exact surgery, a forward that runs, exact MACs, export to ``latency.backend``); units
            that fail are not offered (one warning line each). False: an unchecked graph (tests).
        baseline_name: When given, a dense model scoring at chance on the validation subset is
            refused, naming it (see :func:`check_baseline_accuracy`).
        check_cache: Folder caching check verdicts by model fingerprint ("auto":
            :func:`~autoprune.graph.check.default_cache_dir`; ``None``: no disk cache).
        table_cache: Folder caching the per-backend latency tables of serving runtimes ("auto":
            ``latency-tables`` beside the check cache; ``None``: calibrate every time, write nothing).
        zoo: How a fresh process rebuilds the model (zoo name or ``package.module:factory`` and its
            arguments), so a search's finalists are re-measured there
            (:mod:`autoprune.search.finalists`); None: only ONNX-serving backends re-measure in a fresh process.

    Attributes:
        latency_model: What the search knows about latency (:class:`~autoprune.measure.latency_model.LatencyModel`:
            the backend's timer, the dense ms, the lookup table and how it was made, the backend's
            settings recorded with every result as ``Metrics.backend``).
        dense_ms: The dense model's latency in milliseconds per call at ``latency.batch_size``.
        dense_macs, dense_params: MACs per input sample and parameters of the dense model.
        target: The budget target as a fraction of dense.

    Raises:
        ConfigError: ``max_ratio`` outside (0, 1), an out-of-range budget target, or bad latency settings.
        ModelError: the model has nothing to prune, its dense output is not finite, or no pruned
            candidate at all can be built during calibration.
    """

    #: Importance of each droppable block (higher is kept), or None: where blocks save the same predicted cost, the
    #: baselines and the searchers drop the least important first (a decoder: ShortGPT's block influence, Men et al. 2024).
    block_importance: dict[str, float] | None = None
    #: Searchers that can (Optuna) move each proposal onto the predicted target before it is evaluated
    #: (:func:`autoprune.search.at_target.at_target`), so candidates are compared at equal cost
    #: (``search.at_target``, on by default).
    searches_at_target: bool = True

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        *,
        budget: Budget = Budget(),
        reward: Reward = Reward(),
        proxy: ProxySettings = ProxySettings(),
        latency: LatencySettings = LatencySettings(),
        importance: str = DEFAULT_IMPORTANCE,
        round_to: int | None = None,
        max_ratio: float = DEFAULT_MAX_RATIO,
        allow_drop: bool = True,
        ignored: tuple[str, ...] = (),
        graph: PrunableGraph | None = None,
        table: LatencyTable | None = None,
        seed: int = 0,
        check: bool = True,
        check_cache: str | None = "auto",
        baseline_name: str | None = None,
        table_cache: str | Path | None = "auto",
        zoo: ZooModel | None = None,
    ) -> None:
        if not 0.0 < max_ratio < 1.0:
            raise ConfigError(f"pruning.max_ratio: {max_ratio!r} is out of range; allowed: 0 < max_ratio < 1")
        self.model = model.eval()
        self.data = data
        self.budget = budget
        self.reward_fn = reward
        self.proxy = proxy
        self.latency = latency
        self.importance = importance
        self.round_to = round_to
        self.max_ratio = max_ratio
        self.seed = seed
        self.zoo = zoo
        self.example_input = data.example_input(latency.batch_size)
        if graph is None and check:
            graph, _ = verified_graph(model, data.example_input(1), ignored=ignored, drop_blocks=allow_drop,
                                      export_check=latency.serving_check(),
                                      cache_dir=default_cache_dir() if check_cache == "auto" else check_cache)
        self.graph = graph or PrunableGraph(model, data.example_input(1), ignored=ignored, drop_blocks=allow_drop)
        if not self.graph.units and not (allow_drop and self.graph.blocks):
            raise ModelError(nothing_to_prune(self.graph))
        self.allow_drop = allow_drop and bool(self.graph.blocks)
        self.unit_names = self.graph.unit_names
        self.block_names = self.graph.block_names if self.allow_drop else []
        budget.target_ratio(1.0)  # a bad target fails before anything is measured
        self.dense_macs, self.dense_params = count_macs_params(self.model, data.example_input(1))
        self.scorer = make_proxy(self.model, data, proxy, seed=seed)
        self.dense_accuracy = self.scorer.dense_score()
        if not math.isfinite(self.dense_accuracy) or not self.scorer.dense_output_finite():
            raise ModelError(
                "the dense model's output on the validation data is not finite (NaN or inf; e.g. its training diverged); "
                "retrain it with a lower train.lr before pruning"
            )
        if baseline_name is not None and isinstance(self.scorer, AccuracyProxy):
            check_baseline_accuracy(self.dense_accuracy, data.val.subset(proxy.val_samples).y, baseline_name)
        self.latency_model = LatencyModel.build(
            self.model, self.graph, latency, example_input=self.example_input, max_ratio=max_ratio, round_to=round_to,
            unit_names=self.unit_names, block_names=self.block_names, table=table, table_cache=table_cache,
        )
        self.target = budget.target_ratio(self.dense_ms)
        self._cache: dict[tuple, Metrics] = {}
        self.history: list[Evaluation] = []
        #: Calibration batches of data-driven importance criteria (drawn only when one needs them).
        self.calibration_batches = self.scorer.calibration_batches

    @property
    def dense_ms(self) -> float:
        """The dense model's latency in milliseconds per call at ``latency.batch_size`` (the latency model's)."""
        return self.latency_model.dense_ms

    def __deepcopy__(self, memo: dict) -> PolicyEvaluator:
        """The evaluator is a shared service (model, graph, latency model, cache): copies of an env share it."""
        return self

    # ------------------------------------------------------------ prediction
    def predicted_ratio(self, ratios: dict[str, float], drop: tuple[str, ...] | list[str] = ()) -> float:
        """Latency ratio to dense predicted by the lookup table, without surgery.

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        return self.latency_model.predict_ratio(ratios, drop)

    def predicted_value(self, ratios: dict[str, float], drop: tuple[str, ...] | list[str] = ()) -> float:
        """The budget metric predicted without surgery: latency ratio from the lookup table, or the MAC ratio.

        The MAC ratio is exact: the graph's predicted specs count the MACs per sample the pruned
        model will have (equal to :attr:`Metrics.value` after surgery).

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        if self.budget.metric == "macs":
            return self.graph.macs_for(ratios, drop, round_to=self.round_to) / max(1, self.graph.dense_macs)
        return self.predicted_ratio(ratios, drop)

    @property
    def aim(self) -> float:
        """The budget value a proposal is moved onto (:func:`autoprune.search.at_target.at_target`): the target on MACs
        (exact), :data:`LATENCY_AIM` of it on latency, so that a candidate whose interval (about ±2-3%) reaches its
        upper end still meets the target and the delivered ratio lands in ``[0.95, 1.0]`` of it."""
        return self.target if self.budget.metric == "macs" else self.target * LATENCY_AIM

    def proposal_value(self, ratios: dict[str, float], drop: tuple[str, ...] | list[str] = ()) -> float:
        """The budget metric :func:`~autoprune.search.at_target.at_target` aims a proposal by: :meth:`predicted_value`,
        on latency with the table's bias learned from the candidates measured so far removed
        (:meth:`autoprune.measure.uncertainty.ResidualPrior.corrected`).

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        value = self.predicted_value(ratios, drop)
        return value if self.budget.metric == "macs" else self.latency_model.prior.corrected(value)

    def min_reachable(self) -> float:
        """Smallest budget metric reachable: every unit at ``max_ratio`` and every block dropped."""
        return self.predicted_value({n: self.max_ratio for n in self.unit_names}, tuple(self.block_names))

    def drops_to_reach(self, drop: tuple[str, ...] | list[str] = ()) -> tuple[str, ...] | None:
        """``drop`` plus the fewest blocks that let every unit at ``max_ratio`` meet the predicted target.

        Blocks are added one at a time, each time the one whose drop lowers the predicted value
        most (ties go to the less important block by :attr:`block_importance`, then to the deeper
        one). ``None`` when even every block dropped misses it.
        """
        at_max = {n: self.max_ratio for n in self.unit_names}
        drop = tuple(drop)
        while self.predicted_value(at_max, drop) > self.target:
            left = [b for b in self.block_names if b not in drop]
            if not left:
                return None
            drop = (*drop, min(left, key=lambda b: (round(self.predicted_value(at_max, (*drop, b)), 9), *self.block_rank(b))))
        return drop

    def block_rank(self, block: str) -> tuple[float, int]:
        """Sort key of a droppable block, the first dropped first: lower :attr:`block_importance` (when known), then deeper."""
        importance = self.block_importance or {}
        return importance.get(block, 0.0), -self.block_names.index(block)

    def check_reachable(self) -> None:
        """Refuse a target below what the maximum ratios (and every block dropped) can reach.

        First by the lookup table's prediction; then, for a latency budget, by measuring that
        fastest policy: when even the upper end of its interval is above the target, no candidate
        can be met under the conservative estimate (:meth:`Budget.met`), and the one line names
        the best reachable ratio with its interval.

        Raises:
            BudgetError: naming the target, the reachable value (and interval) and what to change.
        """
        reachable = self.min_reachable()
        if reachable <= self.target and self.budget.metric == "latency":
            fastest = Policy({n: self.max_ratio for n in self.unit_names}, tuple(self.block_names))
            pruned = self.prune(fastest).eval()
            est = self.latency_model.estimate(pruned, self.predicted_ratio(fastest.ratios, fastest.drop))
            if not est.within(self.target):
                raise BudgetError(
                    f"{self.budget.describe(self.target, self.dense_ms)} is unreachable under the conservative estimate (the upper end "
                    f"of the interval): the best reachable ratio, every unit at max_ratio {self.max_ratio} and all droppable blocks "
                    f"dropped, is {est.show()}; raise {self.budget.field} above {est.high:.3f} of dense or pruning.max_ratio"
                )
            return
        if reachable > self.target:
            raise BudgetError(
                f"{self.budget.describe(self.target, self.dense_ms)} is unreachable; with every unit at "
                f"max_ratio {self.max_ratio} and all droppable blocks dropped the model reaches {reachable:.3f} of dense"
                + (f" ({reachable * self.dense_ms:.3g} ms, predicted)" if self.budget.target_ms is not None else " (predicted)")
                + f"; raise {self.budget.field} or pruning.max_ratio"
                + (f" (units left dense: {', '.join(list(self.graph.skipped)[:6])}; see the warnings)" if self.graph.skipped else "")
            )

    # ------------------------------------------------------------ evaluation
    def reward(self, acc: float, value: float) -> float:
        """Reward of an accuracy and a budget-metric value (see module docstring)."""
        return self.reward_fn(acc, value, self.target)

    def evaluate(self, policy: Policy, *, index: int | None = None) -> Metrics:
        """Score one policy: prune a copy, adaptive BN, proxy accuracy, paired latency, MACs; cached.

        Not :func:`autoprune.objective.proxy.split_metrics` (whole-split metrics of a model).
        A policy whose surgery or measurement fails with ``RuntimeError`` or ``ValueError``, or
        gives NaN, is recorded as failed (``Metrics.failed``, reward ``FAILED_REWARD``), not raised.

        Args:
            policy: Ratios per unit and blocks to drop.
            index: Number of the history entry (default: its position; Optuna uses the trial number).

        Returns:
            The policy's :class:`Metrics` (MACs per sample; latency in ms at the latency batch size).
        """
        index = len(self.history) if index is None else index
        key = policy.key()
        if key in self._cache:
            m = self._cache[key]
            self.history.append(Evaluation(index, policy, m, cached=True))
            return m
        try:
            metrics = self._evaluate_uncached(policy)
        except (PolicyError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a failed candidate is recorded, never ends a search
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            log.warning("evaluation failed for policy %s: %s", policy.to_dict(), why)
            metrics = self._failed(why)
        if not metrics.failed and (math.isnan(metrics.accuracy) or math.isnan(metrics.reward)):
            metrics = self._failed("NaN in accuracy or reward")
        self._cache[key] = metrics
        self.history.append(Evaluation(index, policy, metrics))
        return metrics

    def record(self, policy: Policy, metrics: Metrics, *, index: int) -> Evaluation:
        """Add an evaluation made elsewhere (another worker, an earlier run) to the history and cache."""
        evaluation = Evaluation(index, policy, metrics)
        self._cache.setdefault(policy.key(), metrics)
        self.history.append(evaluation)
        return evaluation

    def _failed(self, why: str) -> Metrics:
        nan = float("nan")
        return Metrics(nan, nan, (nan, nan), nan, nan, 0, 0, nan, nan, nan, False, FAILED_REWARD, {}, True, why, self.latency_model.label)

    def prune(self, policy: Policy) -> nn.Module:
        """The pruned copy of the dense model a policy gives, by the search's surgery (:func:`~autoprune.graph.surgery.apply_policy`).

        The calibration batches are drawn only by a criterion that needs gradients or activations.

        Raises:
            PolicyError: the policy does not fit the graph.
        """
        return apply_policy(self.model, policy, graph=self.graph, importance=self.importance, round_to=self.round_to,
                            batches=self.calibration_batches, loss=self.scorer.loss)

    def cost(self, pruned: nn.Module) -> tuple[int, int]:
        """``(MACs per input sample, parameters)`` of a pruned model (:func:`~autoprune.measure.latency.count_macs_params`)."""
        return count_macs_params(pruned, self.data.example_input(1))

    def _evaluate_uncached(self, policy: Policy) -> Metrics:
        t0 = time.perf_counter()
        pruned = self.prune(policy)
        t1 = time.perf_counter()
        acc = self.scorer.score(pruned)
        details = dict(self.scorer.details)
        pruned.eval()
        t2 = time.perf_counter()
        predicted = self.predicted_ratio(policy.ratios, policy.drop)
        lat = self.latency_model.estimate(pruned, predicted)
        t3 = time.perf_counter()
        macs, params = self.cost(pruned)
        macs_ratio = macs / self.dense_macs
        value = macs_ratio if self.budget.metric == "macs" else lat.mean
        t4 = time.perf_counter()
        return Metrics(
            accuracy=acc,
            latency_ratio=lat.mean,
            latency_ci=(lat.low, lat.high),
            latency_ms=lat.mean * self.dense_ms,
            predicted_ratio=predicted,
            macs=int(macs),
            params=int(params),
            macs_ratio=macs_ratio,
            params_ratio=params / self.dense_params,
            value=value,
            feasible=self.budget.met(value, lat.high, self.target),
            reward=self.reward(acc, value),
            seconds={"prune": t1 - t0, "accuracy": t2 - t1, "latency": t3 - t2, "other": t4 - t3, "total": t4 - t0},
            backend=self.latency_model.label,
            details=details,
            latency_rounds=lat.n,
            measured_ratio=lat.measured,
        )

    def remeasured(self, metrics: Metrics, estimate: LatencyEstimate, *, dense_ms: float | None = None) -> Metrics:
        """``metrics`` with another latency estimate of the same policy, judged against this evaluator's budget and reward.

        Used when a finalist is re-measured (e.g. in a fresh process): its ms (against ``dense_ms``,
        default :attr:`dense_ms`), value (for a latency budget), feasibility (the interval's upper
        end) and reward follow the new figure.
        """
        value = estimate.mean if self.budget.metric == "latency" else metrics.value
        return metrics.with_latency(estimate, latency_ms=estimate.mean * (dense_ms or self.dense_ms), value=value,
                                    feasible=self.budget.met(value, estimate.high, self.target), reward=self.reward(metrics.accuracy, value))

    # ---------------------------------------------------------------- results
    def best(self, *, feasible_only: bool = True) -> Evaluation | None:
        """Highest-reward evaluation so far (among feasible ones when any exist and ``feasible_only``)."""
        pool = [e for e in self.history if not e.metrics.failed]
        if feasible_only and any(e.metrics.feasible for e in pool):
            pool = [e for e in pool if e.metrics.feasible]
        return max(pool, key=lambda e: e.metrics.reward, default=None)

    def with_budget(self, budget: Budget) -> PolicyEvaluator:
        """A shallow variant with another budget sharing the graph and latency model, with an empty cache and history."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.budget = budget
        clone.target = budget.target_ratio(self.dense_ms)
        clone._cache = {}
        clone.history = []
        return clone
