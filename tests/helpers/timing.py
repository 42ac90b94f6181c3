"""A virtual clock for testing timing logic without timing anything.

``PairedTimer.ratio`` reads its clock from :data:`autoprune.measure.latency.CLOCKS`; a test puts a
:class:`VirtualClock` there (``monkeypatch.setitem(CLOCKS, "wall", clock)``) and times runners
that advance it by a fixed cost. The ratios, intervals and medians then have exact values that no
load on the machine can change: what the timer computes is tested, not how fast the machine is
(speed belongs to the benchmarks in ``experiments/bench``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence


class VirtualClock:
    """A nanosecond counter that only the runners it makes advance."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.calls: list[str] = []

    def __call__(self) -> int:
        return self.now_ns

    def runner(self, ms: float | Sequence[float], name: str = "") -> Callable[[], None]:
        """A prepared zero-argument runner whose calls take exactly ``ms`` milliseconds (a sequence: in turn, cycling).

        Each call is recorded in :attr:`calls` as ``name``.
        """
        costs = itertools.cycle([ms] if isinstance(ms, (int, float)) else ms)

        def run() -> None:
            self.now_ns += round(next(costs) * 1e6)
            self.calls.append(name)

        return run
