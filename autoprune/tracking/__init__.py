"""Tracking in MLflow: the store (URI checks), the ``Tracker`` (one run per experiment), the model registry, artifact downloads, plots."""

from autoprune.tracking.store import resolve_tracking_uri
from autoprune.tracking.tracker import Tracker

__all__ = ["Tracker", "resolve_tracking_uri"]
