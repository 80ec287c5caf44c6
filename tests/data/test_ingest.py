"""Ingest round trips: phantoms -> pool -> read back, for every layout."""

import json

import nibabel as nib
import numpy as np
import pytest

from paal_ray.data.ingest import IngestOptions, ingest
from paal_ray.data.normalize import normalise_volume
from paal_ray.data.phantoms import PhantomSpec, make_volume, write_phantoms
from paal_ray.data.pool import Pool, decode_images, decode_labels


def _read_back(pool: Pool):
    table = pool.read_slices(pool.slice_ids())
    batch = table.to_pydict()
    return batch, decode_images(batch), decode_labels(batch)


def test_msd_round_trip_at_native_size_is_exact(ray_session, tmp_path):
    src = tmp_path / "src"
    write_phantoms(src, PhantomSpec(cases=3, modalities=2, size=24, slices=8, seed=5))
    manifest = ingest(src, tmp_path / "pool", IngestOptions(layout="msd"))
    pool = Pool.open(tmp_path / "pool")
    assert pool.manifest == json.loads(json.dumps(manifest))
    batch, images, labels = _read_back(pool)
    assert batch["slice_id"][:2] == ["phantom_000/0000", "phantom_000/0001"]
    assert images.shape == (24, 2, 24, 24) and labels.shape == (24, 24, 24)
    assert set(batch["image_dtype"]) == {"float16"} and set(batch["label_dtype"]) == {"uint8"}

    with_class, pixels = np.zeros(4, int), np.zeros(4, int)
    for case in range(3):
        name = f"phantom_{case:03d}.nii.gz"
        label = np.asanyarray(nib.load(src / "labelsTr" / name).dataobj)
        image = np.moveaxis(np.asanyarray(nib.load(src / "imagesTr" / name).dataobj), -1, 0)
        rows = slice(case * 8, case * 8 + 8)
        np.testing.assert_array_equal(labels[rows], np.moveaxis(label, 2, 0))  # labels identical
        expected = np.moveaxis(normalise_volume(image, ["mr", "mr"]), 3, 0)
        np.testing.assert_allclose(images[rows], expected, atol=1e-3)  # float16 storage
        for k in range(4):
            with_class[k] += (label == k).any(axis=(0, 1)).sum()
            pixels[k] += (label == k).sum()
    m = pool.manifest
    assert (m["num_cases"], m["num_volumes"], m["num_slices"], m["channels"]) == (3, 3, 24, 2)
    assert m["image_size"] is None and m["layout"] == "msd" and m["modalities"] == ["FLAIR", "T1w"]
    assert m["slices_with_class"] == with_class.tolist() and m["pixels_per_class"] == pixels.tolist()
    assert m["class_names"] == ["background", "organ", "core", "lesion"]
    assert m["params"]["percentiles"] == [0.5, 99.5] and m["skipped"] == []
    assert m["version"] == "0.1.0" and "ray" in m["versions"] and "nibabel" in m["versions"]
    present = np.array(batch["present"])
    np.testing.assert_array_equal(present, np.stack([(labels == k).any(axis=(1, 2)) for k in range(4)], 1))
    assert pool.dataset(columns=["slice_id", "label"]).count() == 24  # streams on Ray Data


def test_acdc_layout_resized_keeps_patients_and_label_values(ray_session, tmp_path):
    write_phantoms(tmp_path / "src", PhantomSpec(cases=2, size=40, slices=6, seed=2), layout="acdc")
    m = ingest(tmp_path / "src", tmp_path / "pool", IngestOptions(layout="acdc", size=16, workers=2))
    assert (m["num_cases"], m["num_volumes"], m["num_slices"], m["image_size"]) == (2, 4, 24, 16)
    assert m["class_names"] == ["background", "RV", "Myo", "LV"]
    pool = Pool.open(tmp_path / "pool")
    batch, images, labels = _read_back(pool)
    assert images.shape == (24, 1, 16, 16) and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert set(batch["patient_id"]) == {"patient001", "patient002"}
    assert "patient001_frame01/0000" in batch["slice_id"]
    assert m["pixels_per_class"][0] + sum(m["pixels_per_class"][1:]) == 24 * 16 * 16


def _write(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def test_segthor_layout_uses_its_ct_window(ray_session, tmp_path):
    spec = PhantomSpec(size=16, slices=5, classes=5, kind="ct")
    for p in (1, 2):
        image, label = make_volume(spec, p)
        _write(image[0], tmp_path / "src" / f"Patient_{p:02d}" / f"Patient_{p:02d}.nii.gz")
        _write(label, tmp_path / "src" / f"Patient_{p:02d}" / "GT.nii.gz")
    m = ingest(tmp_path / "src", tmp_path / "pool", IngestOptions(layout="segthor"))
    assert m["params"]["window"] == [-800.0, 400.0] and m["num_volumes"] == 2 and m["num_slices"] == 10
    assert m["class_names"][1:] == ["esophagus", "heart", "trachea", "aorta"]
    _, images, _ = _read_back(Pool.open(tmp_path / "pool"))
    raw = make_volume(spec, 1)[0][0].astype(np.float32)
    expected = (np.clip(np.moveaxis(raw, 2, 0), -800, 400) + 800) / 1200
    np.testing.assert_allclose(images[:5, 0], expected, atol=1e-3)


def test_folder_layout_infers_classes_and_slices_along_another_axis(ray_session, tmp_path):
    spec = PhantomSpec(size=12, slices=6, classes=3)
    for name in ("b", "a"):
        image, label = make_volume(spec, ord(name))
        _write(image[0], tmp_path / "src" / "images" / f"{name}.nii.gz")
        _write(label, tmp_path / "src" / "labels" / f"{name}.nii.gz")
    m = ingest(tmp_path / "src", tmp_path / "pool", IngestOptions(layout="folder", axis=0))
    assert m["class_names"] == ["background", "class1", "class2"]
    assert m["num_slices"] == 24 and m["layout"] == "folder"  # 12 slices along axis 0, two volumes
    batch, images, labels = _read_back(Pool.open(tmp_path / "pool"))
    assert images.shape == (24, 1, 12, 6)
    np.testing.assert_array_equal(labels[:12], make_volume(spec, ord("a"))[1])


def test_existing_pool_is_not_overwritten(ray_session, tmp_path):
    (tmp_path / "pool").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        ingest(tmp_path, tmp_path / "pool", IngestOptions(layout="msd"))


def test_drop_background_leaves_out_empty_slices_and_records_them(ray_session, tmp_path):
    """Skull-stripped MR: the top and bottom slices hold no signal at all (the paper's Brain Tumour
    pool keeps about 137 of each volume's 155). Slices with any signal, or any label, stay."""
    spec = PhantomSpec(size=12, slices=6, classes=3)
    for name, blank in (("a", [0, 1, 5]), ("b", [0])):
        image, label = make_volume(spec, ord(name))
        image = image[0] - image[0].min()  # background at the volume's minimum, 0
        image[:, :, blank] = 0.0
        label[:, :, blank] = 0
        if name == "b":
            image[3, 3, 5] = 0.0
            image[:, :, 5] = 0.0
            label[2, 2, 5] = 1  # no image signal but a label: kept (an annotation is never dropped)
        _write(image, tmp_path / "src" / "images" / f"{name}.nii.gz")
        _write(label, tmp_path / "src" / "labels" / f"{name}.nii.gz")
    m = ingest(tmp_path / "src", tmp_path / "pool", IngestOptions(layout="folder", drop_background=True))
    assert m["num_slices"] == 8 and m["dropped_background_slices"] == 4 and m["params"]["drop_background"]
    assert {v["case_id"]: (v["slices"], v["dropped_background"]) for v in m["volumes"]} == {"a": (3, 3), "b": (5, 1)}
    ids = Pool.open(tmp_path / "pool").slice_ids()
    assert ids == ["a/0002", "a/0003", "a/0004", "b/0001", "b/0002", "b/0003", "b/0004", "b/0005"]  # z kept
    full = ingest(tmp_path / "src", tmp_path / "all", IngestOptions(layout="folder"))
    assert full["num_slices"] == 12 and full["dropped_background_slices"] == 0
