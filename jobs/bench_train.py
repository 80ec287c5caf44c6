"""CPU training throughput of the light configuration (plain U-Net + AP), in slices/s per worker.

Two figures per image size, at the SAME batch size and augmentation (both printed, as read back
from the configs the two paths ran with):
  bare step   RoundEngine.step in this process on the worker's thread count: augment_batch (when
              augmentation is on) + segmenter + AP forward/backward/update, no Ray;
  Ray round   a real train_round (TorchTrainer, N workers) on a synthetic blob pool: the training
              loop's slices/s and the round's wall-clock.

    python jobs/bench_train.py                      # 64 and 128 px, 1 worker
    python jobs/bench_train.py --sizes 64 --workers 2 --epochs 3
    python jobs/bench_train.py --sizes 64 --no-augment
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_blob_pool(path: Path, *, slices: int, size: int, num_classes: int = 4, seed: int = 0) -> Path:
    """Bright discs on noise, 8 slices a case, one Parquet shard per 256 slices."""
    import json

    import numpy as np

    from paal_ray.data.pool import MANIFEST, SLICES_DIR, encode_slice_row, write_pool_shard

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (path / SLICES_DIR).mkdir(parents=True)
    rows, shard = [], 0
    for i in range(slices):
        label = np.zeros((size, size), np.uint8)
        for k in range(1, num_classes):
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            r = rng.integers(size // 10, size // 5)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
        image = np.clip(label[None] / num_classes + rng.normal(0, 0.1, (1, size, size)), 0, 1).astype(np.float16)
        rows.append(encode_slice_row(case_id=f"case{i // 8:04d}", patient_id=f"case{i // 8:04d}", slice_index=i % 8,
                                     image=image, label=label, num_classes=num_classes))
        if len(rows) == 256 or i == slices - 1:
            write_pool_shard(rows, path / SLICES_DIR / f"part-{shard:05d}.parquet")
            rows, shard = [], shard + 1
    (path / MANIFEST).write_text(json.dumps({
        "num_cases": slices // 8, "num_volumes": slices // 8, "num_slices": slices,
        "class_names": ["background"] + [f"c{k}" for k in range(1, num_classes)],
        "channels": 1, "image_size": size, "layout": "blobs"}))
    return path


def settings(cfg) -> str:
    t, sc = cfg.train, cfg.scaling
    return (f"batch {t.batch_size}, augmentation {'on' if t.augment.enabled else 'off'}, "
            f"{sc.cpus_per_worker} CPU(s) a worker, AP active from epoch {t.ap_silent_epochs}")


def shared_overrides(size: int, batch: int, augment: bool) -> list[str]:
    """What both paths run with: one config, so the two figures measure the same work."""
    return [f"model.image_size={size}", f"train.batch_size={batch}", f"train.augment.enabled={str(augment).lower()}",
            "train.ap_silent_epochs=0"]


def bare_step(size: int, batch: int, steps: int, augment: bool) -> tuple[float, str]:
    import torch

    from paal_ray.config import load_config
    from paal_ray.models.bundle import ModelSpec
    from paal_ray.training import extensions
    from paal_ray.training.augment import augment_batch
    from paal_ray.training.engine import RoundEngine

    cfg = load_config("cpu", ["pool=unused", *shared_overrides(size, batch, augment)])
    torch.set_num_threads(cfg.scaling.cpus_per_worker)  # what a Ray Train worker of this config gets
    eng = RoundEngine(cfg, ModelSpec.from_config(cfg.model, 1, 4), extensions.get(None), torch.device("cpu"))
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 4, (batch, size, size))
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        xb, yb = augment_batch(x, y, cfg.train.augment, gen) if cfg.train.augment.enabled else (x, y)
        eng.step(xb, yb, True)

    one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch / (time.perf_counter() - start), settings(cfg)


def ray_round(pool: Path, storage: Path, size: int, workers: int, epochs: int, samples: int, batch: int,
              augment: bool) -> dict:
    from paal_ray.config import load_config
    from paal_ray.data.pool import Pool
    from paal_ray.training import RoundSpec, train_round

    ids = Pool.open(pool).slice_ids()
    cfg = load_config("cpu", [f"pool={pool}", *shared_overrides(size, batch, augment), f"scaling.num_workers={workers}",
                              f"train.samples_per_epoch={samples}",
                              "schedule.mode=fixed", f"schedule.fixed_warmup={epochs}", "ray.num_cpus=null"])
    spec = RoundSpec(pool_path=str(pool), train_ids=ids[: len(ids) * 3 // 4], val_ids=ids[len(ids) * 3 // 4:],
                     phase="query", storage_path=str(storage), name=f"bench-{size}-{workers}", config=cfg,
                     in_channels=1, num_classes=4, seed=0)
    start = time.perf_counter()
    r = train_round(spec)
    wall = time.perf_counter() - start
    steady = r.epochs[1:] or r.epochs
    loop = sum(e["train_slices_per_s"] for e in steady) / len(steady)
    return {"loop_per_worker": loop / workers, "wall": wall, "slices": epochs * samples, "dice": r.epochs[-1]["val_dice"],
            "settings": settings(cfg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=256, help="slices per epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed bare steps")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="augmentation in both paths (the preset's elastic, rotations, flips, noise)")
    args = ap.parse_args()

    from paal_ray.cluster import connect

    connect(None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for size in args.sizes:
            print(f"[bench] {size} px: bare step ...", flush=True)
            bare, bare_settings = bare_step(size, args.batch, args.steps, args.augment)
            pool = write_blob_pool(Path(tmp) / f"pool{size}", slices=256, size=size)
            print(f"[bench] {size} px: Ray Train round, {args.workers} worker(s) ...", flush=True)
            rr = ray_round(pool, Path(tmp) / "train", size, args.workers, args.epochs, args.samples, args.batch,
                           args.augment)
            rows.append((size, bare, rr))
            print(f"[bench] settings, bare step: {bare_settings}", flush=True)
            print(f"[bench] settings, Ray round: {rr['settings']}, {args.workers} worker(s)", flush=True)
    print(f"\nCPU training throughput, plain U-Net (base 8, depth 3) + AP ResNet-18 (width 16), "
          f"{os.cpu_count()} cores; both paths: {rows[0][2]['settings'] if rows else ''}; "
          f"{args.workers} Ray Train worker(s)")
    print(f"{'size':>6} {'bare step /worker':>18} {'Ray loop /worker':>17} {'round wall s':>13} {'slices':>7} {'val dice':>9}")
    for size, bare, rr in rows:
        print(f"{size:>6} {bare:>16.1f}/s {rr['loop_per_worker']:>15.1f}/s {rr['wall']:>13.1f} {rr['slices']:>7} {rr['dice']:>9.3f}")


if __name__ == "__main__":
    main()
