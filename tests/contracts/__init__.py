"""Contract suites: one specification every registered plug-in must pass.

Like Optuna's storage tests, each suite is parametrised over a registry, so a plug-in registered
there (a built-in or a ``"package.module:Class"`` of the user's, such as the ones in
``tests/plugins_for_tests.py``) is checked by the same tests as the others, through what its base
class says it can do and never through its name:

* :mod:`.test_backends`: every latency backend in ``autoprune.measure.backends.BACKENDS``;
* :mod:`.test_searchers`: every searcher in ``autoprune.search.SEARCHERS``;
* :mod:`.test_importance`: every importance criterion in ``autoprune.graph.importance.IMPORTANCES``.

They are small and fast (digits models, a few calls or episodes) and assert no timing precision.
"""
