"""Benchmark: the acceptance search sweep's wall time with and without ASHA early stopping.

The sweep of tests/sweeps/test_search_on_tune.py (phantom pool of 10 cases x 16 slices at 64 px, CPU
preset, 1 query round of 4 epochs of 128 slices, no warm-up, 4 sampled segmenter learning rates, metric auc, one trial at a
time) runs twice on one local Ray (4 logical CPUs, as the tests): with ASHA (grace period 1 round,
reduction factor 2) and without. Prints, for each, the wall time, trials finished and stopped,
epochs trained, and the best configuration; then the saving. Usage:

    python jobs/bench_sweep_asha.py                       # pool and sweeps under /tmp/paal-bench-asha
    python jobs/bench_sweep_asha.py --samples 8 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

# Round 0 trains 4 epochs of 16 steps without LR warm-up (IQ's patience beyond the cap): enough for
# the sampled learning rates to differ in Dice there. With 2-16 steps every trial still predicts
# background alike (the same Dice to 10 digits), and ASHA rightly has nothing to cut.
TINY = ["budget.init_ratio=0.05", "budget.max_ratio=0.1", "budget.rounds=1", "schedule.max_epochs_per_round=4",
        "schedule.iq_patience=10", "schedule.max_final_epochs=1", "train.samples_per_epoch=128",
        "train.batch_size=8", "train.warmup_epochs=0", "train.augment.enabled=false"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/paal-bench-asha", help="pool and sweep folders go here (reused)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from paal_ray.cluster import connect
    from paal_ray.data.ingest import IngestOptions, ingest
    from paal_ray.data.phantoms import PhantomSpec, write_phantoms
    from paal_ray.sweeps.search_report import best_trial, collect_search
    from paal_ray.sweeps.spec import load_sweep
    from paal_ray.sweeps.tuner import run_sweep

    work = Path(args.workdir).absolute()
    connect(None, num_cpus=4, object_store_memory=400_000_000)
    pool = work / "pool"
    if not (pool / "manifest.json").is_file():
        write_phantoms(work / "phantoms", PhantomSpec(cases=10, modalities=1, classes=4, size=64, slices=16, seed=0),
                       layout="msd")
        ingest(work / "phantoms", pool, IngestOptions(layout="msd", size=64))
    rows = []
    for label, asha in (("with ASHA", True), ("without ASHA", False)):
        name = f"search-{'asha' if asha else 'all'}-s{args.samples}-seed{args.seed}"
        search = {"space": {"train.lr": {"loguniform": [1.0e-4, 3.0e-2]}}, "num_samples": args.samples,
                  "metric": "auc", "algorithm": "random", "seed": args.seed}
        if asha:
            search["asha"] = {"grace_period": 1, "reduction_factor": 2}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "base": "cpu", "search": search, "max_concurrent": 1,
                                        "set": [f"pool={pool}", f"workspace={work / 'ws'}", *TINY]}))
        spec = load_sweep(path)
        t0 = time.perf_counter()
        root, failed = run_sweep(spec, echo=lambda m: None, connect=False)
        wall = time.perf_counter() - t0
        trials = collect_search(root, spec)
        epochs = 0
        for t in trials:
            metrics = [json.loads(line) for line in (root / t.name / "metrics.jsonl").read_text().splitlines()]
            epochs += sum(m.get("kind") == "epoch" for m in metrics)
        best = best_trial(trials)
        rows.append((label, wall, sum(t.status == "finished" for t in trials),
                     sum(t.status.startswith("stopped") for t in trials), epochs, best, failed))
        print(f"{label}: {wall:.0f} s", flush=True)
    print(f"\n{'':14} {'wall s':>7} {'finished':>8} {'stopped':>7} {'epochs':>6}  best (auc)")
    for label, wall, fin, stop, epochs, best, failed in rows:
        b = f"{best.name} lr={best.sampled['train.lr']:.3g} ({best.metric:.4f})" if best else "-"
        print(f"{label:14} {wall:7.0f} {fin:8d} {stop:7d} {epochs:6d}  {b}" + (f"  FAILED {failed}" if failed else ""))
    print(f"\nASHA saved {rows[1][1] - rows[0][1]:.0f} s ({100 * (1 - rows[0][1] / rows[1][1]):.0f}% of the wall time)")
    print("note: a re-run reuses the sweep folders (Tuner.restore: nothing left to run); use a new --workdir")


if __name__ == "__main__":
    main()
