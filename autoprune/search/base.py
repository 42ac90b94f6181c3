"""The searcher protocol: ``search(evaluator, n_episodes, seed) -> SearchResult``.

Every searcher proposes policies and scores them with the shared
:class:`~autoprune.objective.evaluator.PolicyEvaluator`, which owns the budget and the
reward. One call of ``evaluator.evaluate`` is one *episode* of the budget.

A searcher also says what it can do, through class attributes and class methods with
defaults on :class:`Searcher` (the way stable-baselines3 algorithms declare their supported
spaces): whether worker processes can share its search, whether it takes policies to
evaluate first, whether it loads a saved agent, which hyper-parameters follow from the
experiment, and what ``--restart`` must delete. The application asks these; it never
compares a searcher's registered name.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation, Metrics
from autoprune.paths import write_csv_atomic
from autoprune.search.finalists import choose_finalist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentContext:
    """What a searcher may know of the experiment it runs in, to default its own hyper-parameters.

    Defined here rather than in :mod:`autoprune.config` (which sits above ``search``): the
    application fills it from the validated config.

    Attributes:
        output_dir: The experiment's output folder (a searcher's own files go there).
        name: The experiment's name.
        params: ``search.params`` as the user wrote them.
        sampler: ``search.sampler``.
        storage: ``search.storage`` (None: the searcher's own default).
        study: ``search.study`` (None: the experiment's name).
    """

    output_dir: Path
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    sampler: str | None = None
    storage: str | None = None
    study: str | None = None


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        searcher: Name of the searcher.
        best: Best feasible evaluation (highest reward), or the best infeasible one if none is feasible. Under
            a latency budget it is the finalist chosen on re-measured figures (its metrics carry them;
            ``extras["finalists"]`` records both figures of every finalist).
        history: Every evaluation in order (cached repeats included, marked ``cached``).
        pareto: Non-dominated evaluations on (accuracy up, budget metric down).
        seconds: Wall time of the search.
        extras: Searcher-specific data (e.g. sensitivity curves, the agent's path).
        finetuned: Episode index -> the higher-fidelity score of the finalists of multi-fidelity
            selection (:func:`autoprune.search.selection.select_on_higher_fidelity`), else empty.
    """

    searcher: str
    best: Evaluation | None
    history: list[Evaluation]
    pareto: list[Evaluation]
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)
    finetuned: dict[int, float] = field(default_factory=dict)

    @property
    def episodes(self) -> int:
        """Evaluations made."""
        return len(self.history)

    def write_history_csv(self, path: str | Path) -> None:
        """One row per evaluation: index, reward, metrics, the short fine-tune's score (finalists only) and the policy as JSON; written atomically."""
        rows = [{"episode": e.index, "cached": e.cached, **e.metrics.as_dict(),
                 "short_finetune": "" if e.cached else self.finetuned.get(e.index, ""), "policy": json.dumps(e.policy.to_dict())}
                for e in self.history]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(path, rows)


def pareto_front(history: list[Evaluation]) -> list[Evaluation]:
    """Evaluations not dominated on (higher accuracy, lower budget metric), sorted by metric."""
    pts = [e for e in history if not e.metrics.failed and not e.cached]
    front = []
    for e in pts:
        a, v = e.metrics.accuracy, e.metrics.value
        dominated = any(
            (o.metrics.accuracy >= a and o.metrics.value <= v) and (o.metrics.accuracy > a or o.metrics.value < v) for o in pts
        )
        if not dominated:
            front.append(e)
    return sorted(front, key=lambda e: e.metrics.value)


class ProgressReporter:
    """A tqdm bar over episodes showing the best reward so far; also forwards to an optional callback."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, callback: Callable[[Evaluation], None] | None = None) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="ep", disable=not enabled, dynamic_ncols=True)
        self.best = -math.inf
        self.callback = callback

    def update(self, evaluation: Evaluation) -> None:
        m = evaluation.metrics
        if not m.failed and m.feasible and m.reward > self.best:
            self.best = m.reward
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best:.4f}" if self.best > -math.inf else "-", acc=f"{m.accuracy:.3f}", lat=f"{m.value:.3f}")
        if self.callback is not None:
            self.callback(evaluation)

    def close(self) -> None:
        self.bar.close()


class Searcher(abc.ABC):
    """Base class of searchers: a name, validated hyper-parameters, and :meth:`search`.

    Subclasses declare ``defaults`` (every accepted hyper-parameter with its default)
    and implement :meth:`_run`, calling :meth:`evaluate` once per episode.

    Args:
        params: Hyper-parameters overriding ``defaults``; unknown names raise ConfigError.
        progress: Show a progress bar.
        callback: Called after every evaluation (e.g. MLflow logging).
    """

    name: ClassVar[str]
    #: Every accepted hyper-parameter with its default: the one list of them.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Feasible candidates re-measured per batch in a fresh process before the best is returned
    #: (:func:`autoprune.search.finalists.choose_finalist`; 0: trust the search's measurement).
    confirm_top: ClassVar[int] = 3
    #: Worker processes can share one search (``search.workers`` > 1, ``autoprune worker``): the
    #: searcher keeps its state in ``params["storage"]`` under ``params["study_name"]``, accepts an
    #: ``on_ready(handle)`` keyword called once that shared state exists (the handle
    #: :func:`autoprune.search.distributed.publish_study` takes), and :meth:`worker_params` says how
    #: a worker joins it.
    supports_workers: ClassVar[bool] = False
    #: Takes policies to evaluate first (``--warm-start``), as the hyper-parameter ``enqueue``: a list
    #: of ``{"ratios": {...}, "drop": [...]}``.
    supports_warm_start: ClassVar[bool] = False
    #: Starts from a saved agent (``--agent``), given as the hyper-parameter ``agent`` (a folder),
    #: and runs it without training with ``zero_shot``.
    loads_agent: ClassVar[bool] = False
    #: The same evaluator, episodes and seed give the same proposals in the same order (one process,
    #: no workers; under a MAC budget, where no measurement steers the search). A searcher whose
    #: proposals depend on anything else (a clock, another process) sets it False.
    deterministic: ClassVar[bool] = True
    #: Searches only over dropped blocks: a model without droppable blocks is refused before the first episode.
    needs_blocks: ClassVar[bool] = False
    #: ``autoprune run`` shows the uniform baseline beside this searcher's result (False for the
    #: uniform searcher: it is that baseline).
    compared_with_uniform: ClassVar[bool] = True
    #: The search's pool starts with the classical baselines (``search.seed_baselines``, the ``seeds``
    #: of :meth:`search`, :func:`autoprune.search.pool.baseline_pool`); False for the baselines themselves.
    seeded: ClassVar[bool] = True
    #: The searcher evaluates :meth:`search`'s ``seeds`` itself, as part of its own state (Optuna:
    #: enqueued trials of the study, run by whichever worker); otherwise :meth:`search` evaluates them
    #: before :meth:`_run`.
    enqueues_seeds: ClassVar[bool] = False

    @classmethod
    def experiment_params(cls, context: ExperimentContext) -> dict[str, Any]:
        """Hyper-parameter defaults that follow from the experiment; ``search.params`` override them.

        The default is none. E.g. Optuna keeps its study in ``<output_dir>/study.db``, PPO saves its
        agent to ``<output_dir>/agent``.
        """
        return {}

    @classmethod
    def worker_params(cls, context: ExperimentContext, *, n_trials: int | None) -> dict[str, Any]:
        """Hyper-parameters that make a process one worker of the shared search in ``context.storage``
        under ``context.study`` (running at most ``n_trials`` episodes); they override ``search.params``.

        Only asked of a searcher that :attr:`supports_workers`; the default is none.
        """
        return {}

    @classmethod
    def forget(cls, params: dict[str, Any]) -> None:
        """Delete what an earlier search with these hyper-parameters stored, so the next one starts afresh (``--restart``).

        The default stores nothing between runs, so there is nothing to delete.
        """
        return None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Return ``params`` over :attr:`defaults` if this searcher takes them, before any work (``autoprune config`` asks too).

        The default checks the names against :attr:`defaults`; a searcher whose values can be
        checked without an evaluator extends it (calling ``super()``).

        Raises:
            ConfigError: an unknown hyper-parameter (listing the allowed ones) or a value out of range.
        """
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(sorted(cls.defaults)) or "(none)"
            raise ConfigError(f"search.params: unknown hyper-parameter(s) {unknown} for searcher {cls.name!r}; allowed: {allowed}")
        return {**cls.defaults, **params}

    def __init__(self, params: dict[str, Any] | None = None, *, progress: bool = True, callback: Callable[[Evaluation], None] | None = None) -> None:
        self.params = type(self).check_params(dict(params or {}))
        self.progress = progress
        self.callback = callback
        self._reporter: ProgressReporter | None = None
        self._evaluator: PolicyEvaluator | None = None
        self._seeds: dict[str, Policy] = {}

    def evaluate(self, policy: Policy, *, index: int | None = None) -> Metrics:
        """Score one policy with the shared evaluator (one episode) and report progress."""
        assert self._evaluator is not None, "evaluate() called outside search()"
        metrics = self._evaluator.evaluate(policy, index=index)
        if self._reporter is not None:
            self._reporter.update(self._evaluator.history[-1])
        return metrics

    def search(self, evaluator: PolicyEvaluator, n_episodes: int, *, seed: int = 0,
               seeds: Mapping[str, Policy] | None = None) -> SearchResult:
        """Run ``n_episodes`` evaluations and return the best policy, history and Pareto front.

        Args:
            evaluator: The shared evaluator (budget, reward, history).
            n_episodes: Evaluations, the seeds included.
            seed: Random seed of the searcher.
            seeds: Named policies evaluated into the pool first (e.g. the baselines of
                :func:`autoprune.search.pool.baseline_pool`), so the best is never worse than the
                best of them on the reward. They count against ``n_episodes``; all of them are
                evaluated even when ``n_episodes`` is smaller, and the searcher itself still gets
                at least one episode. ``extras["seeds"]`` maps each name to its evaluation's index.

        Raises:
            ConfigError: ``n_episodes`` < 1, or a searcher that :attr:`needs_blocks` on a model without droppable blocks.
            BudgetError: the target is unreachable.
        """
        if not isinstance(n_episodes, int) or n_episodes < 1:
            raise ConfigError(f"search.episodes: {n_episodes!r} must be an integer >= 1")
        if self.needs_blocks and not evaluator.block_names:
            raise ConfigError(f"search.searcher: {self.name!r} needs droppable blocks, and this model has none; "
                              "allowed: a model with residual blocks or transformer layers (pruning.drop_blocks: true)")
        evaluator.check_reachable()
        self._evaluator = evaluator
        self._seeds = dict(seeds or {})
        start_index = len(evaluator.history)
        self._reporter = ProgressReporter(max(n_episodes, len(self._seeds)), self.name, enabled=self.progress, callback=self.callback)
        t0 = time.perf_counter()
        try:
            own = n_episodes
            if self._seeds and not self.enqueues_seeds:
                for policy in self._seeds.values():
                    self.evaluate(policy)
                own = max(1, n_episodes - len(self._seeds))  # the searcher always runs (e.g. PPO saves its agent)
            extras = self._run(evaluator, own, seed) or {}
            done = {e.policy.key() for e in evaluator.history[start_index:]}
            for policy in self._seeds.values():  # a budget smaller than the pool: the seeds the searcher did not reach
                if policy.key() not in done:
                    self.evaluate(policy)
        finally:
            self._reporter.close()
            self._reporter = None
        seconds = time.perf_counter() - t0
        history = evaluator.history[start_index:]
        if self._seeds:
            index = {e.policy.key(): e.index for e in reversed(history)}
            extras["seeds"] = {name: index.get(p.key()) for name, p in self._seeds.items()}
        ok = [e for e in history if not e.metrics.failed]
        feasible = [e for e in ok if e.metrics.feasible]
        best = max(feasible or ok, key=lambda e: e.metrics.reward, default=None)
        if feasible and evaluator.budget.metric == "latency" and self.confirm_top > 0:
            final = choose_finalist(evaluator, feasible, self.confirm_top)
            best = final.best
            extras.update({"finalists": final.records, "finalist_dense_ms": final.dense_ms})
            if final.warning:
                extras["latency_warning"] = final.warning
        return SearchResult(self.name, best, list(history), pareto_front(history), seconds, extras)

    @abc.abstractmethod
    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any] | None:
        """Propose and evaluate ``n_episodes`` policies; may return extras for the result."""
