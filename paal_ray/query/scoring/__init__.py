"""Scoring the unlabelled pool: one streaming Ray Data pass, an actor pool that loads the model once.

``score_pool`` finds which Parquet row groups hold the requested slices (``Pool.locate``: the
slice_id column only), packs them into work units of at least one scoring batch, and streams the
units (a few hundred bytes each) through ``ScoreActor``s (``ActorPoolStrategy``; one GPU each on GPU
clusters). Each actor reads its units' rows itself (``read_rows``: only the image columns, decoded
once, zero-copy slices) and brings back to the driver only the small per-slice score columns the
strategy asked for (``needs``, see ``strategies.base``): images never travel through the object
store or to the driver, and the pool is never materialised. Why the actor reads: moving 0.5 MB a
slice from read tasks through the object store into the actor capped a GPU actor at ~1,500-1,800
slices/s with no model at all (session 1, H100); reading in the actor moves each image once,
from the Parquet decoder into pinned memory and over the bus (docs/BENCHMARKS.md).

``ScoreComputer`` is the pure-PyTorch part (decode on the device, segmenter + AP under inference
mode, bf16 autocast and channels_last on GPU) and is also what the plain-loop benchmark runs, so
the two measure the same work.
"""

from paal_ray.data.pool import IMAGE_COLUMNS, LABEL_COLUMNS
from paal_ray.query.scoring.actor import ScoreActor
from paal_ray.query.scoring.arrow import fixed_arrays
from paal_ray.query.scoring.computer import ScoreComputer, ScoreOptions
from paal_ray.query.scoring.driver import ScoreTable, score_pool, work_units
from paal_ray.query.scoring.errors import ScoringError

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "ScoreActor", "ScoreComputer", "ScoreOptions", "ScoreTable",
           "ScoringError", "fixed_arrays", "score_pool", "work_units"]
