"""The runs of a workspace as the selection service sees them: read-only views, and mask upload.

This is the service's logic without HTTP (``paal_ray.serve`` maps it to routes): list runs and
their state, show a round's selection with which masks have arrived, hand out a selected slice's
image for annotation, and accept an annotator's mask. An uploaded mask goes through the same
checks as a file dropped into the inbox (``oracle.validate_mask``) and is written, atomically,
into that inbox as ``<slice>.npy``; the run itself picks the masks up when it is resumed
(``paal run --resume``), so the service never drives training and two writers never share a step.

Only reads the run folder's files: nothing here imports torch or starts Ray.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from paal_ray.atomic import atomic_write_bytes, read_jsonl
from paal_ray.config import load_config
from paal_ray.data.pool import IMAGE_COLUMNS, Pool
from paal_ray.runs.oracle import (
    MASK_SUFFIXES,
    MaskError,
    decode_slice,
    export_dir,
    find_mask,
    inbox_path,
    prediction_names,
    read_mask_bytes,
    safe_name,
    slice_nifti,
    slice_png,
    validate_mask,
)
from paal_ray.runs.report import curve_points
from paal_ray.runs.state import RunPaths, RunState, RunStateError

IMAGE_FORMATS = ("png", "nii.gz")


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a strategy's score may be either) are not JSON: None instead."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunNotFound(LookupError):
    """No such run (or slice) in the workspace; the message names it."""


class NotAcceptingMasks(RuntimeError):
    """The run cannot take this mask now (not waiting for annotations, simulated oracle, or the
    slice is not in the round's selection); the message says why."""


class RunCatalog:
    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).absolute()

    # -- runs -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.workspace.is_dir():
            return []
        return sorted(p.name for p in self.workspace.iterdir() if (p / "state.json").is_file())

    def paths(self, name: str) -> RunPaths:
        root = (self.workspace / name).absolute()
        # A run name is one folder of the workspace, never a path out of it.
        if root.parent != self.workspace or not (root / "state.json").is_file():
            raise RunNotFound(f"run {name!r}: not found in {self.workspace} (runs: {', '.join(self.names()) or 'none'})")
        return RunPaths(root)

    def summary(self, name: str) -> dict[str, Any]:
        paths = self.paths(name)
        state = RunState.load(paths)
        return {
            "name": name, "strategy": state.strategy, "phase": state.phase, "round": min(state.round, state.rounds),
            "rounds": state.rounds, "labelled": state.labeled_count, "budget": state.budget,
            "per_round": state.per_round, "best_val_dice": state.best_score, "final_dice": state.final_dice,
            "waiting_for_masks": state.phase == "annotate" and state.waiting_for is not None,
        }

    def detail(self, name: str) -> dict[str, Any]:
        """The summary plus the learning curve (Dice, AP error and Pearson r by round)."""
        paths = self.paths(name)
        keys = ("kind", "round", "labeled_count", "val_dice", "val_dice_per_class", "ap_error", "ap_pearson", "query_s")
        curve = [{k: m.get(k) for k in keys} for m in curve_points(read_jsonl(paths.metrics))]
        return {**self.summary(name), "oracle": self._config(paths).oracle.kind, "curve": curve}

    # -- selections -----------------------------------------------------------------------------
    def selection(self, name: str, round_index: int | None = None) -> dict[str, Any]:
        """A round's selected slices in rank order (the round being annotated by default), with the
        strategy's scores and whether each slice's mask has arrived."""
        paths = self.paths(name)
        state = RunState.load(paths)
        r = self._round(paths, state, round_index)
        table = self._selection_table(paths, r)
        rows = [{k: _json_safe(v) for k, v in row.items()} for row in table.to_pylist()]
        inbox = self._inbox(paths, r, self._config(paths))
        annotating = state.phase == "annotate" and state.round == r and inbox is not None
        if annotating:
            for row in rows:
                row["mask_received"] = find_mask(inbox, row["slice_id"]) is not None
        self._add_predictions(paths, r, rows)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        return {
            "run": name, "round": r, "strategy": meta.get("strategy", state.strategy),
            "kmeans_backend": meta.get("kmeans_backend") or None,
            "timings": json.loads(meta["timings"]) if "timings" in meta else None,
            "annotating": annotating, "masks_missing": sum(not row.get("mask_received", True) for row in rows),
            "slices": rows,
        }

    def image(self, name: str, slice_id: str, fmt: str = "png") -> bytes:
        """A selected slice's image for annotation, as the human oracle exports it: PNG (first
        channel, grey) or gzipped NIfTI (all channels, [H, W, C]). Rendered from the pool."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
        paths = self.paths(name)
        self._round_of(paths, RunState.load(paths), slice_id)  # only selected slices are handed out
        pool = Pool.open(self._config(paths).pool)
        image, _ = decode_slice(pool.read_slices([slice_id], columns=IMAGE_COLUMNS).to_pylist()[0])
        return slice_png(image) if fmt == "png" else slice_nifti(image)

    # -- pre-annotations ------------------------------------------------------------------------
    def prediction(self, name: str, slice_id: str, fmt: str = "png") -> bytes:
        """A selected slice's pre-annotation: the model's predicted mask the human oracle wrote beside
        the exported image (PNG grey levels = class indices, or uint8 NIfTI [H, W])."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
        paths = self.paths(name)
        r = self._round_of(paths, RunState.load(paths), slice_id)
        path = export_dir(paths, r) / prediction_names(slice_id)[fmt]
        if not path.is_file():
            raise RunNotFound(f"slice {slice_id!r}: no predicted mask in round {r} of run {name!r} (only runs with "
                              f"oracle.kind=human whose checkpoint holds a model write them, when they export)")
        return path.read_bytes()

    @staticmethod
    def _add_predictions(paths: RunPaths, r: int, rows: list[dict[str, Any]]) -> None:
        """Each row: ``has_prediction`` (its pre-annotation is there) and ``pred_dice`` (the AP's
        predicted Dice per class, background first, where the strategy scored it; else None)."""
        folder = export_dir(paths, r)
        for row in rows:
            row["has_prediction"] = (folder / prediction_names(row["slice_id"])["png"]).is_file()
            row["pred_dice"] = row.get("pred_acc")

    # -- masks ----------------------------------------------------------------------------------
    def put_mask(self, name: str, slice_id: str, data: bytes, filename: str) -> dict[str, Any]:
        """Validate an annotator's mask for a slice of the round being annotated and store it in
        that round's inbox. ``filename``'s suffix gives the format (.png, .npy, .nii, .nii.gz)."""
        paths = self.paths(name)
        state = RunState.load(paths)
        cfg = self._config(paths)
        if cfg.oracle.kind != "human":
            raise NotAcceptingMasks(f"run {name!r} takes its labels from the pool (oracle.kind={cfg.oracle.kind})")
        if state.phase != "annotate":
            raise NotAcceptingMasks(f"run {name!r} is not waiting for masks (phase {state.phase!r}, round {state.round})")
        selected = self._selection_table(paths, state.round).column("slice_id").to_pylist()
        if slice_id not in selected:
            raise NotAcceptingMasks(f"slice {slice_id!r} is not in round {state.round}'s selection of run {name!r}")
        pool = Pool.open(cfg.pool)
        source = f"upload {filename!r} for slice {slice_id!r}"
        row = pool.read_slices([slice_id], columns=["slice_id", "image_shape"]).to_pylist()[0]
        mask = validate_mask(read_mask_bytes(data, filename, source=source), shape=tuple(row["image_shape"][1:]),
                             num_classes=pool.num_classes, source=source)
        inbox = self._inbox(paths, state.round, cfg)
        buf = io.BytesIO()
        np.save(buf, mask, allow_pickle=False)
        stem = safe_name(slice_id)
        atomic_write_bytes(inbox / f"{stem}.npy", buf.getvalue())
        for suffix in MASK_SUFFIXES:  # an earlier file in another format would shadow this one
            if suffix != ".npy":
                (inbox / f"{stem}{suffix}").unlink(missing_ok=True)
        missing = [s for s in selected if find_mask(inbox, s) is None]
        return {"run": name, "round": state.round, "slice_id": slice_id, "stored": str(inbox / f"{stem}.npy"),
                "classes_present": sorted(int(v) for v in np.unique(mask)), "masks_missing": len(missing),
                "next": (f"all {len(selected)} masks in: resume the run (`paal run --resume {paths.root}`)"
                         if not missing else f"{len(missing)} of {len(selected)} masks still missing")}

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _config(paths: RunPaths):
        return load_config(paths.config)

    @staticmethod
    def _inbox(paths: RunPaths, r: int, cfg) -> Path | None:
        return inbox_path(paths, r, cfg.oracle.inbox) if cfg.oracle.kind == "human" else None

    @staticmethod
    def _round(paths: RunPaths, state: RunState, round_index: int | None) -> int:
        if round_index is None:
            done = sorted(int(p.parent.name) for p in (paths.root / "rounds").glob("*/selection.parquet"))
            if not done:
                raise RunNotFound(f"run {paths.root.name!r}: no selection yet (phase {state.phase!r})")
            return min(state.round, done[-1])
        return round_index  # a round without a selection is reported when its table is read

    @staticmethod
    def _selection_table(paths: RunPaths, r: int):
        import pyarrow.parquet as pq

        path = paths.selection(r)
        if not path.is_file():
            raise RunNotFound(f"run {paths.root.name!r}: round {r} has no selection")
        return pq.read_table(path)

    def _round_of(self, paths: RunPaths, state: RunState, slice_id: str) -> int:
        """The latest round whose selection holds the slice."""
        for r in range(min(state.round, state.rounds), -1, -1):
            if paths.selection(r).is_file() and slice_id in self._selection_table(paths, r).column("slice_id").to_pylist():
                return r
        raise RunNotFound(f"slice {slice_id!r}: not selected in any round of run {paths.root.name!r}")


__all__ = ["IMAGE_FORMATS", "MaskError", "NotAcceptingMasks", "RunCatalog", "RunNotFound", "RunStateError"]
