"""The driver side of scoring: work units, the streaming Ray Data pass, the results in order."""

from __future__ import annotations

import json
import logging
import time
import warnings
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
    retries = max(0, int(getattr(scaling, "max_failures", 0)))
    for attempt in range(retries + 1):
        try:
            return _score_pass(units, ids, pos, checkpoint, options, scaling, batch_size, use_gpu, log_every, pool.path)
        except Exception as e:
            if attempt == retries or not lost_a_worker(e):
                raise
            log.warning("scoring: a worker or node was lost (%s); scoring the pass again (%d of %d)",
                        type(e).__name__, attempt + 1, retries)
    raise AssertionError("unreachable")


_LOST = {"ActorDiedError", "RayActorError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
         "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "LocalRayletDiedError"}


def lost_a_worker(exc: BaseException) -> bool:
    """Whether a failure came from a lost process or node (worth another pass), not from our code."""
    from paal_ray.data.pool import PoolError

    seen, stack, lost = set(), [exc], False
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ScoringError | PoolError):  # ours (an actor that failed to start): no retry
            return False
        lost = lost or any(t.__name__ in _LOST for t in type(e).__mro__)
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return lost


def _score_pass(units, ids, pos, checkpoint, options, scaling, batch_size, use_gpu, log_every, pool_path) -> ScoreTable:
    """One streaming pass over the work units through a fresh actor pool."""
    import ray

    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=max(1, len(units)))
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60 (passing it as a remote arg is deprecated
        # for Ray 2.64, which this project does not use).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        ds = _with_score_actors(ds, checkpoint, options, scaling, batch_size, use_gpu)
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
        raise ScoringError(f"{pool_path}: {int((~seen).sum())} requested slices were not scored, e.g. {missing}")
    t_end = time.perf_counter()
    stats = {"wall_s": t_end - t0, "first_batch_s": (t_first or t_end) - t0,
             "stream_rate": (done - tenth_rows) / (t_end - t_tenth) if t_tenth and t_end > t_tenth else 0.0}
    return ScoreTable(slice_ids=ids, scores=out, stats=stats)


def _with_score_actors(ds, checkpoint, options, scaling, batch_size, use_gpu):
    import ray

    return ds.map_batches(
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
        resources=dict(scaling.custom_resources) or None,
        # No actor restarts: Ray cannot restart an actor whose constructor arguments live in the
        # object store (ray-project/ray#53727; Ray Data puts its UDF there, and says so on every
        # query with a core_worker.cc error line). A pass that loses an actor is scored again.
        max_restarts=0,
    )
