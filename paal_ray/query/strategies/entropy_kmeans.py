"""Entropy+KMeans: the top ``pre_factor`` x b slices by entropy, then KMeans with K = b on their
features and the slice nearest each centre (uncertainty first, then diversity)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, StrategyError, fill_random, top_b
from paal_ray.query.strategies.kmeans import diverse_centres
from paal_ray.query.strategies.max_entropy import MaxEntropyStrategy


class EntropyKMeansStrategy(MaxEntropyStrategy):
    name = "entropy_kmeans"
    params_schema: ClassVar[dict[str, Any]] = {"reduction": "image", "pre_factor": 20, "n_init": 10,
                                               "kmeans_backend": None}

    def __init__(self, **params: Any):
        super().__init__(**params)
        if int(self.params["pre_factor"]) < 1:
            raise StrategyError(f"strategy {self.name!r}: pre_factor must be >= 1")
        self.needs = self.needs | {"features"}

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        feats = self._get(scores, "features")
        short = top_b(self.uncertainty(scores), int(self.params["pre_factor"]) * b).indices
        sel = diverse_centres(feats[short], b, context, self.params)
        sel = Selection(indices=short[sel.indices], score=sel.score, cluster=sel.cluster)
        return fill_random(sel, len(feats), b, rng)
