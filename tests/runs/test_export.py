"""`paal export`: a run's labelled slices as an nnU-Net v2 raw dataset and as plain NIfTI folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from fakes import fake_services, small_cfg
from typer.testing import CliRunner

from paal_ray.cli.main import app
from paal_ray.data.pool import Pool, decode_images, decode_labels
from paal_ray.runs.export import case_name
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.state import Labelled, RunPaths


@pytest.fixture()
def finished_run(blob_pool, tmp_path):
    RunMachine.create(small_cfg(blob_pool, tmp_path / "ws", name="sim"), services=fake_services(),
                      echo=lambda s: None).run()
    return tmp_path / "ws" / "sim"


def _nnunet_schema_check(folder, labelled: list[str], channels: int, class_names: list[str]) -> None:
    """The layout and dataset.json as nnU-Net v2 documents them (documentation/dataset_format.md)."""
    ds = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(ds)
    assert ds["channel_names"] == {str(c): "MR" for c in range(channels)}
    assert ds["labels"] == {n: k for k, n in enumerate(class_names)} and ds["labels"]["background"] == 0
    assert sorted(ds["labels"].values()) == list(range(len(class_names)))  # consecutive
    assert ds["numTraining"] == len(labelled) and ds["file_ending"] == ".nii.gz"
    cases = sorted(case_name(s) for s in labelled)
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == sorted(f"{c}_{k:04d}.nii.gz" for c in cases for k in range(channels))
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]


def test_nnunet_export_is_a_valid_raw_dataset(finished_run, blob_pool, tmp_path):
    res = CliRunner().invoke(app, ["export", str(finished_run), "--format", "nnunet", "--out", str(tmp_path / "raw"),
                                   "--dataset-id", "501"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "raw" / "Dataset501_sim"
    assert f"exported to {folder}" in res.output
    labelled = Labelled.load(RunPaths(finished_run)).all()
    pool = Pool.open(blob_pool)
    _nnunet_schema_check(folder, labelled, pool.channels, pool.class_names)
    # Images and labels are the pool's, slice for slice.
    batch = pool.read_slices(labelled).to_pydict()
    images, labels = decode_images(batch), decode_labels(batch)
    for i, sid in enumerate(labelled):
        img = nib.load(str(folder / "imagesTr" / f"{case_name(sid)}_0000.nii.gz"))
        lab = nib.load(str(folder / "labelsTr" / f"{case_name(sid)}.nii.gz"))
        assert np.array_equal(np.asarray(img.dataobj), images[i, 0]) and np.array_equal(lab.affine, img.affine)
        assert lab.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(lab.dataobj), labels[i])
    record = json.loads((folder / "paal_export.json").read_text())
    assert record["run"] == str(finished_run) and record["round"] == 2 and record["phase"] == "done"
    assert record["cases"] == {case_name(s): s for s in labelled}
    assert record["commit"] is None or len(record["commit"].split("+")[0]) == 40
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["paal_ray"]["run"] == str(finished_run) and ds["paal_ray"]["round"] == 2

    # nnU-Net's own check, where nnunetv2 is importable (it is not a dependency: see the README).
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError:
        verify_dataset_integrity = None
    if verify_dataset_integrity is not None:
        verify_dataset_integrity(str(folder), num_processes=1)

    res = CliRunner().invoke(app, ["export", str(finished_run), "--out", str(tmp_path / "raw"), "--dataset-id", "501"])
    assert res.exit_code == 2 and "already exists" in res.output
    res = CliRunner().invoke(app, ["export", str(finished_run), "--out", str(tmp_path / "x"), "--dataset-id", "1000"])
    assert res.exit_code == 2 and "--dataset-id must be between 1 and 999" in res.output


def test_nifti_export_and_human_labels(blob_pool, tmp_path):
    """A human-oracle run exports the annotators' masks, not the pool's labels."""
    from PIL import Image

    from paal_ray.runs.oracle import safe_name

    services = fake_services()
    run = tmp_path / "ws" / "human"
    m = RunMachine.create(small_cfg(blob_pool, tmp_path / "ws", **{"name": "human", "oracle.kind": "human"}),
                          services=services, echo=lambda s: None)
    assert m.run().status == "waiting"
    chosen = json.loads((run / "rounds" / "000" / "query.json").read_text())["slice_ids"]
    for sid in chosen:
        Image.fromarray(np.full((32, 32), 2, np.uint8)).save(run / "rounds" / "000" / "inbox" / f"{safe_name(sid)}.png")
    assert RunMachine.open(run, services=services, echo=lambda s: None).run().state.round == 1
    res = CliRunner().invoke(app, ["export", str(run), "--format", "nifti", "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    labelled = Labelled.load(RunPaths(run)).all()
    assert len(labelled) == 9
    out = tmp_path / "plain"
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{case_name(s)}.nii.gz" for s in labelled)
    for sid in chosen:
        assert (np.asarray(nib.load(str(out / "labels" / f"{case_name(sid)}.nii.gz")).dataobj) == 2).all()
        assert nib.load(str(out / "images" / f"{case_name(sid)}.nii.gz")).shape == (32, 32, 1)
    record = json.loads((out / "paal_export.json").read_text())
    assert record["oracle"] == "human" and record["round"] == 1 and record["phase"] == "annotate"
