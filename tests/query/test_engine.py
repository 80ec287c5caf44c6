"""A real query through Ray Data: a briefly trained light checkpoint on the phantom pool."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from paal_ray.config import ScalingSettings, StrategyConfig
from paal_ray.data.pool import Pool, decode_images, decode_labels
from paal_ray.models import ModelSpec, dice_targets, save_model_bundle
from paal_ray.query import QueryError, QueryRequest, run_query


@pytest.fixture(scope="module")
def trained(phantom_pool, tmp_path_factory):
    """plain_unet + AP trained for a few epochs on a third of the pool with a plain torch loop
    (independent of the Ray Train code), saved as a model bundle."""
    pool = Pool.open(phantom_pool)
    ids = pool.slice_ids()
    labelled = ids[::3]
    table = pool.read_slices(labelled)
    x = torch.from_numpy(decode_images(table.to_pydict()))
    y = torch.from_numpy(decode_labels(table.to_pydict()))
    torch.manual_seed(0)
    spec = ModelSpec(in_channels=pool.channels, num_classes=pool.num_classes, encoder="plain_unet",
                     encoder_depth=3, base_width=8, decoder_dropout=0.2)
    seg, ap = spec.build()
    opt = torch.optim.AdamW(list(seg.parameters()) + list(ap.parameters()), lr=3e-3)
    for _ in range(5):
        for i in range(0, len(x), 16):
            xb, yb = x[i : i + 16], y[i : i + 16]
            seg.train(), ap.train()
            logits = seg(xb)
            probs = logits.softmax(1).detach()
            target = dice_targets(probs.argmax(1), yb, spec.num_classes)
            loss = torch.nn.functional.cross_entropy(logits, yb) + torch.nn.functional.mse_loss(ap(xb, probs), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    folder = tmp_path_factory.mktemp("ckpt")
    save_model_bundle(folder, spec, seg, ap)
    return {"pool": str(phantom_pool), "ckpt": str(folder), "ids": ids, "labelled": labelled}


def _request(trained, tmp_path, name="paal", budget=6, seed=0, out="sel.parquet", **kw):
    unlabelled = [s for s in trained["ids"] if s not in set(trained["labelled"])]
    return QueryRequest(
        pool_path=trained["pool"], unlabelled_ids=unlabelled, labelled_ids=trained["labelled"],
        checkpoint=trained["ckpt"], strategy=StrategyConfig(name=name, params=kw.pop("params", {})),
        budget=budget, seed=seed, out_path=str(tmp_path / out),
        scaling=ScalingSettings(score_actors=1, score_batch_size=32), **kw,
    )


def test_paal_query_through_ray_data(ray_session, trained, tmp_path):
    req = _request(trained, tmp_path, compute_true_dice=True)
    res = run_query(req)
    assert len(res.slice_ids) == 6 == len(set(res.slice_ids))
    assert not set(res.slice_ids) & set(trained["labelled"])
    assert set(res.slice_ids) <= set(req.unlabelled_ids)
    assert res.kmeans_backend == "sklearn"  # no GPU here
    assert set(res.timings) == {"scoring_s", "clustering_s", "selection_s", "total_s"}
    assert res.timings["scoring_s"] > 0 and res.timings["total_s"] >= res.timings["scoring_s"]
    assert res.ap_pearson is not None and -1 <= res.ap_pearson <= 1
    assert len(res.ap_pearson_per_class) == 4

    table = pq.read_table(res.table_path)
    assert table.column_names == ["slice_id", "rank", "score", "cluster", "pred_acc"]
    assert table.column("slice_id").to_pylist() == res.slice_ids
    assert table.column("rank").to_pylist() == list(range(6))
    assert np.asarray(table.column("pred_acc").to_pylist()).shape == (6, 4)
    meta = table.schema.metadata
    assert meta[b"kmeans_backend"] == b"sklearn" and b"scoring_s" in meta[b"timings"]
    placement = json.loads(meta[b"kmeans_placement"])  # KMeans ran in a Ray task, not in this driver
    assert placement["pid"] != os.getpid() and placement["device"] == "cpu" and placement["fallback"] is None
    assert res.extra["kmeans"] == placement
    # Beside it, predicted and actual Dice of every unlabelled slice (the AP-consistency plot), whose
    # correlation is the logged Pearson r.
    health = pq.read_table(tmp_path / "ap_health.parquet")
    assert health.column("slice_id").to_pylist() == req.unlabelled_ids
    pred, true = (np.asarray(health.column(c).to_pylist()) for c in ("pred_acc", "true_dice"))
    assert pred.shape == true.shape == (len(req.unlabelled_ids), 4)
    assert np.corrcoef(pred.mean(1), true.mean(1))[0, 1] == pytest.approx(res.ap_pearson, abs=1e-4)

    again = run_query(_request(trained, tmp_path, compute_true_dice=True, out="again.parquet"))
    assert again.slice_ids == res.slice_ids  # deterministic for a seed
    other = run_query(_request(trained, tmp_path, name="random", seed=1, out="r1.parquet"))
    assert other.extra["scoring_stream"] == {}  # random needs no scoring pass
    assert not set(other.slice_ids) & set(trained["labelled"])


def test_coreset_and_mc_dropout_through_ray_data(ray_session, trained, tmp_path):
    res = run_query(_request(trained, tmp_path, name="coreset", budget=5, out="cs.parquet"))
    assert len(set(res.slice_ids)) == 5 and not set(res.slice_ids) & set(trained["labelled"])
    mc = run_query(_request(trained, tmp_path, name="mc_dropout", budget=5, out="mc.parquet",
                            params={"passes": 3}))
    scores = pq.read_table(mc.table_path).column("score").to_numpy()
    assert len(mc.slice_ids) == 5 and (scores > 0).all()  # passes differ: BALD above zero


def test_pool_smaller_than_budget_and_bad_requests(trained, tmp_path):
    req = _request(trained, tmp_path, name="random", budget=10)
    req.unlabelled_ids = req.unlabelled_ids[:4] + trained["labelled"][:2]  # labelled ones are never candidates
    res = run_query(req)
    assert sorted(res.slice_ids) == sorted(req.unlabelled_ids[:4])
    with pytest.raises(QueryError, match="budget"):
        run_query(_request(trained, tmp_path, budget=0))
    with pytest.raises(QueryError, match="unknown strategy"):
        run_query(_request(trained, tmp_path, name="nope"))
