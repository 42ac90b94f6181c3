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

On an evaluator that ``searches_at_target`` (``search.at_target``, on by default), each sampled proposal is moved onto
the predicted target before it is evaluated (:func:`autoprune.search.at_target.at_target`: drops
scaled to what the target needs, least important first, and one factor on the ratios), so the
sampler compares shapes at equal cost; the policy evaluated is stored with the trial
(``autoprune.policy``). Enqueued trials (warm start, seeds) are evaluated as given.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, Trial, TrialState

from autoprune.errors import ConfigError, describe
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation, Metrics
from autoprune.search.at_target import at_target, max_drops
from autoprune.search.base import ExperimentContext, Searcher
from autoprune.search.samplers import SAMPLERS, is_multi_objective, make_sampler, missing_package
from autoprune.search.study_lock import StudyLock

log = logging.getLogger(__name__)

#: The study name when ``study_name`` is None.
DEFAULT_STUDY = "autoprune"

#: Database URL schemes Optuna's RDB storage reaches through SQLAlchemy (each with optional ``+driver``).
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


def unsupported_scheme(url: str) -> str | None:
    """Why ``url``'s scheme cannot be a study storage (the URL, password hidden, and the allowed schemes), or None."""
    scheme = url.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] in STORAGE_SCHEMES:
        return None
    return (f"{re.sub(r'//[^@/]*@', '//***@', url)!r} has unsupported scheme {scheme!r}; allowed: sqlite:///file.db, "
            + ", ".join(f"{s}://..." for s in STORAGE_SCHEMES[1:]) + " (optionally with +driver)")



class OptunaSearcher(Searcher):
    """Search pruning policies with an Optuna sampler; one trial is one episode.

    Hyper-parameters (``params``):
        sampler: A name in :data:`autoprune.search.samplers.SAMPLERS`: ``"tpe"`` (Bergstra et al.
            2011), ``"cmaes"`` (Hansen 2016; needs the ``cmaes`` package), ``"nsga2"`` (Deb et al.
            2002, multi-objective) or ``"gp"``; or a ``"package.module:Class"`` Optuna sampler.
        storage: ``None`` for an in-memory study, or an RDB URL such as
            ``"sqlite:///runs/study.db"``; a study of the same name there is resumed.
        study_name: Name of the study in the storage (``None``: ``"autoprune"``).
        n_startup_trials: Random trials before TPE or GP use their model.
        population_size: NSGA-II population.
        multivariate: TPE models the parameters jointly.
        constant_liar: TPE avoids proposing what parallel workers are running.
        enqueue: Policies as ``{"ratios": {...}, "drop": [...]}`` evaluated first (warm start);
            ones already in a resumed study are skipped.
        heartbeat_interval: Seconds between heartbeats of a running trial (RDB storage only;
            ``None`` turns them off). A trial without a heartbeat for ``grace_period`` seconds
            (default: twice the interval) belongs to a dead worker: it is marked FAIL and its
            parameters are queued again (at most ``retry_stale`` times).
        max_local_trials: This process runs at most this many trials (``autoprune worker --n-trials``);
            the study's total is still ``n_episodes``.
        poll_interval: Seconds between looks at the storage while the last trials run elsewhere.

    The ``seeds`` of :meth:`~autoprune.search.base.Searcher.search` (the baselines,
    ``search.seed_baselines``) are enqueued once per study, under the study's lock, after the
    warm start and only into a new study; whichever worker is free runs them, and they count
    against the budget. The study records that it was seeded (``autoprune.seeded``), so a second
    process opening the same new study at the same moment does not enqueue them again.

    The budget counts finished trials in the study, whichever process ran them: a resumed
    or joined search runs only what is missing, and the trials it did not run itself are
    added to the result's history from their stored metrics (nothing is recomputed).

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
        "heartbeat_interval": 5,
        "grace_period": None,
        "retry_stale": 2,
        "max_local_trials": None,
        "poll_interval": 1.0,
    }
    supports_workers = True
    supports_warm_start = True
    enqueues_seeds = True

    @classmethod
    def experiment_params(cls, context: ExperimentContext) -> dict[str, Any]:
        """The sampler (``search.sampler``), and a storage (``search.storage``, default
        ``sqlite:///<output_dir>/study.db``) and study name (``search.study``, default the experiment's
        name), so the same config run again resumes the search."""
        return {
            "sampler": context.sampler if context.sampler is not None else cls.defaults["sampler"],
            "storage": context.storage or f"sqlite:///{(Path(context.output_dir) / 'study.db').resolve()}",
            "study_name": context.study or context.name,
        }

    @classmethod
    def worker_params(cls, context: ExperimentContext, *, n_trials: int | None) -> dict[str, Any]:
        """The study to join (``context.storage``, ``context.study``) and this process's trial cap."""
        return {"storage": context.storage, "study_name": context.study, "max_local_trials": n_trials}

    @classmethod
    def forget(cls, params: dict[str, Any]) -> None:
        """Delete the stored study (``storage``, ``study_name``), if there is one."""
        if not params.get("storage"):
            return
        name = params.get("study_name") or DEFAULT_STUDY
        try:
            optuna.delete_study(study_name=name, storage=params["storage"])
            log.info("deleted study %r from %s", name, params["storage"])
        except KeyError:
            pass

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names (see :meth:`Searcher.check_params`), then every value that needs no evaluator: sampler, counts, intervals, ``enqueue``, storage scheme.

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        SAMPLERS.check(p["sampler"])
        missing = missing_package(p["sampler"])
        if missing is not None:
            *others, last = [n for n in SAMPLERS.names() if missing_package(n) is None]
            raise ConfigError(f"search.params.sampler: {p['sampler']!r} needs the `{missing}` package; run `pip install {missing}` "
                              f"or choose {', '.join(others)} or {last}")
        if not isinstance(p["n_startup_trials"], int) or p["n_startup_trials"] < 0:
            raise ConfigError(f"search.params.n_startup_trials: {p['n_startup_trials']!r} must be an integer >= 0")
        if not isinstance(p["population_size"], int) or p["population_size"] < 2:
            raise ConfigError(f"search.params.population_size: {p['population_size']!r} must be an integer >= 2")
        for key in ("heartbeat_interval", "grace_period"):
            v = p[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"search.params.{key}: {v!r} must be None or an integer >= 1 (seconds)")
        for key in ("retry_stale", "max_local_trials"):
            v = p[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"search.params.{key}: {v!r} must be None or an integer >= 0")
        if isinstance(p["poll_interval"], bool) or not isinstance(p["poll_interval"], (int, float)) or p["poll_interval"] <= 0:
            raise ConfigError(f"search.params.poll_interval: {p['poll_interval']!r} must be a number > 0 (seconds)")
        if not isinstance(p["enqueue"], (list, tuple)) or not all(isinstance(d, dict) for d in p["enqueue"]):
            raise ConfigError('search.params.enqueue: must be a list of policies like {"ratios": {"unit": 0.3}, "drop": []}')
        url = p["storage"]
        if url is not None and (not isinstance(url, str) or "://" not in url):
            raise ConfigError(f"search.params.storage: {url!r} is not an RDB URL; use e.g. 'sqlite:///study.db' or None")
        if url is not None and (why := unsupported_scheme(url)) is not None:
            raise ConfigError(f"search.storage: {why}")
        return p

    def __init__(self, params: dict[str, Any] | None = None, *, progress: bool = True,
                 callback: Callable[[Evaluation], None] | None = None,
                 on_ready: Callable[[optuna.Study], None] | None = None) -> None:
        super().__init__(params, progress=progress, callback=callback)
        self.on_ready = on_ready

    # ------------------------------------------------------------------ setup
    def _storage(self) -> optuna.storages.BaseStorage | None:
        url = self.params["storage"]
        if url is None:
            return None
        try:
            p = self.params
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=p["retry_stale"]) if p["retry_stale"] else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                for attempt in (1, 2):  # two processes creating the schema of a new database at once: one loses
                    try:
                        return optuna.storages.RDBStorage(
                            url, heartbeat_interval=p["heartbeat_interval"], grace_period=p["grace_period"],
                            heartbeat_stale_trial_callback=retry if p["heartbeat_interval"] else None,
                        )
                    except sqlalchemy.exc.IntegrityError:
                        if attempt == 2:
                            raise
                        time.sleep(1.0)
        except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as e:
            if (why := unsupported_scheme(url)) is not None:
                raise ConfigError(f"search.storage: {why}") from e
            first = describe(e, 200)
            try:
                shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
            except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
                shown = url
            if url in first:
                first = first.replace(url, shown)
            hint = ""
            if isinstance(e, ImportError) or "import" in first.lower():
                hint = "; install the driver: pip install 'autoprune[postgres]' (psycopg), or write postgresql+psycopg2://..."
            raise ConfigError(f"search.storage: cannot open {shown!r} ({first}){hint}") from e

    def _sampler(self, seed: int, *, has_ints: bool) -> optuna.samplers.BaseSampler:
        return make_sampler(self.params["sampler"], self.params, seed=seed, has_ints=has_ints)

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
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed evaluations are logged by the evaluator
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return self._optimize(evaluator, n_episodes, seed)
        finally:
            optuna.logging.set_verbosity(verbosity)

    def open_study(self, evaluator: PolicyEvaluator, seed: int = 0) -> optuna.Study:
        """Create the study, or load it from the storage, and check it is this search's.

        Raises:
            ConfigError: the stored study optimises other directions or another search space.
        """
        multi = is_multi_objective(self.params["sampler"])
        directions = ["maximize", "minimize"] if multi else ["maximize"]
        study_name = self.params["study_name"] or DEFAULT_STUDY
        storage = self._storage()
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise ConfigError(f"search.storage: cannot use {self.params['storage']!r}: {describe(e, 200)}") from e
        if [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"search.params.study_name: study {study_name!r} in {self.params['storage']} optimises "
                              f"{[d.name.lower() for d in study.directions]}, sampler {self.params['sampler']!r} needs "
                              f"{directions}; use another study_name")
        names = {f"ratio/{u}" for u in evaluator.unit_names} | {f"drop/{b}" for b in evaluator.block_names}
        foreign = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if set(t.params) != names), None)
        if foreign is not None:
            raise ConfigError(f"search.params.study_name: study {study_name!r} in {self.params['storage']} holds trials of "
                              f"another search space (trial {foreign.number}); use another study_name")
        # A resumed study gets a fresh random stream, so it does not repeat the first run's startup trials.
        study.sampler = self._sampler(seed + len(study.get_trials(deepcopy=False)), has_ints=bool(evaluator.block_names))
        return study

    def _optimize(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        multi = is_multi_objective(self.params["sampler"])
        start = len(evaluator.history)
        queued = [self._enqueue_params(evaluator, d) for d in self.params["enqueue"]]
        study = self.open_study(evaluator, seed)
        new_study = not study.get_trials(deepcopy=False)  # before the warm start queues trials of its own
        for params in queued:
            study.enqueue_trial(params, skip_if_exists=True)
        lock = StudyLock(self.params["storage"], study.study_name)
        if self._seeds and new_study:
            with lock:  # once per study: another process may be opening the same new study
                if not study.user_attrs.get(SEEDED_ATTR):
                    room = max(0, n_episodes - len(queued))  # seeds beyond the budget are evaluated by search()
                    for name, p in list(self._seeds.items())[:room]:
                        params = self._enqueue_params(evaluator, {"ratios": p.ratios, "drop": list(p.drop)})
                        study.enqueue_trial(params, user_attrs={SEED_ATTR: name}, skip_if_exists=True)
                    study.set_user_attr(SEEDED_ATTR, list(self._seeds)[:room])
        if self.on_ready is not None:
            self.on_ready(study)
        # Proposals of the sampler are moved onto the predicted target (the evaluator says whether), enqueued ones are evaluated as given.
        most_drops = max_drops(evaluator) if evaluator.searches_at_target else None
        fixed = [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                 if "fixed_params" in t.system_attrs]
        previous = _done_trials(study)
        if previous:
            log.info("study %r already holds %d finished trials of %d", study.study_name, len(previous), n_episodes)
        numbers: list[int] = []
        max_local = self.params["max_local_trials"]

        def objective(trial: Trial) -> float | tuple[float, float]:
            lock.release()  # the trial is RUNNING in the storage: others may count it now
            numbers.append(trial.number)
            ratios = {u: trial.suggest_float(f"ratio/{u}", 0.0, evaluator.max_ratio) for u in evaluator.unit_names}
            drop = tuple(b for b in evaluator.block_names if trial.suggest_int(f"drop/{b}", 0, 1))
            policy = Policy(ratios, drop)
            if most_drops is not None and trial.params not in fixed:
                policy = at_target(evaluator, policy, most_drops=most_drops)
                trial.set_user_attr(POLICY_ATTR, policy.to_dict())
            m = self.evaluate(policy, index=trial.number)
            # One attribute for all metrics: on an RDB storage every attribute is a transaction.
            trial.set_user_attr("metrics", m.as_dict())
            if m.failed:
                trial.set_user_attr("error", m.error)
                return (math.nan, math.nan) if multi else math.nan  # Optuna records NaN as a FAIL trial
            trial.set_constraint("budget", m.value - evaluator.target)
            return (m.accuracy, m.value) if multi else m.reward

        waited = False
        no_heartbeat: dict[int, float] = {}
        try:
            while max_local is None or len(numbers) < max_local:
                lock.acquire()
                optuna.storages.fail_stale_trials(study)
                if self.params["heartbeat_interval"]:  # trials of workers killed before their first heartbeat
                    _start_missing_heartbeats(study, no_heartbeat, self.params["grace_period"] or 2 * self.params["heartbeat_interval"])
                trials = study.get_trials(deepcopy=False)
                done = len(_counted(trials))
                running = sum(t.state == TrialState.RUNNING for t in trials)
                if done >= n_episodes:
                    break
                if done + running >= n_episodes:  # the rest is running elsewhere, or stale and not yet failed
                    lock.release()
                    if not waited:
                        log.info("waiting for %d running trial(s) of other workers", running)
                        waited = True
                    time.sleep(self.params["poll_interval"])
                    continue
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
                    study.optimize(objective, n_trials=1, gc_after_trial=False)
                lock.release()
        finally:
            lock.close()
        mine = set(numbers)
        imported = 0
        for t in sorted(_done_trials(study), key=lambda t: t.number):
            if t.number not in mine and "metrics" in t.user_attrs:
                evaluator.record(_trial_policy(t), Metrics.from_dict(t.user_attrs["metrics"]), index=t.number)
                imported += 1
        evaluator.history[start:] = sorted(evaluator.history[start:], key=lambda e: e.index)
        extras: dict[str, Any] = {"study_name": study.study_name, "sampler": self.params["sampler"],
                                  "trial_numbers": numbers, "resumed_trials": len(previous), "imported_trials": imported}
        if multi:
            extras["pareto_trials"] = sorted(t.number for t in study.best_trials)
        return extras


#: User attribute of a trial whose proposal was moved onto the target (:func:`~autoprune.search.at_target.at_target`): the policy evaluated.
POLICY_ATTR = "autoprune.policy"
#: User attribute of a trial enqueued as a baseline seed (its value: the seed's name, e.g. ``uniform``).
SEED_ATTR = "autoprune.baseline_seed"
#: Study attribute: the names of the seeds enqueued into the study (set once, by the first process).
SEEDED_ATTR = "autoprune.seeded"


def _counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count against the budget: complete ones, and evaluations that failed.

    A trial failed because its worker died (stale heartbeat) does not count: it is retried.
    Neither does one that was retried although it recorded a failed evaluation (its worker died
    between recording the error and finishing the trial): its retry counts instead.
    """
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials if t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and "error" in t.user_attrs and t.number not in retried)]


def _done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count against the budget (see :func:`_counted`)."""
    return _counted(study.get_trials(deepcopy=False))


def _start_missing_heartbeats(study: optuna.Study, seen: dict[int, float], grace: float) -> None:
    """Give a first heartbeat to RUNNING trials that never got one, so a dead worker's trial is noticed.

    Optuna stores a new trial as RUNNING, samples its parameters, and only then starts its
    heartbeat thread. A worker killed in between leaves a RUNNING trial without a heartbeat,
    which ``fail_stale_trials`` never fails: it would count as running for ever (and the last
    worker would wait for it for ever). A trial seen here without a heartbeat for ``grace``
    seconds gets one: a live worker keeps beating anyway, a dead worker's trial goes stale
    ``grace`` seconds later and is failed and retried like any other. ``seen`` maps trial ids
    to when this process first saw them without a heartbeat (monotonic clock: no clock skew
    between machines).
    """
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)  # the RDBStorage under Optuna's cache
    if not isinstance(storage, optuna.storages.RDBStorage):
        return
    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    with sqlalchemy.orm.Session(storage.engine) as session:
        ids = {tid for (tid,) in session.query(trial.trial_id).outerjoin(beat, beat.trial_id == trial.trial_id)
               .filter(trial.study_id == study._study_id, trial.state == TrialState.RUNNING, beat.trial_id.is_(None))}
    now = time.monotonic()
    for tid in set(seen) - ids:
        del seen[tid]
    for tid in ids:
        if now - seen.setdefault(tid, now) >= grace:
            log.info("trial id %d has been RUNNING without a heartbeat for %.0f s: its worker died before it started", tid, grace)
            try:
                storage.record_heartbeat(tid)
            except sqlalchemy.exc.IntegrityError:  # its worker recorded its first heartbeat just now
                pass
            del seen[tid]


def _trial_policy(trial: FrozenTrial) -> Policy:
    if POLICY_ATTR in trial.user_attrs:
        return Policy.from_dict(trial.user_attrs[POLICY_ATTR])
    ratios = {k.removeprefix("ratio/"): float(v) for k, v in trial.params.items() if k.startswith("ratio/")}
    drop = tuple(k.removeprefix("drop/") for k, v in trial.params.items() if k.startswith("drop/") and v)
    return Policy(ratios, drop)
