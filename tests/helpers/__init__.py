"""Shared test helpers, imported as ``from helpers import ...`` (``tests/`` is on ``sys.path``).

* :mod:`helpers.experiments`: the tiny experiment config and a writer for it;
* :mod:`helpers.settings`: proxy, latency and training settings sized for tests;
* :mod:`helpers.search`: run one searcher quietly;
* :mod:`helpers.cli`: run ``autoprune`` in-process and check the one-line user error;
* :mod:`helpers.timing`: a virtual clock for the timer's arithmetic;
* :mod:`helpers.models`: a tiny token encoder with attention heads (imported as ``helpers.models``).

Fixtures stay in ``tests/conftest.py``; these are plain functions and constants.
"""

from .cli import Result, assert_user_error, cli
from .experiments import merge, tiny_experiment, write_experiment
from .search import search
from .settings import FAST_LATENCY, FAST_PROXY, FAST_TRAIN, fast_settings, fast_train
from .timing import VirtualClock

__all__ = [
    "FAST_LATENCY",
    "FAST_PROXY",
    "FAST_TRAIN",
    "Result",
    "VirtualClock",
    "assert_user_error",
    "cli",
    "fast_settings",
    "fast_train",
    "merge",
    "search",
    "tiny_experiment",
    "write_experiment",
]
