"""Human oracle: export, waiting, mask validation, accepted labels reaching training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fakes import fake_services, small_cfg
from PIL import Image

from paal_ray.data.pool import Pool, decode_labels
from paal_ray.runs.machine import RunMachine
from paal_ray.runs.oracle import MaskError, safe_name, validate_mask
from paal_ray.runs.state import RunPaths, RunState


def test_validate_mask_accepts_good_and_names_file_and_problem():
    good = np.array([[0, 1], [2, 0]], np.int64)
    assert validate_mask(good, shape=(2, 2), num_classes=3, source="m.png").dtype == np.uint8
    assert validate_mask(good[..., None].astype(np.float32), shape=(2, 2), num_classes=3, source="m").shape == (2, 2)
    with pytest.raises(MaskError, match=r"m\.png: mask shape \[2, 2\] does not match the slice's shape \[4, 4\]"):
        validate_mask(good, shape=(4, 4), num_classes=3, source="m.png")
    with pytest.raises(MaskError, match=r"x\.npy: class values \[3\] outside 0\.\.2"):
        validate_mask(good + 1, shape=(2, 2), num_classes=3, source="x.npy")
    with pytest.raises(MaskError, match="whole class indices"):
        validate_mask(good * 0.5, shape=(2, 2), num_classes=3, source="f")
    with pytest.raises(MaskError, match="expected a 2D mask"):
        validate_mask(np.zeros((2, 2, 3)), shape=(2, 2), num_classes=3, source="rgb")


def test_human_oracle_round_trip(blob_pool, tmp_path):
    inbox = tmp_path / "inbox"
    cfg = small_cfg(blob_pool, tmp_path, **{"oracle.kind": "human", "oracle.inbox": str(inbox)})
    services = fake_services()
    m = RunMachine.create(cfg, services=services, echo=lambda s: None)
    out = m.run()
    root = tmp_path / "r"
    assert out.status == "waiting" and str(inbox) in out.message
    state = RunState.load(RunPaths(root))
    assert state.phase == "annotate" and state.waiting_for == str(inbox)
    export = root / "rounds" / "000" / "annotate"
    manifest = json.loads((export / "manifest.json").read_text())
    chosen = json.loads((root / "rounds" / "000" / "query.json").read_text())["slice_ids"]
    assert [e["slice_id"] for e in manifest["slices"]] == chosen and manifest["num_classes"] == 3
    for sid in chosen:
        img = nib.load(str(export / f"{safe_name(sid)}.nii.gz")).get_fdata()
        assert img.shape == (32, 32, 1)
        assert np.asarray(Image.open(export / f"{safe_name(sid)}.png")).shape == (32, 32)
    # Human labels are never taken from the pool: answer with "everything is class 2" masks.
    pool = Pool.open(blob_pool)
    for i, sid in enumerate(chosen):
        mask = np.full((32, 32), 2, np.uint8)
        if i == 0:
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(inbox / f"{safe_name(sid)}.nii.gz"))
        elif i == 1:
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(inbox / f"{safe_name(sid)}.png")  # wrong size
        elif i < len(chosen) - 1:
            Image.fromarray(mask).save(inbox / f"{safe_name(sid)}.png")
    # One mask still missing: keep waiting.
    assert RunMachine.open(root, services=services, echo=lambda s: None).run().status == "waiting"
    np.save(inbox / f"{safe_name(chosen[-1])}.npy", np.full((32, 32), 7, np.int64))  # bad class value
    with pytest.raises(MaskError) as err:
        RunMachine.open(root, services=services, echo=lambda s: None).run()
    msg = str(err.value)
    assert "2 of 6 masks rejected" in msg
    assert f"{safe_name(chosen[1])}.png: mask shape [16, 16] does not match the slice's shape [32, 32]" in msg
    assert f"{safe_name(chosen[-1])}.npy: class values [7] outside 0..2" in msg
    assert RunState.load(RunPaths(root)).phase == "annotate"
    # Fix both: the run continues into round 1 and stops again for its annotations.
    Image.fromarray(np.full((32, 32), 2, np.uint8)).save(inbox / f"{safe_name(chosen[1])}.png")
    np.save(inbox / f"{safe_name(chosen[-1])}.npy", np.full((32, 32), 2, np.int64))
    out = RunMachine.open(root, services=services, echo=lambda s: None).run()
    assert out.status == "waiting" and out.state.round == 1 and out.state.labeled_count == 9
    # Training reads the run's own pool, holding the human labels (not the pool's).
    spec = services.train.specs[-1]
    assert spec.pool_path == str(root / "train-pool") and len(spec.train_ids) == 9
    tp = Pool.open(spec.pool_path)
    labels = decode_labels(tp.read_slices(chosen).to_pydict())
    assert (labels == 2).all()
    original = decode_labels(pool.read_slices(chosen).to_pydict())
    assert not (original == 2).all()
    assert set(tp.slice_ids()) == set(spec.train_ids) | set(spec.val_ids)


def test_human_oracle_default_inbox_is_in_the_round_folder(blob_pool, tmp_path):
    cfg = small_cfg(blob_pool, tmp_path, **{"oracle.kind": "human"})
    out = RunMachine.create(cfg, services=fake_services(), echo=lambda s: None).run()
    inbox = Path(tmp_path / "r" / "rounds" / "000" / "inbox")
    assert out.state.waiting_for == str(inbox) and inbox.is_dir()
