"""Weighted polling and K pinned on hand-computed examples."""

import math

import numpy as np
import pytest

from paal_ray.query import num_clusters, polling_weights, weighted_polling


def _p(*vals):
    return np.asarray(vals, dtype=np.float32)[:, None]  # one class: w = -log p


def test_round_robin_in_cluster_id_order_highest_weight_first():
    # cluster 0: idx 0 (p .9), 2 (.5), 5 (.3) -> by weight 5, 2, 0; cluster 1: 1 (.1), 3 (.2) -> 1, 3; cluster 2: 4
    pred = _p(0.9, 0.1, 0.5, 0.2, 0.8, 0.3)
    cl = np.array([0, 1, 0, 1, 2, 0])
    assert weighted_polling(pred, cl, 4).tolist() == [5, 1, 4, 2]


def test_exhausted_clusters_are_skipped_and_fewer_than_b_returns_all():
    pred = _p(0.9, 0.1, 0.5, 0.2, 0.8, 0.3)
    cl = np.array([0, 1, 0, 1, 2, 0])
    # round 2 has only cluster 0 left; b = 10 > 6 returns everything, no endless loop
    assert weighted_polling(pred, cl, 5).tolist() == [5, 1, 4, 2, 3]
    assert weighted_polling(pred, cl, 10).tolist() == [5, 1, 4, 2, 3, 0]
    assert weighted_polling(pred, cl, 0).tolist() == []


def test_ties_go_to_lower_index_and_cluster_ids_need_not_be_contiguous():
    pred = _p(0.5, 0.5, 0.4, 0.5)
    cl = np.array([7, 7, 3, 7])
    # cluster 3 comes first (lower id); in cluster 7 three equal weights: 0, 1, 3
    assert weighted_polling(pred, cl, 4).tolist() == [2, 0, 1, 3]


def test_clamp_makes_zero_and_tiny_probabilities_tie():
    pred = _p(0.0, 1e-7, 1e-3, 1.5)
    w = polling_weights(pred)
    assert w.dtype == np.float32
    assert w[0] == w[1] == pytest.approx(-math.log(1e-6), rel=1e-6)
    assert w[3] == 0.0  # p > 1 is clamped to 1
    assert weighted_polling(pred, np.zeros(4, int), 4).tolist() == [0, 1, 2, 3]


def test_weight_is_mean_over_classes_of_minus_log():
    pred = np.array([[0.5, 0.25], [0.9, 0.9]], np.float32)
    w = polling_weights(pred)
    assert w[0] == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert w[1] == pytest.approx(-math.log(0.9), rel=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="cluster_ids"):
        weighted_polling(_p(0.1, 0.2), np.array([0]), 1)
    with pytest.raises(ValueError, match="pred_acc"):
        weighted_polling(np.zeros(3), np.zeros(3), 1)


@pytest.mark.parametrize("b,k", [(1, 3), (2, 4), (3, 4), (4, 5), (30, 7), (299, 11), (1024, 13)])
def test_num_clusters_formula(b, k):
    assert num_clusters(b) == k == math.floor(math.log2(4 * b) + 1)


def test_num_clusters_rejects_empty_budget():
    with pytest.raises(ValueError, match="b must be >= 1"):
        num_clusters(0)
