"""CPU benchmark: a full PAAL query on Ray Data vs a plain single-process PyTorch loop.

Writes a phantom-like pool with the Brain Tumour slice count (66,512 slices, 4 x 64 x 64 float16,
many Parquet shards) and a random-init light model bundle (plain U-Net + ResNet-18 AP), then times:

  ray    run_query (Ray Data actor pool scoring, KMeans, weighted polling, selection table)
  plain  the same work in one process: read each shard with pyarrow, the same ScoreComputer,
         the same KMeans and polling, the same table writer

and prints slices/s of both, their ratio (goal >= 0.8), peak RSS of the driver and of the Ray
workers, and the driver's memory growth for a 10,000-slice query vs the full pool (must not grow
with the pool: only small score columns come back). Usage:

    python jobs/bench_query.py                       # full size (several minutes on 2 cores)
    python jobs/bench_query.py --slices 8000 --small 2000   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/paal-bench-query", help="pool, checkpoint and tables go here")
    p.add_argument("--slices", type=int, default=66_512, help="pool size (Brain Tumour: 66,512)")
    p.add_argument("--small", type=int, default=10_000, help="slices of the small query (driver memory check)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--shard-slices", type=int, default=512, help="slices per Parquet shard")
    p.add_argument("--labelled-frac", type=float, default=0.05, help="part of the pool already labelled")
    p.add_argument("--budget", type=int, default=299, help="b (Brain Tumour 5%% -> 0.5%% init, 10 rounds: 299)")
    p.add_argument("--strategy", default="paal")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (scoring actor and plain loop)")
    p.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default: cores + 2)")
    p.add_argument("--rewrite", action="store_true", help="rewrite the pool even if it exists")
    p.add_argument("--skip-plain", action="store_true")
    return p.parse_args(argv)


# -- fixtures: pool and model ----------------------------------------------------------------------
def write_pool(path: Path, n: int, size: int, channels: int, classes: int, shard_slices: int, seed: int = 0) -> None:
    """Slices of smooth random blobs plus noise, written with the product's own row encoder."""
    from paal_ray.data.pool import MANIFEST, SLICES_DIR, encode_slice_row, write_pool_shard

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    bank = []  # 64 distinct base images; each slice adds its own noise
    for _ in range(64):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.float32)
        bank.append(np.stack([disc * rng.uniform(0.3, 1.0) for _ in range(channels)]))
    (path / SLICES_DIR).mkdir(parents=True, exist_ok=True)
    per_case = 155  # BraTS volumes have 155 slices
    t0 = time.perf_counter()
    for shard, start in enumerate(range(0, n, shard_slices)):
        rows = []
        for i in range(start, min(start + shard_slices, n)):
            img = bank[i % 64] + rng.normal(0, 0.05, (channels, size, size)).astype(np.float32)
            case = f"case{i // per_case:04d}"
            rows.append(encode_slice_row(case_id=case, patient_id=case, slice_index=i % per_case,
                                         image=np.clip(img, 0, 1).astype(np.float16), label=None, num_classes=classes))
        write_pool_shard(rows, path / SLICES_DIR / f"part-{shard:05d}.parquet")
        if shard % 20 == 0:
            print(f"  pool: {min(start + shard_slices, n):,} / {n:,} slices ({time.perf_counter() - t0:.0f}s)", flush=True)
    (path / MANIFEST).write_text(json.dumps({
        "num_cases": (n + per_case - 1) // per_case, "num_slices": n, "channels": channels, "image_size": size,
        "class_names": ["background"] + [f"c{k}" for k in range(1, classes)], "layout": "bench",
    }))


def write_bundle(path: Path, channels: int, classes: int):
    import torch

    from paal_ray.models import ModelSpec, save_model_bundle

    torch.manual_seed(0)
    spec = ModelSpec(in_channels=channels, num_classes=classes, encoder="plain_unet", encoder_depth=4, base_width=8)
    seg, ap = spec.build()
    save_model_bundle(path, spec, seg, ap)


# -- memory sampling ---------------------------------------------------------------------------------
class MemorySampler:
    """Peak RSS of this process and of each of its descendant processes (the local Ray's workers),
    sampled every 0.2 s. Only our own process tree is looked at: others may run Ray on this machine."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.driver_peak = 0
        self.worker_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self):
        self.driver_peak = max(self.driver_peak, self.me.memory_info().rss)
        for child in self.me.children(recursive=True):
            try:
                name = " ".join(child.cmdline()[:1])
                rss = child.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            if name.startswith("ray::"):
                key = name.split()[0]
                self.worker_peak[key] = max(self.worker_peak.get(key, 0), rss)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


# -- the two ways of running the query ---------------------------------------------------------------
def ray_query(args, pool: Path, ckpt: Path, unlabelled: list[str], labelled: list[str], out: Path):
    from paal_ray.config import ScalingSettings, StrategyConfig
    from paal_ray.query import QueryRequest, run_query

    req = QueryRequest(
        pool_path=str(pool), unlabelled_ids=unlabelled, labelled_ids=labelled, checkpoint=str(ckpt),
        strategy=StrategyConfig(name=args.strategy), budget=args.budget, seed=0, out_path=str(out),
        scaling=ScalingSettings(score_actors=args.actors, score_batch_size=args.batch_size, score_threads=args.threads),
    )
    t0 = time.perf_counter()
    with MemorySampler() as mem:
        res = run_query(req)
    return time.perf_counter() - t0, res, mem


def plain_query(args, pool_path: Path, ckpt: Path, unlabelled: list[str], labelled: list[str], out: Path):
    """The same work with no Ray: pyarrow reads shard by shard, one ScoreComputer, same selection."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from paal_ray.config import StrategyConfig
    from paal_ray.data.pool import Pool
    from paal_ray.models import load_model_bundle
    from paal_ray.query.api import QueryRequest
    from paal_ray.query.engine import _write_table
    from paal_ray.query.scoring import IMAGE_COLUMNS, ScoreComputer, ScoreOptions, fixed_arrays
    from paal_ray.query.strategies import QueryContext, get

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with MemorySampler() as mem:
        strategy = get(args.strategy)
        pool = Pool.open(pool_path)
        comp = ScoreComputer(load_model_bundle(ckpt), ScoreOptions(needs=strategy.needs, seed=0))
        wanted = pa.array(sorted(unlabelled))
        ids, parts = [], {k: [] for k in strategy.needs}
        for f in pool.files:
            table = pq.read_table(f, columns=IMAGE_COLUMNS)
            table = table.filter(pc.is_in(table.column("slice_id"), value_set=wanted))
            for s in range(0, table.num_rows, args.batch_size):
                batch = table.slice(s, args.batch_size)
                bids = batch.column("slice_id").to_pylist()
                scores = comp.score(fixed_arrays(batch, "image", "image_dtype", "image_shape"), bids)
                ids.extend(bids)
                for k, v in scores.items():
                    parts[k].append(v)
        order = np.argsort(np.asarray(ids))
        scores = {k: np.concatenate(v)[order] for k, v in parts.items()}
        candidates = sorted(ids)
        ctx = QueryContext(num_classes=pool.num_classes, seed=0, num_candidates=len(candidates))
        sel = strategy.select(scores, args.budget, np.random.default_rng(0), ctx)
        req = QueryRequest(pool_path=str(pool_path), unlabelled_ids=[], labelled_ids=[], checkpoint=str(ckpt),
                           strategy=StrategyConfig(name=args.strategy), budget=args.budget, seed=0, out_path=str(out))
        _write_table(req, strategy, sel, [candidates[i] for i in sel.indices], scores, {}, ctx.backend_used)
    return time.perf_counter() - t0, [candidates[i] for i in sel.indices], mem


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.workdir)
    pool, ckpt = work / f"pool-{args.slices}-{args.size}", work / "ckpt"
    if args.rewrite or not (pool / "manifest.json").is_file():
        import shutil

        shutil.rmtree(pool, ignore_errors=True)
        print(f"writing a {args.slices:,}-slice pool to {pool} ...", flush=True)
        write_pool(pool, args.slices, args.size, args.channels, args.classes, args.shard_slices)
    write_bundle(ckpt, args.channels, args.classes)

    from paal_ray.cluster import connect
    from paal_ray.data.pool import Pool

    ids = Pool.open(pool).slice_ids()
    rng = np.random.default_rng(0)
    is_lab = np.zeros(len(ids), bool)
    is_lab[rng.choice(len(ids), int(args.labelled_frac * len(ids)), replace=False)] = True
    labelled = [s for s, m in zip(ids, is_lab, strict=True) if m]
    unlabelled = [s for s, m in zip(ids, is_lab, strict=True) if not m]
    image_bytes = len(unlabelled) * args.channels * args.size * args.size * 2
    print(f"pool: {len(ids):,} slices, {len(unlabelled):,} unlabelled ({mib(image_bytes)} of image data)", flush=True)

    results = {}
    if not args.skip_plain:
        print("plain PyTorch loop ...", flush=True)
        secs, plain_sel, mem = plain_query(args, pool, ckpt, unlabelled, labelled, work / "sel-plain.parquet")
        results["plain"] = (secs, mem.driver_peak)
        print(f"  {secs:.1f}s, {len(unlabelled) / secs:,.0f} slices/s, peak RSS {mib(mem.driver_peak)}", flush=True)

    connect(None, num_cpus=args.ray_cpus or (os.cpu_count() or 1) + 2, object_store_memory=1_000_000_000)
    import psutil

    base = psutil.Process().memory_info().rss
    print(f"ray: small query ({args.small:,} slices) ...", flush=True)
    s_secs, s_res, s_mem = ray_query(args, pool, ckpt, unlabelled[: args.small], labelled, work / "sel-small.parquet")
    print(f"  {s_secs:.1f}s, driver peak {mib(s_mem.driver_peak)}", flush=True)
    print(f"ray: full query ({len(unlabelled):,} slices) ...", flush=True)
    secs, res, mem = ray_query(args, pool, ckpt, unlabelled, labelled, work / "sel-ray.parquet")
    print(f"  {secs:.1f}s, timings {json.dumps({k: round(v, 2) for k, v in res.timings.items()})}", flush=True)

    n = len(unlabelled)
    print("\n=== query benchmark (CPU) ===")
    print(f"machine: {os.cpu_count()} cores; strategy {args.strategy}; {n:,} unlabelled slices of "
          f"{args.channels}x{args.size}x{args.size}; batch {args.batch_size}; actors {args.actors}; threads {args.threads}")
    print(f"{'path':<28}{'seconds':>10}{'slices/s':>12}")
    print(f"{'ray (run_query, e2e)':<28}{secs:>10.1f}{n / secs:>12,.0f}")
    print(f"{'  of which scoring':<28}{res.timings['scoring_s']:>10.1f}{n / res.timings['scoring_s']:>12,.0f}")
    print(f"{'  clustering / selection':<28}{res.timings['clustering_s']:>10.2f} / {res.timings['selection_s']:.2f}"
          f"  (kmeans backend: {res.kmeans_backend})")
    if "plain" in results:
        p_secs, p_peak = results["plain"]
        print(f"{'plain PyTorch loop':<28}{p_secs:>10.1f}{n / p_secs:>12,.0f}")
        print(f"ratio ray / plain: {p_secs / secs:.2f}  (goal >= 0.80)")
        print(f"same selection as the plain loop: {plain_sel == res.slice_ids}")
        print(f"plain loop peak RSS: {mib(p_peak)}")
    print(f"driver RSS before queries: {mib(base)}; peak during the {args.small:,}-slice query: "
          f"{mib(s_mem.driver_peak)}; during the {n:,}-slice query: {mib(mem.driver_peak)} "
          f"(growth {mib(mem.driver_peak - s_mem.driver_peak)} vs {mib(image_bytes)} of images)")
    workers = sorted(mem.worker_peak.items(), key=lambda kv: -kv[1])[:5]
    print("worker peak RSS: " + ", ".join(f"{k} {mib(v)}" for k, v in workers))


if __name__ == "__main__":
    main()
