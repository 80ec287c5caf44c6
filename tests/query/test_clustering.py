"""KMeans backends: agreement on well-separated blobs, determinism, and clear errors."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from paal_ray.query import kmeans
from paal_ray.query.clustering import cuml_available, resolve_backend


def _blobs(n_per=120, k=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, d))
    x = np.concatenate([c + rng.normal(0, 0.5, (n_per, d)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(len(x))
    return x[perm], truth[perm]


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_backend_recovers_well_separated_blobs(backend):
    x, truth = _blobs()
    res = kmeans(x, 5, seed=0, backend=backend, n_init=2)
    assert res.backend == backend
    assert res.labels.shape == (len(x),) and res.centers.shape == (5, x.shape[1])
    assert adjusted_rand_score(truth, res.labels) > 0.9
    assert kmeans(x, 5, seed=0, backend=backend, n_init=1)[0].shape == (len(x),)  # tuple-style: labels first


def test_torch_and_sklearn_agree():
    x, _ = _blobs(seed=3)
    a = kmeans(x, 5, seed=1, backend="torch", n_init=3).labels
    b = kmeans(x, 5, seed=1, backend="sklearn", n_init=3).labels
    assert adjusted_rand_score(a, b) > 0.9


@pytest.mark.skipif(not cuml_available(), reason="cuML not installed or no GPU")
def test_cuml_agrees_with_sklearn():
    x, _ = _blobs(seed=4)
    a = kmeans(x, 5, seed=0, backend="cuml").labels
    b = kmeans(x, 5, seed=0, backend="sklearn").labels
    assert adjusted_rand_score(a, b) > 0.9


def test_torch_backend_is_deterministic_for_a_seed_on_cpu():
    x, _ = _blobs(k=8, seed=5)
    x += np.random.default_rng(9).normal(0, 4, x.shape).astype(np.float32)  # overlapping: seed matters
    a = kmeans(x, 8, seed=11, backend="torch", n_init=2)
    b = kmeans(x, 8, seed=11, backend="torch", n_init=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)


def test_auto_on_a_cpu_machine_records_the_backend_it_used():
    x, _ = _blobs(n_per=20)
    res = kmeans(x, 3, seed=0)
    assert res.backend == resolve_backend("auto")
    assert res.backend in ("cuml", "torch", "sklearn")


def test_k_is_capped_at_n_and_duplicates_do_not_break_torch():
    x = np.ones((4, 3), np.float32)
    res = kmeans(x, 10, seed=0, backend="torch")
    assert res.centers.shape[0] == 4 and set(res.labels) <= set(range(4))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="backend 'faiss'"):
        kmeans(np.zeros((3, 2)), 2, seed=0, backend="faiss")
    with pytest.raises(ValueError, match="k must be"):
        kmeans(np.zeros((3, 2)), 0, seed=0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans(np.zeros(3), 2, seed=0)


def test_kmeans_task_runs_in_a_task_sized_to_a_node_and_gives_the_in_process_result(ray_session):
    import os

    from paal_ray.query.clustering import kmeans_task

    if ray_session.cluster_resources().get("GPU", 0):
        pytest.skip("this cluster has a GPU: the task asks for it instead")
    x, _ = _blobs(n_per=40, seed=6)
    res = kmeans_task(x, 5, seed=2, n_init=2)
    p = res.placement
    assert res.backend == "sklearn" and p["device"] == "cpu" and p["num_gpus"] == 0 and p["fallback"] is None
    assert p["pid"] != os.getpid() and p["threads"] == 4  # the session's one node has 4 CPUs
    assert p["node_id"] == ray_session.get_runtime_context().get_node_id()
    np.testing.assert_array_equal(res.labels, kmeans(x, 5, seed=2, backend="sklearn", n_init=2).labels)


def test_kmeans_task_falls_back_from_cuml_with_a_warning(ray_session, caplog):
    from paal_ray.query.clustering import kmeans_task

    if ray_session.cluster_resources().get("GPU", 0):
        pytest.skip("this cluster has a GPU")
    x, _ = _blobs(n_per=20, seed=7)
    with caplog.at_level("WARNING", logger="paal_ray.query.clustering"):
        res = kmeans_task(x, 3, seed=0, backend="cuml", n_init=1)
    assert res.backend == "sklearn" and "no usable GPU" in res.placement["fallback"]
    assert "backend 'cuml' configured" in caplog.text
    with pytest.raises(ValueError, match="backend 'faiss'"):
        kmeans_task(x, 3, seed=0, backend="faiss")
