"""Benchmark: `paal predict` on a Ray Data actor pool vs a plain single-process loop.

Writes a folder of phantom volumes (default 50 of 64 x 64 x 24, one MR channel), a model bundle of
the CPU preset's light plain U-Net (random weights: the work does not depend on them) and the
manifest of the pool it would have been trained on (64 px slices), then times:

  ray    paal_ray.inference.predict.predict: one item per volume through PredictActors
         (ActorPoolStrategy, one CPU each), reading, preprocessing, predicting, writing
  plain  the same per-volume function (predict_volume) in a loop in this process, torch on
         --threads threads

and prints volumes/s and slices/s of both and their ratio. ``--gpu`` runs the Ray path with one
GPU per actor (the plain loop on the GPU too) for the device machine; use bigger volumes there
(``--size 256 --slices 128``). Usage:

    python jobs/bench_predict.py                       # CPU, 50 volumes
    python jobs/bench_predict.py --gpu --volumes 200 --size 256 --slices 128 --actors 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/paal-bench-predict")
    p.add_argument("--volumes", type=int, default=50)
    p.add_argument("--size", type=int, default=64, help="in-plane size of the phantoms")
    p.add_argument("--slices", type=int, default=24, help="slices per phantom")
    p.add_argument("--model-size", type=int, default=64, help="the pool's (and model's) slice size")
    p.add_argument("--actors", type=int, default=None, help="Ray actors (default: the local Ray's CPUs, or 1 GPU each)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the plain loop")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gpu", action="store_true", help="predict on GPUs (the device machine)")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--rewrite", action="store_true", help="rewrite the phantoms even if they exist")
    return p.parse_args(argv)


def prepare(args, work: Path) -> tuple[Path, Path, dict]:
    """Phantoms (written once), a CPU-preset bundle and its pool's manifest."""
    import torch

    from paal_ray.config import load_config
    from paal_ray.data.phantoms import PhantomSpec, write_phantoms
    from paal_ray.models import ModelSpec, save_model_bundle

    src = work / f"phantoms-{args.volumes}x{args.size}x{args.slices}"
    if args.rewrite and src.exists():
        shutil.rmtree(src)
    if not src.exists():
        t0 = time.perf_counter()
        write_phantoms(src, PhantomSpec(cases=args.volumes, classes=4, size=args.size, slices=args.slices, seed=0))
        print(f"wrote {args.volumes} phantoms in {time.perf_counter() - t0:.0f}s", flush=True)
    cfg = load_config("cpu", ["pool=unused", f"model.image_size={args.model_size}"])
    torch.manual_seed(0)
    spec = ModelSpec.from_config(cfg.model, 1, 4)
    seg, ap = spec.build()
    ckpt = work / "ckpt"
    save_model_bundle(ckpt, spec, seg, ap)
    manifest = {"channels": 1, "modalities": ["MR"], "class_names": ["background", "organ", "core", "lesion"],
                "image_size": args.model_size, "params": {"axis": 2, "normalisation": ["mr"],
                                                          "percentiles": [0.5, 99.5], "window": None}}
    return src, ckpt, manifest


def ray_predict(args, src: Path, ckpt: Path, manifest: dict, out: Path) -> dict:
    from paal_ray.inference.predict import PredictModel, PredictOptions, predict

    options = PredictOptions(use_gpu=args.gpu, actors=args.actors, batch_size=args.batch_size)
    t0 = time.perf_counter()
    summary = predict(src / "imagesTr", out, PredictModel(str(ckpt), manifest, None, "benchmark"), options,
                      overwrite=True, log=lambda m: print(f"  {m}", flush=True))
    wall = time.perf_counter() - t0
    return {"volumes": summary["num_volumes"], "slices": summary["num_slices"], "seconds": wall,
            "actors": summary["actors"]}


def plain_predict(args, src: Path, ckpt: Path, manifest: dict, out: Path) -> dict:
    import torch

    from paal_ray.data.ingest import plan_from_manifest
    from paal_ray.data.layouts import image_files
    from paal_ray.inference.predictor import SlicePredictor
    from paal_ray.inference.volumes import predict_volume

    torch.set_num_threads(args.threads)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    predictor = SlicePredictor.load(str(ckpt), device="cuda" if args.gpu else "cpu", batch_size=args.batch_size)
    plan = plan_from_manifest(manifest)
    slices = 0
    refs = image_files(src / "imagesTr").volumes
    for ref in refs:
        slices += predict_volume(ref, plan, predictor, out)["slices"]
    return {"volumes": len(refs), "slices": slices, "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    src, ckpt, manifest = prepare(args, work)
    from paal_ray.cluster import connect

    connect(None, num_cpus=os.cpu_count(), object_store_memory=500_000_000)
    results = {}
    print(f"ray: predicting {args.volumes} volumes of {args.size} x {args.size} x {args.slices} "
          f"({'GPU' if args.gpu else 'CPU'})", flush=True)
    results["ray"] = ray_predict(args, src, ckpt, manifest, work / "out-ray")
    if not args.skip_plain:
        print(f"plain: the same volumes in one process ({args.threads} torch threads)", flush=True)
        results["plain"] = plain_predict(args, src, ckpt, manifest, work / "out-plain")
    for name, r in results.items():
        r["volumes_per_s"] = r["volumes"] / r["seconds"]
        r["slices_per_s"] = r["slices"] / r["seconds"]
        print(f"{name:>6}: {r['volumes']} volumes, {r['slices']} slices in {r['seconds']:.1f}s = "
              f"{r['volumes_per_s']:.2f} volumes/s, {r['slices_per_s']:.0f} slices/s", flush=True)
    if "plain" in results:
        results["ratio"] = results["ray"]["volumes_per_s"] / results["plain"]["volumes_per_s"]
        print(f"ratio ray / plain: {results['ratio']:.2f}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
