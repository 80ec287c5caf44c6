"""BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings (uncertainty x diversity).

Embedding of a slice: the gradient of the cross-entropy against its own argmax pseudo-label with
respect to the last layer's weights, averaged over pixels: mean_pixels (p - onehot(argmax)) x h,
with h the features entering the segmentation head (its centre tap for a 3x3 head). First pick:
the largest embedding norm; then D^2 sampling with the query's seeded generator. Only a vector of
N distances is kept (linear memory).
"""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy


class BADGEStrategy(Strategy):
    name = "badge"

    def __init__(self, **params):
        super().__init__(**params)
        self.needs = frozenset({"grad_embedding"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        g = np.asarray(self._get(scores, "grad_embedding"), dtype=np.float64)
        return kmeanspp_seeding(g, b, rng)


def kmeanspp_seeding(g: np.ndarray, b: int, rng: np.random.Generator) -> Selection:
    n = g.shape[0]
    want = min(b, n)
    g_sq = (g**2).sum(1)
    first = int(np.argmax(g_sq))
    picks, score = [first], [float(np.sqrt(g_sq[first]))]
    mind = np.maximum(g_sq - 2.0 * (g @ g[first]) + g_sq[first], 0.0)
    mind[first] = 0.0
    chosen = np.zeros(n, bool)
    chosen[first] = True
    while len(picks) < want:
        total = mind.sum()
        if total <= 0:  # all remaining are duplicates of picks: take the lowest unchosen index
            i = int(np.flatnonzero(~chosen)[0])
        else:
            i = int(np.searchsorted(np.cumsum(mind), rng.random() * total, side="right"))
            i = min(i, n - 1)
            if chosen[i]:  # zero-mass row hit by rounding: fall back to the farthest
                i = int(np.argmax(np.where(chosen, -1.0, mind)))
        picks.append(i)
        score.append(float(np.sqrt(mind[i])))
        chosen[i] = True
        mind = np.minimum(mind, np.maximum(g_sq - 2.0 * (g @ g[i]) + g_sq[i], 0.0))
        mind[chosen] = 0.0
    return Selection(indices=np.asarray(picks, np.int64), score=np.asarray(score))
