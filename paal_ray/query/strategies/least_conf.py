"""LeastConf: the b slices whose most likely class is least probable (score 1 - max p)."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.uncertainty import UncertaintyStrategy


class LeastConfStrategy(UncertaintyStrategy):
    name = "least_conf"
    pixel_key = "pixel_least_conf"

    def image_score(self, probs_mean: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(probs_mean, dtype=np.float64).max(axis=1)
