"""CEAL (Wang et al.): the b most uncertain slices (entropy) go to the annotator; slices the model is
very sure of (entropy below delta) are pseudo-labelled with its argmax for the next round only.

delta = delta0 - round_index * delta_decay (5e-5 and 3.3e-7 in the paper). The pseudo-labelled
slices are returned as ``pseudo_indices``; the ``ceal`` training extension trains on them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, top_b
from paal_ray.query.strategies.max_entropy import MaxEntropyStrategy


class CEALStrategy(MaxEntropyStrategy):
    name = "ceal"
    params_schema: ClassVar[dict[str, Any]] = {"reduction": "image", "delta0": 5e-5, "delta_decay": 3.3e-7}
    training_extension = "ceal"

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        h = self.uncertainty(scores)
        sel = top_b(h, b)
        delta = float(self.params["delta0"]) - context.round_index * float(self.params["delta_decay"])
        confident = np.flatnonzero(h < delta)
        sel.pseudo_indices = np.setdiff1d(confident, sel.indices).astype(np.int64)
        sel.extra["ceal_delta"] = delta
        return sel
