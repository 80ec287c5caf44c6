"""CEAL (Wang et al. 2017): the b most uncertain slices (entropy) go to the annotator; slices the model
is very sure of are pseudo-labelled with its argmax for the next round only.

The confidence test. The authors compare the entropy of the image-averaged class probabilities
with delta = 5e-5. That entropy measures the slice's class mix, not the model's certainty (a slice
that is 90% background and confidently segmented still scores ~0.4), and under label smoothing a
fully confident segmenter outputs 1 - eps + eps/K for its class, never probability 1: nothing ever
qualified, and CEAL was max-entropy in disguise. Here a slice is confident when its mean
pixel-wise entropy exceeds the floor that label smoothing sets, H(smoothed one-hot), by less than
delta, in units of log K (0 = every pixel as sure as training allows, 1 = uniform):

    excess = (mean_pixels H(p) - H_eps) / log K < delta,   delta = delta0 - round_index * delta_decay

delta0 = 0.005 and delta_decay = 0.00033 are CEAL's own values (the PAAL authors' 5e-5 and
3.3e-7 were set for their measure, which could not reach them). The b annotated slices are never
pseudo-labelled; the ``ceal`` training extension trains on the others for one round.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from paal_ray.query.strategies.base import QueryContext, Selection, StrategyError, top_b
from paal_ray.query.strategies.max_entropy import MaxEntropyStrategy


def smoothed_entropy_floor(num_classes: int, label_smoothing: float) -> float:
    """Entropy of a one-hot target smoothed by ``label_smoothing`` (what a perfect fit outputs)."""
    if label_smoothing <= 0:
        return 0.0
    other = label_smoothing / num_classes
    top = 1.0 - label_smoothing + other
    return -(top * math.log(top) + (num_classes - 1) * other * math.log(other))


def excess_entropy(pixel_entropy: np.ndarray, num_classes: int, label_smoothing: float) -> np.ndarray:
    """[N] mean pixel-wise entropy above the label-smoothing floor, in units of log K."""
    return (np.asarray(pixel_entropy, np.float64) - smoothed_entropy_floor(num_classes, label_smoothing)) / math.log(
        num_classes)


class CEALStrategy(MaxEntropyStrategy):
    name = "ceal"
    params_schema: ClassVar[dict[str, Any]] = {"reduction": "image", "delta0": 0.005, "delta_decay": 0.00033}
    training_extension = "ceal"

    def __init__(self, **params: Any):
        super().__init__(**params)
        if float(self.params["delta0"]) < 0 or float(self.params["delta_decay"]) < 0:
            raise StrategyError(f"strategy {self.name!r}: delta0 and delta_decay must be >= 0")
        self.needs = self.needs | {"pixel_entropy"}

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        sel = top_b(self.uncertainty(scores), b)
        delta = float(self.params["delta0"]) - context.round_index * float(self.params["delta_decay"])
        excess = excess_entropy(self._get(scores, "pixel_entropy"), context.num_classes, context.label_smoothing)
        confident = np.flatnonzero(excess < delta)
        sel.pseudo_indices = np.setdiff1d(confident, sel.indices).astype(np.int64)
        sel.extra.update(ceal_delta=delta, pseudo_labelled=int(len(sel.pseudo_indices)))
        return sel
