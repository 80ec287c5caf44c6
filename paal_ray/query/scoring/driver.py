"""The driver side of scoring: work units, the streaming Ray Data pass, the results in order."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from paal_ray.data.pool import RowGroupRows
from paal_ray.query.scoring.actor import ScoreActor
from paal_ray.query.scoring.computer import ScoreOptions
from paal_ray.query.scoring.errors import ScoringError

log = logging.getLogger(__name__)


@dataclass
class ScoreTable:
    slice_ids: list[str]  # in the order the caller asked for
    scores: dict[str, np.ndarray]  # each [N, ...], row i belongs to slice_ids[i]
    # wall_s: the whole pass; first_batch_s: until the first scores arrived (actor start, model
    # load, first read); stream_rate: slices/s over the pass's last 90% (the pipeline's steady
    # state: past the start-up and the units that were in flight together when it ended).
    stats: dict[str, float] = field(default_factory=dict)


def work_units(parts: list[RowGroupRows], min_rows: int) -> list[str]:
    """Consecutive row groups packed into units of at least ``min_rows`` slices (a scoring batch):
    pools with small row groups (one volume each) still give the GPU full batches."""
    units, current, rows = [], [], 0
    for part in parts:
        current.append(part.to_json())
        rows += len(part.rows)
        if rows >= min_rows:
            units.append(json.dumps(current))
            current, rows = [], 0
    if current:
        units.append(json.dumps(current))
    return units


def score_pool(pool_path: str, slice_ids: Iterable[str], checkpoint: str, options: ScoreOptions, *,
               scaling, log_every: float = 0.1) -> ScoreTable:
    """Score the given slices of a pool in one streaming pass; rows come back in the given order."""
    import ray

    from paal_ray.data.pool import Pool

    ids = list(slice_ids)
    pos = {s: i for i, s in enumerate(ids)}
    if len(pos) != len(ids):
        raise ScoringError("score_pool: duplicate slice ids requested")
    pool = Pool.open(pool_path)
    if not ids:
        return ScoreTable(slice_ids=[], scores={}, stats={"wall_s": 0.0, "first_batch_s": 0.0, "stream_rate": 0.0})
    batch_size = int(scaling.score_batch_size)
    units = work_units(pool.locate(ids), batch_size)
    use_gpu = bool(scaling.use_gpu)
    if scaling.compile_scoring:
        options = replace(options, compile_batch=batch_size)
    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "options": options, "use_gpu": use_gpu,
                               "threads": None if use_gpu else scaling.score_threads, "batch_size": batch_size},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=int(scaling.score_actors),
            # GPU: several units per actor at once, in threads, each on its own CUDA stream, so
            # that reading and copying some overlaps the model's work on another.
            max_concurrent_calls_per_actor=int(scaling.score_calls_per_gpu_actor) if use_gpu else None,
            enable_true_multi_threading=True if use_gpu else None,
        ),
        num_gpus=float(scaling.gpus_per_score_actor) if use_gpu else 0,
        num_cpus=1,
    )
    n = len(ids)
    t0 = time.perf_counter()
    t_first, t_tenth, tenth_rows = None, None, 0
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    done, next_log = 0, log_every
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None, prefetch_batches=2):
        rows = np.fromiter((pos[s] for s in batch["slice_id"]), dtype=np.int64, count=len(batch["slice_id"]))
        for key, val in batch.items():
            if key == "slice_id":
                continue
            if key not in out:
                out[key] = np.empty((n, *val.shape[1:]), dtype=np.float32)
            out[key][rows] = val
        if seen[rows].any():
            raise ScoringError("score_pool: a slice was scored twice (duplicate slice ids in the pool?)")
        seen[rows] = True
        done += len(rows)
        if t_first is None:
            t_first = time.perf_counter()
        if t_tenth is None and done >= 0.1 * n:
            t_tenth, tenth_rows = time.perf_counter(), done
        if n and done / n >= next_log:
            log.info("scored %d / %d slices", done, n)
            next_log += log_every
    if not seen.all():  # locate() checked every id; this would be a lost unit
        missing = [ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise ScoringError(f"{pool.path}: {int((~seen).sum())} requested slices were not scored, e.g. {missing}")
    t_end = time.perf_counter()
    stats = {"wall_s": t_end - t0, "first_batch_s": (t_first or t_end) - t0,
             "stream_rate": (done - tenth_rows) / (t_end - t_tenth) if t_tenth and t_end > t_tenth else 0.0}
    return ScoreTable(slice_ids=ids, scores=out, stats=stats)

