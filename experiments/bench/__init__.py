"""The benchmarks, one module each, run from the repository root as ``python -m experiments.bench.NAME``.

Shared parts: :mod:`._common` (results headers, markdown tables, the goals report), the PostgreSQL
server of the tests (``tests.helpers.postgres``) and the library's fresh-process re-measure
(:mod:`autoprune.measure.fresh`).
"""
