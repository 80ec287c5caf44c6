"""Predict every slice of a labelled test set with a model bundle and score it volume by volume.

The slices are read with ``Pool.locate`` + ``read_rows`` and decoded with ``decode_images`` /
``decode_labels``, resized to the model's ``image_size`` exactly as training and scoring do; the
segmenter runs in eval mode and its argmax is the prediction. A volume's slices (one ``case_id``)
are stacked in ``slice_index`` order and scored as soon as the last of them is predicted, so
memory holds a few volumes, not the test set.

``evaluate_on_ray`` runs the work in one Ray task placed like a training worker (one GPU with
``use_gpu``), so a CPU-only head never does it; the same function runs locally on the embedded Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from paal_ray.data.pool import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    Pool,
    PoolError,
    RowGroupRows,
    decode_images,
    decode_labels,
    read_rows,
)


class EvaluationError(ValueError):
    """A test set that cannot be evaluated (unlabelled slices, a pool that does not fit the model)."""


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate: a checkpoint (folder with model.pt, or the file) on some slices of a pool."""

    checkpoint: str
    pool_path: str
    slice_ids: list[str]
    use_gpu: bool = False
    cpus: int = 1
    batch_size: int = 64
    mixed_precision: str = "auto"


def _chunks(parts: Sequence[RowGroupRows], rows: int) -> Iterator[list[RowGroupRows]]:
    """Consecutive row groups in lists of at least ``rows`` slices (the last one may be smaller)."""
    current, n = [], 0
    for part in parts:
        current.append(part)
        n += len(part.rows)
        if n >= rows:
            yield current
            current, n = [], 0
    if current:
        yield current


def check_fits(pool: Pool, spec) -> None:
    """The pool must have the model's channels and classes."""
    if pool.channels != spec.in_channels:
        raise EvaluationError(f"{pool.path}: {pool.channels} image channels, the model takes {spec.in_channels}")
    if pool.num_classes != spec.num_classes:
        raise EvaluationError(f"{pool.path}: {pool.num_classes} classes {pool.class_names}, the model predicts "
                              f"{spec.num_classes}")


def labelled_slices(pool: Pool, slice_ids: Sequence[str] | None = None) -> list[str]:
    """The given slices (default: the whole pool), sorted; every one must carry a label."""
    index = pool.index(["slice_id", "present"])
    ids = index.column("slice_id").to_pylist()
    unlabelled = {s for s, p in zip(ids, index.column("present").to_pylist(), strict=True) if p is None}
    wanted = sorted(set(slice_ids)) if slice_ids is not None else ids
    bad = [s for s in wanted if s in unlabelled]
    if bad:
        raise EvaluationError(f"{pool.path}: {len(bad)} test slices have no label (e.g. {bad[:3]}); a test set "
                              f"must be labelled")
    if not wanted:
        raise EvaluationError(f"{pool.path}: no slices to evaluate")
    return wanted


def evaluate_bundle(bundle, pool: Pool, slice_ids: Sequence[str], *, batch_size: int = 64, device: str = "cpu",
                    mixed_precision: str = "auto", echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict ``slice_ids`` of ``pool`` with ``bundle`` (anything with ``.segmenter`` and ``.spec``)
    and return the metrics summary (see ``metrics.py``) plus what was evaluated and how."""
    import torch

    from paal_ray.evaluation.metrics import SegmentationScores
    from paal_ray.training.engine import amp_dtype

    t0 = time.perf_counter()
    spec = bundle.spec
    check_fits(pool, spec)
    ids = labelled_slices(pool, slice_ids)
    meta = pool.index(["slice_id", "case_id", "patient_id", "slice_index"])
    meta = meta.filter(pc.is_in(meta.column("slice_id"), value_set=pa.array(ids, pa.string())))
    info = {s: (c, p, int(z)) for s, c, p, z in zip(*(meta.column(k).to_pylist() for k in
                                                       ("slice_id", "case_id", "patient_id", "slice_index")),
                                                     strict=True)}
    wanted = set(ids)
    expected: dict[str, int] = {}
    for s in ids:
        expected[info[s][0]] = expected.get(info[s][0], 0) + 1
    size = spec.image_size
    dev = torch.device(device)
    seg = bundle.segmenter.to(dev).eval()
    amp = amp_dtype(mixed_precision, dev)
    scores = SegmentationScores(list(pool.class_names))
    pending: dict[str, list[tuple[int, np.ndarray, np.ndarray, tuple[int, int]]]] = {}
    done = 0
    for chunk in _chunks(pool.locate(ids), batch_size):
        table = read_rows(chunk, IMAGE_COLUMNS + LABEL_COLUMNS)
        batch = table.to_pydict()
        images = decode_images(batch, size)
        labels = decode_labels(batch, size)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = seg(torch.from_numpy(images).to(dev))
        preds = logits.float().argmax(1).to(torch.uint8).cpu().numpy()
        for sid, pred, lab, stored in zip(batch["slice_id"], preds, labels, batch["label_shape"], strict=True):
            if sid not in wanted:  # locate() reads whole row groups' matching rows only; be sure
                continue
            case, patient, z = info[sid]
            pending.setdefault(case, []).append((z, pred, lab.astype(np.uint8), (int(stored[0]), int(stored[1]))))
            if len(pending[case]) == expected[case]:
                _score_volume(scores, case, patient, pending.pop(case))
        done += len(batch["slice_id"])
        if echo:
            echo(f"[evaluate] {done}/{len(ids)} slices")
    if pending:  # locate() checked every id, so this would be a lost row
        raise PoolError(f"{pool.path}: slices of {sorted(pending)[:3]} were not read")
    out = scores.summary()
    h, w = preds.shape[-2:]
    out.update(
        pool=str(pool.path), image_size=[int(h), int(w)], patients=sorted({p for _, p, _ in info.values()}),
        hd95_unit=f"voxels of the pool grid: one slice through-plane, the pool's stored pixel in-plane "
                  f"(evaluated at {h} x {w}); the pool records no physical spacing",
        seconds=round(time.perf_counter() - t0, 2), device=str(dev),
    )
    return out


def _score_volume(scores, case: str, patient: str, slices: list) -> None:
    slices.sort(key=lambda s: s[0])
    pred = np.stack([s[1] for s in slices])
    label = np.stack([s[2] for s in slices])
    sh, sw = slices[0][3]
    h, w = pred.shape[-2:]
    # Distances in the pool's stored grid: one evaluation pixel spans stored/evaluated pixels.
    scores.add_volume(case, patient, pred, label, spacing=(1.0, sh / h, sw / w))


def evaluate_checkpoint(req: EvalRequest, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the bundle and evaluate it here (CPU, or the GPU when ``use_gpu``)."""
    import torch

    from paal_ray.models.bundle import load_model_bundle

    if req.use_gpu and not torch.cuda.is_available():
        raise EvaluationError("scaling.use_gpu is set but the evaluation task sees no GPU")
    if not req.use_gpu and req.cpus > 1:
        torch.set_num_threads(req.cpus)  # a Ray task gets OMP_NUM_THREADS=1
    bundle = load_model_bundle(req.checkpoint)
    out = evaluate_bundle(bundle, Pool.open(req.pool_path), req.slice_ids, batch_size=req.batch_size,
                          device="cuda" if req.use_gpu else "cpu", mixed_precision=req.mixed_precision, echo=echo)
    out["checkpoint"] = str(req.checkpoint)
    return out


def _task(req: dict) -> dict[str, Any]:
    return evaluate_checkpoint(EvalRequest(**req))


def evaluate_on_ray(req: EvalRequest) -> dict[str, Any]:
    """Run ``evaluate_checkpoint`` as one Ray task with the resources of a training worker."""
    import ray

    from paal_ray.cluster import own_resources

    task = ray.remote(_task).options(num_cpus=max(1, int(req.cpus)), num_gpus=1 if req.use_gpu else 0,
                                     max_retries=0, scheduling_strategy=own_resources())
    return ray.get(task.remote(asdict(req)))
