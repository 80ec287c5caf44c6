"""The query contract: what the run loop asks of a query, and what it gets back.

Implemented by ``paal_ray.query.engine.run_query`` (Ray Data scoring, KMeans, strategy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from paal_ray.config import ScalingSettings, StrategyConfig

# Written beside the selection table in simulated runs: predicted and actual per-class Dice of every
# unlabelled slice (the AP-consistency plot's data).
AP_HEALTH_FILE = "ap_health.parquet"


@dataclass
class QueryRequest:
    pool_path: str
    unlabelled_ids: list[str]
    labelled_ids: list[str]  # some strategies (CoreSet) need the labelled set's features
    checkpoint: str  # folder with model.pt (a model bundle)
    strategy: StrategyConfig
    budget: int  # b: slices to select this round
    seed: int
    out_path: str  # where the selection table (Parquet) is written, atomically
    image_size: int | None = None
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    round_index: int = 0
    label_smoothing: float = 0.0  # train.label_smoothing: what a fully confident segmenter outputs
    compute_true_dice: bool = False  # simulated runs: score actual Dice too (AP health, Pearson r)


@dataclass
class QueryResult:
    slice_ids: list[str]  # chosen slices in rank order (len == budget unless the pool ran short)
    table_path: str
    timings: dict[str, float]  # scoring_s, clustering_s, selection_s, total_s
    kmeans_backend: str | None = None
    ap_pearson: float | None = None  # Pearson r of AP-predicted vs actual mean Dice (unlabelled)
    ap_pearson_per_class: list[float] | None = None
    pseudo_ids: list[str] = field(default_factory=list)  # CEAL: confident slices for pseudo-labels
    extra: dict[str, Any] = field(default_factory=dict)
