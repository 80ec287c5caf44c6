"""Oracles: who labels the selected slices.

``simulated``: the pool's own masks (the paper's setting); nothing to do.
``human``: the selected slices are exported for annotators (NIfTI + PNG + manifest.json) to
``RUN/rounds/NNN/annotate/``, each with the current model's predicted mask beside it to start from
(pre-annotations, ``<slice>_pred.png`` / ``_pred.nii.gz``); the run stops in ``annotate`` until a mask for every slice is in the
inbox (``oracle.inbox`` or ``RUN/rounds/NNN/inbox``). Masks are validated by ``validate_mask``
(shared with the upload endpoint to come) and stored as pool rows in ``RUN/labels/``, from which
``RUN/train-pool/`` (the pool training reads in this mode) is assembled.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from paal_ray.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from paal_ray.data.pool import IMAGE_COLUMNS, MANIFEST, SLICE_SCHEMA, SLICES_DIR, Pool, encode_slice_row
from paal_ray.runs.state import RunPaths, RunState

MASK_SUFFIXES = (".nii.gz", ".nii", ".png", ".npy")


class MaskError(ValueError):
    """An annotator's mask is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class AnnotateOutcome:
    done: bool
    message: str
    waiting_for: str | None = None  # the inbox folder, while masks are missing


class Oracle(Protocol):
    kind: str

    def annotate(self, round_index: int, slice_ids: list[str]) -> AnnotateOutcome: ...

    def training_pool(self) -> str: ...

    def ingest(self, round_index: int) -> None: ...


def safe_name(slice_id: str) -> str:
    """File stem for a slice: ``case/0007`` -> ``case__0007``."""
    return slice_id.replace("/", "__")


def validate_mask(mask: np.ndarray, *, shape: tuple[int, int], num_classes: int, source: str) -> np.ndarray:
    """Check an annotator's mask and return it as uint8 [H, W].

    Accepts [H, W] or [H, W, 1]; values must be whole numbers in 0..num_classes-1. Raises
    ``MaskError`` naming ``source`` (the file) and the problem.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MaskError(f"{source}: expected a 2D mask of shape {list(shape)}, got shape {list(np.shape(mask))}")
    if tuple(arr.shape) != tuple(shape):
        raise MaskError(f"{source}: mask shape {list(arr.shape)} does not match the slice's shape {list(shape)}")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise MaskError(f"{source}: mask values must be whole class indices, got dtype {arr.dtype} with fractional values")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if not 0 <= v < num_classes]
    if bad:
        raise MaskError(f"{source}: class values {bad[:5]} outside 0..{num_classes - 1} "
                        f"({num_classes} classes, background = 0)")
    return arr.astype(np.uint8)


def read_mask_file(path: Path) -> np.ndarray:
    """A mask from .nii/.nii.gz, .png (grey levels = class indices) or .npy."""
    return read_mask_bytes(path.read_bytes(), path.name, source=str(path))


def mask_suffix(name: str) -> str:
    """The mask format of a file name (one of ``MASK_SUFFIXES``), or MaskError."""
    lower = name.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise MaskError(f"{name}: unsupported mask format (use one of {', '.join(MASK_SUFFIXES)})")


def read_mask_bytes(data: bytes, name: str, *, source: str) -> np.ndarray:
    """A mask from the bytes of a file called ``name`` (its suffix gives the format); errors name
    ``source`` (a path, or the upload)."""
    suffix = mask_suffix(name)
    try:
        if suffix in (".nii", ".nii.gz"):
            import gzip

            import nibabel as nib

            raw = gzip.decompress(data) if suffix == ".nii.gz" else data
            return np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj)
        if suffix == ".png":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise MaskError(f"{source}: PNG mode {im.mode}; save masks as single-channel grey levels = class indices")
                return np.asarray(im)
        return np.load(io.BytesIO(data), allow_pickle=False)
    except MaskError:
        raise
    except Exception as e:  # a corrupt or truncated file: say which one
        raise MaskError(f"{source}: cannot be read as a {suffix} mask ({type(e).__name__}: {e})") from e


def find_mask(inbox: Path, slice_id: str) -> Path | None:
    stem = safe_name(slice_id)
    for suffix in MASK_SUFFIXES:
        p = inbox / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def decode_slice(row: dict) -> tuple[np.ndarray, np.ndarray | None]:
    image = np.frombuffer(row["image"], dtype=np.dtype(row["image_dtype"])).reshape(tuple(row["image_shape"]))
    label = None
    if row.get("label") is not None:
        label = np.frombuffer(row["label"], dtype=np.dtype(row["label_dtype"])).reshape(tuple(row["label_shape"]))
    return image, label


def slice_png(image: np.ndarray) -> bytes:
    """A slice [C, H, W] for annotators: its first channel as 8-bit grey (values clipped to 0..1)."""
    from PIL import Image

    grey = np.clip(image[0].astype(np.float32), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((grey * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def slice_nifti(image: np.ndarray) -> bytes:
    """A slice [C, H, W] for annotators: all channels as a gzipped NIfTI of shape [H, W, C]."""
    import gzip

    import nibabel as nib

    hwc = np.transpose(image.astype(np.float32), (1, 2, 0))
    return gzip.compress(nib.Nifti1Image(hwc, np.eye(4)).to_bytes(), mtime=0)


def prediction_names(slice_id: str) -> dict[str, str]:
    """Where a slice's pre-annotation lies in the annotate folder, beside its image."""
    stem = safe_name(slice_id)
    return {"nii.gz": f"{stem}_pred.nii.gz", "png": f"{stem}_pred.png"}


def mask_png(mask: np.ndarray) -> bytes:
    """A mask [H, W] as the inbox takes it: 8-bit grey levels = class indices."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def mask_nifti(mask: np.ndarray) -> bytes:
    """A mask [H, W] as a gzipped uint8 NIfTI, on the grid of the slice's own NIfTI (identity affine)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(mask, dtype=np.uint8), np.eye(4))
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), mtime=0)


def predicted_masks(checkpoint: str | None, images: list[np.ndarray]) -> list[np.ndarray] | None:
    """The model's masks for slices [C, H, W] on their own grid (probabilities resized before the
    argmax), or None when the checkpoint holds no model bundle (nothing to pre-annotate with)."""
    if not checkpoint or not (Path(checkpoint) / "model.pt").is_file():
        return None
    from paal_ray.inference.predictor import SlicePredictor

    predictor = SlicePredictor.load(checkpoint)
    return [predictor.predict(image[None].astype(np.float32), tuple(image.shape[1:]))[0][0] for image in images]


def export_for_annotation(pool: Pool, slice_ids: list[str], out_dir: Path, round_index: int, inbox: Path,
                          checkpoint: str | None = None) -> Path:
    """Write one NIfTI (all channels, [H, W, C]) and one PNG (first channel) a slice, and manifest.json;
    with a model ``checkpoint``, its predicted mask a slice beside them (pre-annotations:
    ``<slice>_pred.png`` / ``_pred.nii.gz``, class indices as the inbox takes them)."""
    table = pool.read_slices(slice_ids, columns=IMAGE_COLUMNS)
    rows = table.to_pylist()
    images = [decode_slice(row)[0] for row in rows]
    masks = predicted_masks(checkpoint, images)
    entries = []
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for i, (row, image) in enumerate(zip(rows, images, strict=True)):
            stem = safe_name(row["slice_id"])
            (tmp / f"{stem}.nii.gz").write_bytes(slice_nifti(image))
            (tmp / f"{stem}.png").write_bytes(slice_png(image))
            entry = {"slice_id": row["slice_id"], "image_nifti": f"{stem}.nii.gz", "image_png": f"{stem}.png",
                     "mask": f"{stem}.nii.gz | {stem}.png | {stem}.npy", "shape": list(image.shape[1:])}
            if masks is not None:
                names = prediction_names(row["slice_id"])
                (tmp / names["nii.gz"]).write_bytes(mask_nifti(masks[i]))
                (tmp / names["png"]).write_bytes(mask_png(masks[i]))
                entry.update(prediction_nifti=names["nii.gz"], prediction_png=names["png"])
            entries.append(entry)
        atomic_write_json(tmp / "manifest.json", {
            "round": round_index, "class_names": pool.class_names, "num_classes": pool.num_classes,
            "inbox": str(inbox),
            "instructions": "Save one mask a slice into the inbox, named as in 'mask', same height and width "
                            "as the image, values = class indices (0 = background). Then run `paal run --resume RUN`."
                            + (" The model's guess for each slice is beside its image (<slice>_pred.png, "
                               "_pred.nii.gz): copy it into the inbox under the mask's name and correct it."
                               if masks is not None else ""),
            "prediction": {"checkpoint": checkpoint} if masks is not None else None,
            "slices": entries,
        })
    return out_dir


def export_dir(paths: RunPaths, round_index: int) -> Path:
    """A round's annotate folder (the human oracle's export)."""
    return paths.round_dir(round_index) / "annotate"


def inbox_path(paths: RunPaths, round_index: int, setting: str | None) -> Path:
    """Where a round's masks are expected: ``oracle.inbox`` if set, else RUN/rounds/NNN/inbox."""
    return Path(setting).absolute() if setting else paths.round_dir(round_index) / "inbox"


class SimulatedOracle:
    """Labels come from the pool's masks (the paper's setting)."""

    kind = "simulated"

    def __init__(self, pool: Pool):
        self.pool = pool

    def annotate(self, round_index: int, slice_ids: list[str]) -> AnnotateOutcome:
        return AnnotateOutcome(done=True, message=f"{len(slice_ids)} labels taken from the pool")

    def training_pool(self) -> str:
        return str(self.pool.path)

    def prepare(self, labelled_ids: list[str], val_ids: list[str]) -> None:
        pass

    def ingest(self, round_index: int) -> None:
        pass


class HumanOracle:
    """Annotators label exported slices; the run waits for their masks in an inbox folder."""

    kind = "human"

    def __init__(self, pool: Pool, paths: RunPaths, inbox: str | None = None):
        self.pool = pool
        self.paths = paths
        self.inbox_setting = inbox

    def inbox(self, round_index: int) -> Path:
        return inbox_path(self.paths, round_index, self.inbox_setting)

    def export_dir(self, round_index: int) -> Path:
        return export_dir(self.paths, round_index)

    def labels_file(self, round_index: int) -> Path:
        return self.paths.labels / f"round-{round_index:03d}.parquet"

    def prepare(self, labelled_ids: list[str], val_ids: list[str]) -> None:
        """Start the training pool from the pool's own labelled rows (initial set + validation)."""
        table = self.pool.read_slices(list(labelled_ids) + list(val_ids))
        missing = [s for s, lab in zip(table.column("slice_id").to_pylist(), table.column("label").to_pylist(),
                                       strict=True) if lab is None]
        if missing:
            raise MaskError(f"{self.pool.path}: the human oracle needs the initial set and the validation fold labelled "
                            f"in the pool; {len(missing)} slices have no label, e.g. {missing[:3]}")
        with atomic_directory(self.paths.train_pool, overwrite=True) as tmp:
            (tmp / SLICES_DIR).mkdir()
            pq.write_table(table.cast(SLICE_SCHEMA), str(tmp / SLICES_DIR / "part-base.parquet"))
            manifest = dict(self.pool.manifest)
            manifest.update(num_slices=table.num_rows, derived_from=str(self.pool.path))
            atomic_write_json(tmp / MANIFEST, manifest)

    def annotate(self, round_index: int, slice_ids: list[str]) -> AnnotateOutcome:
        if self.labels_file(round_index).is_file():
            return AnnotateOutcome(done=True, message="labels already collected")
        inbox = self.inbox(round_index)
        export = self.export_dir(round_index)
        if not (export / "manifest.json").is_file():
            # The current model (this round's training) pre-annotates the slices it selected.
            checkpoint = RunState.load(self.paths).checkpoint if self.paths.state.is_file() else None
            export_for_annotation(self.pool, slice_ids, export, round_index, inbox, checkpoint)
        inbox.mkdir(parents=True, exist_ok=True)
        found = {s: find_mask(inbox, s) for s in slice_ids}
        missing = [s for s, p in found.items() if p is None]
        if missing:
            return AnnotateOutcome(
                done=False, waiting_for=str(inbox),
                message=f"waiting for {len(missing)} of {len(slice_ids)} masks: slices exported to {export}, "
                        f"drop masks into {inbox} (e.g. {safe_name(missing[0])}.png), then `paal run --resume "
                        f"{self.paths.root}`",
            )
        rows = self.pool.read_slices(slice_ids).to_pylist()
        errors, out = [], []
        for row in rows:
            image, _ = decode_slice(row)
            try:
                mask = validate_mask(read_mask_file(found[row["slice_id"]]), shape=tuple(image.shape[1:]),
                                     num_classes=self.pool.num_classes, source=str(found[row["slice_id"]]))
            except MaskError as e:
                errors.append(str(e))
                continue
            out.append(encode_slice_row(case_id=row["case_id"], patient_id=row["patient_id"],
                                        slice_index=row["slice_index"], image=image, label=mask,
                                        num_classes=self.pool.num_classes))
        if errors:
            raise MaskError(f"{len(errors)} of {len(rows)} masks rejected (fix them and resume):\n  " + "\n  ".join(errors))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(out, schema=SLICE_SCHEMA), buf)
        atomic_write_bytes(self.labels_file(round_index), buf.getvalue())
        return AnnotateOutcome(done=True, message=f"{len(out)} masks accepted from {inbox}")

    def training_pool(self) -> str:
        return str(self.paths.train_pool)

    def ingest(self, round_index: int) -> None:
        """Add the round's labelled rows to the training pool (idempotent: same name, same bytes)."""
        src = self.labels_file(round_index)
        atomic_write_bytes(self.paths.train_pool / SLICES_DIR / f"part-round-{round_index:03d}.parquet", src.read_bytes())
        manifest_path = self.paths.train_pool / MANIFEST
        manifest = json.loads(manifest_path.read_text())
        files = sorted((self.paths.train_pool / SLICES_DIR).glob("*.parquet"))
        manifest["num_slices"] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        atomic_write_json(manifest_path, manifest)


def make_oracle(kind: str, pool: Pool, paths: RunPaths, inbox: str | None = None):
    if kind == "simulated":
        return SimulatedOracle(pool)
    if kind == "human":
        return HumanOracle(pool, paths, inbox)
    raise ValueError(f"oracle.kind={kind!r}: expected 'simulated' or 'human'")
