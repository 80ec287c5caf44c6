"""Does a query-phase setting leave the background-only / one-structure plateau in round 0?

Trains round 0 of finished (or started) run folders on its own, in this process (no Ray): the run's
initial labelled set, its validation fold and its round-0 training seed, the run's config with
``--set`` overrides (e.g. ``train.lr=0.01``), for ``--epochs`` epochs, and prints the validation
Dice (mean foreground and per class) every ``--every`` epochs, one JSON line per (run, setting).

    python jobs/round0_probe.py /work/exp/ws6/acdc-comparison/fold-{0,1,2}_name-paal --epochs 30 --threads 1 \\
        --variant train.channels_last=true,train.lr=0.001 --variant train.channels_last=true,train.lr=0.003 \\
        --variant train.channels_last=true,train.lr=0.01

(``train.channels_last=true`` for runs made before that field existed: they trained channels-last.)

Session 10 used it (as /work/exp/lr_probe2.py, the same training) to choose the query-phase lr of
jobs/sweeps/acdc-comparison-qlr.yaml (docs/results/acdc-paper-lr-observations.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def probe(run: Path, overrides: list[str], epochs: int, every: int) -> dict:
    from final_noise import _slices, cpu_engine  # jobs/, this script's folder, is on sys.path

    from paal_ray.config import load_config
    from paal_ray.data.pool import Pool
    from paal_ray.runs.machine import _SEED_TRAIN  # round r's training seed, as a run draws it
    from paal_ray.runs.splits import derive_seed

    cfg = load_config(run / "config.yaml", overrides)
    split = json.loads((run / "split.json").read_text())
    initial = json.loads((run / "labelled.json").read_text())["initial"]
    pool = Pool.open(cfg.pool)
    size = cfg.model.image_size
    train, val = _slices(pool, initial, size), _slices(pool, split["val_ids"], size)
    eng = cpu_engine(cfg, pool, derive_seed(cfg.seed, cfg.cv.fold, _SEED_TRAIN, 0))
    data, curve, t0 = eng.to_device(train), [], time.time()
    for epoch in range(epochs):
        eng.train_epoch(data, epoch)
        if (epoch + 1) % every == 0:
            v = eng.validate(val)
            curve.append([epoch + 1, round(v["val_dice"], 4), [round(x, 3) for x in v["val_dice_per_class"][1:]]])
    return {"run": str(run), "set": overrides, "labelled": len(initial), "curve": curve,
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml, split.json, labelled.json)")
    ap.add_argument("--variant", action="append", default=[],
                    help="one setting to probe, as --set overrides joined by commas (repeatable; default: as the run)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--every", type=int, default=3, help="validate every this many epochs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also append each JSON line here")
    args = ap.parse_args()
    for run in args.runs:
        for name in ("config.yaml", "split.json", "labelled.json"):
            if not (run / name).is_file():
                raise SystemExit(f"{run / name}: missing (not a started run folder)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for run in args.runs:
        for variant in args.variant or [""]:
            line = json.dumps(probe(run, [o for o in variant.split(",") if o], args.epochs, args.every))
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
