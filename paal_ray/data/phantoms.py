"""Synthetic 3D phantoms that behave like medical segmentation data, in the MSD or ACDC layout.

Each case is a body (unlabelled tissue inside air) holding labelled structures of very different
volumes, so that which slices get labelled matters:

- class 1 ("organ"): large, spans most slices;
- class 2 ("core"): nested inside the organ, smaller and shorter;
- class 3 ("lesion"): small and separate, present in only a few slices;
- classes 4+: separate blobs of random size.

Shapes are ellipsoids whose radius is modulated by low-order angular harmonics and whose centre
drifts smoothly through the slices, all drawn per case. The first and last slices hold no
structure. Intensities follow a per-modality contrast table (so some boundaries show only in some
modalities), with smooth texture, partial-volume blur, a multiplicative bias field (MR) and noise.
Everything is numpy and vectorised; the same seed gives the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from paal_ray.atomic import atomic_directory

BASE_CLASS_NAMES = ["background", "organ", "core", "lesion"]
MR_MODALITY_NAMES = ["FLAIR", "T1w", "T1gd", "T2w"]
ACDC_CLASS_NAMES = ["background", "RV", "Myo", "LV"]


class PhantomError(ValueError):
    """Invalid phantom parameters; the message names the parameter."""


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. ``cases`` counts volumes (MSD) or patients with two frames each (ACDC)."""

    cases: int = 8
    modalities: int = 1
    classes: int = 4
    size: int = 64
    slices: int = 16
    seed: int = 0
    kind: str = "mr"  # "mr" (float32, arbitrary units, bias field) or "ct" (int16 Hounsfield units)

    def validate(self) -> None:
        checks = [
            (self.cases >= 1, "cases must be at least 1"),
            (self.modalities >= 1, "modalities must be at least 1"),
            (2 <= self.classes <= 255, "classes (background included) must be between 2 and 255"),
            (self.size >= 8, "size must be at least 8 pixels"),
            (self.slices >= 4, "slices must be at least 4"),
            (self.kind in ("mr", "ct"), f"kind must be 'mr' or 'ct', not {self.kind!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PhantomError(msg)


def class_names(num_classes: int) -> list[str]:
    return (BASE_CLASS_NAMES + [f"structure{k}" for k in range(len(BASE_CLASS_NAMES), num_classes)])[:num_classes]


def modality_names(spec: PhantomSpec) -> list[str]:
    if spec.kind == "ct":
        return ["CT"] * spec.modalities
    return (MR_MODALITY_NAMES + [f"MR{m}" for m in range(len(MR_MODALITY_NAMES), spec.modalities)])[: spec.modalities]


# -- geometry ---------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cutoff: float) -> np.ndarray:
    """Zero-mean, unit-std random field whose detail is coarser than ``cutoff`` (fraction of size)."""
    white = rng.standard_normal(shape).astype(np.float32)
    spec = np.fft.rfftn(white)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    radius2 = sum(f**2 for f in freqs)
    field = np.fft.irfftn(spec * np.exp(-radius2 / (2 * cutoff**2)), s=shape, axes=tuple(range(len(shape))))
    field = field.astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-8)


def _blob(u, v, w, rng: np.random.Generator, centre, radii, zscale: float, wobble: float) -> np.ndarray:
    """Mask of a smoothly deformed ellipsoid on the grid u [X,1,1], v [1,Y,1], w [1,1,Z] (coordinates
    in [-1, 1]); ``zscale`` shrinks or grows it in-plane (the second ACDC frame contracts)."""
    cu, cv, cw = centre
    a, b, c = radii
    ph = rng.uniform(0, 2 * np.pi, 5)
    amp = rng.uniform(0.0, wobble, 3)
    drift = rng.uniform(-0.08, 0.08, 2)
    mask = np.zeros((u.shape[0], v.shape[1], w.shape[2]), bool)
    # Only slices the ellipsoid can reach are evaluated: most structures span few of them.
    reach = np.flatnonzero(np.abs(w[0, 0] - cw) < c * (1 + amp.sum()))
    if reach.size == 0:
        return mask
    ws = w[:, :, reach]
    du = u - (cu + drift[0] * np.sin(np.pi * ws + ph[0]))
    dv = v - (cv + drift[1] * np.sin(np.pi * ws + ph[1]))
    theta = np.arctan2(dv, du)
    modulation = 1 + amp[0] * np.cos(2 * theta + ph[2]) + amp[1] * np.cos(3 * theta + ph[3]) \
        + amp[2] * np.cos(4 * theta + ph[4])
    d2 = (du / (a * zscale)) ** 2 + (dv / (b * zscale)) ** 2 + ((ws - cw) / c) ** 2
    mask[:, :, reach] = d2 < modulation**2
    return mask


def make_volume(spec: PhantomSpec, case_index: int, *, frame_scale: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """One case: image [C, X, Y, Z] (float32 MR or int16 CT) and label [X, Y, Z] uint8.

    The geometry depends on (seed, case_index) only, so frames of one patient that differ in
    ``frame_scale`` share their anatomy; noise differs per frame.
    """
    spec.validate()
    geo = np.random.default_rng([spec.seed, case_index, 0])
    tex = np.random.default_rng([spec.seed, case_index, int(frame_scale * 1000)])
    n, z = spec.size, spec.slices
    lin = np.linspace(-1, 1, n, dtype=np.float32)
    u, v, w = lin[:, None, None], lin[None, :, None], np.linspace(-1, 1, z, dtype=np.float32)[None, None, :]

    label = np.zeros((n, n, z), np.uint8)
    body = _blob(u, v, np.zeros((1, 1, 1), np.float32), geo, (0, 0, 0),
                 (geo.uniform(0.82, 0.92), geo.uniform(0.68, 0.8), 1.0), 1.0, 0.04)  # [X, Y, 1]: a prism
    body = np.broadcast_to(body, (n, n, z))
    organ_c = (geo.uniform(-0.15, 0.05), geo.uniform(-0.1, 0.1), geo.uniform(-0.1, 0.1))
    organ_r = (geo.uniform(0.3, 0.42), geo.uniform(0.25, 0.36), geo.uniform(0.68, 0.85))
    organ = _blob(u, v, w, geo, organ_c, organ_r, frame_scale, 0.12)
    label[organ] = 1
    if spec.classes > 2:  # nested in the organ
        core_c = (organ_c[0] + geo.uniform(-0.3, 0.3) * organ_r[0], organ_c[1] + geo.uniform(-0.3, 0.3) * organ_r[1],
                  organ_c[2] + geo.uniform(-0.2, 0.2) * organ_r[2])
        core_r = tuple(r * geo.uniform(0.3, 0.5) for r in organ_r)
        label[_blob(u, v, w, geo, core_c, core_r, frame_scale, 0.15) & _erode_inplane(organ)] = 2
    if spec.classes > 3:  # small, separate, few slices
        ang = geo.uniform(-0.6, 0.6)
        les_c = (0.58 * np.cos(ang), 0.5 * np.sin(ang), geo.uniform(-0.3, 0.3))
        r = geo.uniform(0.1, 0.15)
        label[_blob(u, v, w, geo, les_c, (r, r * geo.uniform(0.8, 1.2), geo.uniform(0.1, 0.2)), 1.0, 0.1)] = 3
    for k in range(4, spec.classes):  # further separate blobs of random size
        c = (geo.uniform(-0.55, 0.55), geo.uniform(-0.5, 0.5), geo.uniform(-0.4, 0.4))
        r = geo.uniform(0.06, 0.2)
        label[_blob(u, v, w, geo, c, (r, r, geo.uniform(0.15, 0.5)), 1.0, 0.15) & body & (label == 0)] = k
    label[~body] = 0

    # Contrast tables are shared by the whole data set (seed only): a modality's contrast is a
    # property of the scanner sequence, not of the patient.
    con = np.random.default_rng([spec.seed, 10_000])
    texture = _smooth_noise(tex, (n, n, z), 0.08)
    bias = _smooth_noise(tex, (n, n, z), 0.02) if spec.kind == "mr" else None
    images = []
    for m in range(spec.modalities):
        if spec.kind == "ct":
            levels = _contrast_levels(con, spec.classes, 40.0, (-80.0, 250.0), 60.0, visible=m == 0)
            img = np.where(body, levels[0], -1000.0).astype(np.float32)
            for k in range(1, spec.classes):
                img[label == k] = levels[k]
            img += 15 * texture * body
            img = _blur_inplane(img)
            img += tex.normal(0, 12, img.shape).astype(np.float32)
            images.append(np.round(img).clip(-1024, 3071).astype(np.int16))
        else:
            levels = _contrast_levels(con, spec.classes, con.uniform(0.25, 0.45), (0.1, 1.0), 0.3, visible=m == 0)
            img = np.where(body, levels[0], 0.0).astype(np.float32)
            for k in range(1, spec.classes):
                img[label == k] = levels[k] + tex.normal(0, 0.03)
            img *= 1 + 0.08 * texture
            img = _blur_inplane(img)
            img *= np.exp(tex.uniform(0.15, 0.3) * bias)  # one coil, sequence-dependent strength
            sigma = 0.03
            img = np.sqrt((img + tex.normal(0, sigma, img.shape)) ** 2 + tex.normal(0, sigma, img.shape) ** 2)
            images.append((img * tex.uniform(300, 3000)).astype(np.float32))  # scanner units vary per case
    return np.stack(images), label


def _contrast_levels(rng: np.random.Generator, classes: int, body: float, span: tuple[float, float],
                     gap: float, *, visible: bool) -> np.ndarray:
    """Intensity of the body and of each class in one modality. In the ``visible`` modality (the
    first) every class differs by at least ``gap`` from what surrounds it (the body; the organ for
    the nested core), as an annotator needs to see a boundary to draw it; the other modalities
    are drawn freely, so some boundaries show only in some sequences."""
    levels = [body]
    for k in range(1, classes):
        around = levels[1] if k == 2 else body
        while True:
            lvl = float(rng.uniform(*span))
            if not visible or abs(lvl - around) >= gap:
                break
        levels.append(lvl)
    return np.asarray(levels, np.float64)


def _erode_inplane(mask: np.ndarray) -> np.ndarray:
    """Mask minus its in-plane border pixels (4-neighbourhood): nested structures stay inside."""
    out = mask.copy()
    for ax in (0, 1):
        for shift in (1, -1):
            out &= np.roll(mask, shift, ax)
    return out


def _blur_inplane(img: np.ndarray) -> np.ndarray:
    """Partial-volume effect: a [1, 2, 1] / 4 filter along both in-plane axes."""
    for ax in (0, 1):
        img = 0.5 * img + 0.25 * (np.roll(img, 1, ax) + np.roll(img, -1, ax))
    return img


# -- writing ---------------------------------------------------------------------------------------
def save_nifti(array: np.ndarray, path: Path) -> None:
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def to_nifti_image(image: np.ndarray) -> np.ndarray:
    """[C, X, Y, Z] -> X, Y, Z (one modality) or X, Y, Z, C (MSD's 4D convention)."""
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(image, 0, -1))


def write_phantoms(out: str | Path, spec: PhantomSpec, *, layout: str = "msd", overwrite: bool = False,
                   log: Callable[[str], None] | None = None) -> dict:
    """Write a synthetic data set to ``out`` (temp folder, then rename). Returns a summary."""
    spec.validate()
    if layout not in ("msd", "acdc"):
        raise PhantomError(f"layout must be 'msd' or 'acdc', not {layout!r}")
    if layout == "acdc" and (spec.modalities != 1 or spec.classes != 4 or spec.kind != "mr"):
        raise PhantomError("the ACDC layout is single-modality MR with 4 classes (background, RV, Myo, LV)")
    log = log or (lambda _m: None)
    names = class_names(spec.classes) if layout == "msd" else ACDC_CLASS_NAMES
    volumes = 0
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if layout == "msd":
            (tmp / "imagesTr").mkdir()
            (tmp / "labelsTr").mkdir()
            training = []
            for i in range(spec.cases):
                image, label = make_volume(spec, i)
                name = f"phantom_{i:03d}.nii.gz"
                save_nifti(to_nifti_image(image), tmp / "imagesTr" / name)
                save_nifti(label, tmp / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
                volumes += 1
                _progress(log, i + 1, spec.cases)
            dataset = {
                "name": "Phantom", "description": "paal-ray synthetic phantoms",
                "tensorImageSize": "4D" if spec.modalities > 1 else "3D",
                "modality": {str(m): name for m, name in enumerate(modality_names(spec))},
                "labels": {str(k): name for k, name in enumerate(names)},
                "numTraining": spec.cases, "numTest": 0, "training": training, "test": [],
                "phantom": asdict(spec),
            }
            (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        else:
            for i in range(spec.cases):
                pid = f"patient{i + 1:03d}"
                (tmp / pid).mkdir()
                es_frame = 8 + i % 7
                for frame, scale in ((1, 1.0), (es_frame, 0.8)):
                    image, label = make_volume(spec, i, frame_scale=scale)
                    stem = f"{pid}_frame{frame:02d}"
                    save_nifti(image[0], tmp / pid / f"{stem}.nii.gz")
                    save_nifti(label, tmp / pid / f"{stem}_gt.nii.gz")
                    volumes += 1
                _progress(log, i + 1, spec.cases)
    return {"path": str(Path(out).absolute()), "layout": layout, "volumes": volumes,
            "slices": volumes * spec.slices, "class_names": names, "modalities": modality_names(spec)}


def _progress(log: Callable[[str], None], done: int, total: int) -> None:
    step = max(1, total // 10)
    if done == total or done % step == 0:
        log(f"phantoms: {done}/{total} cases written")
