.PHONY: setup test demo ui

VENV ?= .venv
PYTHON := $(VENV)/bin/python

setup:
	VENV=$(VENV) scripts/setup.sh

# Lint (ruff, configured in pyproject.toml), then the test suite.
test: setup
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest -q

# The main job: what uniform pruning saves, then a small real search -> fine-tune -> export,
# tracked in the embedded MLflow store (./mlflow.db; browse it with `make ui`).
demo: setup
	$(VENV)/bin/autoprune estimate experiments/configs/demo.yaml
	$(VENV)/bin/autoprune run experiments/configs/demo.yaml

# MLflow UI on the embedded tracking store, bound to 127.0.0.1.
ui: setup
	$(VENV)/bin/autoprune ui
