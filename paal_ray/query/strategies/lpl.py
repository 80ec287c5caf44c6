"""LPL (learning loss, Yoo & Kweon): the b slices with the highest loss predicted by the loss head
that the ``lpl`` training extension trains beside the segmenter (stored in the model bundle)."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy, top_b


class LPLStrategy(Strategy):
    name = "lpl"
    training_extension = "lpl"

    def __init__(self, **params):
        super().__init__(**params)
        self.needs = frozenset({"lpl_loss"})

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        return top_b(self._get(scores, "lpl_loss"), b)
