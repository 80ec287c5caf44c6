"""``paal ingest``: a folder of 3D volumes -> a pool of 2D slices (Parquet shards + manifest).

Two passes, both parallel on Ray, neither holding more than a few volumes at once:

1. check: one Ray task per volume loads image and label and checks them (readable NIfTI, shapes,
   modality count, label values, NaN/Inf). Problems come back as values, not exceptions, so every
   bad volume is reported at once, naming its file.
2. slice: a Ray Data pipeline (one block per volume) reads each volume again, normalises it per
   channel, slices it along the axis, optionally resizes, and streams the rows to Parquet shards.

Everything is written into a temporary folder beside ``out`` and renamed into place at the end:
a failed or interrupted ingest leaves nothing behind. The manifest's counts are computed from the
shards that were written, so they describe the pool, not the intent.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paal_ray.data.layouts import IngestError, Problem, Source, VolumeRef, discover, modality_kinds
from paal_ray.data.nifti import VolumeError, read_case
from paal_ray.data.normalize import DEFAULT_CT_WINDOW, DEFAULT_PERCENTILES

SHARD_BYTES = 64 * 2**20  # target in-memory size of one Parquet shard


@dataclass(frozen=True)
class IngestOptions:
    layout: str
    size: int | None = None  # None: native in-plane size
    axis: int = 2
    skip_bad: bool = False
    workers: int | None = None  # None: as many as the cluster's CPUs allow
    window: tuple[float, float] | None = None  # CT window; None: dataset.json / layout / default
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    class_names: list[str] | None = None  # None: the layout's, or inferred from the labels
    modalities: list[str] | None = None  # None: the layout's, or 'MR' per channel
    # Leave out slices whose image is entirely background (every pixel of every channel at its
    # volume's minimum, and no label): the paper's Brain Tumour pool is 66,512 slices, about 137 of
    # each volume's 155.
    drop_background: bool = False

    def validate(self) -> None:
        if self.axis not in (0, 1, 2):
            raise IngestError(f"--axis must be 0, 1 or 2, not {self.axis}")
        if self.size is not None and self.size < 8:
            raise IngestError(f"--size must be at least 8 (or 'none'), not {self.size}")
        if self.workers is not None and self.workers < 1:
            raise IngestError(f"--workers must be at least 1, not {self.workers}")
        if self.window is not None and not self.window[0] < self.window[1]:
            raise IngestError(f"--window low must be below high, got {self.window}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise IngestError(f"--percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")


@dataclass
class _Plan:
    """What every slicing task needs to know; plain data so it ships to Ray workers."""

    channels: int
    modalities: list[str]
    kinds: list[str]
    class_names: list[str]
    axis: int
    size: int | None
    window: tuple[float, float]
    percentiles: tuple[float, float]
    drop_background: bool = False


def ingest(src: str | Path, out: str | Path, options: IngestOptions, *, address: str | None = None,
           overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ingest ``src`` into the pool folder ``out``; returns the manifest."""
    from paal_ray.atomic import atomic_directory, atomic_write_json
    from paal_ray.cluster import connect

    log = log or (lambda _m: None)
    options.validate()
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or remove it first")
    source = discover(src, options.layout, class_names=options.class_names, modalities=options.modalities)
    log(f"ingest: {len(source.volumes)} volumes found in {source.root} ({options.layout} layout)")
    connect(address)

    t0 = time.perf_counter()
    checked, problems = _check_all(source, options, log)
    problems = source.problems + problems
    if problems and not options.skip_bad:
        listing = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise IngestError(f"{len(problems)} bad volume(s) in {source.root} (use --skip-bad to skip them):\n"
                          f"{listing}{more}")
    for p in problems:
        log(f"ingest: skipping {p}")
    good = [ref for ref in source.volumes if ref.case_id in checked]
    if not good:
        raise IngestError(f"{source.root}: no usable volumes (all {len(problems)} are bad)")
    plan = _make_plan(source, options, [checked[r.case_id] for r in good])
    expected = sum(checked[r.case_id]["slices"] for r in good)
    log(f"ingest: checked {len(good)} volumes in {time.perf_counter() - t0:.1f}s; writing {expected} slices")

    with atomic_directory(out, overwrite=overwrite) as tmp:
        t1 = time.perf_counter()
        _write_slices(good, plan, checked, options.workers, tmp)
        stats = _pool_stats(tmp, plan.class_names)
        if stats["num_slices"] != expected:
            raise IngestError(f"{out}: wrote {stats['num_slices']} slices, expected {expected} (source changed?)")
        manifest = _manifest(source, options, plan, good, checked, problems, stats)
        manifest["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(tmp / "manifest.json", manifest)
        log(f"ingest: wrote {stats['num_slices']} slices in {time.perf_counter() - t1:.1f}s "
            f"({stats['num_slices'] / max(time.perf_counter() - t1, 1e-9):.0f} slices/s)")
    return manifest


def background_slices(image: np.ndarray, label: np.ndarray, axis: int) -> np.ndarray:
    """[Z] bool: slices along ``axis`` whose image is entirely background (every pixel of every
    channel at that channel's minimum over the volume) and whose label is all background."""
    c = image.shape[0]
    mins = image.reshape(c, -1).min(axis=1).reshape((c, 1, 1, 1))
    at_min = np.moveaxis(image == mins, 1 + axis, 1).reshape(c, image.shape[1 + axis], -1).all(axis=(0, 2))
    no_label = (np.moveaxis(label, axis, 0).reshape(label.shape[axis], -1) == 0).all(axis=1)
    return at_min & no_label


# -- pass 1: check every volume -----------------------------------------------------------------
def _check_volume(ref: VolumeRef, channels: int | None, modalities: list[str] | None,
                  class_names: list[str] | None, axis: int, drop_background: bool = False) -> dict[str, Any]:
    try:
        image, label = read_case(ref, channels=channels, modalities=modalities, class_names=class_names)
    except VolumeError as e:
        return {"case_id": ref.case_id, "file": e.file, "problem": e.problem}
    except Exception as e:  # a checker bug must still name the file rather than kill the ingest
        return {"case_id": ref.case_id, "file": ref.image, "problem": f"cannot be read ({type(e).__name__}: {e})"}
    dropped = int(background_slices(image, label, axis).sum()) if drop_background else 0
    return {"case_id": ref.case_id, "channels": int(image.shape[0]), "shape": [int(s) for s in image.shape[1:]],
            "slices": int(image.shape[1 + axis]) - dropped, "dropped_background": dropped,
            "max_label": int(label.max()), "dtype": str(image.dtype)}


def _check_all(source: Source, options: IngestOptions, log: Callable[[str], None]
               ) -> tuple[dict[str, dict], list[Problem]]:
    import ray

    channels = len(source.modalities) if source.layout == "msd" and source.modalities else None
    task = ray.remote(num_cpus=1)(_check_volume)
    # In flight: --workers exactly, else twice the CPUs so that no CPU waits for the next volume.
    limit = options.workers or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, VolumeRef] = {}
    results: list[dict] = []
    queue = list(source.volumes)
    step = max(1, len(queue) // 10)
    while queue or pending:
        while queue and len(pending) < limit:  # bounded: never every volume in flight at once
            ref = queue.pop(0)
            pending[task.remote(ref, channels, source.modalities, source.class_names, options.axis,
                                options.drop_background)] = ref
        done, _ = ray.wait(list(pending), num_returns=1)
        for obj in done:
            ref = pending.pop(obj)
            try:
                results.append(ray.get(obj))
            except Exception as e:  # the worker died (out of memory, node lost): not the data's fault
                raise IngestError(f"{ref.image}: checking failed in a Ray task ({explain_failure(e)})") from None
            if len(results) % step == 0 or len(results) == len(source.volumes):
                log(f"ingest: checked {len(results)}/{len(source.volumes)} volumes")
    order = {ref.case_id: i for i, ref in enumerate(source.volumes)}
    results.sort(key=lambda r: order[r["case_id"]])
    ok = {r["case_id"]: r for r in results if "problem" not in r}
    problems = [Problem(r["case_id"], r["file"], r["problem"]) for r in results if "problem" in r]
    # Without a declaration, the first good volume sets the channel count for the rest.
    if ok and channels is None:
        first = next(iter(ok.values()))
        for cid, r in list(ok.items()):
            if r["channels"] != first["channels"]:
                ref = source.volumes[order[cid]]
                problems.append(Problem(cid, ref.image, f"has {r['channels']} modalities, but "
                                        f"{first['case_id']} has {first['channels']}"))
                ok.pop(cid)
    return ok, problems


def _make_plan(source: Source, options: IngestOptions, checked: list[dict]) -> _Plan:
    channels = checked[0]["channels"]
    modalities = source.modalities or (["MR"] * channels)
    if len(modalities) != channels:
        raise IngestError(f"{len(modalities)} modality names given for {channels}-channel images")
    names = source.class_names
    if names is None:
        k = max(r["max_label"] for r in checked) + 1
        names = ["background"] + [f"class{i}" for i in range(1, max(k, 2))]
    window = options.window or source.window or DEFAULT_CT_WINDOW
    return _Plan(channels, list(modalities), modality_kinds(modalities), list(names), options.axis, options.size,
                 (float(window[0]), float(window[1])), tuple(options.percentiles), options.drop_background)


# -- pass 2: slice and write on Ray Data ----------------------------------------------------------
def plan_from_manifest(manifest: dict[str, Any]) -> _Plan:
    """The preprocessing a pool's slices went through, from its manifest: what ``paal predict``
    applies to new volumes so that the model sees what it was trained on."""
    params = manifest.get("params") or {}
    channels = int(manifest["channels"])
    modalities = list(manifest.get("modalities") or ["MR"] * channels)
    window = params.get("window") or DEFAULT_CT_WINDOW
    return _Plan(channels, modalities, params.get("normalisation") or modality_kinds(modalities),
                 list(manifest["class_names"]), int(params.get("axis", 2)), manifest.get("image_size"),
                 (float(window[0]), float(window[1])), tuple(params.get("percentiles") or DEFAULT_PERCENTILES))


def normalised_slices(image: np.ndarray, plan: _Plan) -> np.ndarray:
    """A checked image [C, X, Y, Z] -> its slices along ``plan.axis`` as stored in a pool:
    [Z, C, H, W] float16 in [0, 1], normalised per channel, resized to ``plan.size`` if set."""
    from paal_ray.data.normalize import normalise_volume, resize_images

    image = normalise_volume(image, plan.kinds, window=plan.window, percentiles=plan.percentiles)
    images = np.moveaxis(image, 1 + plan.axis, 0)  # [Z, C, H, W]
    if plan.size is not None:
        images = resize_images(images, plan.size)
    return images.astype(np.float16)


def slice_volume(ref: VolumeRef, plan: _Plan) -> list[dict[str, Any]]:
    """All rows of one volume: normalised, sliced along ``plan.axis``, resized if asked."""
    from paal_ray.data.normalize import resize_labels
    from paal_ray.data.pool import encode_slice_row

    image, label = read_case(ref, channels=plan.channels, class_names=plan.class_names)
    keep = ~background_slices(image, label, plan.axis) if plan.drop_background else None
    images = normalised_slices(image, plan)
    labels = np.moveaxis(label, plan.axis, 0)  # [Z, H, W]
    index = np.arange(images.shape[0]) if keep is None else np.flatnonzero(keep)  # slice ids keep their z
    images, labels = images[index], labels[index]
    if plan.size is not None:
        labels = resize_labels(labels, plan.size)
    return [
        encode_slice_row(case_id=ref.case_id, patient_id=ref.patient_id, slice_index=int(z), image=images[i],
                         label=labels[i], num_classes=len(plan.class_names))
        for i, z in enumerate(index)
    ]


def _slice_group(batch: dict[str, np.ndarray], plan: _Plan):
    """One shard's worth of volumes -> one Arrow table per volume (a generator: a task never holds
    more than one volume's arrays besides the shard being written)."""
    import pyarrow as pa

    from paal_ray.data.pool import SLICE_SCHEMA

    for refs in batch["volumes"]:
        for ref in json.loads(str(refs)):
            yield pa.Table.from_pylist(slice_volume(VolumeRef(**ref), plan), schema=SLICE_SCHEMA)


def shard_groups(slices: list[int], slice_bytes: int, *, shard_bytes: int = SHARD_BYTES,
                 min_shards: int = 8) -> list[list[int]]:
    """Consecutive volumes grouped into shards of about ``shard_bytes``; at least ``min_shards``
    (or one per volume) so that readers and Ray Train workers can split the pool."""
    total = sum(slices) * slice_bytes
    n = max(int(np.ceil(total / shard_bytes)), min(len(slices), min_shards), 1)
    bounds = np.searchsorted(np.cumsum(slices), np.arange(1, n) * sum(slices) / n, side="right")
    groups = [g.tolist() for g in np.split(np.arange(len(slices)), bounds)]
    return [g for g in groups if g]


def _write_slices(good: list[VolumeRef], plan: _Plan, checked: dict[str, dict], workers: int | None,
                  tmp: Path) -> None:
    """Shards are planned here (volumes are grouped by their slice counts), so each write task
    holds at most one shard: memory is bounded by shard size x tasks, whatever the volume count."""
    import ray.data

    from paal_ray.data.pool import SLICES_DIR

    side = plan.size or max(max(checked[r.case_id]["shape"][i] for i in range(3) if i != plan.axis)
                            for r in good)
    slice_bytes = plan.channels * side * side * 2 + side * side + 200
    groups = shard_groups([checked[r.case_id]["slices"] for r in good], slice_bytes)
    items = [{"volumes": json.dumps([asdict(good[i]) for i in g])} for g in groups]
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one block = one shard
    compute = ray.data.TaskPoolStrategy(size=workers) if workers else None
    ds = ds.map_batches(_slice_group, batch_size=1, batch_format="numpy", fn_kwargs={"plan": plan},
                        compute=compute, num_cpus=1)
    try:
        ds.write_parquet(str(tmp / SLICES_DIR))
    except Exception as e:
        raise IngestError(explain_failure(e)) from None


def explain_failure(exc: BaseException) -> str:
    """The user's view of an error raised inside a Ray task: our own message if we raised it."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # a RayTaskError: it also poses as its cause's type,
        if cause is not None:  # but its str() is a remote traceback; the cause has our message
            stack.append(cause)
        elif isinstance(e, VolumeError | IngestError):
            return str(e)
        stack.extend([e.__cause__, e.__context__])
    return f"ingest failed in a Ray task: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# -- manifest -------------------------------------------------------------------------------------
def _pool_stats(folder: Path, class_names: list[str]) -> dict[str, Any]:
    """Counts read back from the written shards (metadata columns only)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from paal_ray.data.pool import SLICE_SCHEMA, SLICES_DIR

    files = sorted(str(p) for p in (folder / SLICES_DIR).glob("*.parquet"))
    table = pads.dataset(files, format="parquet", schema=SLICE_SCHEMA).to_table(
        columns=["case_id", "patient_id", "present", "pixels"])
    k = len(class_names)
    present = np.asarray(pc.list_flatten(table.column("present")).to_numpy(zero_copy_only=False)).reshape(-1, k)
    pixels = np.asarray(pc.list_flatten(table.column("pixels")).to_numpy()).reshape(-1, k)
    return {
        "num_slices": table.num_rows,
        "num_volumes": len(pc.unique(table.column("case_id"))),
        "num_cases": len(pc.unique(table.column("patient_id"))),
        "slices_with_class": present.sum(axis=0).astype(int).tolist(),
        "pixels_per_class": pixels.sum(axis=0).astype(int).tolist(),
        "slices_without_structure": int((~present[:, 1:].any(axis=1)).sum()),
        "num_shards": len(files),
    }


def _manifest(source: Source, options: IngestOptions, plan: _Plan, good: list[VolumeRef],
              checked: dict[str, dict], problems: list[Problem], stats: dict) -> dict[str, Any]:
    from paal_ray import __version__
    from paal_ray.provenance import versions

    return {
        **{k: stats[k] for k in ("num_cases", "num_volumes", "num_slices")},
        "class_names": plan.class_names,
        "channels": plan.channels,
        "modalities": plan.modalities,
        "image_size": plan.size,
        "slices_with_class": stats["slices_with_class"],
        "pixels_per_class": stats["pixels_per_class"],
        "slices_without_structure": stats["slices_without_structure"],
        "num_shards": stats["num_shards"],
        "layout": source.layout,
        "source": str(source.root),
        "dropped_background_slices": sum(checked[r.case_id].get("dropped_background", 0) for r in good),
        "params": {
            "size": options.size, "axis": options.axis, "skip_bad": options.skip_bad, "workers": options.workers,
            "drop_background": options.drop_background,
            "window": list(plan.window) if "ct" in plan.kinds else None,
            "percentiles": list(plan.percentiles) if "mr" in plan.kinds else None,
            "normalisation": plan.kinds,
            "image_dtype": "float16", "label_dtype": "uint8",
        },
        "skipped": [asdict(p) for p in problems],
        "volumes": [{"case_id": r.case_id, "patient_id": r.patient_id, "slices": checked[r.case_id]["slices"],
                     "dropped_background": checked[r.case_id].get("dropped_background", 0),
                     "shape": checked[r.case_id]["shape"], "image": r.image, "label": r.label} for r in good],
        "version": __version__,
        "versions": versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def summarize(manifest: dict[str, Any], path: str | Path | None = None) -> str:
    """A short human-readable summary of a pool's manifest (printed by `paal ingest`)."""
    m = manifest
    size = f"{m['image_size']} x {m['image_size']}" if m.get("image_size") else "native"
    lines = [
        f"pool {path or ''}".rstrip(),
        f"  {m['num_cases']} patients, {m['num_volumes']} volumes, {m['num_slices']} slices "
        f"({m.get('slices_without_structure', '?')} without structure), {m['num_shards']} shard(s)",
        f"  {m['channels']} channel(s) ({', '.join(m['modalities'])}), image size {size}, layout {m['layout']}",
        "  class            slices   pixels",
    ]
    for name, n, px in zip(m["class_names"], m["slices_with_class"], m["pixels_per_class"], strict=True):
        lines.append(f"  {name:<15} {n:>7} {px:>10}")
    if m.get("dropped_background_slices"):
        lines.append(f"  {m['dropped_background_slices']} all-background slices left out (--drop-background)")
    for s in m.get("skipped", []):
        lines.append(f"  skipped {s['file']}: {s['problem']}")
    return "\n".join(lines)
