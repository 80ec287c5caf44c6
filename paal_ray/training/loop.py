"""The Ray Train worker function of a round: data, resume, epochs, checkpoints, end of round.

Resume order, first match wins: the run's own latest checkpoint (``ray.train.get_checkpoint()``:
a restarted worker group or a re-run driver with the same storage_path + name), else
``spec.init_checkpoint`` (the previous round: weights, optimisers, global epoch, triggers), else
fresh models from ``spec.seed``. Rank 0 writes a checkpoint folder (``model.pt`` bundle +
``train_state.pt``) after EVERY epoch and reports it; the other ranks report metrics only.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paal_ray.data.pool import decode_images, decode_labels
from paal_ray.models.bundle import BUNDLE_FILE, ModelSpec, save_model_bundle
from paal_ray.training import extensions
from paal_ray.training.api import RoundSpec
from paal_ray.training.engine import RoundEngine, SliceSet
from paal_ray.training.triggers import build_triggers

TRAIN_STATE_FILE = "train_state.pt"
STATE_VERSION = 1


# -- reading the round's slices into memory ------------------------------------------------------
def _stack(ids: list[str], images: list[np.ndarray], labels: list[np.ndarray] | None) -> SliceSet:
    """Sorted by slice id, so the result does not depend on the order Ray Data delivered blocks."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    img = torch.from_numpy(np.stack([images[i] for i in order])) if ids else torch.zeros(0)
    lab = None
    if labels is not None:
        lab = torch.from_numpy(np.stack([labels[i] for i in order])) if ids else torch.zeros(0, dtype=torch.uint8)
    return SliceSet([ids[i] for i in order], img, lab)


def read_round_slices(iterator, spec: RoundSpec, extra_ids: dict[str, list[str]], *, rank: int = 0,
                      world: int = 1) -> tuple[SliceSet, SliceSet, dict[str, SliceSet]]:
    """Route the rows of one Ray Data iterator: every labelled slice (each rank holds them all), this
    rank's share of the validation slices (by a hash of the slice id), and the extension's slices
    (images only). A slice both labelled and in an extra set is decoded for each."""
    size = spec.config.model.image_size
    train_ids, val_ids = set(spec.train_ids), set(spec.val_ids)
    extra_sets = {name: set(ids) for name, ids in extra_ids.items()}
    acc: dict[str, tuple[list, list, list | None]] = {"train": ([], [], []), "val": ([], [], [])}
    for name in extra_sets:
        acc[name] = ([], [], None)
    for batch in iterator.iter_batches(batch_size=256, batch_format="numpy"):
        ids = [str(s) for s in batch["slice_id"]]
        routes = {
            "train": [i for i, s in enumerate(ids) if s in train_ids],
            "val": [i for i, s in enumerate(ids) if s in val_ids and zlib.crc32(s.encode()) % world == rank],
            **{name: [i for i, s in enumerate(ids) if s in members] for name, members in extra_sets.items()},
        }
        for name, rows in routes.items():
            if not rows:
                continue
            sub = {k: v[rows] for k, v in batch.items()}
            a_ids, a_img, a_lab = acc[name]
            a_ids.extend(ids[i] for i in rows)
            a_img.extend(decode_images(sub, size))
            if a_lab is not None:
                a_lab.extend(decode_labels(sub, size).astype(np.uint8))
    missing = train_ids - set(acc["train"][0])
    if missing:
        raise ValueError(f"{spec.pool_path}: labelled slices not in the pool: {sorted(missing)[:5]}")
    out = {name: _stack(*parts) for name, parts in acc.items()}
    return out.pop("train"), out.pop("val"), out


# -- state ------------------------------------------------------------------------------------
def _triggers(spec: RoundSpec) -> dict:
    return build_triggers(spec.config.schedule, spec.config.train.warmup_epochs)


def fresh_state(spec: RoundSpec) -> dict[str, Any]:
    return {
        "version": STATE_VERSION, "global_epoch": 0, "round_index": 0, "round_name": spec.name,
        "round_start_epoch": 0, "phase": spec.phase, "epochs": [], "best_score": float("-inf"),
        "triggers": {name: t.state_dict() for name, t in _triggers(spec).items()},
        "stopped_by": None, "best_checkpoint": None, "extension": spec.extension, "starts": [],
        # Randomness is re-derived from (seed, global epoch, rank, purpose) at every epoch, so a
        # resumed round draws exactly what an uninterrupted one would have drawn.
        "rng": {"seed": spec.seed, "scheme": "derive_seed(seed, global_epoch, rank, purpose)"},
    }


def start_next_round(prev: dict[str, Any], spec: RoundSpec) -> dict[str, Any]:
    """State at the start of a round that continues from the previous round's checkpoint."""
    state = dict(prev)
    state.update(
        round_index=int(prev["round_index"]) + 1, round_name=spec.name, round_start_epoch=int(prev["global_epoch"]),
        phase=spec.phase, epochs=[], stopped_by=None, best_checkpoint=None, extension=spec.extension, starts=[],
    )
    state["triggers"] = dict(prev["triggers"])
    state["triggers"]["early_stop"] = _triggers(spec)["early_stop"].state_dict()  # per final phase
    state["rng"] = {"seed": spec.seed, "scheme": prev["rng"]["scheme"]}
    return state


def load_checkpoint_folder(folder: str | Path) -> tuple[dict, dict]:
    """(model bundle blob, train state) of a checkpoint folder; clear errors when incomplete."""
    folder = Path(folder)
    for f in (BUNDLE_FILE, TRAIN_STATE_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f}: missing; {folder} is not a training checkpoint folder")
    blob = torch.load(folder / BUNDLE_FILE, map_location="cpu", weights_only=False)
    state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{folder / TRAIN_STATE_FILE}: state version {state.get('version')}, expected {STATE_VERSION}")
    return blob, state


def write_checkpoint_folder(folder: Path, engine: RoundEngine, state: dict, meta: dict) -> None:
    save_model_bundle(folder, engine.spec, engine.segmenter, engine.ap, extensions=engine.extension_state(), meta=meta)
    tc = engine.cfg.train
    schedule = {"kind": "linear warm-up + cosine", "global_epoch": state["global_epoch"], "lr": tc.lr,
                "warmup_epochs": tc.warmup_epochs, "schedule_epochs": tc.schedule_epochs, "min_lr": tc.min_lr}
    rng = {**state["rng"], "torch_cpu": torch.get_rng_state()}
    torch.save({**state, "scheduler": schedule, "rng": rng, "optimisers": engine.optimiser_state()},
               folder / TRAIN_STATE_FILE)


def _move_into_storage(checkpoint, dir_name: str):
    """Ray's upload step as a rename: the folder was written beside its destination, so a 500 MB
    ResNet-50 checkpoint costs no copy. Other filesystems fall back to Ray's copy."""
    import pyarrow.fs
    import ray.train

    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return storage.persist_current_checkpoint(checkpoint, dir_name)
    dest = Path(storage.build_checkpoint_path_from_name(dir_name))
    if dest.exists():  # the same epoch re-run after a failure: replace it
        shutil.rmtree(dest)
    os.replace(checkpoint.path, dest)
    return ray.train.Checkpoint(str(dest), filesystem=storage.storage_filesystem)


# -- the worker function ------------------------------------------------------------------------
def say(line: str) -> None:
    """One progress line to the worker's stdout (Ray forwards it to the driver). Not ``print``:
    Ray Train patches print in its workers to also copy each line to its logger, which the driver
    would then show twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    spec: RoundSpec = config["spec"]
    cfg = spec.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    run_dir = Path(spec.storage_path) / spec.name

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            blob, state = load_checkpoint_folder(d)
        if state["stopped_by"] is not None:
            return  # this round already ended; the driver reads its last checkpoint
        source = "resumed"
    elif spec.init_checkpoint:
        blob, prev = load_checkpoint_folder(spec.init_checkpoint)
        state = start_next_round(prev, spec)
        source = "continued"
    else:
        blob, state = None, fresh_state(spec)
        source = "fresh"

    # Each start of this round's worker group (fresh / continued / resumed, at which epoch):
    # the fault-tolerance tests read it, and it tells a user how often a round was restarted.
    state["starts"] = [*state.get("starts", []), {"source": source, "global_epoch": int(state["global_epoch"])}]
    ext = extensions.get(spec.extension)
    model_spec = ModelSpec.from_config(cfg.model, spec.in_channels, spec.num_classes)
    if device.type == "cpu" and cfg.scaling.train_threads:
        torch.set_num_threads(cfg.scaling.train_threads)  # Ray sets OMP_NUM_THREADS to the worker's CPUs
    engine = RoundEngine(cfg, model_spec, ext, device, rank=rank, world=world, seed=spec.seed)
    if blob is not None:
        engine.load_models(blob["segmenter"], blob["ap"], blob.get("extensions", {}))
        if "optimisers" in state:
            engine.load_optimiser_state(state.pop("optimisers"))
    ext.start_round(engine.net.head, int(state["round_index"]))

    train, val, extra = read_round_slices(ray.train.get_dataset_shard("slices"), spec, ext.extra_ids(spec),
                                          rank=rank, world=world)
    images, labels = ext.extend_training_set(engine.predict_labels, train.images, train.labels,
                                             {name: s.images for name, s in extra.items()})
    data = engine.to_device(SliceSet(train.ids + [f"extra/{i}" for i in range(len(images) - len(train))], images, labels))
    if rank == 0 and source != "resumed":
        for stale in run_dir.glob(".ckpt-tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if rank == 0:
        say(f"[{spec.name}] {source} at global epoch {state['global_epoch']}: {len(data)} training slices "
              f"({len(data) - len(train)} pseudo-labelled), {world} worker(s) on {device.type}")

    _run_epochs(spec, engine, state, data, val, rank, run_dir)


def _run_epochs(spec: RoundSpec, engine: RoundEngine, state: dict, data: SliceSet, val: SliceSet,
                rank: int, run_dir: Path) -> None:

    sc = spec.config.schedule
    triggers = _triggers(spec)
    for name, trigger in triggers.items():
        trigger.load_state_dict(state["triggers"][name])
    query_trigger, early = triggers[sc.mode], triggers["early_stop"]
    fixed_final = spec.phase == "final" and sc.final_epochs is not None
    if fixed_final:
        engine.lr_window = (int(state["round_start_epoch"]), sc.final_warmup_epochs, sc.final_epochs)

    while True:
        g = int(state["global_epoch"])
        tr = engine.train_epoch(data, g)
        if spec.config.train.ap_target == "validation":
            tr["ap_loss"] = engine.train_ap_on_held_out(val, g)
        state["global_epoch"] = g + 1
        round_epoch = g + 1 - int(state["round_start_epoch"])
        # A fixed-length final phase keeps its last epoch whatever validation says: validating the
        # epochs between (every final_val_every-th) only draws the curve.
        validate = not fixed_final or round_epoch % sc.final_val_every == 0 or round_epoch >= sc.final_epochs
        va = engine.validate(val) if validate else {"val_dice": None, "val_dice_per_class": None, "val_ap_mae": None}
        score = va["val_dice"]
        stopped_by = None
        # A query round ends by its trigger or once the run reaches max_epochs; the final phase
        # has a budget of its own (a fixed length, or early stopping), whatever the rounds used.
        if spec.phase == "query":
            if query_trigger.update(score):
                stopped_by = query_trigger.name
            elif state["global_epoch"] >= sc.max_epochs:
                stopped_by = "max_epochs"
        else:
            if score is not None and early.improved(score):
                state["best_checkpoint"] = _save_best(run_dir, engine, state, rank, score)
            if fixed_final:
                if score is not None:
                    early.update(score)  # keeps the best score; a fixed-length phase ignores its patience
                stopped_by = "final_epochs" if round_epoch >= sc.final_epochs else None
            elif early.update(score):
                stopped_by = early.name
        cap = sc.max_epochs_per_round if spec.phase == "query" else sc.max_final_epochs
        if stopped_by is None and cap is not None and round_epoch >= cap:
            stopped_by = "max_epochs"
        if score is not None:
            state["best_score"] = max(float(state["best_score"]), score)
        state["triggers"] = {name: t.state_dict() for name, t in triggers.items()}
        state["stopped_by"] = stopped_by
        record = {"round": spec.name, "global_epoch": g + 1, "round_epoch": round_epoch, "lr": tr["lr"],
                  "train_loss": tr["train_loss"], "ap_loss": tr["ap_loss"], "ext_loss": tr["ext_loss"],
                  "val_dice": score, "val_dice_per_class": va["val_dice_per_class"], "val_ap_mae": va["val_ap_mae"],
                  "train_slices_per_s": tr["train_slices_per_s"], "seconds": tr["train_seconds"],
                  "peak_gpu_mem_gb": tr["peak_gpu_mem_gb"], "ended_at": time.time()}
        state["epochs"] = [*state["epochs"], record]
        if rank == 0:
            ap = "silent" if tr["ap_loss"] is None else f"{tr['ap_loss']:.4f}"
            shown = "not validated" if score is None else f"val_dice {score:.4f} ap_mae {va['val_ap_mae']:.4f}"
            say(f"[{spec.name}] epoch {g + 1} (round {round_epoch}) loss {tr['train_loss']:.4f} ap_loss {ap} {shown} "
                  f"lr {tr['lr']:.2e} "
                  f"{tr['train_slices_per_s']:.0f} slices/s" + (f" -> end: {stopped_by}" if stopped_by else ""))
        _report(spec, engine, state, record, rank, run_dir)
        _maybe_inject_fault(spec, rank, round_epoch, run_dir)
        if stopped_by is not None:
            return


def _report(spec: RoundSpec, engine: RoundEngine, state: dict, record: dict, rank: int, run_dir: Path) -> None:
    import ray.train

    metrics = {k: v for k, v in record.items() if not isinstance(v, list)}
    metrics["stopped_by"] = state["stopped_by"] or ""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    tmp = run_dir / f".ckpt-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    meta = {"global_epoch": state["global_epoch"], "round": spec.name, "val_dice": record["val_dice"],
            "spec_seed": spec.seed}
    write_checkpoint_folder(tmp, engine, state, meta)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                     checkpoint_dir_name=f"checkpoint_{state['global_epoch']:06d}",
                     checkpoint_upload_fn=_move_into_storage, delete_local_checkpoint_after_upload=False)


def _save_best(run_dir: Path, engine: RoundEngine, state: dict, rank: int, score: float) -> str:
    """The final phase keeps its best-validation model in RUN_DIR/best (model.pt only)."""
    from paal_ray.atomic import atomic_directory

    best = run_dir / "best"
    if rank == 0:
        with atomic_directory(best, overwrite=True) as tmp:
            save_model_bundle(tmp, engine.spec, engine.segmenter, engine.ap, extensions=engine.extension_state(),
                              meta={"global_epoch": state["global_epoch"], "val_dice": score})
    return str(best)


def _maybe_inject_fault(spec: RoundSpec, rank: int, round_epoch: int, run_dir: Path) -> None:
    """Tests only: kill this worker process once, after the given epoch of the round."""
    fi = spec.fault_injection
    if not fi or rank != int(fi.get("kill_rank", 1)) or round_epoch != int(fi.get("at_epoch", 1)):
        return
    marker = run_dir / f".fault-injected-rank{rank}-epoch{round_epoch}"
    if marker.exists():
        return
    marker.write_text("fired\n")
    say(f"[{spec.name}] fault injection: rank {rank} exits after round epoch {round_epoch}")
    os._exit(1)
