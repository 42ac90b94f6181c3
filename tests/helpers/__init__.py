"""Shared test helpers: ``helpers.NAME`` in the tests (``tests/`` is on ``sys.path``), ``tests.helpers.NAME`` from the repository root."""
