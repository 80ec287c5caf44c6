"""Synthetic phantoms: deterministic, anatomy-like, written in the MSD and ACDC layouts."""

import json

import nibabel as nib
import numpy as np
import pytest

from paal_ray.data.phantoms import PhantomError, PhantomSpec, make_volume, write_phantoms


def test_same_seed_same_volume_other_seed_other_volume():
    spec = PhantomSpec(size=32, slices=12, modalities=2, seed=3)
    a_img, a_lab = make_volume(spec, 1)
    b_img, b_lab = make_volume(spec, 1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = make_volume(PhantomSpec(size=32, slices=12, modalities=2, seed=4), 1)
    assert not np.array_equal(a_lab, c_lab)
    assert not np.array_equal(make_volume(spec, 2)[1], a_lab)  # cases differ within a data set


def test_structures_have_very_different_sizes_and_slice_coverage():
    spec = PhantomSpec(size=64, slices=24, classes=5, seed=0)
    for case in range(4):
        image, label = make_volume(spec, case)
        assert image.shape == (1, 64, 64, 24) and label.shape == (64, 64, 24) and label.dtype == np.uint8
        pixels = np.bincount(label.ravel(), minlength=5)
        assert pixels[1] > 2 * pixels[2] > 0 and pixels[1] > 4 * pixels[3] > 0  # organ >> core, lesion
        per_slice = [(label == k).any(axis=(0, 1)).sum() for k in range(5)]
        assert per_slice[3] <= 24 // 3  # the lesion shows in only a few slices
        empty = (label.max(axis=(0, 1)) == 0).sum()
        assert 1 <= empty <= 12  # some slices hold no structure
        # the core is nested: every neighbour of a core pixel is organ or core
        x, y, z = np.nonzero(label == 2)
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            assert set(np.unique(label[x + dx, y + dy, z])) <= {1, 2}


def test_modalities_show_different_contrast_with_noise_and_bias():
    spec = PhantomSpec(size=64, slices=16, modalities=4, seed=1)
    image, label = make_volume(spec, 0)
    organ, body_bg = label == 1, (label == 0) & (image[0] > 0.05 * image[0].max())
    ratios = [image[m][organ].mean() / image[m][body_bg].mean() for m in range(4)]
    assert max(ratios) / min(ratios) > 1.3  # the organ stands out more in some sequences
    assert image[0][organ].std() > 0  # noise + texture + bias, not flat labels


@pytest.mark.parametrize("seed", range(6))
def test_every_structure_is_visible_in_the_first_modality(seed):
    """An annotator must see a boundary to draw it: in the first sequence each class differs
    from what surrounds it (the body; the organ for the nested core), for any seed."""
    image, label = make_volume(PhantomSpec(size=64, slices=16, seed=seed), 0)
    img = image[0] / image[0].max()
    body = (label == 0) & (img > 0.1)
    mean = {k: float(img[label == k].mean()) for k in (1, 2, 3)}
    around = {1: float(img[body].mean()), 2: mean[1], 3: float(img[body].mean())}
    noise = float(img[body].std())  # texture, bias field and noise of the unlabelled tissue
    for k, m in mean.items():
        assert abs(m - around[k]) > 1.5 * noise, (k, m, around[k], noise)  # contrast-to-noise > 1.5


def test_ct_phantoms_are_int16_hounsfield():
    image, _ = make_volume(PhantomSpec(size=32, slices=8, kind="ct"), 0)
    assert image.dtype == np.int16 and image.min() < -900 and image.max() < 1000


def test_msd_layout_with_4d_images(tmp_path):
    summary = write_phantoms(tmp_path / "ds", PhantomSpec(cases=2, modalities=3, size=16, slices=6))
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert ds["modality"] == {"0": "FLAIR", "1": "T1w", "2": "T1gd"} and ds["labels"]["0"] == "background"
    assert ds["numTraining"] == 2 and len(ds["training"]) == 2
    img = nib.load(tmp_path / "ds" / ds["training"][0]["image"])
    lab = nib.load(tmp_path / "ds" / ds["training"][0]["label"])
    assert img.shape == (16, 16, 6, 3) and lab.shape == (16, 16, 6)
    assert summary["volumes"] == 2 and summary["slices"] == 12


def test_acdc_layout_two_frames_per_patient(tmp_path):
    write_phantoms(tmp_path / "acdc", PhantomSpec(cases=2, size=16, slices=6), layout="acdc")
    files = sorted(p.relative_to(tmp_path / "acdc").as_posix() for p in (tmp_path / "acdc").rglob("*.nii.gz"))
    assert len(files) == 8 and files[0] == "patient001/patient001_frame01.nii.gz"
    assert "patient001/patient001_frame01_gt.nii.gz" in files


def test_bad_parameters_and_existing_output_are_refused(tmp_path):
    with pytest.raises(PhantomError, match="classes"):
        write_phantoms(tmp_path / "x", PhantomSpec(classes=1))
    with pytest.raises(PhantomError, match="ACDC"):
        write_phantoms(tmp_path / "x", PhantomSpec(modalities=2), layout="acdc")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        write_phantoms(tmp_path / "exists", PhantomSpec(cases=1, size=16, slices=4))
    assert not (tmp_path / "x").exists()
