"""GPU benchmark for the device machine (one H100/H200): query throughput and torch KMeans time.

In one run:
  1. writes a synthetic pool to local disk (default 24,576 slices of 4 x 256 x 256 float16, the
     Brain Tumour format; 12 GiB, uncompressed Parquet) and a random-init ResNet-50 U-Net + AP bundle;
  2. model-only throughput, eager and torch.compile'd: the scoring computation (segmenter +
     softmax + AP + pooled 2048-d features, bf16 autocast, channels_last, batch 256) on batches
     already on the GPU;
  3. the query's scoring pass with no model (read + gather + copy only): the data path's ceiling;
  4. end-to-end throughput, eager and with ``compile_scoring``: run_query("paal") through Ray
     Data (the scoring actors read their Parquet row groups, gather into pinned memory, copy to
     the GPU, run the models; then KMeans, polling, writing the table), reported as the whole
     query and as the scoring stream's rate over its last 90% (the steady state: the actor's
     start, CUDA warm-up and compiling are fixed costs that a 66k-slice pool amortises);
  5. KMeans, torch backend, on 66,512 x 2048 features with K = 11 (cuML too when installed).

Prints a table at the end. Goals: end to end >= 90% of model-only and >= 4,000 slices/s; KMeans
< 1 s. Usage: ``python jobs/bench_query_gpu.py [--slices 24576] [--workdir /tmp/paal-gpu-bench]``
(``--cpu-smoke`` checks the script itself on a CPU machine in a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    RESULTS.append((name, value))
    print(f"  {name}: {value}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/paal-gpu-bench")
    p.add_argument("--slices", type=int, default=24_576, help="the full pool (12 GiB at 4 x 256 x 256)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--shard-slices", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--calls", type=int, default=4, help="scaling.score_calls_per_gpu_actor")
    p.add_argument("--model-batches", type=int, default=30, help="timed batches for the model-only figure")
    p.add_argument("--kmeans-n", type=int, default=66_512)
    p.add_argument("--kmeans-d", type=int, default=2048)
    p.add_argument("--skip", default="", help="comma list of parts to skip: model,e2e,kmeans")
    p.add_argument("--cpu-smoke", action="store_true", help="check the script on a CPU box: light model, tiny sizes")
    return p.parse_args(argv)


def write_pool(path: Path, n: int, size: int, channels: int, classes: int, shard_slices: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paal_ray.data.pool import MANIFEST, SLICE_SCHEMA, SLICES_DIR

    rng = np.random.default_rng(0)
    bank = [rng.random((channels, size, size), dtype=np.float32).astype(np.float16).tobytes() for _ in range(16)]
    (path / SLICES_DIR).mkdir(parents=True, exist_ok=True)

    def shard(k: int) -> None:
        lo, hi = k * shard_slices, min((k + 1) * shard_slices, n)
        ids = [f"case{i // 155:04d}/{i % 155:04d}" for i in range(lo, hi)]
        m = hi - lo
        cols = {
            "slice_id": ids, "case_id": [s.split("/")[0] for s in ids], "patient_id": [s.split("/")[0] for s in ids],
            "slice_index": pa.array([i % 155 for i in range(lo, hi)], pa.int32()),
            "image": pa.array([bank[i % 16] for i in range(lo, hi)], pa.binary()),
            "image_dtype": ["float16"] * m, "image_shape": pa.array([[channels, size, size]] * m, pa.list_(pa.int32())),
            "label": pa.nulls(m, pa.binary()), "label_dtype": pa.nulls(m, pa.string()),
            "label_shape": pa.nulls(m, pa.list_(pa.int32())), "present": pa.nulls(m, pa.list_(pa.bool_())),
        }
        for field in SLICE_SCHEMA:  # columns added to the pool format later stay null here
            cols.setdefault(field.name, pa.nulls(m, field.type))
        table = pa.table({f.name: cols[f.name] for f in SLICE_SCHEMA}, schema=SLICE_SCHEMA)
        pq.write_table(table, str(path / SLICES_DIR / f"part-{k:05d}.parquet"), compression="none")

    shards = (n + shard_slices - 1) // shard_slices
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(shard, range(shards)))
    (path / MANIFEST).write_text(json.dumps({
        "num_slices": n, "channels": channels, "image_size": size, "layout": "bench",
        "class_names": ["background"] + [f"c{k}" for k in range(1, classes)],
    }))


def model_only(args, ckpt: Path, compiled: bool) -> float:
    """The scoring computation alone on a batch already on the device; eager or torch.compile'd
    exactly as the query's actors run it (compile time reported apart)."""
    import torch

    from paal_ray.models import load_model_bundle
    from paal_ray.query.scoring import ScoreComputer, ScoreOptions

    dev = "cpu" if args.cpu_smoke else "cuda"
    opts = ScoreOptions(needs=frozenset({"pred_acc", "features"}), compile_batch=args.batch_size if compiled else None)
    comp = ScoreComputer(load_model_bundle(ckpt), opts, device=dev)
    x = torch.rand(args.batch_size, args.channels, args.size, args.size, device=dev).half().float()
    x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    comp.score_tensor(x, [])
    if compiled:
        report("torch.compile of the scoring models (first batch)", f"{time.perf_counter() - t0:.1f} s")
    for _ in range(4):
        comp.score_tensor(x, [])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.model_batches):
        out = comp.score_tensor(x, [])
        _ = {k: v.float().cpu() for k, v in out.items()}  # the results come back to the host, as in the query
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = args.model_batches * args.batch_size / (time.perf_counter() - t0)
    del comp, x
    torch.cuda.empty_cache()
    return rate


def end_to_end(args, pool: Path, ckpt: Path, work: Path, compiled: bool = False) -> dict:
    """One run_query("paal") over the whole pool (minus a 0.5% labelled set) through Ray Data."""
    from paal_ray.cluster import connect
    from paal_ray.config import StrategyConfig
    from paal_ray.data.pool import Pool
    from paal_ray.query import QueryRequest, run_query

    connect(None, num_cpus=os.cpu_count(), object_store_memory=None)  # Ray sizes it to /dev/shm
    ids = Pool.open(pool).slice_ids()
    labelled = ids[::200]  # 0.5% labelled, as Brain Tumour's initial set
    lab = set(labelled)
    unlabelled = [s for s in ids if s not in lab]
    req = QueryRequest(
        pool_path=str(pool), unlabelled_ids=unlabelled, labelled_ids=labelled, checkpoint=str(ckpt),
        strategy=StrategyConfig(name="paal"), budget=299, seed=0, out_path=str(work / f"{pool.name}.parquet"),
        scaling=_scaling(args, args.calls, compiled),
    )
    res = run_query(req)
    stream = res.extra.get("scoring_stream", {})
    return {"n": len(unlabelled), **res.timings, "first_unit_s": stream.get("first_batch_s"),
            "stream_rate": stream.get("stream_rate"), "backend": res.kmeans_backend}


def pipeline_only(args, pool: Path, ckpt: Path) -> None:
    """Where end-to-end time goes without the model: the query's own scoring pass with nothing to
    compute, so its actors only read their row groups, gather into pinned memory and copy to the
    GPU (the ceiling the data path puts on end-to-end throughput)."""
    from paal_ray.cluster import connect
    from paal_ray.data.pool import Pool
    from paal_ray.query.scoring import ScoreOptions, score_pool

    connect(None, num_cpus=os.cpu_count(), object_store_memory=None)
    ids = Pool.open(pool).slice_ids()
    for calls in sorted({1, args.calls}):
        t = score_pool(str(pool), ids, str(ckpt), ScoreOptions(needs=frozenset()), scaling=_scaling(args, calls))
        report(f"pipeline: read + pinned gather + host-to-device, no model, {args.actors} actor(s) x {calls} call(s)",
               f"{len(ids) / t.stats['wall_s']:,.0f} slices/s whole pass, {t.stats['stream_rate']:,.0f} over its last 90%")


def _scaling(args, calls: int, compiled: bool = False):
    from paal_ray.config import ScalingSettings

    return ScalingSettings(use_gpu=not args.cpu_smoke, score_actors=args.actors, score_batch_size=args.batch_size,
                           gpus_per_score_actor=1.0 / args.actors, score_calls_per_gpu_actor=calls,
                           compile_scoring=compiled)


def bench_kmeans(args) -> None:
    import torch

    from paal_ray.query.clustering import cuml_available, kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (11, args.kmeans_d)).astype(np.float32)
    x = centres[rng.integers(0, 11, args.kmeans_n)] + rng.normal(0, 0.5, (args.kmeans_n, args.kmeans_d)).astype(np.float32)
    kmeans(x[:2048], 11, seed=0, backend="torch", n_init=1)  # CUDA warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    for n_init in (1, 10):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            kmeans(x, 11, seed=0, backend="torch", n_init=n_init)
            times.append(time.perf_counter() - t0)
        report(f"kmeans torch {args.kmeans_n}x{args.kmeans_d} K=11 n_init={n_init} (incl. host->GPU copy)",
               f"{min(times):.3f} s best, {np.median(times):.3f} s median (goal < 1 s)")
    if cuml_available():
        t0 = time.perf_counter()
        kmeans(x, 11, seed=0, backend="cuml", n_init=1)
        report("kmeans cuml n_init=1", f"{time.perf_counter() - t0:.3f} s")
    else:
        report("kmeans cuml", "not installed")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    skip = set(filter(None, args.skip.split(",")))
    import torch

    from paal_ray.models import ModelSpec, save_model_bundle

    if args.cpu_smoke:
        args.slices, args.size, args.batch_size, args.model_batches = 600, 32, 64, 2
        args.kmeans_n, args.kmeans_d = 2000, 64
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}",
          flush=True)
    work = Path(args.workdir)
    pool, ckpt = work / "pool", work / "ckpt"
    torch.manual_seed(0)
    spec = ModelSpec(in_channels=args.channels, num_classes=args.classes, image_size=args.size,
                     encoder="plain_unet" if args.cpu_smoke else "resnet50")
    seg, ap = spec.build()
    save_model_bundle(ckpt, spec, seg, ap)
    del seg, ap

    if "kmeans" not in skip:
        print("kmeans ...", flush=True)
        try:
            bench_kmeans(args)
        except Exception as e:  # report and go on: the other figures are still worth having
            report("kmeans", f"FAILED: {type(e).__name__}: {e}")
    model_rate: dict[bool, float] = {}
    if "model" not in skip:
        for compiled in (False, True):
            name = "compiled" if compiled else "eager"
            print(f"model only, {name} ...", flush=True)
            try:
                model_rate[compiled] = model_only(args, ckpt, compiled)
                report(f"model-only scoring, {name} (bf16, channels_last, batch {args.batch_size})",
                       f"{model_rate[compiled]:,.0f} slices/s")
            except Exception as e:
                report(f"model-only, {name}", f"FAILED: {type(e).__name__}: {e}")
    if "e2e" not in skip:
        # The scoring stream's rate over its last 90% is the pipeline's steady state (reading,
        # gathering, copies, inference), free of the fixed costs (actor start, model load, CUDA
        # warm-up, compiling) that a 66k-slice pool amortises; the whole query is reported too.
        try:
            t0 = time.perf_counter()
            shutil.rmtree(pool, ignore_errors=True)
            write_pool(pool, args.slices, args.size, args.channels, args.classes, args.shard_slices)
            print(f"pool written: {args.slices:,} slices in {time.perf_counter() - t0:.1f}s", flush=True)
            try:
                pipeline_only(args, pool, ckpt)
            except Exception as e:
                report("pipeline", f"FAILED: {type(e).__name__}: {e}")
            for compiled in (False, True):
                name = "compiled" if compiled else "eager"
                print(f"end to end, {name} ...", flush=True)
                run = end_to_end(args, pool, ckpt, work, compiled)
                report(f"end-to-end query, {name}, {run['n']:,} slices", json.dumps(
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}))
                report(f"end-to-end, {name}, whole run_query (incl. actor start)",
                       f"{run['n'] / run['total_s']:,.0f} slices/s")
                rate = run.get("stream_rate") or 0.0
                ratio = f" = {rate / model_rate[compiled]:.2f} of model-only {name} (goal >= 0.90)" \
                    if compiled in model_rate else ""
                report(f"end-to-end, {name}, scoring stream over its last 90%",
                       f"{rate:,.0f} slices/s (goal >= 4,000){ratio}")
        except Exception as e:
            report("end-to-end", f"FAILED: {type(e).__name__}: {e}")
        shutil.rmtree(pool, ignore_errors=True)

    print("\n=== query benchmark (GPU) ===")
    for name, value in RESULTS:
        print(f"{name:<75} {value}")


if __name__ == "__main__":
    main()
