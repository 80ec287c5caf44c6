"""Shared shape of the uncertainty baselines: one score per slice, top-b.

``reduction="image"`` (default, as the authors' code): the score of the H x W-averaged class
probability vector. ``reduction="pixel"``: the mean of the pixel-wise score, computed on the device
during scoring.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, Strategy, check_reduction, top_b


class UncertaintyStrategy(Strategy):
    params_schema: ClassVar[dict[str, Any]] = {"reduction": "image"}
    pixel_key: ClassVar[str] = ""

    def __init__(self, **params: Any):
        super().__init__(**params)
        check_reduction(self.name, self.params["reduction"])
        self.needs = frozenset({"probs_mean"} if self.params["reduction"] == "image" else {self.pixel_key})

    def image_score(self, probs_mean: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pixel_score(self, pixel_value: np.ndarray) -> np.ndarray:
        return np.asarray(pixel_value, dtype=np.float64)

    def uncertainty(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Higher = more uncertain, one value per candidate."""
        if self.params["reduction"] == "image":
            return self.image_score(self._get(scores, "probs_mean"))
        return self.pixel_score(self._get(scores, self.pixel_key))

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        return top_b(self.uncertainty(scores), b)
