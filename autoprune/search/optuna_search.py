"""Optuna searcher: TPE, CMA-ES, NSGA-II or GP over per-unit ratios and block drops, resumable.

The search space has one float ``ratio/<unit>`` in ``[0, max_ratio]`` per unit and
one integer ``drop/<block>`` in ``{0, 1}`` per droppable block. Drops are integers
rather than categoricals so that CMA-ES (which cannot model categoricals and would
sample them at random forever) and the GP model them jointly with the ratios.

Single-objective samplers (tpe, cmaes, gp) maximise the evaluator's reward;
``nsga2`` is multi-objective on (accuracy up, budget metric down). Every trial
records the budget as an Optuna constraint ``value - target <= 0`` (CMA-ES ignores
it; the hard reward already penalises overshoot) and its metrics as user
attributes, so a study stored in an RDB (``sqlite:///study.db``,
``postgresql://...``) can be resumed by another process.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from typing import Any, Callable

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, Trial, TrialState

from autoprune.errors import ConfigError
from autoprune.objective import Evaluation, PolicyEvaluator
from autoprune.policy import Policy
from autoprune.search.base import Searcher

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "cmaes", "nsga2", "gp")


class OptunaSearcher(Searcher):
    """Search pruning policies with an Optuna sampler; one trial is one episode.

    Hyper-parameters (``params``):
        sampler: ``"tpe"`` (Bergstra et al. 2011), ``"cmaes"`` (Hansen 2016; needs the
            ``cmaes`` package), ``"nsga2"`` (Deb et al. 2002, multi-objective) or ``"gp"``.
        storage: ``None`` for an in-memory study, or an RDB URL such as
            ``"sqlite:///runs/study.db"``; a study of the same name there is resumed.
        study_name: Name of the study in the storage (``None``: ``"autoprune"``).
        n_startup_trials: Random trials before TPE or GP use their model.
        population_size: NSGA-II population.
        multivariate: TPE models the parameters jointly.
        constant_liar: TPE avoids proposing what parallel workers are running.
        enqueue: Policies as ``{"ratios": {...}, "drop": [...]}`` evaluated first (warm start);
            ones already in a resumed study are skipped.
        heartbeat_interval: Seconds between heartbeats of a running trial (RDB only), so
            trials of a killed worker are marked failed.

    Raises:
        ConfigError: an unknown sampler, a bad storage or an invalid option.
    """

    name = "optuna"
    defaults = {
        "sampler": "tpe",
        "storage": None,
        "study_name": None,
        "n_startup_trials": 10,
        "population_size": 20,
        "multivariate": True,
        "constant_liar": False,
        "enqueue": [],
        "heartbeat_interval": None,
    }

    def __init__(self, params: dict[str, Any] | None = None, *, progress: bool = True,
                 callback: Callable[[Evaluation], None] | None = None) -> None:
        super().__init__(params, progress=progress, callback=callback)
        p = self.params
        if p["sampler"] not in SAMPLERS:
            raise ConfigError(f"search.params.sampler: {p['sampler']!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
        if p["sampler"] == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ConfigError("search.params.sampler: 'cmaes' needs the `cmaes` package; run `pip install cmaes` or choose tpe, nsga2 or gp")
        if not isinstance(p["n_startup_trials"], int) or p["n_startup_trials"] < 0:
            raise ConfigError(f"search.params.n_startup_trials: {p['n_startup_trials']!r} must be an integer >= 0")
        if not isinstance(p["population_size"], int) or p["population_size"] < 2:
            raise ConfigError(f"search.params.population_size: {p['population_size']!r} must be an integer >= 2")
        hb = p["heartbeat_interval"]
        if hb is not None and (not isinstance(hb, int) or hb < 1):
            raise ConfigError(f"search.params.heartbeat_interval: {hb!r} must be None or an integer >= 1 (seconds)")
        if hb is not None and p["storage"] is None:
            raise ConfigError("search.params.heartbeat_interval: needs an RDB `storage` URL such as 'sqlite:///study.db'")
        if not isinstance(p["enqueue"], (list, tuple)) or not all(isinstance(d, dict) for d in p["enqueue"]):
            raise ConfigError('search.params.enqueue: must be a list of policies like {"ratios": {"unit": 0.3}, "drop": []}')

    # ------------------------------------------------------------------ setup
    def _storage(self) -> optuna.storages.BaseStorage | None:
        url = self.params["storage"]
        if url is None:
            return None
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"search.params.storage: {url!r} is not an RDB URL; use e.g. 'sqlite:///study.db' or None")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=self.params["heartbeat_interval"])
        except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as e:
            raise ConfigError(f"search.params.storage: cannot open {url!r}: {e}") from e

    def _sampler(self, seed: int, *, has_ints: bool) -> optuna.samplers.BaseSampler:
        p, kind = self.params, self.params["sampler"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if kind == "tpe":
                return optuna.samplers.TPESampler(
                    n_startup_trials=p["n_startup_trials"], multivariate=p["multivariate"],
                    constant_liar=p["constant_liar"], seed=seed,
                )
            if kind == "cmaes":
                return optuna.samplers.CmaEsSampler(seed=seed, with_margin=has_ints)
            if kind == "nsga2":
                return optuna.samplers.NSGAIISampler(population_size=p["population_size"], seed=seed)
            return optuna.samplers.GPSampler(n_startup_trials=p["n_startup_trials"], seed=seed)

    def _enqueue_params(self, evaluator: PolicyEvaluator, d: dict) -> dict[str, float | int]:
        """Optuna parameters of one ``enqueue`` policy, checked against the evaluator."""
        try:
            policy = Policy.from_dict(d)
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"search.params.enqueue: {d!r} is not a policy like {{'ratios': {{...}}, 'drop': [...]}}: {e}") from e
        bad = sorted(set(policy.ratios) - set(evaluator.unit_names)) + sorted(set(policy.drop) - set(evaluator.block_names))
        if bad:
            raise ConfigError(f"search.params.enqueue: unknown unit or block name(s) {bad}; units: {evaluator.unit_names}, "
                              f"droppable blocks: {evaluator.block_names}")
        out_of_range = {k: v for k, v in policy.ratios.items() if not 0.0 <= v <= evaluator.max_ratio}
        if out_of_range:
            raise ConfigError(f"search.params.enqueue: ratios {out_of_range} are outside [0, max_ratio={evaluator.max_ratio}]")
        params: dict[str, float | int] = {f"ratio/{u}": policy.ratios.get(u, 0.0) for u in evaluator.unit_names}
        params.update({f"drop/{b}": int(b in policy.drop) for b in evaluator.block_names})
        return params

    # ------------------------------------------------------------------ search
    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return self._optimize(evaluator, n_episodes, seed)
        finally:
            optuna.logging.set_verbosity(verbosity)

    def _optimize(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        multi = self.params["sampler"] == "nsga2"
        directions = ["maximize", "minimize"] if multi else ["maximize"]
        study_name = self.params["study_name"] or "autoprune"
        queued = [self._enqueue_params(evaluator, d) for d in self.params["enqueue"]]
        study = optuna.create_study(storage=self._storage(), study_name=study_name, directions=directions, load_if_exists=True)
        if [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"search.params.study_name: study {study_name!r} in {self.params['storage']} optimises "
                              f"{[d.name.lower() for d in study.directions]}, sampler {self.params['sampler']!r} needs "
                              f"{directions}; use another study_name")
        names = {f"ratio/{u}" for u in evaluator.unit_names} | {f"drop/{b}" for b in evaluator.block_names}
        previous = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        foreign = next((t for t in previous if set(t.params) != names), None)
        if foreign is not None:
            raise ConfigError(f"search.params.study_name: study {study_name!r} in {self.params['storage']} holds trials of "
                              f"another search space (trial {foreign.number}); use another study_name")
        # A resumed study gets a fresh random stream, so it does not repeat the first run's startup trials.
        study.sampler = self._sampler(seed + len(study.get_trials(deepcopy=False)), has_ints=bool(evaluator.block_names))
        for params in queued:
            study.enqueue_trial(params, skip_if_exists=True)
        remaining = n_episodes - len(previous)
        if previous:
            log.info("resuming study %r with %d complete trials; running %d more", study_name, len(previous), max(0, remaining))
        numbers: list[int] = []

        def objective(trial: Trial) -> float | tuple[float, float]:
            numbers.append(trial.number)
            ratios = {u: trial.suggest_float(f"ratio/{u}", 0.0, evaluator.max_ratio) for u in evaluator.unit_names}
            drop = tuple(b for b in evaluator.block_names if trial.suggest_int(f"drop/{b}", 0, 1))
            m = self.evaluate(Policy(ratios, drop))
            if m.failed:
                trial.set_user_attr("error", m.error)
                return (math.nan, math.nan) if multi else math.nan  # Optuna records NaN as a FAIL trial
            constraint = m.value - evaluator.target
            for key, v in (("accuracy", m.accuracy), ("value", m.value), ("latency_ratio", m.latency_ratio),
                           ("macs_ratio", m.macs_ratio), ("reward", m.reward), ("feasible", bool(m.feasible)),
                           ("constraint", constraint)):
                trial.set_user_attr(key, v)
            trial.set_constraint("budget", constraint)
            return (m.accuracy, m.value) if multi else m.reward

        if remaining > 0:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
                study.optimize(objective, n_trials=remaining, gc_after_trial=False)
        extras: dict[str, Any] = {"study_name": study_name, "sampler": self.params["sampler"],
                                  "trial_numbers": numbers, "resumed_trials": len(previous)}
        if previous:
            extras["previous_best"] = _best_summary(previous)
        if multi:
            extras["pareto_trials"] = sorted(t.number for t in study.best_trials)
        return extras


def _best_summary(trials: list[FrozenTrial]) -> dict[str, Any]:
    """The highest-reward trial (feasible ones first) as a small JSON-ready dict."""
    best = max(trials, key=lambda t: (bool(t.user_attrs.get("feasible")), t.user_attrs.get("reward", -math.inf)))
    ratios = {k.removeprefix("ratio/"): float(v) for k, v in best.params.items() if k.startswith("ratio/")}
    drop = [k.removeprefix("drop/") for k, v in best.params.items() if k.startswith("drop/") and v]
    attrs = {k: best.user_attrs.get(k) for k in ("reward", "accuracy", "value", "feasible")}
    return {"trial": best.number, **attrs, "policy": {"ratios": ratios, "drop": drop}}
