"""The one contract every query strategy implements.

A strategy declares which per-slice scores the scoring pass must emit (``needs``), which ones it
also needs for the labelled slices (``needs_labelled``, CoreSet's centres), which query schedule it
gets by default (``default_schedule``: "iq" or "fixed"), which training-side
extension it relies on (``training_extension``: "lpl", "ceal") and which model settings the run
loop must apply at run start (``model_overrides``: MC dropout needs real dropout layers). Then
``select(scores, b, rng, context)`` ranks the candidates. Nothing outside ``query/strategies/``
looks at a strategy's name.

Score keys the scoring pass can emit (arrays aligned with the candidate order, N rows):
    probs_mean [N, K]      softmax averaged over H x W (the authors' image-level reduction)
    pixel_entropy [N]      mean pixel-wise entropy (natural log)
    pixel_least_conf [N]   mean pixel-wise 1 - max p
    pixel_margin [N]       mean pixel-wise top-1 minus top-2 probability
    features [N, D]        global-average-pooled deepest encoder stage
    pred_acc [N, K]        Accuracy Predictor output (predicted per-class Dice)
    mc_probs [N, T, K]     image-averaged softmax of T passes with dropout active
    bald_pixel [N]         mean pixel-wise BALD over the T passes
    lpl_loss [N]           LPL head's predicted loss
    grad_embedding [N, K*F] BADGE: last-layer gradient embedding for the argmax pseudo-label
    true_dice [N, K]       actual per-class Dice (simulated runs only; AP health)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

SCORE_KEYS = frozenset({
    "probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features", "pred_acc",
    "mc_probs", "bald_pixel", "lpl_loss", "grad_embedding", "true_dice",
})


class StrategyError(ValueError):
    """Unknown strategy, bad parameter, or scores that do not fit the strategy."""


@dataclass
class Selection:
    indices: np.ndarray  # into the candidate rows, in rank order (best first)
    score: np.ndarray  # [len(indices)] the strategy's score of each pick (higher = picked earlier)
    cluster: np.ndarray | None = None  # [len(indices)] cluster id of each pick, for clustering strategies
    pseudo_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # CEAL
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class QueryContext:
    """What a strategy may use besides the candidates' scores. ``kmeans`` is timed and recorded
    here so the engine can report clustering time and backend apart from the rest of selection."""

    num_classes: int
    seed: int
    num_candidates: int  # N: rows of every score array
    round_index: int = 0
    label_smoothing: float = 0.0  # the segmenter's training target (CEAL's confidence floor)
    labelled: dict[str, np.ndarray] = field(default_factory=dict)  # scores of the labelled slices
    kmeans_backend: str = "auto"
    # What runs KMeans: the query engine sets clustering.kmeans_task (a Ray task placed on a GPU or
    # a whole CPU node); default in process (clustering.kmeans), as strategy unit tests want.
    kmeans_fn: Callable[..., Any] | None = None
    clustering_s: float = 0.0
    backend_used: str | None = None
    kmeans_placement: dict[str, Any] | None = None  # where the (last) KMeans task ran, if in a task

    def kmeans(self, features: np.ndarray, k: int, **kwargs) -> Any:
        from paal_ray.query.clustering import kmeans as default_kmeans

        fn = self.kmeans_fn or default_kmeans
        t0 = time.perf_counter()
        res = fn(features, k, self.seed, kwargs.pop("backend", self.kmeans_backend), **kwargs)
        self.clustering_s += time.perf_counter() - t0
        self.backend_used = res.backend
        self.kmeans_placement = getattr(res, "placement", None)
        return res


# Parameters that mean the same thing in every strategy that has them: checked when any strategy is
# built, so a bad value fails at `paal run` start, not after a round of training and scoring.
PARAM_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_init": (lambda v: v >= 1, "must be >= 1 (KMeans restarts)"),
    "kmeans_backend": (lambda v: v is None or v in ("auto", "cuml", "torch", "sklearn"),
                       "must be auto, cuml, torch or sklearn (or null: auto)"),
    "reduction": (lambda v: v in ("image", "pixel"), "must be 'image' or 'pixel'"),
    "pre_factor": (lambda v: v >= 1, "must be >= 1"),
    "pca_dims": (lambda v: v >= 1, "must be >= 1"),
    "center_chunk": (lambda v: v >= 1, "must be >= 1"),
    "passes": (lambda v: v >= 2, "must be >= 2 (BALD needs several passes)"),
    "dropout": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "delta0": (lambda v: v >= 0, "must be >= 0"),
    "delta_decay": (lambda v: v >= 0, "must be >= 0"),
}


def check_param(strategy: str, key: str, value: Any, default: Any) -> None:
    """A value of the default's type (an int where a float is expected is fine), then the rule for
    its name. A default of None takes any type its rule allows."""
    where = f"strategy {strategy!r}: param {key}={value!r}"
    if default is not None:
        want = type(default)
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int | float) and not isinstance(value, bool) if want is float else
              isinstance(value, want) and not isinstance(value, bool))
        if not ok:
            raise StrategyError(f"{where}: expected {want.__name__} like the default {default!r}")
    rule = PARAM_RULES.get(key)
    if rule is not None:
        try:
            good = rule[0](value)
        except TypeError:
            good = False
        if not good:
            raise StrategyError(f"{where}: {rule[1]}")


class Strategy:
    """Base class: subclasses set ``name`` and ``needs`` (or compute them from params in
    ``__init__``) and implement ``select``. Unknown params are an error, not silently ignored."""

    name: ClassVar[str] = ""
    params_schema: ClassVar[dict[str, Any]] = {}  # param -> default
    training_extension: ClassVar[str | None] = None
    # The query schedule a run gets unless schedule.mode says otherwise: the paper queries PAAL
    # by IQ and every comparison method "every 5 epochs" after a 10-epoch warm-up.
    default_schedule: ClassVar[str] = "fixed"

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.params_schema)
        if unknown:
            allowed = ", ".join(sorted(self.params_schema)) or "none"
            raise StrategyError(f"strategy {self.name!r}: unknown params {sorted(unknown)} (allowed: {allowed})")
        for key, value in params.items():
            check_param(self.name, key, value, self.params_schema[key])
        self.params = {**self.params_schema, **params}
        self.needs: frozenset[str] = frozenset()
        self.needs_labelled: frozenset[str] = frozenset()
        self.model_overrides: dict[str, Any] = {}
        self.scoring_options: dict[str, Any] = {}  # e.g. mc_passes for the scoring pass

    def select(self, scores: dict[str, np.ndarray], b: int, rng: np.random.Generator,
               context: QueryContext) -> Selection:
        raise NotImplementedError

    def _get(self, scores: dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in scores:
            raise StrategyError(f"strategy {self.name!r}: scoring did not emit {key!r} (emitted: {sorted(scores)})")
        return scores[key]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


# -- helpers shared by strategies ------------------------------------------------------------------
def top_b(score: np.ndarray, b: int) -> Selection:
    """The b highest scores, ties to the lower index."""
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="stable")[: min(b, score.shape[0])]
    return Selection(indices=order, score=score[order])


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def check_reduction(name: str, reduction: str) -> None:
    if reduction not in ("image", "pixel"):
        raise StrategyError(f"strategy {name!r}: reduction must be 'image' or 'pixel', got {reduction!r}")


def nearest_to_centres(features: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each non-empty cluster (ascending id): the member nearest its centre. Returns
    (indices, distances, cluster ids); memory linear in N."""
    x = np.asarray(features, dtype=np.float32)
    d = ((x - centers[labels]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(d)), d, labels))  # by cluster, then distance, then index
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    picks = order[first]
    return picks, np.sqrt(d[picks]), labels[picks]


def fill_random(sel: Selection, n: int, b: int, rng: np.random.Generator) -> Selection:
    """Top up a selection short of b (empty clusters) with random other candidates, scored -inf."""
    want = min(b, n)
    if len(sel.indices) >= want:
        return sel
    rest = np.setdiff1d(np.arange(n), sel.indices)
    extra = rng.permutation(rest)[: want - len(sel.indices)]
    cl = None if sel.cluster is None else np.r_[sel.cluster, np.full(len(extra), -1)]
    return Selection(indices=np.r_[sel.indices, extra].astype(np.int64),
                     score=np.r_[sel.score, np.full(len(extra), -np.inf)], cluster=cl,
                     pseudo_indices=sel.pseudo_indices, extra=sel.extra)
