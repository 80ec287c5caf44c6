"""The runs of a workspace as the selection service sees them: read-only views, and mask upload.

This is the service's logic without HTTP (``paal_ray.serve`` maps it to routes): list runs and
their state, show a round's selection (a page of it) with which masks have arrived, hand out a
selected slice's image for annotation, and accept an annotator's mask. An uploaded mask goes
through the same checks as a file dropped into the inbox (``oracle.validate_mask``) and is
written, atomically, into that inbox as ``<slice>.npy``, and the upload is appended to the run's
audit log (``RUN/audit.jsonl``); the run itself picks the masks up when it is resumed
(``paal run --resume``), so the service never drives training and two writers never share a step.

A run name is one of the names ``names()`` lists (folders of the workspace holding a state.json,
dot-folders skipped): anything else is ``RunNotFound``. What goes wrong on the server side (a
damaged run folder, a pool that is gone) is ``RunDamaged`` or ``PoolUnavailable``, never a client
error. Messages name files relative to the workspace.

Only reads the run folder's files: nothing here imports torch or starts Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paal_ray.atomic import append_jsonl, atomic_write_bytes, read_jsonl
from paal_ray.config import load_config
from paal_ray.data.pool import IMAGE_COLUMNS, Pool, PoolError
from paal_ray.runs.oracle import (
    MASK_SUFFIXES,
    MaskError,
    decode_slice,
    export_dir,
    inbox_path,
    prediction_names,
    safe_name,
    slice_nifti,
    slice_png,
    validate_mask,
)
from paal_ray.runs.report import curve_points
from paal_ray.runs.state import RunPaths, RunState, RunStateError

IMAGE_FORMATS = ("png", "nii.gz")
AUDIT_LOG = "audit.jsonl"


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a strategy's score may be either) are not JSON: None instead."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunNotFound(LookupError):
    """No such run (or round, or selected slice) in the workspace; the message names it."""


class NotAcceptingMasks(RuntimeError):
    """The run cannot take this mask now (not waiting for annotations, simulated oracle, or the
    slice is not in the round's selection); the message says why."""


class RunDamaged(RuntimeError):
    """A run folder cannot be read (truncated or missing files): damage on the server side."""


class PoolUnavailable(RuntimeError):
    """The run's pool cannot be read now (moved, unmounted, being rewritten)."""


@dataclass(frozen=True)
class MaskTarget:
    """Where an annotator's mask for one slice goes, and what it must look like."""

    run: str
    round: int
    slice_id: str
    shape: tuple[int, int]
    num_classes: int
    inbox: Path
    selected: tuple[str, ...]


class NotParsed(Exception):
    """``selection(..., may_parse=False)`` would have had to parse a selection table (~60 ms for
    5,000 rows): the service's async route asks again from a thread."""


class _FileCache:
    """Parsed files keyed by (path, inode, mtime, size): run files are rewritten only by rename
    (a new inode), so an unchanged stat means unchanged content. Folders keep their inode: for
    them ``max_age`` bounds how long a listing is trusted on a coarse-mtime filesystem."""

    def __init__(self, size: int = 64, max_age: float | None = None):
        self._items: dict[Path, tuple[tuple[int, int, int], float, Any]] = {}
        self._size = size
        self._max_age = max_age
        self._lock = threading.Lock()

    def get(self, path: Path, parse, *, may_parse: bool = True):
        st = path.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(path)
        if hit and hit[0] == key and (self._max_age is None or now - hit[1] < self._max_age):
            return hit[2]
        if not may_parse:
            raise NotParsed(str(path))
        value = parse(path)
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[path] = (key, now, value)
        return value


def _mask_stems(inbox: Path) -> frozenset[str]:
    out = set()
    for n in os.listdir(inbox):
        for suffix in MASK_SUFFIXES:
            if n.endswith(suffix) and not n.startswith("."):
                out.add(n[: -len(suffix)])
    return frozenset(out)


class _Selection:
    """A selection table as the service serves it, parsed once: JSON-safe rows, ids and file stems."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.table = pq.read_table(path)
        self.rows = [{k: _json_safe(v) for k, v in row.items()} for row in self.table.to_pylist()]
        self.ids = [row["slice_id"] for row in self.rows]
        self.stems = [safe_name(s) for s in self.ids]
        self.meta = {k.decode(): v.decode() for k, v in (self.table.schema.metadata or {}).items()}
        self.stem_set = frozenset(self.stems)
        self._arrived: tuple[frozenset[str], int] | None = None  # (an inbox listing, how many of it are selected)

    def arrived(self, received: frozenset[str]) -> int:
        """How many selected slices' masks are in ``received`` (one set intersection per inbox listing,
        not per request: annotators page through a 5,000-slice selection many times a second)."""
        last = self._arrived
        if last is None or last[0] is not received:
            last = self._arrived = (received, len(received & self.stem_set))
        return last[1]


def _folder_names(folder: Path) -> frozenset[str]:
    return frozenset(os.listdir(folder))


class RunCatalog:
    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).absolute()
        self._tables = _FileCache()
        self._configs = _FileCache()
        self._states = _FileCache(size=1024)
        self._inboxes = _FileCache(max_age=1.0)
        self._exports = _FileCache(max_age=1.0)  # the annotate folders' listings (pre-annotations)

    # -- names and paths --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The workspace's runs: its folders holding a state.json (dot-folders skipped)."""
        try:
            entries = list(os.scandir(self.workspace))
        except OSError:
            return []
        out = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "state.json")):
                    out.append(entry.name)
            except OSError:
                continue
        return sorted(out)

    def paths(self, name: str) -> RunPaths:
        if name not in self.names():  # never a path: `..`, `a/b` and over-long names are simply not listed
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise RunNotFound(f"run {shown!r}: not found in the workspace (runs: {', '.join(self.names()) or 'none'})")
        return RunPaths(self.workspace / name)

    def relative(self, text: str) -> str:
        """A message with the workspace's absolute path taken out (files named relative to it)."""
        return text.replace(f"{self.workspace}{os.sep}", "").replace(str(self.workspace), ".")

    def _state(self, paths: RunPaths) -> RunState:
        try:
            return self._states.get(paths.state, lambda p: RunState.load(paths))
        except (RunStateError, OSError, TypeError) as e:
            raise RunDamaged(self.relative(f"run {paths.root.name!r} cannot be read: {e}")) from e

    def _config(self, paths: RunPaths):
        try:
            return self._configs.get(paths.config, load_config)
        except (OSError, ValueError) as e:
            raise RunDamaged(self.relative(f"run {paths.root.name!r}: {paths.config} cannot be read "
                                           f"({str(e).splitlines()[0]})")) from e

    def _pool(self, cfg) -> Pool:
        try:
            return Pool.open(cfg.pool)
        except (PoolError, OSError) as e:
            raise PoolUnavailable(f"the run's pool {Path(cfg.pool).name!r} cannot be read now "
                                  f"({type(e).__name__}); the service's operator can check it") from e

    # -- runs -----------------------------------------------------------------------------------
    def summary(self, name: str, *, listed: bool = False) -> dict[str, Any]:
        paths = RunPaths(self.workspace / name) if listed else self.paths(name)
        state = self._state(paths)
        return {
            "name": name, "readable": True, "error": None, "strategy": state.strategy, "phase": state.phase,
            "round": min(state.round, state.rounds), "rounds": state.rounds, "labelled": state.labeled_count,
            "budget": state.budget, "per_round": state.per_round, "best_val_dice": state.best_score,
            "final_dice": state.final_dice,
            "waiting_for_masks": state.phase == "annotate" and state.waiting_for is not None,
        }

    def listing(self) -> list[dict[str, Any]]:
        """Every run's summary; a run that cannot be read (truncated state.json, a folder being
        copied) is listed as unreadable with the reason, and the others are unaffected."""
        out = []
        for name in self.names():
            try:
                out.append(self.summary(name, listed=True))
            except (RunDamaged, RunNotFound) as e:  # RunNotFound: removed while listing
                out.append({"name": name, "readable": False, "error": str(e)})
        return out

    def detail(self, name: str) -> dict[str, Any]:
        """The summary plus the learning curve (Dice, AP error and Pearson r by round)."""
        paths = self.paths(name)
        summary = self.summary(name)
        keys = ("kind", "round", "labeled_count", "val_dice", "val_dice_per_class", "ap_error", "ap_pearson", "query_s")
        curve = [{k: _json_safe(m.get(k)) for k in keys} for m in curve_points(read_jsonl(paths.metrics))]
        return {**summary, "oracle": self._config(paths).oracle.kind, "curve": curve}

    # -- selections -----------------------------------------------------------------------------
    def selection(self, name: str, round_index: int | None = None, *, offset: int = 0,
                  limit: int | None = None, may_parse: bool = True) -> dict[str, Any]:
        """A page of a round's selected slices in rank order (the round being annotated by
        default), with the strategy's scores and whether each slice's mask has arrived.
        ``may_parse=False``: NotParsed instead of parsing a selection table not parsed before."""
        paths = self.paths(name)
        state = self._state(paths)
        r = self._round(paths, state, round_index)
        sel = self._selection_table(paths, r, may_parse=may_parse)
        total = len(sel.rows)
        stop = total if limit is None else min(total, offset + limit)
        rows = [dict(row) for row in sel.rows[offset:stop]]
        cfg = self._config(paths)
        inbox = self._inbox(paths, r, cfg)
        annotating = state.phase == "annotate" and state.round == r and inbox is not None
        missing = 0
        if annotating:
            received = self._received(inbox)
            for row, stem in zip(rows, sel.stems[offset:stop], strict=True):
                row["mask_received"] = stem in received
            missing = total - sel.arrived(received)
        self._add_predictions(paths, r, rows)
        meta = sel.meta
        return {
            "run": name, "round": r, "strategy": meta.get("strategy", state.strategy),
            "kmeans_backend": meta.get("kmeans_backend") or None,
            "timings": json.loads(meta["timings"]) if "timings" in meta else None,
            "annotating": annotating, "masks_missing": missing,
            "total": total, "offset": offset, "limit": limit,
            "next_offset": stop if stop < total else None,
            "slices": rows,
        }

    def image(self, name: str, slice_id: str, fmt: str = "png") -> bytes:
        """A selected slice's image for annotation, as the human oracle exports it: PNG (first
        channel, grey) or gzipped NIfTI (all channels, [H, W, C]). Rendered from the pool."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
        paths = self.paths(name)
        self._round_of(paths, self._state(paths), slice_id)  # only selected slices are handed out
        pool = self._pool(self._config(paths))
        try:
            row = pool.read_slices([slice_id], columns=IMAGE_COLUMNS).to_pylist()[0]
        except (PoolError, OSError) as e:
            raise PoolUnavailable(f"slice {slice_id!r} cannot be read from the run's pool now ({type(e).__name__})") from e
        image, _ = decode_slice(row)
        return slice_png(image) if fmt == "png" else slice_nifti(image)

    # -- pre-annotations ------------------------------------------------------------------------
    def prediction(self, name: str, slice_id: str, fmt: str = "png") -> bytes:
        """A selected slice's pre-annotation: the model's predicted mask the human oracle wrote beside
        the exported image (PNG grey levels = class indices, or uint8 NIfTI [H, W])."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(IMAGE_FORMATS)}")
        paths = self.paths(name)
        r = self._round_of(paths, self._state(paths), slice_id)
        path = export_dir(paths, r) / prediction_names(slice_id)[fmt]
        if not path.is_file():
            raise RunNotFound(f"slice {slice_id!r}: no predicted mask in round {r} of run {name!r} (only runs with "
                              f"oracle.kind=human whose checkpoint holds a model write them, when they export)")
        return path.read_bytes()

    def _add_predictions(self, paths: RunPaths, r: int, rows: list[dict[str, Any]]) -> None:
        """Each row: ``has_prediction`` (its pre-annotation is there) and ``pred_dice`` (the AP's
        predicted Dice per class, background first, where the strategy scored it; else None).
        One listing of the annotate folder (cached while its mtime stands still), not a stat a row."""
        try:
            present = self._exports.get(export_dir(paths, r), _folder_names)
        except OSError:
            present = frozenset()
        for row in rows:
            row["has_prediction"] = prediction_names(row["slice_id"])["png"] in present
            row["pred_dice"] = row.get("pred_acc")

    # -- masks ----------------------------------------------------------------------------------
    def mask_target(self, name: str, slice_id: str) -> MaskTarget:
        """Where a mask for ``slice_id`` would go now, and its expected shape; NotAcceptingMasks
        when the run does not take it. Called before the upload's body is read."""
        paths = self.paths(name)
        state = self._state(paths)
        cfg = self._config(paths)
        if cfg.oracle.kind != "human":
            raise NotAcceptingMasks(f"run {name!r} takes its labels from the pool (oracle.kind={cfg.oracle.kind})")
        if state.phase != "annotate":
            raise NotAcceptingMasks(f"run {name!r} is not waiting for masks (phase {state.phase!r}, round {state.round})")
        selected = self._slice_ids(paths, state.round)
        if slice_id not in selected:
            raise NotAcceptingMasks(f"slice {slice_id!r} is not in round {state.round}'s selection of run {name!r}")
        pool = self._pool(cfg)
        try:
            row = pool.read_slices([slice_id], columns=["slice_id", "image_shape"]).to_pylist()[0]
        except (PoolError, OSError) as e:
            raise PoolUnavailable(f"slice {slice_id!r} cannot be read from the run's pool now ({type(e).__name__})") from e
        h, w = (int(v) for v in row["image_shape"][1:])
        return MaskTarget(run=name, round=state.round, slice_id=slice_id, shape=(h, w), num_classes=pool.num_classes,
                          inbox=self._inbox(paths, state.round, cfg), selected=tuple(selected))

    def store_mask(self, target: MaskTarget, mask: np.ndarray, *, body: bytes, fmt: str, annotator: str,
                   source: str) -> dict[str, Any]:
        """Validate a decoded mask, store it in the round's inbox and append the upload to the
        run's audit log (time, annotator, slice, sha256 and size of the body as received)."""
        mask = validate_mask(mask, shape=target.shape, num_classes=target.num_classes, source=source)
        buf = io.BytesIO()
        np.save(buf, mask, allow_pickle=False)
        stem = safe_name(target.slice_id)
        stored = target.inbox / f"{stem}.npy"
        atomic_write_bytes(stored, buf.getvalue())
        for suffix in MASK_SUFFIXES:  # an earlier file in another format would shadow this one
            if suffix != ".npy":
                (target.inbox / f"{stem}{suffix}").unlink(missing_ok=True)
        append_jsonl(self.workspace / target.run / AUDIT_LOG, {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "annotator": annotator,
            "run": target.run, "round": target.round, "slice_id": target.slice_id, "format": fmt,
            "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "stored": self._shown(stored),
        })
        received = _mask_stems(target.inbox)  # fresh: this upload must count
        missing = [s for s in target.selected if safe_name(s) not in received]
        n = len(target.selected)
        return {"run": target.run, "round": target.round, "slice_id": target.slice_id, "stored": self._shown(stored),
                "classes_present": sorted(int(v) for v in np.unique(mask)), "masks_missing": len(missing),
                "next": (f"all {n} masks in: resume the run (`paal run --resume {target.run}` in the workspace)"
                         if not missing else f"{len(missing)} of {n} masks still missing")}

    def audit(self, name: str) -> list[dict[str, Any]]:
        """The run's upload audit log, oldest first."""
        return read_jsonl(self.paths(name).root / AUDIT_LOG)

    # -- helpers --------------------------------------------------------------------------------
    def _shown(self, path: Path) -> str:
        """A stored file as responses name it: relative to the workspace (or just its name when
        the inbox is configured elsewhere)."""
        try:
            return str(path.relative_to(self.workspace))
        except ValueError:
            return path.name

    def _received(self, inbox: Path) -> frozenset[str]:
        """Stems of the masks in an inbox: one directory listing (cached while the folder's
        mtime stands still), not one stat per slice."""
        try:
            return self._inboxes.get(inbox, _mask_stems)
        except OSError:
            return frozenset()

    @staticmethod
    def _inbox(paths: RunPaths, r: int, cfg) -> Path | None:
        return inbox_path(paths, r, cfg.oracle.inbox) if cfg.oracle.kind == "human" else None

    @staticmethod
    def _round(paths: RunPaths, state: RunState, round_index: int | None) -> int:
        if round_index is None:
            done = sorted(int(p.parent.name) for p in (paths.root / "rounds").glob("*/selection.parquet")
                          if p.parent.name.isdigit())
            if not done:
                raise RunNotFound(f"run {paths.root.name!r}: no selection yet (phase {state.phase!r})")
            return min(state.round, done[-1])
        return round_index  # a round without a selection is reported when its table is read

    def _selection_table(self, paths: RunPaths, r: int, *, may_parse: bool = True) -> _Selection:
        path = paths.selection(r)
        if not path.is_file():
            raise RunNotFound(f"run {paths.root.name!r}: round {r} has no selection")
        try:
            return self._tables.get(path, _Selection, may_parse=may_parse)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise RunDamaged(self.relative(f"run {paths.root.name!r}: {path} cannot be read ({e})")) from e

    def _slice_ids(self, paths: RunPaths, r: int) -> list[str]:
        return self._selection_table(paths, r).ids

    def _round_of(self, paths: RunPaths, state: RunState, slice_id: str) -> int:
        """The latest round whose selection holds the slice."""
        for r in range(min(state.round, state.rounds), -1, -1):
            if paths.selection(r).is_file() and slice_id in self._slice_ids(paths, r):
                return r
        raise RunNotFound(f"slice {slice_id!r}: not selected in any round of run {paths.root.name!r}")


__all__ = ["AUDIT_LOG", "IMAGE_FORMATS", "MaskError", "MaskTarget", "NotAcceptingMasks", "PoolUnavailable",
           "RunCatalog", "RunDamaged", "RunNotFound", "RunStateError"]
