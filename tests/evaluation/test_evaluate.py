"""Test-set metrics against hand computation on a hand-made pool with known masks, and `paal evaluate`.

The pool: 16 x 16 slices, classes background / A / B, three volumes (two patients), 2 slices each.
The "model" predicts what each image encodes (image = prediction / 10), so every prediction is
known; the expected values below are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from paal_ray.data.pool import MANIFEST, SLICES_DIR, Pool, encode_slice_row, write_pool_shard
from paal_ray.evaluation.metrics import SegmentationScores
from paal_ray.evaluation.predict import EvaluationError, evaluate_bundle
from paal_ray.models.bundle import ModelSpec

S = 16


def _volumes() -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """case -> (patient, prediction [2, S, S], label [2, S, S])."""
    vols = {}
    # c1: A is one voxel, predicted 3 pixels to the right (Dice 0, HD95 3); B a 3x3 block, exact (1, 0).
    p, y = np.zeros((2, S, S), np.uint8), np.zeros((2, S, S), np.uint8)
    y[0, 2, 2] = 1
    p[0, 2, 5] = 1
    y[1, 8:11, 8:11] = p[1, 8:11, 8:11] = 2
    vols["c1"] = ("p1", p, y)
    # c2: A a 2x2 block predicted one column to the right: overlap 2 of 4 (Dice 0.5); every voxel is
    # an edge, distances each way [0, 0, 1, 1] (HD95 1). B not in the label but predicted: spurious.
    p, y = np.zeros((2, S, S), np.uint8), np.zeros((2, S, S), np.uint8)
    y[0, 4:6, 4:6] = 1
    p[0, 4:6, 5:7] = 1
    p[1, 12, 12] = 2
    vols["c2"] = ("p2", p, y)
    # c3 (another volume of patient p2): A in the label, not predicted: missed (Dice 0, no HD95).
    p, y = np.zeros((2, S, S), np.uint8), np.zeros((2, S, S), np.uint8)
    y[0, 10, 10] = 1
    vols["c3"] = ("p2", p, y)
    return vols


def write_known_pool(path: Path) -> Path:
    rows = []
    for case, (patient, pred, label) in _volumes().items():
        for z in range(2):
            image = (pred[z][None].astype(np.float32) / 10).astype(np.float16)
            rows.append(encode_slice_row(case_id=case, patient_id=patient, slice_index=z, image=image,
                                         label=label[z], num_classes=3))
    rows.reverse()  # stored out of slice order: volumes must be stacked by slice_index
    (path / SLICES_DIR).mkdir(parents=True)
    write_pool_shard(rows, path / SLICES_DIR / "part-00000.parquet")
    (path / MANIFEST).write_text(json.dumps({"class_names": ["background", "A", "B"], "channels": 1,
                                             "image_size": S, "num_slices": len(rows)}))
    return path


class EncodedPrediction(torch.nn.Module):
    """Logits peaked at the class the image encodes (pixel value = class / 10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = x[:, :1] * 10
        return -torch.stack([(code[:, 0] - k) ** 2 for k in range(3)], dim=1)


@pytest.fixture(scope="module")
def known_pool(tmp_path_factory) -> Path:
    return write_known_pool(tmp_path_factory.mktemp("known") / "pool")


def known_bundle():
    return SimpleNamespace(spec=ModelSpec(in_channels=1, num_classes=3, image_size=None),
                           segmenter=EncodedPrediction())


def test_dice_and_hd95_match_hand_computation(known_pool):
    pool = Pool.open(known_pool)
    r = evaluate_bundle(known_bundle(), pool, pool.slice_ids(), batch_size=4)
    assert (r["num_volumes"], r["num_slices"], r["patients"]) == (3, 6, ["p1", "p2"])
    # Dataset level. A: TP 2, FP 3 (c1 1 + c2 2), FN 4 (c1 1 + c2 2 + c3 1) -> 4/11. B: TP 9, FP 1, FN 0 -> 18/19.
    # Background: 1536 voxels, 19 in some foreground -> TP 1517, FP 4, FN 4 -> 3034/3042.
    assert r["dice_per_class"] == pytest.approx([3034 / 3042, 4 / 11, 18 / 19])
    assert r["dice"] == pytest.approx((4 / 11 + 18 / 19) / 2)
    a, b = r["classes"]["A"], r["classes"]["B"]
    # Per volume (A, B): c1 (0, 1), c2 (0.5, -), c3 (0, -): volume means 0.5, 0.5, 0.
    assert r["volume_dice"]["mean"] == pytest.approx(1 / 3) and r["volume_dice"]["n"] == 3
    assert r["volume_dice"]["std"] == pytest.approx(math.sqrt(1 / 18))
    assert (a["volume_dice"]["mean"], a["volume_dice"]["n"]) == (pytest.approx(1 / 6), 3)
    assert (b["volume_dice"]["mean"], b["volume_dice"]["n"]) == (pytest.approx(1.0), 1)
    # HD95 (A, B): c1 (3, 0), c2 (1, -), c3 (-, -): volume means 1.5 and 1 -> 1.25 +- 0.25 over 2.
    assert (r["hd95"]["mean"], r["hd95"]["std"], r["hd95"]["n"]) == (pytest.approx(1.25), pytest.approx(0.25), 2)
    assert (a["hd95"]["mean"], a["hd95"]["std"], a["hd95"]["n"]) == (pytest.approx(2.0), pytest.approx(1.0), 2)
    assert (b["hd95"]["mean"], b["hd95"]["n"]) == (pytest.approx(0.0), 1)
    assert (a["missed_volumes"], a["spurious_volumes"], b["missed_volumes"], b["spurious_volumes"]) == (1, 0, 0, 1)
    vols = {v["case_id"]: v for v in r["volumes"]}
    assert vols["c1"]["dice"] == {"A": 0.0, "B": pytest.approx(1.0)} and vols["c1"]["hd95"] == {"A": 3.0, "B": 0.0}
    assert vols["c2"]["dice"]["B"] is None and vols["c3"]["hd95"] == {"A": None, "B": None}
    assert "voxels of the pool grid" in r["hd95_unit"]
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN or inf anywhere


def test_dataset_dice_is_the_validation_dice(known_pool):
    """Same TP/FP/FN definition as RoundEngine.validate (models/dice.py), through MONAI."""
    from paal_ray.models.dice import confusion_counts, dice_from_counts

    vols = _volumes().values()
    pred = torch.from_numpy(np.concatenate([p for _, p, _ in vols]))
    label = torch.from_numpy(np.concatenate([y for _, _, y in vols]))
    expected = dice_from_counts(confusion_counts(pred, label, 3))
    r = evaluate_bundle(known_bundle(), Pool.open(known_pool), Pool.open(known_pool).slice_ids())
    assert r["dice_per_class"] == pytest.approx(expected.tolist())


def test_hd95_is_in_pool_voxels_when_evaluated_on_a_coarser_grid():
    """Spacing (1, 2, 2): one evaluation pixel is two pool pixels; through-plane stays one slice."""
    scores = SegmentationScores(["background", "A"])
    p, y = np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8)
    y[0, 2, 2], p[0, 2, 5] = 1, 1
    assert scores.add_volume("c", "p", p, y, spacing=(1.0, 2.0, 2.0)).hd95 == [6.0]
    p2 = np.zeros_like(p)
    p2[1, 2, 2] = 1
    assert scores.add_volume("d", "p", p2, y, spacing=(1.0, 2.0, 2.0)).hd95 == [1.0]


def test_unlabelled_or_mismatched_pools_are_refused(known_pool, tmp_path):
    pool = Pool.open(known_pool)
    wrong = SimpleNamespace(spec=ModelSpec(in_channels=2, num_classes=3), segmenter=EncodedPrediction())
    with pytest.raises(EvaluationError, match="1 image channels, the model takes 2"):
        evaluate_bundle(wrong, pool, pool.slice_ids())
    (tmp_path / SLICES_DIR).mkdir()
    write_pool_shard([encode_slice_row(case_id="u", patient_id="u", slice_index=0, image=np.zeros((1, S, S), np.float16),
                                       label=None, num_classes=3)], tmp_path / SLICES_DIR / "part-0.parquet")
    (tmp_path / MANIFEST).write_text(json.dumps({"class_names": ["background", "A", "B"], "channels": 1}))
    with pytest.raises(EvaluationError, match="have no label"):
        evaluate_bundle(known_bundle(), Pool.open(tmp_path), ["u/0000"])


def constant_bundle(folder: Path) -> Path:
    """A real plain-U-Net checkpoint whose weights are zero and whose head's bias picks class A: it
    predicts A everywhere."""
    from paal_ray.models.bundle import save_model_bundle

    spec = ModelSpec(in_channels=1, num_classes=3, encoder="plain_unet", encoder_depth=2, base_width=4, ap_width=4)
    seg, ap = spec.build()
    with torch.no_grad():
        for prm in seg.parameters():
            prm.zero_()
        seg.net.segmentation_head.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    save_model_bundle(folder, spec, seg, ap)
    return folder


def test_paal_evaluate_prints_the_table_and_json(ray_session, known_pool, tmp_path):
    from paal_ray.cli.main import app
    from paal_ray.config import dump_config, load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config("cpu", [f"pool={known_pool}"])))
    ckpt = constant_bundle(tmp_path / "ckpt")
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(run), "--pool", str(known_pool), "--checkpoint", str(ckpt), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout[res.stdout.index("{"):])
    # A everywhere: TP 6 (all of A's label), FP 1536 - 6, FN 0 -> 12 / 1542; B never predicted -> 0.
    assert r["classes"]["A"]["dice"] == pytest.approx(12 / 1542) and r["classes"]["B"]["dice"] == 0.0
    assert r["classes"]["B"]["missed_volumes"] == 1 and r["classes"]["A"]["spurious_volumes"] == 0
    assert r["checkpoint"] == str(ckpt)
    res = runner.invoke(app, ["evaluate", str(run), "--pool", str(known_pool), "--checkpoint", str(ckpt)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    row_a = next(line for line in lines if line.startswith("A "))
    assert f"{12 / 1542:.4f}" in row_a
    assert any(line.startswith("mean foreground") and f"{(12 / 1542) / 2:.4f}" in line for line in lines)
    assert "2 patients, 3 volumes, 6 slices" in res.stdout and "HD95 unit: voxels of the pool grid" in res.stdout
    # No final model and no --checkpoint: one clear error line.
    res = runner.invoke(app, ["evaluate", str(run), "--pool", str(known_pool)])
    assert res.exit_code == 2 and "no final model yet" in res.output
