"""run_query: score the unlabelled slices, let the strategy choose, write the selection table.

Timings are split the way the paper's Table 3 counts query time: scoring (the Ray Data pass:
reading, segmenter and AP inference), clustering (KMeans, wherever the strategy calls it) and
selection (the rest of the strategy: polling, ranking, k-center, ...); total includes writing the
table. KMeans runs as a Ray task placed by the cluster's resources (``clustering.kmeans_task``:
one GPU when the cluster has GPUs, else a whole CPU node), not in this driver process. The table
is Parquet, written atomically, with the KMeans backend, where it ran and the timings in its
schema metadata.
"""

from __future__ import annotations

import io
import json
import logging
import time
from functools import partial
from pathlib import Path

import numpy as np

from paal_ray.query.api import AP_HEALTH_FILE, QueryRequest, QueryResult
from paal_ray.query.clustering import kmeans_task
from paal_ray.query.scoring import ScoreOptions, score_pool
from paal_ray.query.strategies import QueryContext, Selection, Strategy, StrategyError, from_config

log = logging.getLogger(__name__)


class QueryError(ValueError):
    """A query request that cannot be served; the message names the field."""


def _validate(req: QueryRequest) -> tuple[list[str], list[str]]:
    if req.budget < 1:
        raise QueryError(f"budget: must be >= 1, got {req.budget}")
    if not req.out_path:
        raise QueryError("out_path: empty")
    labelled = set(req.labelled_ids)
    if len(set(req.unlabelled_ids)) != len(req.unlabelled_ids):
        raise QueryError("unlabelled_ids: contains duplicates")
    # Sorted: the candidates' order (and so a seed's result) does not depend on the caller's order.
    candidates = sorted(set(req.unlabelled_ids) - labelled)
    return candidates, sorted(labelled)


def run_query(req: QueryRequest) -> QueryResult:
    t_start = time.perf_counter()
    try:
        strategy = from_config(req.strategy)
    except StrategyError as e:
        raise QueryError(f"strategy: {e}") from e
    candidates, labelled = _validate(req)
    from paal_ray.data.pool import Pool

    pool = Pool.open(req.pool_path)
    num_classes = pool.num_classes

    needs = set(strategy.needs)
    if req.compute_true_dice:
        needs |= {"pred_acc", "true_dice"}
    with_labelled = bool(strategy.needs_labelled) and bool(labelled)
    scores: dict[str, np.ndarray] = {}
    lab_scores: dict[str, np.ndarray] = {}
    stream: dict[str, float] = {}
    t0 = time.perf_counter()
    if needs and candidates:
        ids = candidates + (labelled if with_labelled else [])
        opts = ScoreOptions(needs=frozenset(needs), image_size=req.image_size, seed=req.seed,
                            **{k: v for k, v in strategy.scoring_options.items() if k == "mc_passes"})
        table = score_pool(req.pool_path, ids, req.checkpoint, opts, scaling=req.scaling)
        n = len(candidates)
        stream = table.stats
        scores = {k: v[:n] for k, v in table.scores.items()}
        if with_labelled:
            lab_scores = {k: v[n:] for k, v in table.scores.items() if k in strategy.needs_labelled}
    scoring_s = time.perf_counter() - t0

    ctx = QueryContext(num_classes=num_classes, seed=req.seed, num_candidates=len(candidates),
                       round_index=req.round_index, label_smoothing=req.label_smoothing, labelled=lab_scores,
                       kmeans_fn=partial(kmeans_task, resources=dict(req.scaling.custom_resources)))
    rng = np.random.default_rng(req.seed)
    t1 = time.perf_counter()
    sel = strategy.select(scores, req.budget, rng, ctx) if candidates else Selection(np.zeros(0, np.int64), np.zeros(0))
    select_total = time.perf_counter() - t1
    _check_selection(sel, len(candidates), req.budget, strategy)

    chosen = [candidates[i] for i in sel.indices]
    timings = {"scoring_s": scoring_s, "clustering_s": ctx.clustering_s,
               "selection_s": max(select_total - ctx.clustering_s, 0.0)}
    pearson, per_class = _ap_health(scores) if req.compute_true_dice else (None, None)
    if pearson is not None:
        _write_ap_health(req, candidates, scores)
    timings["total_s"] = time.perf_counter() - t_start  # provisional, rewritten below
    _write_table(req, strategy, sel, chosen, scores, timings, ctx.backend_used, ctx.kmeans_placement)
    timings["total_s"] = time.perf_counter() - t_start
    log.info("query %s: %d of %d slices chosen in %.2fs (scoring %.2fs, clustering %.2fs)", strategy.name,
             len(chosen), len(candidates), timings["total_s"], scoring_s, ctx.clustering_s)
    return QueryResult(
        slice_ids=chosen, table_path=str(req.out_path), timings=timings, kmeans_backend=ctx.backend_used,
        ap_pearson=pearson, ap_pearson_per_class=per_class,
        pseudo_ids=[candidates[i] for i in sel.pseudo_indices],
        extra={"strategy": strategy.name, "num_candidates": len(candidates), "scoring_stream": stream,
               **({"kmeans": ctx.kmeans_placement} if ctx.kmeans_placement else {}), **sel.extra},
    )


def _check_selection(sel: Selection, n: int, b: int, strategy: Strategy) -> None:
    idx = np.asarray(sel.indices)
    want = min(b, n)
    problems = []
    if len(idx) != want:
        problems.append(f"returned {len(idx)} slices, expected {want}")
    if len(np.unique(idx)) != len(idx):
        problems.append("returned duplicates")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        problems.append("returned an index outside the candidates")
    if problems:
        raise QueryError(f"strategy {strategy.name!r} " + "; ".join(problems))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _ap_health(scores: dict[str, np.ndarray]) -> tuple[float | None, list[float] | None]:
    """Pearson r of the AP's predicted vs the actual Dice over the unlabelled slices: mean over
    classes, and per class (nan where a class's Dice does not vary)."""
    if "pred_acc" not in scores or "true_dice" not in scores or len(scores["pred_acc"]) < 2:
        return None, None
    p, t = scores["pred_acc"], scores["true_dice"]
    return _pearson(p.mean(1), t.mean(1)), [_pearson(p[:, j], t[:, j]) for j in range(p.shape[1])]


def _write_ap_health(req: QueryRequest, candidates: list[str], scores: dict[str, np.ndarray]) -> None:
    """Predicted and actual per-class Dice of every unlabelled slice (simulated runs), beside the
    selection: the data behind the AP-consistency plot (the paper's Figure 1), a few KB a round."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paal_ray.atomic import atomic_write_bytes

    k = scores["pred_acc"].shape[1]
    cols = {"slice_id": pa.array(candidates, pa.string())}
    for key in ("pred_acc", "true_dice"):
        flat = pa.array(np.asarray(scores[key], np.float32).reshape(-1))
        cols[key] = pa.FixedSizeListArray.from_arrays(flat, k)
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    atomic_write_bytes(Path(req.out_path).with_name(AP_HEALTH_FILE), buf.getvalue())


def _write_table(req: QueryRequest, strategy: Strategy, sel: Selection, chosen: list[str],
                 scores: dict[str, np.ndarray], timings: dict[str, float], backend: str | None,
                 placement: dict | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paal_ray.atomic import atomic_write_bytes

    cols: dict[str, pa.Array] = {
        "slice_id": pa.array(chosen, pa.string()),
        "rank": pa.array(np.arange(len(chosen), dtype=np.int32)),
        "score": pa.array(np.asarray(sel.score, np.float64)),
    }
    if sel.cluster is not None:
        cols["cluster"] = pa.array(np.asarray(sel.cluster, np.int32))
    if "pred_acc" in scores:
        pa_rows = np.asarray(scores["pred_acc"], np.float32)[np.asarray(sel.indices, np.int64)]
        k = pa_rows.shape[1]
        cols["pred_acc"] = pa.FixedSizeListArray.from_arrays(pa.array(pa_rows.reshape(-1)), k)
    meta = {
        "strategy": strategy.name, "strategy_params": json.dumps(strategy.params, default=str),
        "kmeans_backend": backend or "", "kmeans_placement": json.dumps(placement or {}),
        "timings": json.dumps(timings), "seed": str(req.seed),
        "round_index": str(req.round_index), "budget": str(req.budget),
    }
    table = pa.table(cols).replace_schema_metadata({k: str(v) for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(req.out_path, buf.getvalue())
