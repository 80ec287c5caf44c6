"""Each strategy's choice on small hand-made score arrays, and the registry contract."""

from types import SimpleNamespace

import numpy as np
import pytest

from paal_ray.query import strategies as S
from paal_ray.query.polling import weighted_polling
from paal_ray.query.strategies.base import QueryContext, StrategyError
from paal_ray.query.strategies.mc_dropout import bald_from_passes

EXPECTED = {"random", "max_entropy", "least_conf", "var_ratio", "margin", "kmeans", "coreset",
            "entropy_kmeans", "mc_dropout", "ceal", "lpl", "paal_ap_only", "paal", "badge"}


def ctx(n, **kw):
    return QueryContext(num_classes=3, seed=0, num_candidates=n, **kw)


def rng(seed=0):
    return np.random.default_rng(seed)


# probs_mean rows: 0 confident, 1 uniform (most uncertain), 2 two-way split, 3 fairly confident
PROBS = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.8, 0.15, 0.05]])


def test_registry_lists_every_strategy_and_rejects_unknowns():
    assert set(S.available()) == EXPECTED
    with pytest.raises(StrategyError, match="unknown strategy 'nope'"):
        S.get("nope")
    with pytest.raises(StrategyError, match="unknown params"):
        S.get("max_entropy", temperature=2)
    with pytest.raises(StrategyError, match="reduction"):
        S.get("margin", reduction="volume")
    assert S.from_config(SimpleNamespace(name="paal", params={"n_init": 3})).params["n_init"] == 3


def test_strategies_declare_needs_and_extensions():
    assert S.get("random").needs == frozenset()
    assert S.get("paal").needs == {"pred_acc", "features"}
    assert S.get("max_entropy", reduction="pixel").needs == {"pixel_entropy"}
    assert S.get("coreset").needs_labelled == {"features"}
    assert S.get("lpl").training_extension == "lpl" and S.get("ceal").training_extension == "ceal"
    mc = S.get("mc_dropout", passes=4, dropout=0.3)
    assert mc.model_overrides == {"decoder_dropout": 0.3} and mc.scoring_options == {"mc_passes": 4}


def test_max_entropy_ranking_by_hand():
    s = S.get("max_entropy").select({"probs_mean": PROBS}, 4, rng(), ctx(4))
    assert s.indices.tolist() == [1, 2, 3, 0]
    assert s.score[0] == pytest.approx(np.log(3))
    px = S.get("max_entropy", reduction="pixel").select({"pixel_entropy": np.array([0.1, 0.3, 0.3, 0.2])}, 3, rng(), ctx(4))
    assert px.indices.tolist() == [1, 2, 3]  # tie between 1 and 2: lower index first


def test_least_conf_var_ratio_and_margin_by_hand():
    # 1 - max p: [0.02, 0.667, 0.5, 0.2]
    assert S.get("least_conf").select({"probs_mean": PROBS}, 2, rng(), ctx(4)).indices.tolist() == [1, 2]
    assert S.get("var_ratio").select({"probs_mean": PROBS}, 4, rng(), ctx(4)).indices.tolist() == [1, 2, 3, 0]
    # margin p1 - p2: [0.97, 0, 0, 0.65] -> 1 and 2 tie at 0, lower index first, then 3
    assert S.get("margin").select({"probs_mean": PROBS}, 3, rng(), ctx(4)).indices.tolist() == [1, 2, 3]
    pm = S.get("margin", reduction="pixel").select({"pixel_margin": np.array([0.9, 0.2, 0.5])}, 1, rng(), ctx(3))
    assert pm.indices.tolist() == [1]
    pl = S.get("least_conf", reduction="pixel").select({"pixel_least_conf": np.array([0.1, 0.2, 0.5])}, 1, rng(), ctx(3))
    assert pl.indices.tolist() == [2]


def test_random_is_seeded_unique_and_needs_no_scores():
    a = S.get("random").select({}, 5, rng(1), ctx(20)).indices
    b = S.get("random").select({}, 5, rng(1), ctx(20)).indices
    c = S.get("random").select({}, 5, rng(2), ctx(20)).indices
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist() and len(set(a)) == 5
    assert len(S.get("random").select({}, 50, rng(), ctx(20)).indices) == 20


GROUPS = np.array([[0, 0], [0.1, 0], [10, 10], [10.2, 10], [10.1, 10.1], [-10, 5], [-10, 5.3]], np.float32)


def test_kmeans_takes_the_member_nearest_each_centre():
    s = S.get("kmeans", kmeans_backend="sklearn").select({"features": GROUPS}, 3, rng(), ctx(7))
    assert sorted(s.indices.tolist()) == [0, 4, 5]  # ties (0 vs 1, 5 vs 6) go to the lower index; 4 is the middle
    assert s.cluster is not None and len(set(s.cluster.tolist())) == 3


def test_entropy_kmeans_only_clusters_the_uncertain_shortlist():
    ent = np.array([0.9, 0.1, 0.8, 0.05, 0.7, 0.85, 0.0])
    probs = np.stack([np.full(7, 1.0), np.zeros(7), np.zeros(7)], 1)
    scores = {"features": GROUPS, "probs_mean": probs, "pixel_entropy": ent}
    s = S.get("entropy_kmeans", reduction="pixel", pre_factor=2, kmeans_backend="sklearn").select(scores, 2, rng(), ctx(7))
    shortlist = {0, 5, 2, 4}  # top 2 x 2 by entropy
    assert set(s.indices.tolist()) <= shortlist and len(s.indices) == 2
    assert len({tuple(GROUPS[i] // 5) for i in s.indices}) == 2  # from two different groups


def test_coreset_greedy_k_center_with_labelled_centres():
    x = np.array([[1.0], [2.0], [10.0], [11.0], [5.0]], np.float32)
    c = ctx(5, labelled={"features": np.array([[0.0]], np.float32)})
    s = S.get("coreset").select({"features": x}, 3, rng(), c)
    # farthest from {0}: 11; then 5 (min(5, 6)); then 2 (min(2, 3)) vs 10 (1) vs 1 (1)
    assert s.indices.tolist() == [3, 4, 1]
    assert s.score[0] > s.score[1] > s.score[2]


def test_coreset_pca_path_and_no_labelled_set():
    x = np.random.default_rng(0).normal(size=(200, 80)).astype(np.float32)
    s = S.get("coreset", pca_dims=10).select({"features": x}, 15, rng(3), ctx(200))
    assert len(set(s.indices.tolist())) == 15
    again = S.get("coreset", pca_dims=10).select({"features": x}, 15, rng(3), ctx(200))
    assert s.indices.tolist() == again.indices.tolist()


def test_bald_is_zero_for_identical_passes_and_ranks_disagreement():
    same = np.tile(np.array([0.5, 0.3, 0.2]), (2, 4, 1))
    np.testing.assert_allclose(bald_from_passes(same), 0.0, atol=1e-12)
    mc = np.array([
        [[0.9, 0.05, 0.05]] * 4,  # confident and consistent
        [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]],  # each pass sure, passes disagree: max BALD
        [[1 / 3] * 3] * 4,  # uncertain but consistent: BALD 0
    ])
    s = S.get("mc_dropout", passes=4).select({"mc_probs": mc}, 3, rng(), ctx(3))
    assert s.indices.tolist() == [1, 0, 2]
    assert s.score[0] == pytest.approx(np.log(2), abs=1e-6)
    px = S.get("mc_dropout", reduction="pixel").select({"bald_pixel": np.array([0.0, 0.3, 0.1])}, 1, rng(), ctx(3))
    assert px.indices.tolist() == [1]


def test_ceal_pseudo_labels_confident_slices_with_a_decaying_threshold():
    from paal_ray.query.strategies.ceal import smoothed_entropy_floor

    # 3 classes, label smoothing 0.1: a segmenter as sure as its training target allows outputs
    # (0.9333, 0.0333, 0.0333) on every pixel; its entropy is the floor, never 0.
    floor = smoothed_entropy_floor(3, 0.1)
    p = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert floor == pytest.approx(-(p * np.log(p)).sum())
    log_k = np.log(3)
    excess = np.array([0.5, 0.001, 0.9, 0.0, 0.004, 0.0049])  # in units of log K
    probs_mean = np.array([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.8, 0.1, 0.1],
                           [0.7, 0.2, 0.1], [0.6, 0.2, 0.2]])
    scores = {"pixel_entropy": floor + excess * log_k, "probs_mean": probs_mean}
    st = S.get("ceal")
    s0 = st.select(scores, 2, rng(), ctx(6, round_index=0, label_smoothing=0.1))
    assert s0.indices.tolist() == [2, 0]  # annotation: image-level entropy, as the authors
    assert s0.pseudo_indices.tolist() == [1, 3, 4, 5]  # excess below delta0 = 0.005
    assert s0.extra["pseudo_labelled"] == 4
    s5 = st.select(scores, 2, rng(), ctx(6, round_index=5, label_smoothing=0.1))  # delta = 0.005 - 5 x 0.00033
    assert s5.pseudo_indices.tolist() == [1, 3]
    # the annotated slices are never also pseudo-labelled
    s_all = st.select(scores, 5, rng(), ctx(6, round_index=0, label_smoothing=0.1))
    assert not set(s_all.pseudo_indices.tolist()) & set(s_all.indices.tolist())
    # Ignoring label smoothing, the same confident model would qualify nowhere (the old defect).
    assert st.select(scores, 2, rng(), ctx(6, round_index=0, label_smoothing=0.0)).pseudo_indices.tolist() == []


def test_lpl_and_paal_ap_only_take_top_scores():
    assert S.get("lpl").select({"lpl_loss": np.array([0.1, 2.0, 0.5])}, 2, rng(), ctx(3)).indices.tolist() == [1, 2]
    pred = np.array([[0.9, 0.9], [0.1, 0.5], [0.5, 0.5], [0.1, 0.5]], np.float32)
    assert S.get("paal_ap_only").select({"pred_acc": pred}, 3, rng(), ctx(4)).indices.tolist() == [1, 3, 2]


def test_paal_is_kmeans_then_weighted_polling():
    pred = np.array([[0.9], [0.1], [0.5], [0.2], [0.8], [0.3]], np.float32)
    labels = np.array([0, 1, 0, 1, 2, 0])
    seen = {}

    def fake_kmeans(features, k, seed, backend, **kw):
        seen.update(k=k, seed=seed, n=len(features))
        return SimpleNamespace(labels=labels, backend="fake", centers=np.zeros((3, 2)))

    c = ctx(6, kmeans_fn=fake_kmeans)
    s = S.get("paal").select({"pred_acc": pred, "features": np.zeros((6, 2))}, 2, rng(), c)
    assert seen == {"k": 4, "seed": 0, "n": 6}  # K = floor(log2(8) + 1)
    assert s.indices.tolist() == weighted_polling(pred, labels, 2).tolist() == [5, 1]
    assert s.cluster.tolist() == [0, 1] and c.backend_used == "fake" and c.clustering_s >= 0


def test_badge_starts_at_the_largest_gradient_and_spreads_out():
    g = np.array([[0.1, 0], [5, 0], [5.1, 0], [0, 4], [0, 4.1], [-3, -3]])
    s = S.get("badge").select({"grad_embedding": g}, 3, rng(0), ctx(6))
    assert s.indices[0] == 2  # largest norm
    assert len(set(s.indices.tolist())) == 3
    assert s.indices.tolist() == S.get("badge").select({"grad_embedding": g}, 3, rng(0), ctx(6)).indices.tolist()
    # D^2 sampling cannot pick the duplicate-ish neighbour of the first centre before far points often;
    # with all-identical embeddings it still returns distinct rows
    same = S.get("badge").select({"grad_embedding": np.ones((4, 2))}, 3, rng(0), ctx(4))
    assert sorted(same.indices.tolist()) == [0, 1, 2]


def test_missing_scores_are_named():
    with pytest.raises(StrategyError, match="did not emit 'features'"):
        S.get("kmeans").select({"probs_mean": PROBS}, 2, rng(), ctx(4))


def test_declared_training_extensions_exist_on_the_training_side():
    from paal_ray.training import extensions

    for name in S.available():
        ext = S.get(name).training_extension
        if ext is not None:
            assert ext in extensions.available(), f"{name} declares unknown training extension {ext!r}"
