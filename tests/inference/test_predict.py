"""`paal predict`: masks on the input's exact grid, Dice after the resize round trip, bad input.

The model is trained to high Dice on small phantoms in process, with the training engine every
Ray Train worker runs (``RoundEngine``: the same models, loss, optimiser and schedule), so it takes
seconds rather than a Ray Train round; the three tests share it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pool_builders import make_phantom_pool


def train_bundle(pool_path: Path, folder: Path, cfg, *, max_epochs: int = 40, target: float = 0.95) -> float:
    """Train on every slice of the pool until its Dice reaches ``target``; save model.pt in ``folder``."""
    import torch

    from paal_ray.data.pool import Pool, decode_images, decode_labels
    from paal_ray.models.bundle import ModelSpec, save_model_bundle
    from paal_ray.training import extensions
    from paal_ray.training.engine import RoundEngine, SliceSet

    pool = Pool.open(pool_path)
    batch = pool.read_slices(pool.slice_ids()).to_pydict()
    size = cfg.model.image_size
    data = SliceSet(batch["slice_id"], torch.from_numpy(decode_images(batch, size)),
                    torch.from_numpy(decode_labels(batch, size).astype(np.uint8)))
    torch.manual_seed(0)
    engine = RoundEngine(cfg, ModelSpec.from_config(cfg.model, pool.channels, pool.num_classes),
                         extensions.get(None), torch.device("cpu"), seed=0)
    dice = 0.0
    for epoch in range(max_epochs):
        engine.train_epoch(data, epoch)
        dice = engine.validate(data)["val_dice"]
        if dice >= target:
            break
    save_model_bundle(folder, engine.spec, engine.segmenter, engine.ap, meta={"val_dice": dice})
    return dice


def fake_run_folder(root: Path, cfg, checkpoint: Path) -> Path:
    """A finished run's folder as `paal predict` reads it: config, state, final.json."""
    from paal_ray.atomic import atomic_write_json, atomic_write_text
    from paal_ray.config import dump_config
    from paal_ray.runs.state import RunPaths, RunState

    paths = RunPaths(root)
    root.mkdir(parents=True)
    atomic_write_text(paths.config, dump_config(cfg))
    RunState(name=root.name, strategy="paal", fold=0, rounds=1, per_round=1, n_train=1, budget=1, round=1,
             phase="done", checkpoint=str(checkpoint)).save(paths)
    atomic_write_json(root / "final.json", {"checkpoint": str(checkpoint), "best_checkpoint": str(checkpoint)})
    return root


@pytest.fixture(scope="session")
def phantom_run(ray_session, tmp_path_factory):
    """(run folder, phantom source folder, training Dice): 6 phantoms of 48 x 48 x 12, 3 classes,
    ingested at 32 px (so predictions go 48 -> 32 -> 48), a plain U-Net trained to Dice >= 0.95."""
    from paal_ray.config import load_config

    base = tmp_path_factory.mktemp("predict")
    pool = make_phantom_pool(base / "pool", cases=6, classes=3, size=48, slices=12, image_size=32, seed=3)
    cfg = load_config("cpu", [f"pool={pool}", f"workspace={base / 'ws'}", "name=trained", "model.image_size=32",
                              "train.augment.enabled=false", "train.samples_per_epoch=null", "train.lr=0.003",
                              "train.warmup_epochs=1", "train.schedule_epochs=60", "train.ap_silent_epochs=100"])
    dice = train_bundle(pool, base / "ckpt", cfg)
    run = fake_run_folder(base / "ws" / "trained", cfg, base / "ckpt")
    return run, base / "pool-source", dice


def _dice(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    inter = np.logical_and(pred == k, truth == k).sum()
    total = (pred == k).sum() + (truth == k).sum()
    return 2 * inter / total if total else 1.0


@pytest.mark.slow  # trains a model to Dice 0.95 once (shared): ~2 CPU-minutes on 2 cores
def test_masks_match_the_phantom_labels_after_the_resize_round_trip(phantom_run, tmp_path):
    """Phantoms are 48 px, the pool and model 32 px: Dice is measured on the native 48 px grid."""
    import nibabel as nib

    from paal_ray.inference.predict import PredictOptions, predict, run_model

    run, source, train_dice = phantom_run
    assert train_dice >= 0.95
    model, _ = run_model(run)
    assert model.source.startswith("the final model")
    summary = predict(source, tmp_path / "out", model, PredictOptions(actors=2), layout="msd")
    assert summary["num_volumes"] == 6 and summary["class_names"] == ["background", "organ", "core"]
    preds, truths = [], []
    for v in summary["volumes"]:
        image = nib.load(v["file"])
        mask = nib.load(str(tmp_path / "out" / f"{v['case_id']}.nii.gz"))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert mask.get_data_dtype() == np.uint8
        preds.append(np.asarray(mask.dataobj))
        truths.append(np.asarray(nib.load(v["file"].replace("imagesTr", "labelsTr")).dataobj))
    pred, truth = np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in truths])
    dice = [_dice(pred, truth, k) for k in (1, 2)]
    assert min(dice) >= 0.9, dice


def _odd_volumes(source: Path, folder: Path) -> dict[str, tuple]:
    """Phantom images cropped to non-square grids, under rotated, anisotropic affines, one of them
    NIfTI-2 and uncompressed, with their cropped labels: name -> (image path, label array)."""
    import nibabel as nib

    folder.mkdir()
    out = {}
    specs = [
        ("oblique", nib.Nifti1Image, ".nii.gz", (slice(2, 46), slice(5, 45), slice(None)),
         np.array([[0.0, -0.8, 0.0, 12.5], [1.3, 0.0, 0.1, -40.0], [0.0, 0.05, 3.5, 7.0], [0, 0, 0, 1]])),
        ("nifti2", nib.Nifti2Image, ".nii", (slice(0, 40), slice(None), slice(1, 11)),
         np.diag([0.6, 0.6, 5.0, 1.0])),
    ]
    for i, (name, kind, suffix, crop, affine) in enumerate(specs):
        image = nib.load(str(source / "imagesTr" / f"phantom_{i:03d}.nii.gz"))
        label = np.asarray(nib.load(str(source / "labelsTr" / f"phantom_{i:03d}.nii.gz")).dataobj)
        img = kind(np.asarray(image.dataobj)[crop], affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=2)
        img.header.set_xyzt_units("mm", "sec")
        path = folder / f"{name}{suffix}"
        nib.save(img, str(path))
        out[name] = (path, label[crop])
    return out


@pytest.mark.slow  # trains a model to Dice 0.95 once (shared): ~2 CPU-minutes on 2 cores
def test_masks_keep_shape_affine_and_header_of_odd_inputs(phantom_run, tmp_path):
    import nibabel as nib

    from paal_ray.inference.predict import PredictOptions, predict, run_model

    run, source, _ = phantom_run
    volumes = _odd_volumes(source, tmp_path / "in")
    model, _ = run_model(run)
    summary = predict(tmp_path / "in", tmp_path / "out", model, PredictOptions(probabilities=True, actors=1))
    assert sorted(v["case_id"] for v in summary["volumes"]) == sorted(volumes)
    for name, (path, label) in volumes.items():
        image = nib.load(str(path))
        mask = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert type(mask) is type(image) and mask.shape == image.shape
        assert np.allclose(mask.affine, image.affine)
        for coded in ("get_qform", "get_sform"):
            a, code = getattr(image.header, coded)(coded=True)
            b, code_b = getattr(mask.header, coded)(coded=True)
            assert code == code_b and np.allclose(a, b)
        assert np.allclose(mask.header.get_zooms(), image.header.get_zooms())
        assert mask.header.get_xyzt_units() == ("mm", "sec") and mask.get_data_dtype() == np.uint8
        assert b"0=background 1=organ 2=core" in mask.header["descrip"].tobytes()
        pred = np.asarray(mask.dataobj)
        assert min(_dice(pred, label, k) for k in (1, 2)) >= 0.85  # the model never saw these grids
        side = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert side["class_names"] == ["background", "organ", "core"] and side["shape"] == list(image.shape)
        probs = nib.load(str(tmp_path / "out" / f"{name}_probabilities.nii.gz"))
        p = np.asarray(probs.dataobj)
        assert p.shape == (*image.shape, 3) and np.allclose(probs.affine, image.affine)
        assert np.allclose(p.sum(-1), 1, atol=1e-4) and (p.argmax(-1) == pred).mean() > 0.999


@pytest.mark.slow  # trains a model to Dice 0.95 once (shared): ~2 CPU-minutes on 2 cores
def test_a_corrupt_volume_is_named_and_skipped_with_skip_bad(phantom_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from paal_ray.cli.main import app

    run, source, _ = phantom_run
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        shutil.copy(source / "imagesTr" / f"phantom_{i:03d}.nii.gz", inp / f"good{i}.nii.gz")
    data = (source / "imagesTr" / "phantom_002.nii.gz").read_bytes()
    (inp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (inp / "notes.txt").write_text("not a volume\n")
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(run), str(inp), "--out", str(tmp_path / "out"), "--actors", "1"])
    assert res.exit_code == 2, res.output
    assert f"{inp / 'cut.nii.gz'}: truncated or corrupt gzip data" in res.output and "--skip-bad" in res.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*")), "nothing may be left behind"

    res = runner.invoke(app, ["predict", str(run), str(inp), "--out", str(tmp_path / "out"), "--skip-bad",
                              "--actors", "1"])
    assert res.exit_code == 0, res.output
    assert "2 masks in" in res.output and "skipped 1" in res.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["good0.json", "good0.nii.gz", "good1.json", "good1.nii.gz", "predict.json"]
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert [s["file"] for s in summary["skipped"]] == [str(inp / "cut.nii.gz")]
    res = runner.invoke(app, ["predict", str(run), str(inp), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "already exists" in res.output
