"""PAAL: KMeans (K = floor(log2(4b) + 1)) on the pooled deepest encoder features, then the Weighted
Polling Strategy over the AP's predicted accuracies (see ``paal_ray.query.polling``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.polling import num_clusters, polling_weights, weighted_polling
from paal_ray.query.strategies.base import QueryContext, Selection, Strategy


class PAALStrategy(Strategy):
    name = "paal"
    default_schedule = "iq"
    params_schema: ClassVar[dict[str, Any]] = {"n_init": 10, "kmeans_backend": None}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.needs = frozenset({"pred_acc", "features"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        pred_acc = self._get(scores, "pred_acc")
        feats = self._get(scores, "features")
        kw: dict[str, Any] = {"n_init": self.params["n_init"]}
        if self.params["kmeans_backend"]:
            kw["backend"] = self.params["kmeans_backend"]
        res = context.kmeans(feats, num_clusters(b), **kw)
        idx = weighted_polling(pred_acc, res.labels, b)
        return Selection(indices=idx.astype(np.int64), score=polling_weights(pred_acc)[idx].astype(np.float64),
                         cluster=res.labels[idx])
