"""How much of a run's final Dice is its labelled set, and how much the luck of one training?

Retrains the final phase of finished run folders in this process (no Ray; the run's own config,
labelled set, validation and test slices), once per seed, and prints the last epoch's validation and
held-out test Dice per class. Seed k draws the fresh weights as a run with ``seed: k`` would, so
``--seeds 0`` on a seed-0 run reproduces that run's final model (add ``--set train.channels_last=true``
for runs made before that field existed: they trained channels-last on CPU). ``--set`` changes the
final phase (a variant: ``--set schedule.final_lr=0.003`` its peak learning rate; for runs made
before that field, ``--set train.lr=0.003`` does the same here, where only the final phase trains);
``--epochs`` shortens it for a quick look.

    python jobs/final_noise.py /work/exp/ws6/acdc-comparison/fold-2_name-paal --seeds 0,1,2 \\
        --set train.channels_last=true --out /work/exp/final-noise.jsonl

Each result is one JSON line (appended to ``--out`` as soon as it is known, so a long sweep of seeds
can be stopped and read); finished (run, seed, settings) lines are skipped when run again.
``--jobs 2`` trains two at once, one thread each: on 2 CPU cores two one-thread trainings of the
acdc-cpu final phase (80 epochs) took 485-530 s each where one two-thread training takes ~7 minutes
(about 1.6x the throughput).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


def variant(overrides: list[str]) -> tuple[str, ...]:
    """What a retraining changed, less the thread count (where the work runs, not what is trained)."""
    return tuple(o for o in overrides if not o.startswith("scaling.train_threads="))


def _slices(pool, ids: list[str], size: int):
    from paal_ray.data.pool import IMAGE_COLUMNS, LABEL_COLUMNS, decode_images, decode_labels
    from paal_ray.training.loop import _stack

    t = pool.read_slices(ids, [*IMAGE_COLUMNS, *LABEL_COLUMNS])
    batch = {c: t.column(c).to_pylist() for c in t.column_names}
    # _stack orders by slice id, as a round does: the same batches as the run's final phase
    return _stack([str(i) for i in batch["slice_id"]], list(decode_images(batch, size)),
                  list(decode_labels(batch, size).astype("uint8")))


def cpu_engine(cfg, pool, seed: int):
    """The training engine every Ray Train worker runs, here in this process on the CPU (no
    extension): what a round or final phase of the run trains, from ``seed``'s weights."""
    import torch

    from paal_ray.models.bundle import ModelSpec
    from paal_ray.training import extensions
    from paal_ray.training.engine import RoundEngine

    return RoundEngine(cfg, ModelSpec.from_config(cfg.model, pool.channels, pool.num_classes), extensions.get(None),
                       torch.device("cpu"), seed=seed)


def retrain(run: Path, seed: int, overrides: list[str], epochs: int | None, val_every: int,
            threads: int | None = None) -> dict:
    import torch

    from paal_ray.config import load_config
    from paal_ray.data.pool import Pool
    from paal_ray.runs.machine import _SEED_FINAL  # the final phase's fresh weights, as a run draws them
    from paal_ray.runs.splits import derive_seed

    cfg = load_config(run / "config.yaml", overrides)
    sc, size = cfg.schedule, cfg.model.image_size
    if sc.final_epochs is None:
        raise SystemExit(f"{run}/config.yaml: schedule.final_epochs is not set; this retrains fixed-length final phases only")
    split = json.loads((run / "split.json").read_text())
    labelled = json.loads((run / "labelled.json").read_text())["labelled"]
    pool = Pool.open(cfg.pool)
    train, val = _slices(pool, labelled, size), _slices(pool, split["val_ids"], size)
    test_ids = (split.get("test") or {}).get("slice_ids") or []
    test = _slices(pool, test_ids, size) if test_ids else None
    if threads or cfg.scaling.train_threads:
        torch.set_num_threads(threads or cfg.scaling.train_threads)
    n_epochs = epochs or sc.final_epochs
    eng = cpu_engine(cfg, pool, derive_seed(seed, cfg.cv.fold, _SEED_FINAL))
    eng.lr_window = (0, sc.final_warmup_epochs, sc.final_epochs)
    data, curve, t0 = eng.to_device(train), [], time.time()
    for g in range(n_epochs):
        eng.train_epoch(data, g)
        if (g + 1) % val_every == 0 and g + 1 < n_epochs:
            v = eng.validate(val)
            curve.append([g + 1, round(v["val_dice"], 4)])
            print(f"  {run.name} seed {seed}: epoch {g + 1}/{n_epochs} val Dice {v['val_dice']:.4f} (fg classes "
                  + " ".join(f"{x:.3f}" for x in v["val_dice_per_class"][1:]) + f") {time.time() - t0:.0f} s", flush=True)
    va = eng.validate(val)
    out = {"run": str(run), "seed": seed, "set": overrides, "epochs": n_epochs, "labelled": len(labelled),
           "val_dice": va["val_dice"], "val_per_class": va["val_dice_per_class"], "curve": curve,
           "seconds": round(time.time() - t0, 1)}
    if test is not None:
        te = eng.validate(test)
        out.update(test_dice=te["val_dice"], test_per_class=te["val_dice_per_class"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (config.yaml, split.json, labelled.json)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds for the fresh weights (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of schedule.final_epochs")
    p.add_argument("--val-every", type=int, default=10, help="validate every k epochs for the curve (default 10)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, in processes sharing the cores (default 1)")
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per result here; done lines are skipped")
    a = p.parse_args(argv)
    from paal_ray.config import load_config
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    done = set()
    if a.out and a.out.is_file():
        for line in a.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["run"], r["seed"], variant(r["set"]), r["epochs"]))
    todo = []
    for run in a.runs:
        if not (run / "labelled.json").is_file():
            print(f"{run}: no labelled.json (not a finished run folder); skipped", file=sys.stderr)
            continue
        # done = the same run, seed, settings and epochs (a short --epochs look is not a full retrain)
        epochs = a.epochs or load_config(run / "config.yaml", a.overrides).schedule.final_epochs
        todo += [(run, seed) for seed in seeds if (str(run), seed, variant(a.overrides), epochs) not in done]
    print(f"{len(todo)} trainings to run ({a.jobs} at a time)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None
    if a.jobs == 1:
        results = (retrain(run, seed, a.overrides, a.epochs, a.val_every) for run, seed in todo)
    else:  # processes, not threads: each training owns its torch thread pool and its RNG state
        pool = ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(retrain, run, seed, a.overrides, a.epochs, a.val_every, threads) for run, seed in todo]
        results = (f.result() for f in as_completed(futures))
    for r in results:
        per = " ".join(f"{x:.3f}" for x in r["val_per_class"][1:])
        test = f" test {r['test_dice']:.4f}" if "test_dice" in r else ""
        print(f"{Path(r['run']).name} seed {r['seed']} {' '.join(a.overrides)}: val {r['val_dice']:.4f} "
              f"(fg classes {per}){test} in {r['seconds']:.0f} s; curve {r['curve']}", flush=True)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
