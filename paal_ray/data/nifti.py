"""Reading one case (image + label) with nibabel, checked: every problem names the file.

Arrays come back in their stored dtype (no float64 copy): image [C, X, Y, Z] with the modalities
first (MSD stores them last), label [X, Y, Z] uint8.
"""

from __future__ import annotations

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


def load_array(path: str) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise VolumeError(path, "missing") from None
    except Exception as e:  # nibabel raises many types for a file that is not NIfTI
        raise VolumeError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # EOFError, zlib.error, short reads: a truncated or corrupt file
        raise VolumeError(path, f"truncated or corrupt image data ({type(e).__name__}: {e})") from None


def read_case(ref: VolumeRef, *, channels: int | None = None, modalities: list[str] | None = None,
              class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one case. ``channels``/``class_names`` are what the data set declares (None:
    anything goes); a contradiction raises ``VolumeError`` naming the file."""
    image = load_array(ref.image)
    if image.ndim == 3:
        image = image[None]
    elif image.ndim == 4:
        image = np.moveaxis(image, -1, 0)
    else:
        raise VolumeError(ref.image, f"{image.ndim}-D image of shape {image.shape}; expected 3-D, "
                                     "or 4-D with the modalities last")
    if image.dtype.kind not in "iuf":
        raise VolumeError(ref.image, f"unsupported voxel type {image.dtype}")
    if channels is not None and image.shape[0] != channels:
        declared = f" ({', '.join(modalities)})" if modalities else ""
        raise VolumeError(ref.image, f"has {image.shape[0]} modalities but the data set declares "
                                     f"{channels}{declared}")
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise VolumeError(ref.image, f"{bad} NaN/Inf intensities")
    if min(image.shape[1:]) < 1:
        raise VolumeError(ref.image, f"empty image of shape {image.shape[1:]}")

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
