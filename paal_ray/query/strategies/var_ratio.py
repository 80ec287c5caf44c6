"""VarRatio: 1 - max p of the predicted distribution. As in the authors' code (a single
deterministic pass, no MC sampling) it ranks exactly like LeastConf; kept for Table 2."""

from __future__ import annotations

import numpy as np

from paal_ray.query.strategies.uncertainty import UncertaintyStrategy


class VarRatioStrategy(UncertaintyStrategy):
    name = "var_ratio"
    pixel_key = "pixel_least_conf"

    def image_score(self, probs_mean: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(probs_mean, dtype=np.float64).max(axis=1)
