"""Optuna samplers: the registry of their names (``search.sampler``), each a factory of an ``optuna`` sampler.

A built-in entry is a function ``make(params, seed=, has_ints=)`` reading the Optuna searcher's
hyper-parameters. A config may also name the user's own ``optuna.samplers.BaseSampler``
subclass as ``"package.module:Class"``; it is created as ``Class(seed=seed)`` (or ``Class()``
when it takes no seed). A factory or class with a true ``multi_objective`` attribute is given
two objectives (accuracy up, budget metric down) and searched for a Pareto front. A factory whose
``requires`` attribute names a package is refused, naming it, where that package is not installed.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from autoprune.errors import ConfigError, describe
from autoprune.registry import Registry


def tpe(params: dict[str, Any], *, seed: int, has_ints: bool) -> Any:
    """Tree-structured Parzen estimator (Bergstra et al. 2011)."""
    import optuna

    return optuna.samplers.TPESampler(n_startup_trials=params["n_startup_trials"], multivariate=params["multivariate"],
                                      constant_liar=params["constant_liar"], seed=seed)


def cmaes(params: dict[str, Any], *, seed: int, has_ints: bool) -> Any:
    """CMA-ES (Hansen 2016), with margin when the search space has integers (block drops); needs ``cmaes``."""
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, with_margin=has_ints)


cmaes.requires = "cmaes"  # type: ignore[attr-defined]  # the CMA-ES package Optuna's sampler imports


def nsga2(params: dict[str, Any], *, seed: int, has_ints: bool) -> Any:
    """NSGA-II (Deb et al. 2002): multi-objective, accuracy and the budget metric."""
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=params["population_size"], seed=seed)


nsga2.multi_objective = True  # type: ignore[attr-defined]


def gp(params: dict[str, Any], *, seed: int, has_ints: bool) -> Any:
    """Gaussian-process Bayesian optimisation (Optuna's ``GPSampler``)."""
    import optuna

    return optuna.samplers.GPSampler(n_startup_trials=params["n_startup_trials"], seed=seed)


#: The Optuna samplers: the one list of their names (``search.sampler`` is checked against it).
SAMPLERS: Registry[Any] = Registry(
    "Optuna sampler",
    "search.sampler",
    {name: f"autoprune.search.samplers:{name}" for name in ("tpe", "cmaes", "nsga2", "gp")},
)


def is_multi_objective(name: str) -> bool:
    """True when the sampler ``name`` searches accuracy and budget as two objectives (Pareto front).

    Raises:
        ConfigError: unknown name or import failure.
    """
    return bool(getattr(SAMPLERS.get(name), "multi_objective", False))


def missing_package(name: str) -> str | None:
    """The package the sampler ``name`` needs (its factory's ``requires`` attribute) when it is not installed, else None.

    Raises:
        ConfigError: unknown name or import failure.
    """
    package = getattr(SAMPLERS.get(name), "requires", None)
    return package if package and importlib.util.find_spec(package) is None else None


def make_sampler(name: str, params: dict[str, Any], *, seed: int, has_ints: bool) -> Any:
    """A new ``optuna.samplers.BaseSampler`` for ``name`` (registered name or ``"package.module:Class"``).

    Args:
        name: The sampler.
        params: The Optuna searcher's hyper-parameters (built-in factories read theirs).
        seed: Sampler seed.
        has_ints: The search space has integer parameters (block drops).

    Raises:
        ConfigError: unknown name, an import failure, or a user class that cannot be created.
    """
    import optuna
    from optuna.exceptions import ExperimentalWarning

    target = SAMPLERS.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if isinstance(target, type) and issubclass(target, optuna.samplers.BaseSampler):
            try:
                return target(seed=seed)
            except TypeError:
                try:
                    return target()
                except Exception as e:
                    raise ConfigError(f"search.sampler: {name!r} could not be created ({type(e).__name__}: {describe(e)})") from e
        return target(params, seed=seed, has_ints=has_ints)


__all__ = ["SAMPLERS", "is_multi_objective", "make_sampler", "missing_package"]
