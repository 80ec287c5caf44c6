"""Every bad input: a clear error naming the file and the problem, and no pool (nor temp folder)
left behind; with --skip-bad the bad volumes are listed and the rest is ingested."""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from paal_ray.data.ingest import IngestOptions, _make_plan, _write_slices, ingest
from paal_ray.data.layouts import IngestError, VolumeRef, discover
from paal_ray.data.phantoms import PhantomSpec, write_phantoms


@pytest.fixture(scope="module")
def clean_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("clean") / "src"
    write_phantoms(src, PhantomSpec(cases=3, size=16, slices=6, seed=9))
    return src


@pytest.fixture
def src(clean_source, tmp_path) -> Path:
    return Path(shutil.copytree(clean_source, tmp_path / "src"))


def _save(array, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def _fails(src: Path, *fragments: str, layout: str = "msd") -> str:
    out = src.parent / "pool"
    with pytest.raises(IngestError) as err:
        ingest(src, out, IngestOptions(layout=layout))
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message and "RayTaskError" not in message
    assert not out.exists()
    assert [p.name for p in src.parent.iterdir() if p.name.startswith(".pool")] == []  # no temp folder
    return message


IMG1 = "imagesTr/phantom_001.nii.gz"
LAB1 = "labelsTr/phantom_001.nii.gz"


def test_truncated_nifti(ray_session, src):
    data = (src / IMG1).read_bytes()
    (src / IMG1).write_bytes(data[: len(data) // 2])
    _fails(src, str(src / IMG1), "truncated or corrupt")


def test_corrupt_nifti(ray_session, src):
    data = bytearray((src / IMG1).read_bytes())
    data[-100:-8] = bytes(92)  # damaged deflate data near the end
    (src / IMG1).write_bytes(bytes(data))
    _fails(src, str(src / IMG1), "truncated or corrupt gzip data")


def test_non_nifti_file(ray_session, src):
    (src / IMG1).write_bytes(gzip.compress(b"this is a PNG, honest" * 40))
    _fails(src, str(src / IMG1), "not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)")


def test_non_nifti_name_in_folder_layout(ray_session, tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir()
    _save(np.zeros((8, 8, 3), np.float32), tmp_path / "src" / "images" / "a.nii.gz")
    _save(np.zeros((8, 8, 3), np.uint8), tmp_path / "src" / "labels" / "a.nii.gz")
    (tmp_path / "src" / "images" / "scan.png").write_bytes(b"\x89PNG")
    _fails(tmp_path / "src", "scan.png", "not a NIfTI file", layout="folder")


def test_image_label_shape_mismatch(ray_session, src):
    _save(np.zeros((16, 16, 5), np.uint8), src / LAB1)
    _fails(src, str(src / LAB1), "label shape (16, 16, 5) differs from image shape (16, 16, 6)")


def test_label_values_outside_declared_classes(ray_session, src):
    label = np.asanyarray(nib.load(src / LAB1).dataobj).copy()
    label[0, 0, 0] = 7
    _save(label, src / LAB1)
    _fails(src, str(src / LAB1), "label values [7] outside the declared classes 0..3")


def test_nan_and_inf_intensities(ray_session, src):
    image = np.asanyarray(nib.load(src / IMG1).dataobj).copy()
    image[1, 1, 1], image[2, 2, 2] = np.nan, np.inf
    _save(image, src / IMG1)
    _fails(src, str(src / IMG1), "2 NaN/Inf intensities")


def test_modality_count_contradicts_dataset_json(ray_session, src):
    image = np.asanyarray(nib.load(src / IMG1).dataobj)
    _save(np.stack([image, image], axis=-1), src / IMG1)
    _fails(src, str(src / IMG1), "has 2 modalities but the data set declares 1 (FLAIR)")


def test_missing_label(ray_session, src):
    (src / LAB1).unlink()
    _fails(src, str(src / IMG1), "missing label")


def test_duplicate_case_ids(ray_session, src):
    ds = json.loads((src / "dataset.json").read_text())
    ds["training"].append(dict(ds["training"][0]))
    (src / "dataset.json").write_text(json.dumps(ds))
    _fails(src, "phantom_000.nii.gz", "duplicate case id 'phantom_000'")


def test_duplicate_case_ids_by_file_name(tmp_path):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        for name in ("a.nii", "a.nii.gz"):
            _save(np.zeros((4, 4, 2), np.uint8), tmp_path / sub / name)
    problems = discover(tmp_path, "folder").problems
    assert [p.problem for p in problems] == [f"duplicate case id 'a' (also {tmp_path / 'images' / 'a.nii'})"]


@pytest.mark.parametrize("layout", ["msd", "acdc", "segthor", "folder"])
def test_empty_folder(tmp_path, layout):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=f"{tmp_path / 'empty'}: empty folder"):
        ingest(tmp_path / "empty", tmp_path / "pool", IngestOptions(layout=layout))
    assert not (tmp_path / "pool").exists()


def test_all_problems_are_reported_at_once(ray_session, src):
    (src / LAB1).unlink()
    (src / "imagesTr/phantom_002.nii.gz").write_bytes(b"not nifti")
    msg = _fails(src, "2 bad volume(s)", str(src / IMG1), "phantom_002.nii.gz", "--skip-bad")
    assert msg.count("\n") == 2


def test_skip_bad_lists_skipped_volumes_and_succeeds(ray_session, src, tmp_path):
    (src / LAB1).unlink()
    data = (src / "imagesTr/phantom_002.nii.gz").read_bytes()
    (src / "imagesTr/phantom_002.nii.gz").write_bytes(data[:300])
    lines = []
    m = ingest(src, tmp_path / "pool", IngestOptions(layout="msd", skip_bad=True), log=lines.append)
    assert m["num_volumes"] == 1 and m["num_slices"] == 6
    assert [(s["case_id"], Path(s["file"]).name) for s in m["skipped"]] == [
        ("phantom_001", "phantom_001.nii.gz"), ("phantom_002", "phantom_002.nii.gz")]
    assert "missing label" in m["skipped"][0]["problem"] and "truncated" in m["skipped"][1]["problem"]
    assert sum("skipping" in line for line in lines) == 2
    assert json.loads((tmp_path / "pool" / "manifest.json").read_text())["skipped"] == m["skipped"]


def test_error_raised_inside_a_ray_data_task_reaches_the_user_as_ingest_error(ray_session, src, tmp_path):
    """Bypass the checking pass: a volume that breaks while Ray Data slices it still gives our error."""
    source = discover(src, "msd")
    plan = _make_plan(source, IngestOptions(layout="msd"), [{"channels": 1, "max_label": 3}])
    (src / IMG1).write_bytes((src / IMG1).read_bytes()[:400])
    good = [VolumeRef("phantom_001", "phantom_001", str(src / IMG1), str(src / LAB1))]
    checked = {"phantom_001": {"shape": [16, 16, 6], "slices": 6}}
    (tmp_path / "out").mkdir()
    with pytest.raises(IngestError) as err:
        _write_slices(good, plan, checked, None, tmp_path / "out")
    assert str(err.value).startswith(f"{src / IMG1}: truncated or corrupt")
