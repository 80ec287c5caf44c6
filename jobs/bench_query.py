"""CPU benchmark: a full PAAL query on Ray Data vs a plain single-process PyTorch loop.

Writes a phantom-like pool with the Brain Tumour slice count (66,512 slices, 4 x 64 x 64 float16,
many Parquet shards) and a random-init model bundle of the CPU preset (its plain U-Net and narrow
ResNet-18 AP), then times:

  ray    run_query (Ray Data actor pool scoring, KMeans, weighted polling, selection table)
  plain  the same work in one process: read each shard with pyarrow, the same ScoreComputer,
         the same KMeans and polling, the same table writer

and prints slices/s of both, their ratio (goal >= 0.8), peak RSS of the driver and of the Ray
workers, and the driver's memory for a 10,000-slice query vs the full pool (must not grow with the
pool: only small score columns come back). Each measurement runs in its own process, so one
does not inherit another's memory. ``--speed-slices`` limits the two timed runs to the first N
unlabelled slices (the pool stays full size); ``--memory-model tiny`` runs the memory check with a
very small segmenter and the ``kmeans`` strategy (driver memory depends on the returned columns,
not on the model) when the full model over 66,512 slices would take too long. Usage:

    python jobs/bench_query.py                                   # everything at full size
    python jobs/bench_query.py --speed-slices 4000 --memory-model tiny   # on a busy 2-core box
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
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch (default: the CPU preset's)")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (scoring actor and plain loop)")
    p.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default: cores + 2)")
    p.add_argument("--rewrite", action="store_true", help="rewrite the pool even if it exists")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="skip the 10,000 vs full-pool driver-memory runs")
    p.add_argument("--speed-slices", type=int, default=None, help="time both paths on the first N unlabelled slices")
    p.add_argument("--memory-model", choices=["same", "tiny"], default="same",
                   help="model for the driver-memory runs: the benchmark's, or a tiny segmenter + kmeans strategy")
    p.add_argument("--phase", choices=["plain", "ray"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
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


def cpu_preset():
    """The CPU preset, whose models and scoring batch the benchmark uses (its pool is ours)."""
    from paal_ray.config import load_config

    return load_config("cpu", ["pool=unused"])


def write_bundle(path: Path, channels: int, classes: int, base_width: int | None = None):
    """The CPU preset's models (its plain U-Net and narrow ResNet-18 AP), random weights;
    ``base_width`` overrides the segmenter's width (the tiny model of the memory runs)."""
    import dataclasses

    import torch

    from paal_ray.models import ModelSpec, save_model_bundle

    torch.manual_seed(0)
    spec = ModelSpec.from_config(cpu_preset().model, channels, classes)
    if base_width is not None:
        spec = dataclasses.replace(spec, base_width=base_width)
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
    """The same work with no Ray: the same reader as the scoring actors (only the row groups that
    hold the slices to score, only their rows and image columns), one ScoreComputer, same selection."""
    import torch

    from paal_ray.config import StrategyConfig
    from paal_ray.data.pool import Pool, read_rows
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
        ids, parts = [], {k: [] for k in strategy.needs}
        for part in pool.locate(unlabelled):
            table = read_rows([part], IMAGE_COLUMNS)
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


def split_ids(pool: Path, labelled_frac: float) -> tuple[list[str], list[str]]:
    from paal_ray.data.pool import Pool

    ids = Pool.open(pool).slice_ids()
    rng = np.random.default_rng(0)
    is_lab = np.zeros(len(ids), bool)
    is_lab[rng.choice(len(ids), int(labelled_frac * len(ids)), replace=False)] = True
    labelled = [s for s, m in zip(ids, is_lab, strict=True) if m]
    unlabelled = [s for s, m in zip(ids, is_lab, strict=True) if not m]
    return labelled, unlabelled


def run_phase(args) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import psutil

    pool, ckpt = Path(args.workdir) / f"pool-{args.slices}-{args.size}", Path(args.ckpt)
    labelled, unlabelled = split_ids(pool, args.labelled_frac)
    unlabelled = unlabelled[: args.limit] if args.limit else unlabelled
    out = Path(args.workdir) / f"sel-{args.phase}-{len(unlabelled)}-{ckpt.name}.parquet"
    if args.phase == "plain":
        secs, sel, mem = plain_query(args, pool, ckpt, unlabelled, labelled, out)
        return {"n": len(unlabelled), "secs": secs, "selection": sel, "driver_peak": mem.driver_peak}
    from paal_ray.cluster import connect

    # Ray starts its workers at niceness 15 (the driver stays responsive). On a machine shared with
    # other work that starves them next to the plain loop, which runs at 0: compare like with like.
    os.environ.setdefault("RAY_worker_niceness", "0")
    connect(None, num_cpus=args.ray_cpus or (os.cpu_count() or 1) + 2, object_store_memory=1_000_000_000)
    before = psutil.Process().memory_info().rss
    secs, res, mem = ray_query(args, pool, ckpt, unlabelled, labelled, out)
    return {"n": len(unlabelled), "secs": secs, "selection": res.slice_ids, "driver_before": before,
            "driver_peak": mem.driver_peak, "workers": mem.worker_peak, "timings": res.timings,
            "stream": res.extra.get("scoring_stream", {}), "backend": res.kmeans_backend,
            "kmeans": res.extra.get("kmeans")}


def spawn(args, phase: str, ckpt: Path, limit: int | None, strategy: str | None = None) -> dict:
    """Run one phase in a child process (clean memory figures), return its JSON result."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--phase", phase, "--ckpt", str(ckpt), "--workdir", args.workdir,
           "--slices", str(args.slices), "--size", str(args.size), "--channels", str(args.channels),
           "--classes", str(args.classes), "--labelled-frac", str(args.labelled_frac), "--budget", str(args.budget),
           "--strategy", strategy or args.strategy, "--batch-size", str(args.batch_size), "--actors", str(args.actors),
           "--threads", str(args.threads)]
    if limit:
        cmd += ["--limit", str(limit)]
    if args.ray_cpus:
        cmd += ["--ray-cpus", str(args.ray_cpus)]
    print(f"[{phase}{' ' + str(limit) if limit else ''}{' ' + strategy if strategy else ''}] ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    print(f"  {res['secs']:.1f}s for {res['n']:,} slices ({res['n'] / res['secs']:,.1f} slices/s)", flush=True)
    return res


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size is None:
        args.batch_size = cpu_preset().scaling.score_batch_size
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.phase:
        print("RESULT " + json.dumps(run_phase(args)), flush=True)
        return
    work = Path(args.workdir)
    pool = work / f"pool-{args.slices}-{args.size}"
    if args.rewrite or not (pool / "manifest.json").is_file():
        import shutil

        shutil.rmtree(pool, ignore_errors=True)
        print(f"writing a {args.slices:,}-slice pool to {pool} ...", flush=True)
        write_pool(pool, args.slices, args.size, args.channels, args.classes, args.shard_slices)
    ckpt, tiny = work / "ckpt", work / "ckpt-tiny"
    write_bundle(ckpt, args.channels, args.classes)
    write_bundle(tiny, args.channels, args.classes, base_width=2)
    labelled, unlabelled = split_ids(pool, args.labelled_frac)
    n_all = len(unlabelled)
    print(f"pool: {args.slices:,} slices, {n_all:,} unlabelled", flush=True)

    speed_n = min(args.speed_slices or n_all, n_all)
    plain = None if args.skip_plain else spawn(args, "plain", ckpt, speed_n)
    ray_speed = spawn(args, "ray", ckpt, speed_n)
    mem_ckpt, mem_strategy = (tiny, "kmeans") if args.memory_model == "tiny" else (ckpt, None)
    small_n = min(args.small, n_all)
    mem_runs = []
    if not args.skip_memory:
        mem_runs.append((f"{small_n:,}", spawn(args, "ray", mem_ckpt, small_n, mem_strategy)))
        full = ray_speed if (speed_n == n_all and mem_strategy is None) else spawn(args, "ray", mem_ckpt, None, mem_strategy)
        mem_runs.append((f"{n_all:,}", full))

    per_slice = args.channels * args.size * args.size * 2
    t = ray_speed["timings"]
    print("\n=== query benchmark (CPU) ===")
    print(f"machine: {os.cpu_count()} cores (load avg {os.getloadavg()[0]:.1f}); strategy {args.strategy}; "
          f"{speed_n:,} unlabelled slices of {args.channels}x{args.size}x{args.size} timed; batch {args.batch_size}; "
          f"actors {args.actors}; torch threads {args.threads}")
    print(f"{'path':<30}{'seconds':>10}{'slices/s':>12}")
    print(f"{'ray run_query, end to end':<30}{ray_speed['secs']:>10.1f}{speed_n / ray_speed['secs']:>12,.1f}")
    print(f"{'  scoring pass':<30}{t['scoring_s']:>10.1f}{speed_n / t['scoring_s']:>12,.1f}"
          f"   (first batch after {ray_speed['stream'].get('first_batch_s', 0):.1f}s, "
          f"last 90% at {ray_speed['stream'].get('stream_rate', 0):,.1f} slices/s)")
    print(f"{'  clustering / selection':<30}{t['clustering_s']:>10.2f} / {t['selection_s']:.3f}s (kmeans: {ray_speed['backend']})")
    km = ray_speed.get("kmeans") or {}
    if km:
        print(f"  KMeans Ray task: {km.get('seconds', 0):.2f}s in the task ({t['clustering_s']:.2f}s with its start and "
              f"the features' trip through the object store); on node {km.get('node_ip')} "
              f"({str(km.get('node_id'))[:12]}), {km.get('device')}, {km.get('threads')} thread(s), "
              f"{km.get('num_gpus')} GPU(s){'; fallback: ' + km['fallback'] if km.get('fallback') else ''}")
    if plain:
        print(f"{'plain PyTorch loop':<30}{plain['secs']:>10.1f}{speed_n / plain['secs']:>12,.1f}")
        print(f"ratio ray / plain: {plain['secs'] / ray_speed['secs']:.2f} (goal >= 0.80); "
              f"same selection: {plain['selection'] == ray_speed['selection']}")
        print(f"peak RSS, plain loop process: {mib(plain['driver_peak'])}")
    print(f"peak RSS, ray driver: {mib(ray_speed['driver_peak'])}")
    workers = sorted(ray_speed["workers"].items(), key=lambda kv: -kv[1])[:4]
    print("peak RSS, ray workers: " + ", ".join(f"{k.replace('ray::', '')} {mib(v)}" for k, v in workers))
    label = "benchmark model" if mem_strategy is None else "tiny segmenter, kmeans strategy"
    for name, r in mem_runs:
        print(f"driver memory, {name}-slice query ({label}): before {mib(r['driver_before'])}, peak "
              f"{mib(r['driver_peak'])} (+{mib(r['driver_peak'] - r['driver_before'])}); images scored: "
              f"{mib(r['n'] * per_slice)}")


if __name__ == "__main__":
    main()
