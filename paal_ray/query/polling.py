"""PAAL's Weighted Polling Strategy (WPS) and its cluster count.

Weights come from the Accuracy Predictor: a slice whose predicted per-class Dice is low is worth
labelling, w_i = mean_j -log(p_ij). The authors compute this in fp16 with no epsilon (ties and
-inf are possible); we use fp32 and clamp p to [1e-6, 1]. Polling visits the clusters round-robin
in cluster-id order and takes the highest-weight remaining slice of each; exhausted clusters are
skipped, and when fewer than b slices remain all of them are returned (their loop never ended).
Ties in weight go to the lower index, so the result is fully determined by the inputs.
"""

from __future__ import annotations

import math

import numpy as np

P_MIN = 1e-6


def num_clusters(b: int) -> int:
    """K = floor(log2(4b) + 1), the paper's cluster count for a query of b slices."""
    if b < 1:
        raise ValueError(f"num_clusters: budget b must be >= 1, got {b}")
    return int(math.floor(math.log2(4 * b) + 1))


def polling_weights(pred_acc: np.ndarray) -> np.ndarray:
    """[N, C] predicted per-class Dice -> [N] fp32 weights mean_j -log(clamp(p_ij, 1e-6, 1))."""
    p = np.asarray(pred_acc, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"pred_acc must be [N, C], got shape {p.shape}")
    return (-np.log(np.clip(p, np.float32(P_MIN), np.float32(1.0)))).mean(axis=1, dtype=np.float32)


def weighted_polling(pred_acc: np.ndarray, cluster_ids: np.ndarray, b: int) -> np.ndarray:
    """Indices (into the N rows) in pick order, at most b of them.

    Round r takes the r-th best slice of every cluster that still has one, clusters in ascending
    id order; so the pick order is a sort by (rank within cluster, cluster id).
    """
    w = polling_weights(pred_acc)
    cid = np.asarray(cluster_ids)
    if cid.shape != (w.shape[0],):
        raise ValueError(f"cluster_ids must be [N] with N={w.shape[0]}, got shape {cid.shape}")
    if b < 0:
        raise ValueError(f"weighted_polling: b must be >= 0, got {b}")
    n = w.shape[0]
    idx = np.arange(n)
    # Within each cluster: weight descending, then index ascending (lexsort: last key is primary).
    order = np.lexsort((idx, -w, cid))
    sorted_cid = cid[order]
    starts = np.r_[0, np.flatnonzero(sorted_cid[1:] != sorted_cid[:-1]) + 1] if n else np.zeros(0, int)
    rank_sorted = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    pick = np.lexsort((cid, rank))
    return pick[: min(b, n)]
