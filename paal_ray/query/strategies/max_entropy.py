"""MaxEntropy: the b slices of highest predictive entropy."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.base import entropy
from paal_ray.query.strategies.uncertainty import UncertaintyStrategy


class MaxEntropyStrategy(UncertaintyStrategy):
    name = "max_entropy"
    pixel_key = "pixel_entropy"

    def image_score(self, probs_mean: np.ndarray) -> np.ndarray:
        return entropy(probs_mean)
