"""GPU benchmark for the device machine (one H100/H200): a full Ray Train round vs the bare step.

In one run (about 2 minutes on an H200):
  1. writes a synthetic labelled pool to local disk (default 1,024 training + 128 validation slices
     of 4 x 256 x 256 float16, the Brain Tumour format, 4 classes);
  2. bare model step: RoundEngine.step (ResNet-50 U-Net + AP ResNet-18, bf16 autocast,
     channels_last, batch 64) on a batch already on the GPU: no augmentation, no data, no Ray;
     the anchor is 1,272 slices/s on one H200 (../shared/reference/performance-anchors.md);
  3. the full round: train_round() on Ray Train (TorchTrainer, 1 GPU worker): Ray Data read,
     decode, slices held on the GPU, augmentation on the GPU, segmenter + AP steps, validation and
     a checkpoint (model.pt + train_state.pt, ~0.5 GB) after every epoch.
Prints a table at the end. Goal: the round's steady state (epoch 2 on, validation and
checkpoints included) >= 1,100 slices/s on an H200.

    python jobs/bench_train_gpu.py [--epochs 3] [--samples-per-epoch 8192] [--workdir /tmp/paal-train-bench]

PYTHONPATH must reach the repo (and the carried site-packages holding Ray and smp).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    RESULTS.append((name, value))
    print(f"RESULT {name}: {value}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/paal-train-bench")
    p.add_argument("--train-slices", type=int, default=1024)
    p.add_argument("--val-slices", type=int, default=128)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples-per-epoch", type=int, default=8192)
    p.add_argument("--bare-steps", type=int, default=30)
    p.add_argument("--cpus-per-worker", type=int, default=8)
    p.add_argument("--skip", default="", help="comma list of parts to skip: bare,round")
    return p.parse_args(argv)


def write_pool(path: Path, n: int, size: int, channels: int, classes: int) -> list[str]:
    """Discs of each class on noise; one Parquet shard per 128 slices."""
    import json

    import numpy as np

    from paal_ray.data.pool import MANIFEST, SLICES_DIR, encode_slice_row, write_pool_shard

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (path / SLICES_DIR).mkdir(parents=True)
    rows, ids = [], []
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        for k in range(1, classes):
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            r = rng.integers(size // 12, size // 5)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
        noise = rng.normal(0, 0.1, (channels, size, size)).astype(np.float32)
        image = np.clip(label[None] / classes + noise, 0, 1).astype(np.float16)
        row = encode_slice_row(case_id=f"case{i // 64:04d}", patient_id=f"case{i // 64:04d}", slice_index=i % 64,
                               image=image, label=label, num_classes=classes)
        rows.append(row)
        ids.append(row["slice_id"])
        if len(rows) == 128 or i == n - 1:
            write_pool_shard(rows, path / SLICES_DIR / f"part-{i // 128:05d}.parquet")
            rows = []
    (path / MANIFEST).write_text(json.dumps({
        "num_cases": (n + 63) // 64, "num_volumes": (n + 63) // 64, "num_slices": n,
        "class_names": ["background"] + [f"c{k}" for k in range(1, classes)],
        "channels": channels, "image_size": size, "layout": "synthetic"}))
    return ids


def config(args, pool: Path):
    from paal_ray.config import load_config

    return load_config("paper", [
        f"pool={pool}", f"model.encoder={args.encoder}", "model.image_size=null",
        f"train.batch_size={args.batch_size}", f"train.samples_per_epoch={args.samples_per_epoch}",
        "train.ap_silent_epochs=0", "train.warmup_epochs=1", "train.mixed_precision=auto",
        "schedule.mode=fixed", f"schedule.fixed_warmup={args.epochs}",
        "scaling.use_gpu=true", "scaling.num_workers=1", f"scaling.cpus_per_worker={args.cpus_per_worker}",
        "scaling.max_failures=0",
    ])


def bare_step(args, cfg) -> None:
    import torch

    from paal_ray.models.bundle import ModelSpec
    from paal_ray.training import extensions
    from paal_ray.training.engine import RoundEngine

    dev = torch.device("cuda")
    eng = RoundEngine(cfg, ModelSpec.from_config(cfg.model, args.channels, args.classes), extensions.get(None), dev)
    x = torch.rand(args.batch_size, args.channels, args.size, args.size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size, args.size, args.size), device=dev)
    for _ in range(5):
        eng.step(x, y, True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.bare_steps):
        eng.step(x, y, True)
    torch.cuda.synchronize()
    secs = time.perf_counter() - start
    report("bare step (segmenter + AP, bf16, no data, no Ray)", f"{args.bare_steps * args.batch_size / secs:,.0f} slices/s")
    report("bare step peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    del eng, x, y
    torch.cuda.empty_cache()


def full_round(args, cfg, pool: Path, ids: list[str]) -> None:
    from paal_ray.cluster import connect
    from paal_ray.training import RoundSpec, train_round

    connect(None, num_cpus=os.cpu_count(), object_store_memory=4_000_000_000)
    spec = RoundSpec(pool_path=str(pool), train_ids=ids[:args.train_slices], val_ids=ids[args.train_slices:],
                     phase="query", storage_path=str(Path(args.workdir, "train").absolute()), name="bench-round",
                     config=cfg, in_channels=args.channels, num_classes=args.classes, seed=0)
    start = time.perf_counter()
    r = train_round(spec)
    wall = time.perf_counter() - start
    eps = r.epochs
    for e in eps:
        print(f"  epoch {e['global_epoch']}: loop {e['train_slices_per_s']:,.0f} slices/s, val dice {e['val_dice']:.3f}, "
              f"peak {e['peak_gpu_mem_gb'] or 0:.1f} GiB", flush=True)
    steady = eps[1:] or eps
    report("round: training loop, epochs 2+ (augmentation on GPU included)",
           f"{sum(e['train_slices_per_s'] for e in steady) / len(steady):,.0f} slices/s")
    if len(eps) > 1:
        span = eps[-1]["ended_at"] - eps[0]["ended_at"]
        n = args.samples_per_epoch * (len(eps) - 1)
        report("round: steady state incl. validation + per-epoch checkpoint", f"{n / span:,.0f} slices/s")
    total = args.samples_per_epoch * len(eps)
    report("round: whole train_round() wall clock (Ray start, read, build, all epochs)",
           f"{wall:.1f} s for {total:,} slices = {total / wall:,.0f} slices/s")
    report("round: peak GPU memory (worker)", f"{max(e['peak_gpu_mem_gb'] or 0 for e in eps):.1f} GiB")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_train_gpu: no CUDA device; run it on the GPU machine")
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    pool = work / "pool"
    ids = write_pool(pool, args.train_slices + args.val_slices, args.size, args.channels, args.classes)
    print(f"[bench] pool written in {time.perf_counter() - t0:.1f} s ({torch.cuda.get_device_name()})", flush=True)
    cfg = config(args, pool)
    if "bare" not in skip:
        bare_step(args, cfg)
    if "round" not in skip:
        full_round(args, cfg, pool, ids)
    print(f"\nTraining throughput, {args.encoder} U-Net + AP, {args.channels}x{args.size}x{args.size}, "
          f"batch {args.batch_size}, {torch.cuda.get_device_name()} (anchor: bare 1,272 slices/s on H200; "
          f"goal: round >= 1,100)")
    for name, value in RESULTS:
        print(f"  {name:<75} {value}")
    print(f"  total bench time: {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
