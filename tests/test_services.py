"""The real services of the test suite: Optuna on the throwaway PostgreSQL server, and a
tracked autoprune search on an MLflow server whose backend store is that PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from helpers import tiny_experiment
from mlflow import MlflowClient

from autoprune.app.pipeline import registered_name, run_experiment
from autoprune.config.loading import parse_config
from autoprune.tracking.artifacts import download_model_uri

EPISODES = 5


def test_fresh_databases_are_isolated_on_a_server_without_durability(make_postgres_db: Callable[..., str]) -> None:
    first = make_postgres_db()
    second = make_postgres_db("other")
    assert first != second and first.startswith("postgresql+psycopg2://") and "@127.0.0.1:" in first
    one, two = sa.create_engine(first), sa.create_engine(second)
    try:
        with one.begin() as c:
            # what makes a database per test cheap (no flush to disk), checked instead of timed
            durability = {name: c.execute(sa.text(f"SHOW {name}")).scalar() for name in ("fsync", "synchronous_commit", "full_page_writes")}
            assert durability == {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            c.execute(sa.text("CREATE TABLE t (x int)"))
        assert sa.inspect(one).get_table_names() == ["t"]
        assert sa.inspect(two).get_table_names() == []
    finally:
        one.dispose()
        two.dispose()


def test_optuna_rdb_storage_on_postgres(postgres_url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        study = optuna.create_study(study_name="quadratic", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: (t.suggest_float("x", -2.0, 2.0) - 0.5) ** 2, n_trials=4)
        again = optuna.load_study(study_name="quadratic", storage=postgres_url)  # a second storage, as another worker would
        again.optimize(lambda t: (t.suggest_float("x", -2.0, 2.0) - 0.5) ** 2, n_trials=2)
        trials = study.trials
        assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert again.best_value == study.best_value and again.best_params == study.best_params
    finally:
        storage.engine.dispose()


@pytest.fixture
def restore_mlflow_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Tracker sets MLflow's global URIs (and env vars); put them back, the server goes away."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


def test_a_search_is_tracked_on_the_mlflow_server_in_postgres(
    mlflow_server: str, mlflow_backend_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch, restore_mlflow_uris: None
) -> None:
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = parse_config(tiny_experiment(tmp_path, name="services", search={"episodes": EPISODES}, tracking={"uri": mlflow_server}))
    res = run_experiment(cfg, progress=False)

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server, not written locally
    assert run.data.params["search.episodes"] == str(EPISODES) and run.data.params["tracking.uri"] == mlflow_server
    history = client.get_metric_history(res.run_id, "episode/reward")
    assert sorted(m.step for m in history) == list(range(EPISODES))
    assert {"policy.json", "history.csv", "config.yaml", "model"} <= {a.path for a in client.list_artifacts(res.run_id)}
    policy = json.loads(Path(client.download_artifacts(res.run_id, "policy.json", str(tmp_path))).read_text())
    assert policy["ratios"] == pytest.approx(res.search.result.best.policy.to_dict()["ratios"])
    assert download_model_uri(f"models:/{registered_name(cfg)}@champion", tracking_uri=mlflow_server, dst=tmp_path / "dl").is_file()

    engine = sa.create_engine(mlflow_backend_url)
    try:
        with engine.connect() as c:
            status = c.execute(sa.text("SELECT status FROM runs WHERE run_uuid = :r"), {"r": res.run_id}).scalar_one()
            rewards = c.execute(sa.text("SELECT count(*) FROM metrics WHERE run_uuid = :r AND key = 'episode/reward'"), {"r": res.run_id}).scalar_one()
    finally:
        engine.dispose()
    assert status == "FINISHED" and rewards == EPISODES
