"""Margin: the b slices with the smallest gap between the two most likely classes
(score 1 - (p1 - p2), so higher is picked first like every other strategy)."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.uncertainty import UncertaintyStrategy


class MarginStrategy(UncertaintyStrategy):
    name = "margin"
    pixel_key = "pixel_margin"

    def image_score(self, probs_mean: np.ndarray) -> np.ndarray:
        p = np.sort(np.asarray(probs_mean, dtype=np.float64), axis=1)
        return 1.0 - (p[:, -1] - p[:, -2])

    def pixel_score(self, pixel_value: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(pixel_value, dtype=np.float64)
