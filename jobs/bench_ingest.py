"""Ingest benchmark: throughput (slices/s) and peak memory of `paal ingest` on Ray Data, next to a
plain single-process nibabel loop writing the same Parquet rows.

Default data: phantoms with the slice count of the MSD Brain Tumour set (484 volumes, 66,512
slices, 4 MR modalities, float32) at 64 x 64 in-plane. Several volume counts can be given
(``--volumes 121 484``): the first N volumes of one generated set are ingested for each, so the
peak memory of each run shows whether it grows with the number of volumes (it should not: ingest
streams one shard per task).

Each measured run is a child process; the parent samples the memory of the child's whole process
tree (driver + raylet + Ray workers) with psutil: PSS, so the shared object store is counted once.

    python jobs/bench_ingest.py                          # full size
    python jobs/bench_ingest.py --volumes 60 240 --data /tmp/bench-phantoms
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BRAIN_TUMOUR_VOLUMES = 484
BRAIN_TUMOUR_SLICES = 66_512


def slice_counts(volumes: int, total: int) -> list[int]:
    base, extra = divmod(total, volumes)
    return [base + (i < extra) for i in range(volumes)]


def _write_case(root: str, i: int, slices: int, size: int, modalities: int, seed: int) -> dict:
    from paal_ray.data.phantoms import PhantomSpec, make_volume, save_nifti, to_nifti_image

    image, label = make_volume(PhantomSpec(modalities=modalities, size=size, slices=slices, seed=seed), i)
    name = f"phantom_{i:03d}.nii.gz"
    save_nifti(to_nifti_image(image), Path(root) / "imagesTr" / name)
    save_nifti(label, Path(root) / "labelsTr" / name)
    return {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}


def make_dataset(root: Path, counts: list[int], size: int, modalities: int, seed: int, workers: int) -> None:
    """The full phantom set, generated in parallel processes (skipped when already there)."""
    from paal_ray.data.phantoms import PhantomSpec, class_names, modality_names

    key = {"counts": counts, "size": size, "modalities": modalities, "seed": seed}
    stamp = root / "bench.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        print(f"phantoms: reusing {root}", flush=True)
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        futs = [ex.submit(_write_case, str(root), i, n, size, modalities, seed) for i, n in enumerate(counts)]
        training = []
        for j, f in enumerate(futs):
            training.append(f.result())
            if (j + 1) % 50 == 0:
                print(f"phantoms: {j + 1}/{len(counts)} volumes ({time.perf_counter() - t0:.0f}s)", flush=True)
    spec = PhantomSpec(modalities=modalities)
    (root / "dataset.json").write_text(json.dumps({
        "name": "BenchPhantom", "tensorImageSize": "4D",
        "modality": {str(m): n for m, n in enumerate(modality_names(spec))},
        "labels": {str(k): n for k, n in enumerate(class_names(4))},
        "numTraining": len(training), "training": training}, indent=1))
    stamp.write_text(json.dumps(key))
    print(f"phantoms: {len(counts)} volumes in {time.perf_counter() - t0:.0f}s", flush=True)


def subset(root: Path, n: int, work: Path) -> Path:
    """An MSD folder whose dataset.json lists the first n volumes of ``root`` (absolute paths)."""
    ds = json.loads((root / "dataset.json").read_text())
    out = work / f"subset-{n}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    ds["training"] = [{k: str((root / v).resolve()) for k, v in e.items()} for e in ds["training"][:n]]
    ds["numTraining"] = n
    (out / "dataset.json").write_text(json.dumps(ds))
    return out


# -- the measured runs (child processes) ------------------------------------------------------------
def run_ray(src: str, out: str, workers: int | None) -> dict:
    import logging

    import ray.data  # noqa: F401

    from paal_ray.cluster import connect
    from paal_ray.data.ingest import IngestOptions, ingest

    for attempt in range(8):  # a local Ray can time out starting on a crowded machine: try again
        try:
            connect(None, object_store_memory=1_000_000_000)
            break
        except Exception as e:
            import ray

            ray.shutdown()
            print(f"ray start failed ({e}); retrying", flush=True)
            if attempt == 7:
                raise
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    m = ingest(src, out, IngestOptions(layout="msd", size=64, workers=workers),
               log=lambda s: print(s, flush=True))
    return {"slices": m["num_slices"], "seconds": time.perf_counter() - t0, "shards": m["num_shards"]}


def run_plain(src: str, out: str) -> dict:
    """The plain loop: nibabel load, same normalisation and rows, one streaming Parquet writer."""
    import nibabel as nib
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from paal_ray.data.normalize import normalise_volume, resize_images, resize_labels
    from paal_ray.data.pool import SLICE_SCHEMA, encode_slice_row

    ds = json.loads((Path(src) / "dataset.json").read_text())
    t0 = time.perf_counter()
    n = 0
    Path(out).mkdir(parents=True)
    with pq.ParquetWriter(str(Path(out) / "part-0.parquet"), SLICE_SCHEMA) as writer:
        for e in ds["training"]:
            img = np.moveaxis(np.asanyarray(nib.load(e["image"]).dataobj), -1, 0)
            lab = np.asanyarray(nib.load(e["label"]).dataobj).astype(np.uint8)
            img = normalise_volume(img, ["mr"] * img.shape[0])
            images = resize_images(np.moveaxis(img, 3, 0), 64).astype(np.float16)
            labels = resize_labels(np.moveaxis(lab, 2, 0), 64)
            cid = Path(e["image"]).name[:-7]
            rows = [encode_slice_row(case_id=cid, patient_id=cid, slice_index=z, image=images[z],
                                     label=labels[z], num_classes=4) for z in range(images.shape[0])]
            writer.write_table(pa.Table.from_pylist(rows, schema=SLICE_SCHEMA))
            n += len(rows)
    return {"slices": n, "seconds": time.perf_counter() - t0, "shards": 1}


def _tree_memory(proc) -> float:
    """PSS (bytes) of a process and all its descendants; RSS where PSS is unavailable."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(args: list[str]) -> dict:
    """Run this script as a child with ``args``; sample its process tree's memory while it runs."""
    import psutil

    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    proc = psutil.Process(child.pid)
    peak = {"tree": 0.0, "driver": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak["tree"] = max(peak["tree"], _tree_memory(proc))
                peak["driver"] = max(peak["driver"], proc.memory_full_info().pss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = None
    for line in child.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print("   ", line.rstrip(), flush=True)
    child.wait()
    done.set()
    thread.join()
    if child.returncode != 0 or result is None:
        raise SystemExit(f"benchmark child {args} failed with status {child.returncode}")
    return {**result, "peak_tree_mb": peak["tree"] / 2**20, "peak_driver_mb": peak["driver"] / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, nargs="+", default=[BRAIN_TUMOUR_VOLUMES],
                   help="volume counts to ingest (first N of one generated set); default 484")
    p.add_argument("--slices-per-volume", type=float, default=BRAIN_TUMOUR_SLICES / BRAIN_TUMOUR_VOLUMES,
                   help="average slices a volume (default: Brain Tumour's 66,512 / 484)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--modalities", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="ingest tasks (default: all CPUs)")
    p.add_argument("--data", default="/tmp/paal-bench-ingest/phantoms", help="phantom set (reused if there)")
    p.add_argument("--work", default="/tmp/paal-bench-ingest/work", help="pools are written here, then removed")
    p.add_argument("--no-plain", action="store_true", help="skip the single-process baseline")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        kind, src, out = a.child
        res = run_ray(src, out, a.workers) if kind == "ray" else run_plain(src, out)
        print("RESULT " + json.dumps(res), flush=True)
        return

    biggest = max(a.volumes)
    counts = slice_counts(biggest, round(a.slices_per_volume * biggest))
    data, work = Path(a.data), Path(a.work)
    make_dataset(data, counts, a.size, a.modalities, a.seed, os.cpu_count() or 1)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sorted(a.volumes):
        src = subset(data, n, work)
        for kind in ("ray", "plain"):
            if kind == "plain" and a.no_plain:
                continue
            out = work / f"pool-{kind}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"== {kind} ingest of {n} volumes ({sum(counts[:n])} slices)", flush=True)
            child_args = ["--child", kind, str(src), str(out)] + (["--workers", str(a.workers)] if a.workers else [])
            r = measure(child_args)
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"kind": kind, "volumes": n, **r})
            print(f"   -> {r['slices']} slices in {r['seconds']:.1f}s = {r['slices'] / r['seconds']:.0f} slices/s, "
                  f"peak {r['peak_tree_mb']:.0f} MB (tree), {r['peak_driver_mb']:.0f} MB (driver)", flush=True)

    print(f"\ningest benchmark: {a.modalities} x {a.size} x {a.size} float32 phantoms -> float16 slices, "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':<28} {'volumes':>7} {'slices':>7} {'seconds':>8} {'slices/s':>9} {'peak MB (tree)':>15} "
          f"{'peak MB (driver)':>17}")
    for r in rows:
        name = "paal ingest (Ray Data)" if r["kind"] == "ray" else "plain nibabel loop (1 proc)"
        print(f"{name:<28} {r['volumes']:>7} {r['slices']:>7} {r['seconds']:>8.1f} "
              f"{r['slices'] / r['seconds']:>9.0f} {r['peak_tree_mb']:>15.0f} {r['peak_driver_mb']:>17.0f}")


if __name__ == "__main__":
    main()
