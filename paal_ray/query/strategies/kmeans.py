"""KMeans: K = b clusters on the pooled features; the slice nearest each centre (diversity only).

Clusters are ranked by id; a cluster left empty (possible with the torch backend's re-seeding
only in degenerate data) is made up for with random other slices so b are always returned.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy, fill_random, nearest_to_centres


class KMeansStrategy(Strategy):
    name = "kmeans"
    params_schema: ClassVar[dict[str, Any]] = {"n_init": 10, "kmeans_backend": None}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.needs = frozenset({"features"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        feats = self._get(scores, "features")
        sel = diverse_centres(feats, b, context, self.params)
        return fill_random(sel, len(feats), b, rng)


def diverse_centres(feats: np.ndarray, b: int, context: QueryContext, params: dict[str, Any]) -> Selection:
    """KMeans with K = b, then the member nearest each centre (score = minus that distance)."""
    kw: dict[str, Any] = {"n_init": params["n_init"]}
    if params.get("kmeans_backend"):
        kw["backend"] = params["kmeans_backend"]
    res = context.kmeans(feats, min(b, len(feats)), **kw)
    idx, dist, cl = nearest_to_centres(feats, res.labels, res.centers)
    return Selection(indices=idx.astype(np.int64), score=-dist, cluster=cl)
