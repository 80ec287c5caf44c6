"""What a training round costs beyond its epochs' compute: on a local Ray, a round of 1 tiny epoch
(after a first round that starts Ray), then one of N: the round's start-up, and the per-epoch cost
of reporting to Ray Train.

Epochs are 16 slices of 32 x 32 (a few milliseconds of compute), so the difference between the two
rounds, per epoch, is what Ray Train's reporting adds. Its controller polls the workers every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` seconds and takes one report a poll, and a worker's second
unread report blocks it: with Ray's 2 s default, epochs shorter than that ran one per 2 s. paal-ray
sets 0.1 s (``paal_ray.cluster.worker_env``); ``--interval`` measures another value.

    python jobs/bench_round_overhead.py --epochs 20
    python jobs/bench_round_overhead.py --epochs 20 --interval 2   # Ray's default
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--epochs", type=int, default=20, help="epochs of the second round (default 20)")
    p.add_argument("--interval", type=float, default=None,
                   help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for this run (default: paal-ray's)")
    p.add_argument("--num-cpus", type=int, default=2)
    a = p.parse_args(argv)
    if a.interval is not None:  # before Ray starts: the local raylet and its workers inherit it
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(a.interval)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runs"))
    from pool_builders import make_blob_pool  # the tests' 6-case blob pool: nothing to download

    from paal_ray.cluster import worker_env
    from paal_ray.config import load_config
    from paal_ray.data.pool import Pool
    from paal_ray.training import RoundSpec, train_round

    tmp = Path(tempfile.mkdtemp(prefix="bench-round-"))
    try:
        pool = make_blob_pool(tmp / "pool")
        ids = Pool.open(pool).slice_ids()
        print(f"poll interval: {worker_env()['RAY_TRAIN_HEALTH_CHECK_INTERVAL_S']} s", flush=True)
        took = {}
        for name, epochs in (("warm-up", 1), ("one", 1), ("many", a.epochs)):
            cfg = load_config("cpu", [f"pool={pool}", "model.image_size=32", "train.batch_size=16",
                                      "train.samples_per_epoch=16", "schedule.mode=fixed", "schedule.final_init=scratch",
                                      f"schedule.final_epochs={epochs}", "schedule.final_warmup_epochs=1",
                                      "schedule.final_val_every=1000", f"ray.num_cpus={a.num_cpus}"])
            spec = RoundSpec(pool_path=str(pool), train_ids=ids[:32], val_ids=ids[32:], phase="final",
                             storage_path=str(tmp / "train"), name=name, config=cfg, in_channels=1, num_classes=3, seed=0)
            t0 = time.perf_counter()
            train_round(spec)
            took[name] = time.perf_counter() - t0
            print(f"{name} round, {epochs} epoch(s): {took[name]:.1f} s", flush=True)
        print(f"round start-up and end: {took['one']:.1f} s; per epoch: "
              f"{(took['many'] - took['one']) / max(a.epochs - 1, 1):.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
