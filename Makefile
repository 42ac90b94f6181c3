.PHONY: setup test demo ui

VENV ?= .venv
PYTHON := $(VENV)/bin/python

setup:
	VENV=$(VENV) scripts/setup.sh

test: setup
	$(PYTHON) -m pytest -q

# Placeholder until the end-to-end demo lands.
demo: setup
	$(VENV)/bin/autoprune --help

# MLflow UI on the local tracking store (placeholder until `autoprune ui` lands).
ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
