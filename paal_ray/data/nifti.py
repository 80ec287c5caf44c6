"""Reading one case (image + label) with nibabel, checked: every problem names the file.

Arrays come back in their stored dtype (no float64 copy): image [C, X, Y, Z] with the modalities
first (MSD stores them last), label [X, Y, Z] uint8. ``load_nifti`` + ``voxels`` + ``as_channels``
are the image half alone (``paal predict`` reads images without labels and keeps their header).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paal_ray.data.layouts import VolumeRef


class VolumeError(ValueError):
    """One volume is unusable. ``file`` is the offending file, ``problem`` says what is wrong."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem

    def __reduce__(self):  # raised inside Ray tasks: must pickle with its fields
        return (VolumeError, (self.file, self.problem))


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"  # one line, whatever nibabel says


def load_nifti(path: str):
    """The NIfTI image (nibabel, NIfTI-1 or -2) of a .nii or .nii.gz file, its header checked. The
    whole file is decompressed up front so that gzip's checksum is verified: nibabel alone stops
    reading before it and would accept silently corrupted data. Read the voxels with ``voxels``."""
    import gzip
    import zlib

    import nibabel as nib

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise VolumeError(path, "missing") from None
    except OSError as e:
        raise VolumeError(path, f"cannot be read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise VolumeError(path, f"truncated or corrupt gzip data ({_why(e)})") from None
    elif path.endswith(".gz"):
        raise VolumeError(path, "not a readable NIfTI file (named .gz but not gzip-compressed)")
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")} if len(raw) >= 4 else set()
    kind = nib.Nifti1Image if 348 in sizeof_hdr else nib.Nifti2Image if 540 in sizeof_hdr else None
    if kind is None:
        raise VolumeError(path, "not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    try:
        return kind.from_bytes(raw)
    except Exception as e:  # nibabel raises many types for a damaged header
        raise VolumeError(path, f"not a readable NIfTI file ({_why(e)})") from None


def voxels(img, path: str) -> np.ndarray:
    """The voxel array of an image from ``load_nifti``, in its stored dtype."""
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # short data block: the file was cut
        raise VolumeError(path, f"truncated or corrupt image data ({_why(e)})") from None


def load_array(path: str) -> np.ndarray:
    """The voxel array of a .nii or .nii.gz file (checked as ``load_nifti`` does)."""
    return voxels(load_nifti(path), path)


def as_channels(image: np.ndarray, path: str, *, channels: int | None = None,
                modalities: list[str] | None = None) -> np.ndarray:
    """A volume's voxels as [C, X, Y, Z] (MSD stores the modalities last), checked: dimensions,
    voxel type, the declared modality count, NaN/Inf. Problems raise ``VolumeError`` naming ``path``."""
    if image.ndim == 3:
        image = image[None]
    elif image.ndim == 4:
        image = np.moveaxis(image, -1, 0)
    else:
        raise VolumeError(path, f"{image.ndim}-D image of shape {image.shape}; expected 3-D, "
                                "or 4-D with the modalities last")
    if image.dtype.kind not in "iuf":
        raise VolumeError(path, f"unsupported voxel type {image.dtype}")
    if channels is not None and image.shape[0] != channels:
        declared = f" ({', '.join(modalities)})" if modalities else ""
        raise VolumeError(path, f"has {image.shape[0]} modalities but the data set declares "
                                f"{channels}{declared}")
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise VolumeError(path, f"{bad} NaN/Inf intensities")
    if min(image.shape[1:]) < 1:
        raise VolumeError(path, f"empty image of shape {image.shape[1:]}")
    return image


def read_case(ref: VolumeRef, *, channels: int | None = None, modalities: list[str] | None = None,
              class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one case. ``channels``/``class_names`` are what the data set declares (None:
    anything goes); a contradiction raises ``VolumeError`` naming the file."""
    image = as_channels(load_array(ref.image), ref.image, channels=channels, modalities=modalities)

    if ref.label is None:
        raise VolumeError(ref.image, "missing label")
    label = load_array(ref.label)
    if label.ndim == 4 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.shape != image.shape[1:]:
        raise VolumeError(ref.label, f"label shape {tuple(label.shape)} differs from image shape "
                                     f"{tuple(image.shape[1:])} of {ref.image}")
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise VolumeError(ref.label, "label holds non-integer values")
    elif label.dtype.kind not in "iub":
        raise VolumeError(ref.label, f"unsupported label type {label.dtype}")
    top = len(class_names) - 1 if class_names else 255
    lo, hi = label.min(), label.max()
    if lo < 0 or hi > top:
        vals = np.unique(label[(label < 0) | (label > top)])[:8].astype(np.int64).tolist()
        declared = f"0..{top} ({', '.join(class_names)})" if class_names else "0..255"
        raise VolumeError(ref.label, f"label values {vals} outside the declared classes {declared}")
    return image, label.astype(np.uint8, copy=False)
