"""One volume through prediction: read and check it as ingest does, preprocess it as ingest did
for the model's pool, predict every slice, and write the mask (and probabilities) as NIfTI files
on the input's exact grid: same shape, affine, qform/sform and units, labels as uint8.

Outputs of a volume (``case`` = the input's case id, as ingest names it)::

    case.nii.gz                 the mask (uint8 class indices; class names in the header description)
    case.json                   sidecar: class names, source file, model, preprocessing
    case_probabilities.nii.gz   with --probabilities: float32 [X, Y, Z, K], one volume per class

Each file is written to a temporary name and renamed: a volume's outputs are whole or absent.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from paal_ray.data.layouts import VolumeRef
from paal_ray.data.nifti import VolumeError, as_channels, load_nifti, voxels

MASK_SUFFIX = ".nii.gz"
PROBS_SUFFIX = "_probabilities.nii.gz"
NIFTI_INTENT_LABEL = "label"


def output_names(case_id: str) -> dict[str, str]:
    return {"mask": f"{case_id}{MASK_SUFFIX}", "sidecar": f"{case_id}.json", "probabilities": f"{case_id}{PROBS_SUFFIX}"}


def describe_classes(class_names: list[str], limit: int = 80) -> str:
    """The header description (80 bytes in NIfTI-1): '0=background 1=organ ...', cut to fit."""
    text = "paal-ray " + " ".join(f"{k}={n}" for k, n in enumerate(class_names))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def like_input(data: np.ndarray, source, *, description: str, intent: str | None = None):
    """A NIfTI image of ``data`` on ``source``'s grid: the input's header (affine, qform and sform
    with their codes, voxel sizes, units, orientation) with the data type and scaling of ``data``."""
    hdr = source.header.copy()
    img = type(source)(data, source.affine, hdr)
    out = img.header
    out.set_data_dtype(data.dtype)
    out.set_slope_inter(1.0, 0.0)
    qform, qcode = source.header.get_qform(coded=True)
    sform, scode = source.header.get_sform(coded=True)
    out.set_qform(qform if qform is not None else source.affine, int(qcode))
    out.set_sform(sform if sform is not None else source.affine, int(scode))
    out["descrip"] = description.encode()[:79]
    out["cal_min"], out["cal_max"] = float(data.min()) if data.size else 0.0, float(data.max()) if data.size else 0.0
    if intent:
        out.set_intent(intent)
    return img


def predict_volume(ref: VolumeRef, plan, predictor, out_dir: Path, *, probabilities: bool = False,
                   sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict one volume and write its outputs into ``out_dir``. Bad input comes back as a row
    with ``problem`` set (the file and what is wrong, as ingest says it), never half-written files."""
    from paal_ray.data.ingest import normalised_slices

    t0 = time.perf_counter()
    try:
        source = load_nifti(ref.image)
        image = as_channels(voxels(source, ref.image), ref.image, channels=plan.channels, modalities=plan.modalities)
    except VolumeError as e:
        return {"case_id": ref.case_id, "file": e.file, "problem": e.problem}
    except Exception as e:  # a reader bug must still name the file
        return {"case_id": ref.case_id, "file": ref.image, "problem": f"cannot be read ({type(e).__name__}: {e})"}
    spatial = image.shape[1:]
    grid = tuple(int(s) for i, s in enumerate(spatial) if i != plan.axis)
    slices = normalised_slices(image, plan)  # [Z, C, h, w] float16, as the pool stores them
    del image
    masks, probs = predictor.predict(slices, grid, probabilities=probabilities)  # [Z, H, W], [Z, K, H, W]
    mask = np.ascontiguousarray(np.moveaxis(masks, 0, plan.axis))
    assert mask.shape == spatial, (mask.shape, spatial)
    names = output_names(ref.case_id)
    classes = list(plan.class_names)
    files = {"mask": _write(out_dir / names["mask"], like_input(mask, source, description=describe_classes(classes),
                                                                intent=NIFTI_INTENT_LABEL))}
    if probs is not None:
        vol = np.ascontiguousarray(np.moveaxis(probs, (0, 1), (plan.axis, 3)))  # [X, Y, Z, K]
        files["probabilities"] = _write(out_dir / names["probabilities"], like_input(
            vol, source, description=describe_classes(classes).replace("paal-ray", "paal-ray probabilities", 1)))
    counts = np.bincount(mask.ravel(), minlength=len(classes))[: len(classes)]
    meta = {
        "case_id": ref.case_id, "source": ref.image, "mask": names["mask"],
        "probabilities": names["probabilities"] if probs is not None else None,
        "class_names": classes, "labels": {str(k): n for k, n in enumerate(classes)},
        "shape": [int(s) for s in spatial], "voxels_per_class": [int(c) for c in counts],
        **(sidecar or {}),
    }
    _write_bytes(out_dir / names["sidecar"], (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return {"case_id": ref.case_id, "file": ref.image, "problem": None, "slices": int(len(slices)),
            "outputs": sorted(files.values()) + [names["sidecar"]], "seconds": time.perf_counter() - t0}


def _write(path: Path, img) -> str:
    _write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
    return path.name


def _write_bytes(path: Path, data: bytes) -> None:
    """Temp file + rename in ``path``'s folder, which must exist: a prediction cancelled after its
    output folder was removed must not create it again."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ref_json(ref: VolumeRef) -> str:
    return json.dumps(asdict(ref))
