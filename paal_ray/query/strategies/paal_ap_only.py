"""PAAL (only AP), the ablation: the top b slices by polling weight, no clustering."""

from __future__ import annotations

import numpy as np

from paal_ray.query.polling import polling_weights
from paal_ray.query.strategies.base import QueryContext, Selection, Strategy, top_b


class PAALAPOnlyStrategy(Strategy):
    name = "paal_ap_only"
    default_schedule = "iq"  # the ablation removes WPS's clustering, not incremental querying

    def __init__(self, **params):
        super().__init__(**params)
        self.needs = frozenset({"pred_acc"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        return top_b(polling_weights(self._get(scores, "pred_acc")), b)
