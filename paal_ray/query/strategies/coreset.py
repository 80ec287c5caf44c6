"""CoreSet (Sener & Savarese): greedy k-center on standardised features reduced by PCA.

The labelled slices' features are the initial centres (the engine scores them in the same pass).
The authors build an N x N distance matrix; here only a vector of N nearest-centre distances is
kept and updated per pick, and the labelled centres are folded in a few at a time, so memory is
linear in N. PCA comes from the eigen-decomposition of the D x D covariance (deterministic; each
component's sign fixed so its largest loading is positive).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy


class CoreSetStrategy(Strategy):
    name = "coreset"
    params_schema: ClassVar[dict[str, Any]] = {"pca_dims": 50, "center_chunk": 64}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.needs = frozenset({"features"})
        self.needs_labelled = frozenset({"features"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        x = np.asarray(self._get(scores, "features"), dtype=np.float32)
        lab = context.labelled.get("features")
        lab = np.zeros((0, x.shape[1]), np.float32) if lab is None else np.asarray(lab, np.float32)
        z, zl = standardise_pca(x, lab, int(self.params["pca_dims"]))
        return greedy_k_center(z, zl, b, rng, chunk=int(self.params["center_chunk"]))


def standardise_pca(x: np.ndarray, lab: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardise with statistics of candidates and labelled together, project on the top PCs."""
    n, d = x.shape
    total = n + len(lab)
    mean = (x.sum(0, dtype=np.float64) + lab.sum(0, dtype=np.float64)) / total
    xc = x - mean.astype(np.float32)
    lc = lab - mean.astype(np.float32)
    var = ((xc.astype(np.float64) ** 2).sum(0) + (lc.astype(np.float64) ** 2).sum(0)) / max(total - 1, 1)
    std = np.sqrt(var).astype(np.float32)
    std[std < 1e-8] = 1.0
    xc /= std
    lc /= std
    if dims >= d:
        return xc, lc
    cov = (xc.T.astype(np.float64) @ xc + lc.T.astype(np.float64) @ lc) / max(total - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    comps = evecs[:, np.argsort(evals)[::-1][:dims]]
    signs = np.sign(comps[np.abs(comps).argmax(0), np.arange(comps.shape[1])])
    comps = (comps * np.where(signs == 0, 1.0, signs)).astype(np.float32)
    return xc @ comps, lc @ comps


def greedy_k_center(z: np.ndarray, centres: np.ndarray, b: int, rng: np.random.Generator, chunk: int = 64) -> Selection:
    """Pick b rows of z, each the farthest from all centres so far (ties: lower index).
    With no labelled centres the first pick is drawn with ``rng``. Score = its distance."""
    n = z.shape[0]
    want = min(b, n)
    z_sq = (z.astype(np.float64) ** 2).sum(1)
    mind = np.full(n, np.inf)
    for s in range(0, len(centres), chunk):  # N x chunk at a time: linear in N
        c = centres[s : s + chunk].astype(np.float64)
        d = z_sq[:, None] - 2.0 * (z @ c.T.astype(np.float32)) + (c**2).sum(1)[None]
        np.minimum(mind, d.min(1), out=mind)
    picks, dists = [], []
    for _ in range(want):
        if np.isinf(mind).all():
            i = int(rng.integers(n))
        else:
            i = int(np.argmax(mind))
        picks.append(i)
        dists.append(float(np.sqrt(max(mind[i], 0.0))))
        d = ((z - z[i]) ** 2).sum(1, dtype=np.float64)
        np.minimum(mind, d, out=mind)
        mind[i] = -1.0  # never again
    return Selection(indices=np.asarray(picks, np.int64), score=np.asarray(dists))
