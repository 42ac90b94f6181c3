"""Scale-out benchmark: Optuna-TPE on ResNet-20 / Fashion-MNIST with 1 vs 2 worker processes on
PostgreSQL, the per-trial cost of the study storage, and what survives ``kill -9``.

Writes ``experiments/results/scale.md`` (and prints the summary). One run measures, side by side:

1. Throughput in steady state (trials per minute, worker start-up excluded) of ``autoprune search``
   with 1 worker x 1 thread, 1 worker x 2 threads and 2 workers x 1 thread (``--workers 2``), each
   on a fresh database of a throwaway local PostgreSQL server; the modes run in alternating order.
2. Storage overhead per trial: the same TPE search in memory, in SQLite and in PostgreSQL, with a
   trivial objective (a constant result: only sampler + storage + autoprune's loop are left) and
   with the real evaluator (overhead = trial wall time - time inside the evaluator).
3. Faults: ``kill -9`` of one of two workers in the middle of a trial, and of a single-process
   search that is then run again.

    python -m experiments.bench.scale            # ~13 min on 2 cores
    python -m experiments.bench.scale --quick    # smoke run, ~2-3 min

One module per section (``throughput``, ``storage``, ``faults``), their shared readers of running
studies (``studies``) and the entry (``__main__``); PostgreSQL is the test suite's server
(``tests.helpers.postgres``) with PostgreSQL's durability defaults.
"""
