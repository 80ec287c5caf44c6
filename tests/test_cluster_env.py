"""The environment paal-ray gives Ray's workers (paal_ray.cluster.worker_env): each entry a default
that a user's own setting overrides."""

from __future__ import annotations

from paal_ray.cluster import worker_env


def test_ray_train_polls_workers_often_enough_for_short_epochs(monkeypatch):
    # Ray's 2 s default held every epoch shorter than that to one per 2 s (jobs/bench_round_overhead.py)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert float(worker_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) <= 0.1
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    assert worker_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"


def test_the_session_cluster_workers_have_the_interval(ray_session):
    """The local cluster's workers inherit it (connect() exports it before Ray starts)."""
    import os

    @ray_session.remote(num_cpus=0)
    def seen() -> str | None:
        return os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")

    value = ray_session.get(seen.remote())
    assert value is not None and value == os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
