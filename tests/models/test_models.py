"""Models: Dice targets on hand-made masks, the AP's shapes, the loss, the segmenter, bundles."""

from __future__ import annotations

import pytest
import torch
import torchvision

from paal_ray.models import (
    AccuracyPredictor,
    ModelSpec,
    build_segmenter,
    dice_targets,
    load_model_bundle,
    save_model_bundle,
)
from paal_ray.models.dice import confusion_counts, dice_from_counts
from paal_ray.models.losses import segmentation_loss, soft_dice_loss


def test_dice_targets_hand_made_masks():
    label = torch.tensor([[[0, 0], [1, 1]]])  # class 2 absent
    pred = torch.tensor([[[0, 1], [1, 1]]])  # class 2 absent too
    d = dice_targets(pred, label, 3)
    assert d.shape == (1, 3)
    assert d[0, 0].item() == pytest.approx(2 * 1 / (1 + 2), abs=1e-4)  # background included
    assert d[0, 1].item() == pytest.approx(2 * 2 / (3 + 2), abs=1e-4)
    assert d[0, 2].item() == 1.0  # absent from both: nothing to find, nothing found


def test_dice_targets_missed_and_spurious_classes_score_zero():
    label = torch.tensor([[[2, 0], [0, 0]]])
    pred = torch.tensor([[[0, 0], [0, 1]]])
    d = dice_targets(pred, label, 3)
    assert d[0, 1].item() == pytest.approx(0.0, abs=1e-4)  # predicted, not there
    assert d[0, 2].item() == pytest.approx(0.0, abs=1e-4)  # there, not predicted


def test_dataset_level_dice_from_global_counts():
    label = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    pred = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    dice = dice_from_counts(confusion_counts(pred, label, 3))
    # class 1: TP 1, FP 1, FN 1 over the whole set -> 2/4; class 2 never seen nor predicted -> 1
    assert dice.tolist() == pytest.approx([2 * 5 / (10 + 2), 0.5, 1.0])


def test_accuracy_predictor_shapes_and_range():
    ap = AccuracyPredictor(in_channels=2, num_classes=3)
    assert ap.backbone.conv1.in_channels == 2 + 3  # image and class probabilities
    out = ap(torch.rand(4, 2, 32, 32), torch.rand(4, 3, 32, 32).softmax(1))
    assert out.shape == (4, 3)
    assert bool(((out > 0) & (out < 1)).all())
    with pytest.raises(ValueError, match="expects 2 image and 3 probability"):
        ap(torch.rand(4, 1, 32, 32), torch.rand(4, 3, 32, 32))


def test_narrow_accuracy_predictor_keeps_resnet18_depth_at_a_fraction_of_the_cost():
    full = AccuracyPredictor(in_channels=4, num_classes=4)
    narrow = AccuracyPredictor(in_channels=4, num_classes=4, width=16)
    assert full.backbone.conv1.out_channels == 64
    assert narrow.backbone.conv1.in_channels == 8 and narrow.backbone.conv1.out_channels == 16
    assert narrow.backbone.layer4[-1].conv2.out_channels == 128 and narrow.head[1].in_features == 128
    assert [len(getattr(narrow.backbone, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    n_full = sum(p.numel() for p in full.parameters())
    n_narrow = sum(p.numel() for p in narrow.parameters())
    assert n_narrow < n_full / 12  # a quarter of the width: ~1/16 of the weights
    out = narrow(torch.randn(3, 4, 64, 64), torch.softmax(torch.randn(3, 4, 64, 64), 1))
    assert out.shape == (3, 4) and ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="width"):
        AccuracyPredictor(in_channels=1, num_classes=2, width=2)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_accuracy_predictor_backbone_is_torchvisions_resnet(arch):
    """Same modules, names, shapes and parameter count as torchvision's ResNet (conv1 takes image +
    probabilities, no fc); with the same weights it computes the same features."""
    ap = AccuracyPredictor(in_channels=1, num_classes=2, arch=arch)  # 3 input channels, like torchvision's
    tv = getattr(torchvision.models, arch)(weights=None)
    tv.fc = torch.nn.Identity()
    ours = ap.backbone.state_dict()
    theirs = tv.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    tv.load_state_dict(ours)
    ap.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ap.backbone(x), tv(x), atol=1e-5)
    with pytest.raises(ValueError, match="arch 'resnet50'"):
        AccuracyPredictor(in_channels=1, num_classes=2, arch="resnet50")


def test_ap_does_not_import_torchvision():
    """torchvision costs 2-5 s of import in every scoring actor and training worker."""
    import subprocess
    import sys

    code = "import sys, paal_ray.models, paal_ray.query.scoring; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_segmentation_loss_prefers_the_right_answer_and_ignores_background_in_dice():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    right = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 5
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).permute(0, 3, 1, 2).float() * 5
    assert segmentation_loss(right, labels, 3) < 1.0 < segmentation_loss(wrong, labels, 3)
    per = segmentation_loss(torch.cat([right[:1], wrong[:1]]), labels, 3, per_sample=True)
    assert per.shape == (2,) and per[0] < per[1]
    # Dice over foreground only: with one foreground class segmented confidently it is ~0, and a
    # background-only batch predicted as background is not penalised by a background term.
    sharp = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 20
    assert soft_dice_loss(sharp, labels, 2).item() == pytest.approx(0.0, abs=1e-3)
    empty = torch.zeros_like(labels)
    assert soft_dice_loss(sharp[:, [0, 0]] * 0 + torch.tensor([20.0, 0.0]).view(1, 2, 1, 1), empty, 2).item() < 1e-3


def test_plain_unet_segmenter_gives_logits_and_stages():
    seg = build_segmenter("plain_unet", 1, 3, encoder_depth=3, base_width=4)
    out = seg.forward_features(torch.rand(2, 1, 32, 32))
    assert out.logits.shape == (2, 3, 32, 32)
    assert [s.shape[1] for s in out.stages] == seg.stage_channels == [4, 8, 16, 32]
    assert out.pooled.shape == (2, 32)


def test_smp_segmenter_builds_without_download():
    seg = build_segmenter("resnet18", 2, 4, encoder_depth=4)
    out = seg.forward_features(torch.rand(1, 2, 64, 64))
    assert out.logits.shape == (1, 4, 64, 64)


def test_bundle_round_trip_keeps_weights_and_extensions(tmp_path):
    spec = ModelSpec(in_channels=1, num_classes=3, encoder="plain_unet", encoder_depth=2, base_width=4, ap_width=8)
    seg, ap = spec.build()
    save_model_bundle(tmp_path, spec, seg, ap, extensions={"lpl": {"x": torch.ones(2)}}, meta={"epoch": 3})
    b = load_model_bundle(tmp_path)
    assert b.spec == spec and b.meta == {"epoch": 3}
    assert torch.equal(b.extensions["lpl"]["x"], torch.ones(2))
    x = torch.rand(1, 1, 16, 16)
    seg.eval()
    b.segmenter.eval()
    assert torch.equal(seg(x), b.segmenter(x))
