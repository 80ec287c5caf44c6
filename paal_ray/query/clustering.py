"""KMeans with three interchangeable backends: cuML (GPU), PyTorch (GPU or CPU) and scikit-learn.

``kmeans(features, k, seed, backend="auto")`` returns ``KMeansResult(labels, backend, centers)``
(a NamedTuple, so ``labels = kmeans(...)[0]`` works too). ``auto`` picks cuML when it imports and a
GPU is visible, else PyTorch on a GPU, else scikit-learn on the CPU, and the result records which
one ran. Every backend uses k-means++ seeding and a pinned ``n_init`` (scikit-learn changed its
default across versions), so a seed fixes the result on the CPU.

``kmeans_task`` runs the same thing as a Ray task placed where it belongs, not in the driver (which
on a typical cluster sits on a small CPU head): with GPUs in the cluster a task with one GPU (cuML
there, else PyTorch on that GPU), without them a CPU task sized to the largest node (scikit-learn
on all its cores). The features travel through the object store. The result's ``placement`` says
where it ran, on what, for how long, and why it fell back from the configured backend if it did
(also logged as a warning: the same seed gives another selection on another backend).
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("cuml", "torch", "sklearn")


class KMeansResult(NamedTuple):
    labels: np.ndarray  # [N] int64 cluster ids in [0, k)
    backend: str
    centers: np.ndarray  # [k, D] float32
    # kmeans_task only: node_id, node_ip, device, num_cpus, num_gpus, threads, seconds, requested,
    # fallback (None, or why the configured backend could not run there)
    placement: dict | None = None


def cuml_available() -> bool:
    """cuML imports AND a GPU is visible. Any exception on import counts as unavailable: a broken
    CUDA install raises all sorts (RuntimeError, OSError, ...), not only ImportError."""
    try:
        import cuml.cluster  # noqa: F401
    except Exception:
        return False
    return _cuda_available()


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def resolve_backend(backend: str = "auto") -> str:
    if backend == "auto":
        if cuml_available():
            return "cuml"
        return "torch" if _cuda_available() else "sklearn"
    if backend not in BACKENDS:
        raise ValueError(f"kmeans backend {backend!r}: expected 'auto' or one of {', '.join(BACKENDS)}")
    if backend == "cuml" and not cuml_available():
        raise RuntimeError("kmeans backend 'cuml' requested but cuML is not importable or no GPU is visible")
    return backend


def kmeans(features: np.ndarray, k: int, seed: int, backend: str = "auto", *, n_init: int = 10,
           max_iter: int = 100, tol: float = 1e-4, device: str | None = None) -> KMeansResult:
    """Cluster [N, D] features into k clusters (k is capped at N)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans: features must be a non-empty [N, D] array, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k}")
    if n_init < 1:
        raise ValueError(f"kmeans: n_init must be >= 1, got {n_init}")
    k = min(k, x.shape[0])
    name = resolve_backend(backend)
    if name == "cuml":
        labels, centers = _kmeans_cuml(x, k, seed, n_init, max_iter, tol)
    elif name == "torch":
        labels, centers = kmeans_torch(x, k, seed, n_init=n_init, max_iter=max_iter, tol=tol, device=device)
    else:
        labels, centers = _kmeans_sklearn(x, k, seed, n_init, max_iter, tol)
    return KMeansResult(np.asarray(labels, dtype=np.int64), name, np.asarray(centers, dtype=np.float32))


# -- KMeans as a Ray task ----------------------------------------------------------------------------
KMEANS_TASK_NAME = "paal_kmeans"


def _largest_node_cpus(ray, resources: dict[str, float]) -> int:
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes()
            if n.get("Alive") and all(n.get("Resources", {}).get(r, 0) >= v for r, v in resources.items())]
    return max(1, int(max(cpus, default=1)))


def kmeans_task(features: np.ndarray, k: int, seed: int, backend: str = "auto", *,
                resources: dict[str, float] | None = None, **kwargs) -> KMeansResult:
    """``kmeans`` in a Ray task placed by the cluster's resources (see the module docstring); in
    process when no Ray is running. ``resources``: custom resources the task asks for too (the
    nodes meant for the work). Blocks until the result is back."""
    import ray

    if not ray.is_initialized():
        return kmeans(features, k, seed, backend, **kwargs)
    if backend != "auto" and backend not in BACKENDS:  # fail here, not in a remote traceback
        raise ValueError(f"kmeans backend {backend!r}: expected 'auto' or one of {', '.join(BACKENDS)}")
    x_ref = ray.put(np.ascontiguousarray(features, dtype=np.float32))
    custom = dict(resources or {})
    if ray.cluster_resources().get("GPU", 0) >= 1:
        resources = {"num_gpus": 1, "num_cpus": 1}
        threads = None
    else:
        node_cpus = _largest_node_cpus(ray, custom)
        # Sized to a node: it can only be scheduled on a node this big, and uses all its cores.
        # One CPU is left unreserved so that a sweep's trial actors (a hundredth of a CPU each)
        # cannot keep it waiting for ever.
        resources = {"num_gpus": 0, "num_cpus": max(1, node_cpus - 1)}
        threads = node_cpus
    from paal_ray.cluster import own_resources

    task = ray.remote(_kmeans_in_task).options(
        name=KMEANS_TASK_NAME, max_retries=2, resources=custom or None, scheduling_strategy=own_resources(),
        **resources)
    res = ray.get(task.remote(x_ref, k, seed, backend, threads, kwargs))
    if res.placement.get("fallback"):
        log.warning("kmeans: %s", res.placement["fallback"])
    return res


def _kmeans_in_task(x: np.ndarray, k: int, seed: int, backend: str, threads: int | None,
                    kwargs: dict) -> KMeansResult:
    """Runs inside the Ray task: picks the backend this node can run, records where it ran."""
    import time

    import ray

    ctx = ray.get_runtime_context()
    gpu = bool(ctx.get_accelerator_ids().get("GPU"))
    cuda = _cuda_available()
    fallback = None
    if gpu and cuda:
        if backend == "auto":
            name = "cuml" if cuml_available() else "torch"
        elif backend == "cuml" and not cuml_available():
            name, fallback = "torch", ("backend 'cuml' configured but cuML is not importable on the GPU "
                                       "node: PyTorch on the GPU instead")
        else:
            name = backend
    else:
        if gpu:
            fallback = "the task was given a GPU but sees no CUDA device: running on the CPU"
        if backend == "auto":
            name = "sklearn"
        elif backend == "cuml":
            name, fallback = "sklearn", ("backend 'cuml' configured but the cluster has no usable GPU: "
                                         "scikit-learn on the CPU instead")
        else:
            name = backend
    device = "cuda" if name in ("cuml", "torch") and gpu and cuda else "cpu"
    n_threads = threads or 1
    kwargs = {k: v for k, v in kwargs.items() if k != "device"}
    t0 = time.perf_counter()
    if device == "cpu" and threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the task's CPUs at most
        with threadpool_limits(limits=threads):
            res = kmeans(x, k, seed, name, device=device, **kwargs)
    else:
        res = kmeans(x, k, seed, name, device=device, **kwargs)
    placement = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                 "device": device,
                 "num_gpus": 1 if gpu else 0, "threads": n_threads, "seconds": round(time.perf_counter() - t0, 4),
                 "requested": backend, "fallback": fallback}
    return res._replace(placement=placement)


def _kmeans_sklearn(x, k, seed, n_init, max_iter, tol):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol,
                random_state=seed, algorithm="lloyd")
    labels = km.fit_predict(x)
    return labels, km.cluster_centers_


def _kmeans_cuml(x, k, seed, n_init, max_iter, tol):
    from cuml.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol,
                random_state=seed, output_type="numpy")
    labels = km.fit_predict(x)
    return np.asarray(labels), np.asarray(km.cluster_centers_)


# -- PyTorch backend -----------------------------------------------------------------------------
def _sq_dists_chunked(x, c, x_sq, chunk: int):
    """Yield (start, [chunk, k] squared distances) so no N x k matrix beyond one chunk is held."""
    import torch

    c_sq = (c * c).sum(1)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        d = x_sq[s : s + chunk, None] - 2.0 * (xs @ c.T) + c_sq[None]
        yield s, torch.clamp_min_(d, 0.0)


def _assign(x, c, x_sq, chunk):
    import torch

    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    mind = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s, d in _sq_dists_chunked(x, c, x_sq, chunk):
        m, a = d.min(1)
        labels[s : s + d.shape[0]] = a
        mind[s : s + d.shape[0]] = m
    return labels, mind


def _kmeanspp(x, k, x_sq, gen):
    """k-means++ seeding (one D^2 sample per centre, no greedy trials)."""
    import torch

    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen, device="cpu"))
    centers = [x[first]]
    mind = torch.clamp_min(x_sq - 2.0 * (x @ x[first]) + x_sq[first], 0.0)
    for _ in range(1, k):
        total = mind.sum()
        if float(total) <= 0:  # fewer distinct points than k: any point will do
            nxt = int(torch.randint(n, (1,), generator=gen, device="cpu"))
        else:
            u = torch.rand(1, generator=gen, device="cpu").to(x.device, x.dtype) * total
            nxt = int(torch.searchsorted(torch.cumsum(mind, 0), u).clamp_max(n - 1))
        centers.append(x[nxt])
        d = torch.clamp_min(x_sq - 2.0 * (x @ x[nxt]) + x_sq[nxt], 0.0)
        mind = torch.minimum(mind, d)
    return torch.stack(centers)


def kmeans_torch(features: np.ndarray, k: int, seed: int, *, n_init: int = 10, max_iter: int = 100,
                 tol: float = 1e-4, device: str | None = None, chunk: int = 65536):
    """k-means++ then Lloyd in PyTorch. GPU when available (or ``device``), else CPU. Returns
    (labels, centers) as numpy. Empty clusters are re-seeded at the point farthest from its centre."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=dev)
    n = x.shape[0]
    k = min(k, n)
    # Centre the data: same clustering, better-conditioned distance expansion in fp32.
    mu = x.mean(0, keepdim=True)
    x = x - mu
    x_sq = (x * x).sum(1)
    tol_abs = tol * float(x.var(0).mean())  # scikit-learn's convention: relative to the data's variance
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    best = None
    chunk = max(1, min(chunk, n))
    for _ in range(n_init):
        c = _kmeanspp(x, k, x_sq, gen)
        prev_inertia = None
        for _it in range(max_iter):
            labels, mind = _assign(x, c, x_sq, chunk)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            empty = counts == 0
            new_c = sums / counts.clamp_min(1)[:, None]
            if bool(empty.any()):
                far = torch.argsort(mind, descending=True, stable=True)[: int(empty.sum())]
                new_c[empty] = x[far]
            shift = float(((new_c - c) ** 2).sum())
            c = new_c
            inertia = float(mind.sum())
            if shift <= tol_abs or (prev_inertia is not None and inertia == prev_inertia):
                break
            prev_inertia = inertia
        labels, mind = _assign(x, c, x_sq, chunk)
        inertia = float(mind.sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, c)
    _, labels, c = best
    return labels.cpu().numpy(), (c + mu).cpu().numpy()
