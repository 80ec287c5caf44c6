"""``paal predict``: a run's model applied to new volumes, on a Ray Data actor pool.

The driver finds the volumes (a NIfTI file, a folder of them, or a data set in an ingest layout),
resolves the model (the run's final model, else its latest, or ``--checkpoint``) and the
preprocessing its pool went through (the pool's manifest), and streams one small item per volume
(its file names) through ``PredictActor``s (``ActorPoolStrategy``; a GPU each with
``scaling.use_gpu``). Each actor loads the model once, then reads, predicts and writes a volume at a
time and sends back one small row (its outputs, or the problem with its file): no volume passes
through the object store or the driver, so memory does not grow with the number of volumes.

Everything is written into a temporary folder beside ``out`` and renamed at the end, like ingest:
a bad volume (without ``--skip-bad``) or a crash leaves nothing behind; ``predict.json`` lists the
volumes, their outputs, the skipped ones and why, the model and the preprocessing.
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

from paal_ray.data.layouts import IngestError, Problem, Source, VolumeRef, discover, image_files

SUMMARY = "predict.json"


class PredictError(ValueError):
    """Prediction cannot run or a volume is unusable; the message names the file or run."""


@dataclass(frozen=True)
class PredictModel:
    """What prediction needs from a run: the model bundle and its pool's preprocessing."""

    checkpoint: str  # a folder holding model.pt, or the file
    manifest: dict[str, Any]  # the pool's manifest (class names, channels, normalisation, size, axis)
    run: str | None = None
    source: str = ""  # how the checkpoint was chosen


@dataclass(frozen=True)
class PredictOptions:
    probabilities: bool = False
    skip_bad: bool = False
    use_gpu: bool = False
    actors: int | None = None  # None: the cluster's CPUs (CPU) or scaling.score_actors (GPU)
    batch_size: int = 64  # slices per forward pass
    threads: int | None = None  # torch threads per CPU actor; None: Ray's (1 per actor)
    gpus_per_actor: float = 1.0


def run_model(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[PredictModel, Any]:
    """The model of a run folder: ``checkpoint`` if given, else the final phase's best model, else
    the run's latest checkpoint (a run still going); and the run's config."""
    from paal_ray.config import load_config
    from paal_ray.runs.state import RunPaths, RunState

    paths = RunPaths(Path(run_dir).absolute())
    if not paths.config.is_file():
        raise PredictError(f"{paths.root}: not a run folder (no config.yaml); give the folder `paal run` wrote")
    cfg = load_config(paths.config)
    state = RunState.load(paths)
    if checkpoint is not None:
        chosen, how = str(Path(checkpoint).absolute()), "--checkpoint"
    else:
        final = paths.root / "final.json"
        data = json.loads(final.read_text()) if final.is_file() else {}
        if data.get("best_checkpoint") or data.get("checkpoint"):
            chosen = data.get("best_checkpoint") or data["checkpoint"]
            how = "the final model (best validation Dice)" if data.get("best_checkpoint") else "the final model"
        elif state.checkpoint:
            chosen, how = state.checkpoint, f"the latest model (run in phase {state.phase!r}, round {state.round})"
        else:
            raise PredictError(f"{paths.root}: the run has no trained model yet (phase {state.phase!r})")
    file = Path(chosen) / "model.pt" if Path(chosen).is_dir() else Path(chosen)
    if not file.is_file():
        raise PredictError(f"{file}: no model bundle there (expected a checkpoint folder holding model.pt)")
    manifest_file = Path(cfg.pool) / "manifest.json"
    if not manifest_file.is_file():
        raise PredictError(f"{manifest_file}: missing; prediction preprocesses volumes as the run's pool was, "
                           f"and reads how from that manifest")
    manifest = json.loads(manifest_file.read_text())
    return PredictModel(str(chosen), manifest, str(paths.root), how), cfg


def find_volumes(src: str | Path, layout: str | None) -> Source:
    """A NIfTI file, a folder of them, or (``layout``) a data set in an ingest layout; labels,
    where the layout has them, are not needed."""
    return discover(src, layout, labels=False) if layout else image_files(src)


# -- the Ray Data actor -------------------------------------------------------------------------
class PredictActor:
    """Callable class for ``map_batches``: loads the model once, predicts a volume per item."""

    def __init__(self, checkpoint: str, plan, out_dir: str, probabilities: bool, use_gpu: bool,
                 batch_size: int, threads: int | None, sidecar: dict[str, Any]):
        import threading

        import torch

        from paal_ray.inference.predictor import SlicePredictor

        if use_gpu and not torch.cuda.is_available():
            raise PredictError("use_gpu is set but this prediction actor sees no GPU")
        self.predictor = SlicePredictor.load(checkpoint, device="cuda" if use_gpu else "cpu", batch_size=batch_size)
        self.plan, self.out_dir, self.probabilities = plan, Path(out_dir), probabilities
        self.threads, self.sidecar = threads, sidecar
        self._local = threading.local()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from paal_ray.inference.volumes import predict_volume

        if self.threads and getattr(self._local, "threads", None) != self.threads:
            torch.set_num_threads(self.threads)  # per calling thread (see scoring.ScoreActor)
            self._local.threads = self.threads
        rows = []
        for item in batch["volume"]:
            ref = VolumeRef(**json.loads(str(item)))
            if not self.out_dir.is_dir():  # the driver gave up (a bad volume): write nothing more
                rows.append({"case_id": ref.case_id, "file": ref.image, "problem": "cancelled"})
                continue
            rows.append(predict_volume(ref, self.plan, self.predictor, self.out_dir,
                                       probabilities=self.probabilities, sidecar=self.sidecar))
        return {"row": np.asarray([json.dumps(r, default=str) for r in rows], dtype=object)}


# -- the driver -----------------------------------------------------------------------------------
def predict(src: str | Path, out: str | Path, model: PredictModel, options: PredictOptions = PredictOptions(), *,
            layout: str | None = None, address: str | None = None, overwrite: bool = False,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict every volume of ``src`` into the folder ``out``; returns the summary (predict.json)."""
    import ray

    from paal_ray.atomic import atomic_directory, atomic_write_json
    from paal_ray.cluster import connect
    from paal_ray.data.ingest import explain_failure, plan_from_manifest

    log = log or (lambda _m: None)
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --overwrite")
    source = find_volumes(src, layout)
    if source.problems and not options.skip_bad:
        raise PredictError(_bad_message(source.problems, source.root))
    if not source.volumes:
        raise PredictError(f"{source.root}: no usable volumes (all {len(source.problems)} are bad)")
    plan = plan_from_manifest(model.manifest)
    if options.batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, not {options.batch_size}")
    connect(address)
    n = len(source.volumes)
    actors = options.actors or max(1, int(ray.cluster_resources().get("GPU" if options.use_gpu else "CPU", 1)))
    actors = max(1, min(actors, n))
    log(f"predict: {n} volumes from {source.root} with {model.source} ({model.checkpoint}); "
        f"{actors} actor(s) on {'GPU' if options.use_gpu else 'CPU'}")
    sidecar = {"model": model.checkpoint, "run": model.run, "preprocessing": _preprocessing(plan)}

    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    problems = list(source.problems)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        items = [{"volume": json.dumps(asdict(ref))} for ref in source.volumes]
        ds = ray.data.from_items(items, override_num_blocks=n).map_batches(
            PredictActor,
            fn_constructor_kwargs={"checkpoint": model.checkpoint, "plan": plan, "out_dir": str(tmp),
                                   "probabilities": options.probabilities, "use_gpu": options.use_gpu,
                                   "batch_size": options.batch_size,
                                   "threads": None if options.use_gpu else options.threads, "sidecar": sidecar},
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=float(options.gpus_per_actor) if options.use_gpu else 0, num_cpus=1,
        )
        step, slices = max(1, n // 10), 0
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                for raw in batch["row"]:
                    row = json.loads(str(raw))
                    if row.get("problem"):
                        problem = Problem(row["case_id"], row["file"], row["problem"])
                        if not options.skip_bad:
                            raise PredictError(_bad_message([problem], source.root))
                        problems.append(problem)
                        log(f"predict: skipping {problem}")
                    else:
                        results.append(row)
                        slices += row["slices"]
                    done = len(results) + len(problems) - len(source.problems)
                    if done % step == 0 or done == n:
                        secs = time.perf_counter() - t0
                        log(f"predict: {done}/{n} volumes ({slices} slices, {slices / max(secs, 1e-9):.0f} slices/s)")
        except PredictError:
            raise
        except Exception as e:
            raise PredictError(f"prediction failed in a Ray task: {explain_failure(e)}") from e
        if not results:
            raise PredictError(f"{source.root}: no volume could be predicted (all {len(problems)} are bad)")
        wall = time.perf_counter() - t0
        summary = _summary(source, model, plan, options, results, problems, wall, actors)
        atomic_write_json(tmp / SUMMARY, summary)
    log(f"predict: {len(results)} masks written to {out} in {wall:.1f}s "
        f"({summary['volumes_per_s']:.2f} volumes/s, {summary['slices_per_s']:.0f} slices/s)"
        + (f"; {len(problems)} skipped" if problems else ""))
    return summary


def _bad_message(problems: list[Problem], root: Path) -> str:
    listing = "\n".join(f"  {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return (f"{len(problems)} bad volume(s) in {root} (use --skip-bad to predict the others):\n{listing}{more}\n"
            f"nothing was written")


def _preprocessing(plan) -> dict[str, Any]:
    return {"channels": plan.channels, "modalities": plan.modalities, "normalisation": plan.kinds,
            "window": list(plan.window) if "ct" in plan.kinds else None,
            "percentiles": list(plan.percentiles) if "mr" in plan.kinds else None,
            "axis": plan.axis, "slice_size": plan.size}


def _summary(source: Source, model: PredictModel, plan, options: PredictOptions, results: list[dict],
             problems: list[Problem], wall: float, actors: int) -> dict[str, Any]:
    from paal_ray import __version__
    from paal_ray.provenance import versions

    order = {ref.case_id: i for i, ref in enumerate(source.volumes)}
    results = sorted(results, key=lambda r: order.get(r["case_id"], 0))
    slices = sum(r["slices"] for r in results)
    return {
        "run": model.run, "checkpoint": model.checkpoint, "model_source": model.source,
        "class_names": list(plan.class_names), "labels": {str(k): n for k, n in enumerate(plan.class_names)},
        "preprocessing": _preprocessing(plan), "source": str(source.root), "layout": source.layout,
        "probabilities": options.probabilities, "use_gpu": options.use_gpu, "actors": actors,
        "num_volumes": len(results), "num_slices": slices, "seconds": round(wall, 3),
        "volumes_per_s": len(results) / max(wall, 1e-9), "slices_per_s": slices / max(wall, 1e-9),
        "volumes": [{k: r[k] for k in ("case_id", "file", "slices", "outputs")} for r in results],
        "skipped": [asdict(p) for p in problems],
        "version": __version__, "versions": versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


__all__ = ["IngestError", "PredictError", "PredictModel", "PredictOptions", "find_volumes", "predict", "run_model"]
