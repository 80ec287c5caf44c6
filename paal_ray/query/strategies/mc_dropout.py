"""MC dropout with BALD (AB-UNet baseline): T stochastic passes with the dropout layer ACTIVE.

The authors ran their passes in eval mode, so all passes were identical and BALD was zero
everywhere (a random pick in disguise). Here the scoring pass switches only the dropout modules to
train mode, with per-slice seeded masks so the passes differ yet a seed reproduces them. The model
must have been trained with real dropout: ``model_overrides`` asks the run loop for
``model.decoder_dropout`` at run start.

BALD = H[E_t p_t] - E_t H[p_t]. ``reduction="image"`` (default) uses each pass's image-averaged
probabilities; ``"pixel"`` averages the pixel-wise BALD computed on the device.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import (
    QueryContext,
    Selection,
    Strategy,
    StrategyError,
    check_reduction,
    entropy,
    top_b,
)


def bald_from_passes(mc_probs: np.ndarray) -> np.ndarray:
    """[N, T, K] probabilities of T passes -> [N] BALD mutual information."""
    p = np.asarray(mc_probs, dtype=np.float64)
    return entropy(p.mean(axis=1)) - entropy(p, axis=-1).mean(axis=1)


class MCDropoutStrategy(Strategy):
    name = "mc_dropout"
    params_schema: ClassVar[dict[str, Any]] = {"passes": 10, "dropout": 0.2, "reduction": "image"}

    def __init__(self, **params: Any):
        super().__init__(**params)
        check_reduction(self.name, self.params["reduction"])
        if int(self.params["passes"]) < 2:
            raise StrategyError(f"strategy {self.name!r}: passes must be >= 2 (BALD needs several passes)")
        if not 0 < float(self.params["dropout"]) < 1:
            raise StrategyError(f"strategy {self.name!r}: dropout must be in (0, 1)")
        self.needs = frozenset({"mc_probs"} if self.params["reduction"] == "image" else {"bald_pixel"})
        self.model_overrides = {"decoder_dropout": float(self.params["dropout"])}
        self.scoring_options = {"mc_passes": int(self.params["passes"])}

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        if self.params["reduction"] == "image":
            return top_b(bald_from_passes(self._get(scores, "mc_probs")), b)
        return top_b(self._get(scores, "bald_pixel"), b)
