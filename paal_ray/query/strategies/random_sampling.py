"""Random: b slices drawn uniformly with the query's seeded generator. Needs no scores at all."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy


class RandomStrategy(Strategy):
    name = "random"

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        n = context.num_candidates
        idx = rng.permutation(n)[: min(b, n)].astype(np.int64)
        return Selection(indices=idx, score=np.zeros(len(idx)))
