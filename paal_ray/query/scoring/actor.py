"""The Ray Data actor: loads the model bundle once, reads its work units' rows itself, scores them."""

from __future__ import annotations

import json
import threading

import numpy as np

from paal_ray.data.pool import IMAGE_COLUMNS, LABEL_COLUMNS, RowGroupRows, read_rows
from paal_ray.query.scoring.arrow import fixed_arrays
from paal_ray.query.scoring.computer import ScoreComputer, ScoreOptions
from paal_ray.query.scoring.errors import ScoringError


class ScoreActor:
    """Callable class for ``map_batches``: loads the bundle once; each call gets work units (JSON
    lists of ``RowGroupRows``), reads their rows and scores them in batches of ``batch_size``."""

    def __init__(self, checkpoint: str, options: ScoreOptions, use_gpu: bool = False, threads: int | None = None,
                 batch_size: int = 256):
        import torch

        from paal_ray.models.bundle import load_model_bundle

        self.threads = int(threads) if threads else None
        self.batch_size = int(batch_size)
        device = "cuda" if use_gpu else "cpu"
        if use_gpu and not torch.cuda.is_available():
            raise ScoringError("scaling.use_gpu is set but this scoring actor sees no GPU")
        self.computer = ScoreComputer(load_model_bundle(checkpoint), options, device=device)
        self.with_labels = "true_dice" in options.needs
        self.columns = IMAGE_COLUMNS + (LABEL_COLUMNS if self.with_labels else [])
        self._local = threading.local()

    def __call__(self, batch) -> dict[str, np.ndarray]:
        import torch

        if self.threads and getattr(self._local, "threads", None) != self.threads:
            # Ray runs actor methods in a thread other than the constructor's, and OpenMP's thread
            # count is per calling thread: set in __init__ only, the convolutions (oneDNN) ran on
            # Ray's OMP_NUM_THREADS=1 and scoring was ~20% slower on 2 cores.
            torch.set_num_threads(self.threads)
            self._local.threads = self.threads
        parts = [RowGroupRows.from_json(p) for unit in batch["unit"] for p in json.loads(str(unit))]
        table = read_rows(parts, self.columns)
        if self.computer.cuda:
            stream = getattr(self._local, "stream", None)
            if stream is None:
                stream = self._local.stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):  # a thread's own stream: copies overlap the other calls' compute
                return self._score_table(table)
        return self._score_table(table)

    def _score_table(self, table) -> dict[str, np.ndarray]:
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, table.num_rows, self.batch_size):
            results.append(self.score_arrow(table.slice(start, self.batch_size)))
        if not results:
            return {"slice_id": np.zeros(0, dtype=object)}
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}

    def score_arrow(self, batch) -> dict[str, np.ndarray]:
        """One Arrow batch of image (and label) columns -> its score columns and slice ids."""
        ids = batch.column("slice_id").to_pylist()
        images = fixed_arrays(batch, "image", "image_dtype", "image_shape", as_chunks=True)
        labels = fixed_arrays(batch, "label", "label_dtype", "label_shape") if self.with_labels else None
        scores = self.computer.score(images, ids, labels)
        scores["slice_id"] = np.asarray(ids, dtype=object)
        return scores

