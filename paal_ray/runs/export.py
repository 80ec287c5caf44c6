"""``paal export``: a run's labelled slices with their images, for the tools production models are
trained with.

``nnunet``: an nnU-Net v2 raw dataset, ``OUT/DatasetNNN_Name/`` with ``imagesTr/{case}_{slice}_XXXX.nii.gz``
(one 2D NIfTI per channel, XXXX = channel index), ``labelsTr/{case}_{slice}.nii.gz`` and
``dataset.json`` (channel_names, labels name -> index, numTraining, file_ending), the layout
``nnUNetv2_plan_and_preprocess`` reads. ``nifti``: ``OUT/images/{case}_{slice}.nii.gz`` (all
channels, [H, W, C], as the annotation export writes a slice) and ``OUT/labels/{case}_{slice}.nii.gz``.

The labelled set is the run's (initial set plus every ingested round's selection), with the labels
training used: the pool's for a simulated oracle, the annotators' for a human one. Images are the
pool's slices (normalised to [0, 1] and resized as ingest stored them: the grid the labels are on).
``paal_export.json`` records the run, the round, the source commit and which slice each case is.
The folder is written to a temporary name and renamed: whole or absent.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("nnunet", "nifti")
EXPORT_RECORD = "paal_export.json"


class ExportError(ValueError):
    """The run cannot be exported as asked; the message names the run, slice or option."""


def case_name(slice_id: str) -> str:
    """``case007/0012`` -> ``case007_0012`` (nnU-Net's case identifier: no path separators)."""
    return slice_id.replace("/", "_")


def _nifti2d(array: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array, np.eye(4))
    img.header.set_data_dtype(array.dtype)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ExportError(f"--dataset-id must be between 1 and 999 (nnU-Net's three digits), not {dataset_id}")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "", name)
    if not clean:
        raise ExportError(f"--name {name!r}: needs letters or digits (nnU-Net's dataset name)")
    return f"Dataset{dataset_id:03d}_{clean}"


def labelled_rows(run_dir: Path):
    """(run paths, state, config, pool manifest, Arrow table of the labelled rows in labelled order)."""
    from paal_ray.config import load_config
    from paal_ray.data.pool import Pool
    from paal_ray.runs.oracle import make_oracle
    from paal_ray.runs.state import Labelled, RunPaths, RunState

    paths = RunPaths(Path(run_dir).absolute())
    if not paths.config.is_file():
        raise ExportError(f"{paths.root}: not a run folder (no config.yaml)")
    cfg = load_config(paths.config)
    state = RunState.load(paths)
    ids = Labelled.load(paths).all()
    pool = Pool.open(cfg.pool)
    source = Pool.open(make_oracle(cfg.oracle.kind, pool, paths, cfg.oracle.inbox).training_pool())
    table = source.read_slices(ids)
    unlabelled = [s for s, lab in zip(table.column("slice_id").to_pylist(), table.column("label").to_pylist(),
                                      strict=True) if lab is None]
    if unlabelled:
        raise ExportError(f"{source.path}: {len(unlabelled)} labelled slices of run {paths.root.name!r} have no "
                          f"label there, e.g. {unlabelled[:3]}")
    return paths, state, cfg, pool.manifest, table


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "nnunet", *, dataset_id: int = 500,
               name: str | None = None, overwrite: bool = False, log=None) -> Path:
    """Write the run's labelled slices in ``fmt``; returns the folder written (the dataset folder
    for nnunet, ``out`` for nifti)."""
    from paal_ray.atomic import atomic_directory, atomic_write_json
    from paal_ray.runs.oracle import decode_slice, slice_nifti

    log = log or (lambda _m: None)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    paths, state, cfg, manifest, table = labelled_rows(Path(run_dir))
    out = Path(out).absolute()
    target = out / dataset_folder_name(dataset_id, name or paths.root.name) if fmt == "nnunet" else out
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; choose another --out or pass --overwrite")
    class_names = list(manifest["class_names"])
    channels = int(manifest["channels"])
    modalities = list(manifest.get("modalities") or ["MR"] * channels)
    cases: dict[str, str] = {}
    with atomic_directory(target, overwrite=overwrite) as tmp:
        img_dir, lab_dir = (tmp / "imagesTr", tmp / "labelsTr") if fmt == "nnunet" else (tmp / "images", tmp / "labels")
        img_dir.mkdir()
        lab_dir.mkdir()
        for i, row in enumerate(table.to_pylist()):
            case = case_name(row["slice_id"])
            if case in cases:
                raise ExportError(f"slices {cases[case]!r} and {row['slice_id']!r} map to one case name {case!r}")
            cases[case] = row["slice_id"]
            image, label = decode_slice(row)
            if fmt == "nnunet":
                for c in range(image.shape[0]):
                    (img_dir / f"{case}_{c:04d}.nii.gz").write_bytes(_nifti2d(image[c].astype(np.float32)))
            else:
                (img_dir / f"{case}.nii.gz").write_bytes(slice_nifti(image))
            (lab_dir / f"{case}.nii.gz").write_bytes(_nifti2d(np.ascontiguousarray(label, dtype=np.uint8)))
            if (i + 1) % max(1, table.num_rows // 10) == 0:
                log(f"export: {i + 1}/{table.num_rows} slices")
        record = _record(paths, state, cfg, fmt, cases)
        if fmt == "nnunet":
            atomic_write_json(tmp / "dataset.json", {
                "channel_names": {str(c): m for c, m in enumerate(modalities)},
                "labels": {n: k for k, n in enumerate(class_names)},
                "numTraining": len(cases), "file_ending": ".nii.gz",
                "name": target.name, "description": f"labelled slices of paal-ray run {paths.root.name!r} "
                f"(round {record['round']}, {record['oracle']} labels); images normalised to [0, 1] by paal ingest",
                "paal_ray": {k: record[k] for k in ("run", "round", "phase", "commit", "created")},
            })
        atomic_write_json(tmp / EXPORT_RECORD, record)
    log(f"export: {len(cases)} labelled slices of {paths.root.name} written to {target} ({fmt})")
    return target


def _record(paths, state, cfg, fmt: str, cases: dict[str, str]) -> dict[str, Any]:
    from paal_ray import __version__
    from paal_ray.provenance import source_commit, versions

    return {
        "format": fmt, "run": str(paths.root), "run_name": paths.root.name, "round": min(state.round, state.rounds),
        "rounds": state.rounds, "phase": state.phase, "labelled": len(cases), "oracle": cfg.oracle.kind,
        "strategy": cfg.strategy.name, "pool": cfg.pool, "commit": source_commit(), "version": __version__,
        "versions": versions(), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": cases,
    }
