"""A run's held-out test set: chosen at init, evaluated once the final model is trained.

The test set is either patients held out of the run's own pool (``test.holdout_patients``, drawn
with ``test.seed``; ``runs/splits.py``) or every slice of a separate labelled pool (``test.pool``).
At init it is recorded in ``RUN/split.json`` under ``"test"``: ``source`` ("holdout" or "pool"),
``pool``, ``patients`` and ``slice_ids``. Its slices never enter training, validation or selection.

After the final phase the run's final model (the checkpoint of the ``"final"`` record in
metrics.jsonl) is evaluated on it in a Ray task and the result written to ``RUN/test.json``
(atomically, once: a resumed run reuses it). Its format (``format: 1``), all Dice in [0, 1]::

    source, pool, patients, test_seed   the test set, as in split.json (test_seed: holdout only)
    checkpoint                          the model evaluated; val_dice: its final validation Dice
    class_names, image_size, num_volumes, num_slices
    dice                    mean foreground Dice, dataset-level (TP/FP/FN summed over all slices)
    dice_per_class          the same per class, background first (null: class never seen)
    volume_dice             {mean, std, n}: per-volume mean foreground Dice over the n volumes
    hd95                    {mean, std, n}: per-volume mean foreground HD95, in hd95_unit
    classes                 {name: {dice, volume_dice {mean, std, n}, hd95 {mean, std, n},
                                    missed_volumes, spurious_volumes}} for each foreground class
    volumes                 [{case_id, patient_id, slices, dice {name: v}, hd95 {name: v}}]
    seconds, device

How empty classes are scored and aggregated is in ``evaluation/metrics.py``. metrics.jsonl gets
one ``"test"`` record with the headline numbers under the same names (``dice``,
``dice_per_class``, ``volume_dice`` and ``volume_dice_std``, ``hd95`` and ``hd95_std``, ``patients``,
``slices``), the final record's ``val_dice`` beside them, and the ``checkpoint``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from paal_ray.atomic import atomic_write_json
from paal_ray.data.pool import Pool
from paal_ray.evaluation.predict import EvalRequest, EvaluationError, labelled_slices

TEST_JSON = "test.json"
FORMAT = 1

EvaluateFn = Callable[[EvalRequest], dict]


def choose_test_set(cfg, pool: Pool, index: pa.Table,
                    echo: Callable[[str], None] = print) -> tuple[pa.Table, dict[str, Any] | None]:
    """(the index the folds split, split.json's "test" entry or None) for a run's config."""
    from paal_ray.runs.splits import hold_out_test_patients

    t = cfg.test
    if t.holdout_patients:
        held = hold_out_test_patients(index, t.holdout_patients, t.seed, min_left=cfg.cv.num_folds)
        labelled_slices(pool, held.test_ids)  # fail now, not after the whole run
        return held.rest, {"source": "holdout", "pool": str(pool.path), "test_seed": t.seed,
                           "patients": held.test_patients, "slice_ids": held.test_ids}
    if t.pool:
        test_pool = Pool.open(t.pool)
        if test_pool.path == pool.path:
            raise EvaluationError(f"test.pool is the run's own pool ({pool.path}): its patients are trained on; "
                                  f"use test.holdout_patients to hold some out")
        if test_pool.channels != pool.channels or test_pool.class_names != pool.class_names:
            raise EvaluationError(f"test.pool {test_pool.path}: {test_pool.channels} channels, classes "
                                  f"{test_pool.class_names}; the run's pool has {pool.channels}, {pool.class_names}")
        ids = labelled_slices(test_pool)
        tindex = test_pool.index(["patient_id"])
        patients = sorted(set(tindex.column("patient_id").to_pylist()))
        shared = sorted(set(patients) & set(index.column("patient_id").to_pylist()))
        if shared:
            echo(f"[init] warning: test.pool shares patient ids with the run's pool ({shared[:5]}); if they are "
                 f"the same patients, the test set is not unseen")
        return index, {"source": "pool", "pool": str(test_pool.path), "patients": patients, "slice_ids": ids}
    return index, None


def evaluate_final_model(root: Path, test: dict[str, Any], final: dict[str, Any], cfg,
                         evaluate: EvaluateFn) -> dict[str, Any]:
    """RUN/test.json for the final record's checkpoint: read back if written, else evaluated now."""
    out = Path(root) / TEST_JSON
    checkpoint = final.get("checkpoint")
    if not checkpoint:
        raise EvaluationError(f"{root}/metrics.jsonl: the final record names no checkpoint to evaluate")
    if out.is_file():
        done = json.loads(out.read_text())
        if done.get("checkpoint") == str(checkpoint):
            return done
    req = EvalRequest(checkpoint=str(checkpoint), pool_path=test["pool"], slice_ids=list(test["slice_ids"]),
                      use_gpu=bool(cfg.scaling.use_gpu), cpus=int(cfg.scaling.cpus_per_worker),
                      batch_size=int(cfg.train.val_batch_size), mixed_precision=cfg.train.mixed_precision)
    metrics = evaluate(req)
    result = {"format": FORMAT, "source": test["source"], "pool": test["pool"], "patients": test["patients"],
              **({"test_seed": test["test_seed"]} if "test_seed" in test else {}),
              "checkpoint": str(checkpoint), "val_dice": final.get("val_dice"),
              **{k: v for k, v in metrics.items() if k not in ("pool", "patients", "checkpoint")}}
    atomic_write_json(out, result)
    return result


def metrics_record(result: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """The metrics.jsonl record of a test evaluation (kind "test")."""
    vd, hd = result.get("volume_dice") or {}, result.get("hd95") or {}
    return {"kind": "test", "round": final.get("round"), "epoch": final.get("epoch"),
            "labeled_count": final.get("labeled_count"), "dice": result.get("dice"),
            "dice_per_class": result.get("dice_per_class"), "volume_dice": vd.get("mean"),
            "volume_dice_std": vd.get("std"), "hd95": hd.get("mean"), "hd95_std": hd.get("std"),
            "patients": len(result.get("patients") or []), "slices": result.get("num_slices"),
            "val_dice": final.get("val_dice"), "checkpoint": result.get("checkpoint")}


def evaluate_request(root: str | Path, pool: str | Path | None = None,
                     checkpoint: str | Path | None = None) -> tuple[Any, EvalRequest]:
    """(the run's config, the request) for `paal evaluate RUN [--pool POOL] [--checkpoint CKPT]`:
    by default the run's final model (the checkpoint of its "final" record) on the run's test set."""
    from paal_ray.atomic import read_jsonl
    from paal_ray.config import load_config
    from paal_ray.runs.state import RunPaths, RunStateError

    paths = RunPaths(Path(root).absolute())
    if not paths.config.is_file():
        raise RunStateError(f"{paths.config}: missing; {paths.root} is not a run folder")
    cfg = load_config(paths.config)
    if checkpoint is None:
        finals = [m for m in read_jsonl(paths.metrics) if m.get("kind") == "final" and m.get("checkpoint")]
        if not finals:
            raise RunStateError(f"{paths.root}: the run has no final model yet (no 'final' record in "
                                f"{paths.metrics.name}); pass --checkpoint CKPT to evaluate another one")
        checkpoint = finals[-1]["checkpoint"]
    if pool is None:
        test = json.loads(paths.split.read_text()).get("test") if paths.split.is_file() else None
        if not test:
            raise EvaluationError(f"{paths.root}: the run has no test set; pass --pool POOL (a labelled pool)")
        pool, ids = test["pool"], list(test["slice_ids"])
    else:
        ids = labelled_slices(Pool.open(pool))
    return cfg, EvalRequest(checkpoint=str(checkpoint), pool_path=str(Path(pool).absolute()), slice_ids=ids,
                            use_gpu=bool(cfg.scaling.use_gpu), cpus=int(cfg.scaling.cpus_per_worker),
                            batch_size=int(cfg.train.val_batch_size), mixed_precision=cfg.train.mixed_precision)
