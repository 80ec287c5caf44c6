"""KMeans with three interchangeable backends: cuML (GPU), PyTorch (GPU or CPU) and scikit-learn.

``kmeans(features, k, seed, backend="auto")`` returns ``KMeansResult(labels, backend, centers)``
(a NamedTuple, so ``labels = kmeans(...)[0]`` works too). ``auto`` picks cuML when it imports and a
GPU is visible, else PyTorch on a GPU, else scikit-learn on the CPU, and the result records which
one ran. Every backend uses k-means++ seeding and a pinned ``n_init`` (scikit-learn changed its
default across versions), so a seed fixes the result on the CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BACKENDS = ("cuml", "torch", "sklearn")


class KMeansResult(NamedTuple):
    labels: np.ndarray  # [N] int64 cluster ids in [0, k)
    backend: str
    centers: np.ndarray  # [k, D] float32


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
