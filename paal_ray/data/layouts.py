"""Finding the volumes of a data set on disk: MSD, ACDC, SegTHOR and a generic images/labels folder.

``discover(root, layout)`` returns a ``Source``: the (image, label) pairs with their case and
patient ids, what the layout declares (class names, modalities, CT window), and the problems
found without opening any volume (missing label, a file that is not NIfTI, duplicate case ids).
Whether a problem stops the ingest or skips the volume is decided by the caller (``--skip-bad``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

LAYOUTS = ("msd", "acdc", "segthor", "folder")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
SEGTHOR_CLASSES = ["background", "esophagus", "heart", "trachea", "aorta"]
SEGTHOR_WINDOW = (-800.0, 400.0)
CT_NAMES = {"ct"}


class IngestError(ValueError):
    """The source data cannot be ingested; the message names the file or folder and the problem."""


@dataclass(frozen=True)
class VolumeRef:
    case_id: str
    patient_id: str
    image: str
    label: str | None


@dataclass(frozen=True)
class Problem:
    """A volume that cannot be ingested, and why."""

    case_id: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


@dataclass
class Source:
    layout: str
    root: Path
    volumes: list[VolumeRef]
    class_names: list[str] | None  # None: inferred from the labels
    modalities: list[str] | None  # None: inferred from the images (one name per channel)
    window: tuple[float, float] | None = None
    problems: list[Problem] = field(default_factory=list)
    labelled: bool = True  # False: images alone are wanted (prediction); a missing label is no problem


def nifti_stem(path: Path) -> str | None:
    """File name without .nii/.nii.gz, or None when the name is not a NIfTI name."""
    for suf in NIFTI_SUFFIXES:
        if path.name.endswith(suf) and len(path.name) > len(suf):
            return path.name[: -len(suf)]
    return None


def _visible_files(folder: Path) -> list[Path]:
    # Hidden files (macOS "._" forks in the MSD tarballs, editor swap files) are never data.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def discover(root: str | Path, layout: str, *, class_names: list[str] | None = None,
             modalities: list[str] | None = None, labels: bool = True) -> Source:
    """The volumes of ``root`` in ``layout``. ``labels=False`` (prediction): images without a label
    are volumes too (``VolumeRef.label`` None), and MSD's test images (imagesTs/) are included."""
    root = Path(root).absolute()
    if layout not in LAYOUTS:
        raise IngestError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise IngestError(f"{root}: no such folder")
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder")
    if not any(root.iterdir()):
        raise IngestError(f"{root}: empty folder (expected {_expected(layout)})")
    src = {"msd": _msd, "acdc": _acdc, "segthor": _segthor, "folder": _folder}[layout](root, labels)
    if class_names is not None:
        src.class_names = list(class_names)
    if modalities is not None:
        src.modalities = list(modalities)
    _drop_duplicates(src)
    if not src.volumes and not src.problems:
        raise IngestError(f"{root}: no volumes found for the {layout} layout ({_expected(layout)})")
    return src


def _expected(layout: str) -> str:
    return {
        "msd": "dataset.json, imagesTr/*.nii.gz, labelsTr/*.nii.gz",
        "acdc": "patientNNN/patientNNN_frameFF.nii.gz with patientNNN_frameFF_gt.nii.gz",
        "segthor": "Patient_NN/Patient_NN.nii.gz with Patient_NN/GT.nii.gz",
        "folder": "images/*.nii.gz with labels/*.nii.gz of the same names",
    }[layout]


def _drop_duplicates(src: Source) -> None:
    """Two files that map to one case id (a.nii and a.nii.gz, a case listed twice) are a problem:
    which one is meant is unknowable. The first is kept when skipping."""
    seen: dict[str, VolumeRef] = {}
    kept = []
    for ref in src.volumes:
        if ref.case_id in seen:
            src.problems.append(Problem(ref.case_id, ref.image,
                                        f"duplicate case id {ref.case_id!r} (also {seen[ref.case_id].image})"))
        else:
            seen[ref.case_id] = ref
            kept.append(ref)
    src.volumes = kept


def _pair(src: Source, case_id: str, patient_id: str, image: Path, label: Path | None) -> None:
    if not src.labelled:
        src.volumes.append(VolumeRef(case_id, patient_id, str(image), str(label) if label and label.is_file() else None))
    elif label is None or not label.is_file():
        src.problems.append(Problem(case_id, str(image), f"missing label (expected {label})"))
    else:
        src.volumes.append(VolumeRef(case_id, patient_id, str(image), str(label)))


def _msd(root: Path, labels: bool = True) -> Source:
    ds_file = root / "dataset.json"
    if not ds_file.is_file():
        raise IngestError(f"{ds_file}: missing (the MSD layout needs dataset.json)")
    try:
        ds = json.loads(ds_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IngestError(f"{ds_file}: not valid JSON ({e})") from e
    try:
        names = {int(k): str(v) for k, v in ds["labels"].items()}
        modality = {int(k): str(v) for k, v in ds["modality"].items()}
    except (KeyError, AttributeError, ValueError) as e:
        raise IngestError(f"{ds_file}: needs 'labels' and 'modality' mappings of index to name ({e!r})") from e
    if sorted(names) != list(range(len(names))) or sorted(modality) != list(range(len(modality))):
        raise IngestError(f"{ds_file}: 'labels' and 'modality' keys must be 0..N-1")
    window = ds.get("window")
    if window is not None and (not isinstance(window, list) or len(window) != 2):
        raise IngestError(f"{ds_file}: 'window' must be [low, high]")
    src = Source("msd", root, [], [names[k] for k in sorted(names)], [modality[k] for k in sorted(modality)],
                 tuple(float(x) for x in window) if window else None, labelled=labels)
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise IngestError(f"{images_dir}: missing (the MSD layout keeps training images there)")
    if isinstance(ds.get("training"), list) and ds["training"]:
        for entry in ds["training"]:
            image = (root / str(entry.get("image", ""))).resolve()
            label = (root / str(entry.get("label", ""))).resolve() if entry.get("label") else None
            _msd_entry(src, image, label, root)
    else:
        for image in _visible_files(images_dir):
            _msd_entry(src, image, root / "labelsTr" / image.name, root)
    if not labels and (root / "imagesTs").is_dir():
        for image in _visible_files(root / "imagesTs"):
            _msd_entry(src, image, None, root)
    return src


def _msd_entry(src: Source, image: Path, label: Path | None, root: Path) -> None:
    stem = nifti_stem(image)
    if stem is None:
        src.problems.append(Problem(image.name, str(image), "not a NIfTI file (.nii or .nii.gz expected)"))
        return
    if not image.is_file():
        src.problems.append(Problem(stem, str(image), "listed in dataset.json but missing"))
        return
    if label is None and src.labelled:
        src.problems.append(Problem(stem, str(image), "missing label (no 'label' entry in dataset.json)"))
        return
    _pair(src, stem, stem, image, label)


_ACDC_FRAME = re.compile(r"^(patient\d+)_frame(\d+)$")


def _acdc(root: Path, labels: bool = True) -> Source:
    src = Source("acdc", root, [], list(ACDC_CLASSES), ["MR"], labelled=labels)
    patients = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("patient"))
    for pdir in patients:
        for f in _visible_files(pdir):
            stem = nifti_stem(f)
            m = _ACDC_FRAME.match(stem or "")
            if m is None or m.group(1) != pdir.name:
                continue  # _4d cine volumes, _gt labels, Info.cfg: not frames
            _pair(src, stem, pdir.name, f, f.with_name(f.name.replace(stem, f"{stem}_gt", 1)))
    return src


def _segthor(root: Path, labels: bool = True) -> Source:
    src = Source("segthor", root, [], list(SEGTHOR_CLASSES), ["CT"], SEGTHOR_WINDOW, labelled=labels)
    for pdir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("Patient_")):
        image = next((pdir / f"{pdir.name}{s}" for s in NIFTI_SUFFIXES if (pdir / f"{pdir.name}{s}").exists()),
                     pdir / f"{pdir.name}.nii.gz")
        if not image.is_file():
            src.problems.append(Problem(pdir.name, str(image), "missing image"))
            continue
        label = next((pdir / f"GT{s}" for s in NIFTI_SUFFIXES if (pdir / f"GT{s}").exists()), pdir / "GT.nii.gz")
        _pair(src, pdir.name, pdir.name, image, label)
    return src


def _folder(root: Path, labels: bool = True) -> Source:
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise IngestError(f"{images_dir}: missing (the folder layout needs images/ and labels/)")
    src = Source("folder", root, [], None, None, labelled=labels)
    for image in _visible_files(images_dir):
        stem = nifti_stem(image)
        if stem is None:
            src.problems.append(Problem(image.name, str(image), "not a NIfTI file (.nii or .nii.gz expected)"))
            continue
        label = next((labels_dir / f"{stem}{s}" for s in NIFTI_SUFFIXES if (labels_dir / f"{stem}{s}").exists()),
                     labels_dir / image.name)
        _pair(src, stem, stem, image, label)
    return src


def image_files(path: str | Path) -> Source:
    """Images alone, for prediction: one NIfTI file, or every NIfTI file of a folder (other files
    are not volumes and are left out; hidden ones too). Case ids are the file names' stems."""
    path = Path(path).absolute()
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else _visible_files(path)
    src = Source("files", path if path.is_dir() else path.parent, [], None, None, labelled=False)
    for f in files:
        stem = nifti_stem(f)
        if stem is not None:
            src.volumes.append(VolumeRef(stem, stem, str(f), None))
        elif path.is_file():
            src.problems.append(Problem(f.name, str(f), "not a NIfTI file (.nii or .nii.gz expected)"))
    _drop_duplicates(src)
    if not src.volumes and not src.problems:
        raise IngestError(f"{path}: no NIfTI files (.nii or .nii.gz) in this folder")
    return src


def modality_kinds(modalities: list[str]) -> list[str]:
    """'ct' or 'mr' per channel: CT is windowed, anything else is percentile-normalised."""
    return ["ct" if m.strip().lower() in CT_NAMES else "mr" for m in modalities]
