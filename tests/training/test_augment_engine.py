"""Joint augmentation and one worker's training machinery, in process (no Ray)."""

from __future__ import annotations

import pytest
import torch

from paal_ray.config import AugmentConfig, ConfigError, load_config
from paal_ray.models.bundle import ModelSpec
from paal_ray.training import extensions
from paal_ray.training.augment import augment_batch
from paal_ray.training.engine import RoundEngine, SliceSet, epoch_plan
from paal_ray.training.extensions import pairwise_ranking_loss


def _batch(b=4, size=32):
    labels = torch.zeros(b, size, size, dtype=torch.long)
    labels[:, 4:14, 6:20] = 1
    labels[:, 18:28, 10:16] = 2
    images = labels[:, None].float() / 2 + 0.05 * torch.randn(b, 1, size, size)
    return images, labels


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_settings_leave_image_and_mask_unchanged():
    x, y = _batch()
    cfg = AugmentConfig(elastic_p=0, rotations=[0.0], vflip_p=0, salt_pepper_p=0)
    ax, ay = augment_batch(x, y, cfg, _gen())
    assert torch.allclose(ax, x, atol=1e-5) and torch.equal(ay, y)


def test_vertical_flip_moves_image_and_mask_together():
    x, y = _batch()
    cfg = AugmentConfig(elastic_p=0, rotations=[0.0], vflip_p=1.0, salt_pepper_p=0)
    ax, ay = augment_batch(x, y, cfg, _gen())
    assert torch.allclose(ax, x.flip(2), atol=1e-5) and torch.equal(ay, y.flip(1))


def test_full_augmentation_keeps_mask_aligned_and_valid():
    x, y = _batch(b=8)
    cfg = AugmentConfig(elastic_p=1.0, rotations=[-15.0, 15.0], vflip_p=0.5, salt_pepper_p=0.0)
    ax, ay = augment_batch(x, y, cfg, _gen())
    assert ax.shape == x.shape and ay.shape == y.shape and ay.dtype == y.dtype
    assert set(ay.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(ay, y)
    # The image was built from the mask: after the joint warp they still agree almost everywhere.
    agree = ((ax[:, 0] * 2).round().clamp(0, 2).long() == ay).float().mean()
    assert agree > 0.95


def test_augmentation_is_seeded_and_does_not_weaken_over_calls():
    x, y = _batch()
    cfg = AugmentConfig(elastic_p=1.0, rotations=[0.0], vflip_p=0, salt_pepper_p=0)
    first = augment_batch(x, y, cfg, _gen(3))[0]
    for _ in range(5):
        augment_batch(x, y, cfg, _gen(4))
    assert torch.equal(first, augment_batch(x, y, cfg, _gen(3))[0])  # same strength on the 7th call
    assert (first - x).abs().mean() > 0.01  # and it does distort


def test_salt_and_pepper_touches_image_not_mask():
    x, y = _batch()
    cfg = AugmentConfig(elastic_p=0, rotations=[0.0], vflip_p=0, salt_pepper_p=1.0, salt_pepper_amount=0.1)
    ax, ay = augment_batch(x, y, cfg, _gen())
    changed = (ax - x).abs() > 1e-4
    assert 0.05 < changed.float().mean() < 0.15 and torch.equal(ay, y)


# -- the engine ---------------------------------------------------------------------------------
def _engine(extension=None, overrides=(), world=1, rank=0):
    cfg = load_config("cpu", ["pool=unused", "model.image_size=32", "model.base_width=4", "model.encoder_depth=2",
                              "train.batch_size=4", "train.samples_per_epoch=8", "train.ap_silent_epochs=1",
                              *overrides])
    spec = ModelSpec.from_config(cfg.model, 1, 3)
    return RoundEngine(cfg, spec, extensions.get(extension), torch.device("cpu"), rank=rank, world=world, seed=0)


def _data(n=8):
    x, y = _batch(n)
    return SliceSet([f"c/{i:04d}" for i in range(n)], x, y.to(torch.uint8))


def test_ap_loss_sends_no_gradient_into_the_segmenter():
    eng = _engine()
    x, y = _batch()
    eng.segmenter.zero_grad(set_to_none=True)
    logits = eng.segmenter(x)  # with autograd history, as in training
    eng.ap_step(x, logits, y)
    assert all(p.grad is None for p in eng.segmenter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in eng.ap.parameters())


def test_ap_is_silent_during_the_first_epochs_then_learns():
    eng = _engine()
    before = [p.detach().clone() for p in eng.ap.parameters()]
    seg_before = [p.detach().clone() for p in eng.segmenter.parameters()]
    m0 = eng.train_epoch(_data(), global_epoch=0)  # ap_silent_epochs=1
    assert m0["ap_loss"] is None and not m0["ap_active"]
    assert all(torch.equal(a, b) for a, b in zip(before, eng.ap.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seg_before, eng.segmenter.parameters(), strict=True))
    m1 = eng.train_epoch(_data(), global_epoch=1)
    assert m1["ap_loss"] is not None
    assert not all(torch.equal(a, b) for a, b in zip(before, eng.ap.parameters(), strict=True))


def test_final_phase_peaks_at_its_own_learning_rate_and_the_rounds_keep_train_lr():
    eng = _engine(overrides=["train.lr=0.001", "train.warmup_epochs=0", "schedule.final_epochs=10",
                             "schedule.final_warmup_epochs=0", "schedule.final_lr=0.003"])
    assert eng.learning_rates(0.0)[0] == pytest.approx(0.001)  # a query round: train.lr
    eng.lr_window = (40, 0, 10)  # the final phase, starting at global epoch 40
    seg, ap = eng.learning_rates(40.0)
    assert seg == pytest.approx(0.003) and ap == pytest.approx(eng.cfg.train.ap_lr)
    assert eng.learning_rates(49.99)[0] < 0.0001  # annealed to min_lr by its own last epoch
    plain = _engine(overrides=["train.lr=0.001", "schedule.final_epochs=10", "schedule.final_warmup_epochs=0"])
    plain.lr_window = (40, 0, 10)
    assert plain.learning_rates(40.0)[0] == pytest.approx(0.001)  # unset: the final phase peaks at train.lr


def test_final_lr_needs_a_fixed_length_final_phase():
    with pytest.raises(ConfigError, match="schedule.final_lr needs schedule.final_epochs"):
        load_config("cpu", ["pool=unused", "schedule.final_lr=0.003"])


def test_ranks_split_each_global_batch_and_no_slice_is_dropped():
    kw = {"seed": 0, "batch_size": 4, "samples_per_epoch": None}
    whole = epoch_plan(10, 3, **kw)
    parts = [epoch_plan(10, 3, rank=r, world=2, **kw) for r in range(2)]
    assert whole.shape == (3, 4) and parts[0].shape == parts[1].shape == (3, 2)
    merged = torch.stack(parts, 2).reshape(3, 4)
    assert torch.equal(merged, whole)  # same slices whatever the number of workers
    assert set(whole.flatten().tolist()) == set(range(10))
    assert not torch.equal(whole, epoch_plan(10, 4, **kw))
    assert epoch_plan(10, 3, seed=0, batch_size=4, samples_per_epoch=20).shape == (5, 4)


def test_validation_reports_dataset_dice_per_class_and_ap_error():
    eng = _engine()
    v = eng.validate(_data(6))
    assert len(v["val_dice_per_class"]) == 3 and 0 <= v["val_dice"] <= 1
    assert v["val_dice"] == sum(v["val_dice_per_class"][1:]) / 2
    assert 0 <= v["val_ap_mae"] <= 1 and v["val_slices"] == 6


def test_pairwise_ranking_loss():
    target = torch.tensor([3.0, 2.0, 1.0, 0.0])
    good = torch.tensor([9.0, 5.0, 2.0, 0.0])  # ordered like the target, gaps > margin
    assert pairwise_ranking_loss(good, target).item() == 0.0
    assert pairwise_ranking_loss(good.flip(0), target).item() > 1.0
    assert pairwise_ranking_loss(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_lpl_head_trains_and_its_input_is_detached_from_the_first_query_on():
    for round_index, reaches_encoder in [(0, True), (1, False)]:
        eng = _engine("lpl")
        eng.extension.start_round(eng.net.head, round_index)
        x, y = _batch()
        _, head_out = eng.net(x)
        eng.net.zero_grad(set_to_none=True)
        eng.extension.head_loss(head_out, torch.arange(4.0)).backward()
        enc_grads = [p.grad for p in eng.segmenter.net.encoder.parameters()]
        assert any(g is not None for g in enc_grads) == reaches_encoder
        assert all(p.grad is not None for p in eng.net.head.parameters())
    assert set(eng.extension_state()) == {"lpl"}
    assert eng.train_epoch(_data(), 0)["ext_loss"] is not None


def test_ceal_adds_pseudo_labelled_slices_from_the_current_model():
    eng = _engine("ceal")
    data = _data(4)
    pseudo = _batch(3)[0]
    images, labels = eng.extension.extend_training_set(eng.predict_labels, data.images, data.labels, {"pseudo": pseudo})
    assert images.shape[0] == labels.shape[0] == 7
    assert torch.equal(labels[4:], eng.predict_labels(pseudo))
    assert torch.equal(labels[:4], data.labels)


def test_lpl_segmenter_learns_from_the_same_loss_as_every_strategy():
    """LPL adds its head's ranking term; the segmenter's own loss is everyone's (batch-level CE +
    soft Dice), not a mean of per-slice Dice losses."""
    from paal_ray.models.losses import segmentation_loss

    x, y = _batch(8)
    plain, lpl = _engine(), _engine("lpl")
    assert all(torch.equal(a, b) for a, b in zip(plain.segmenter.parameters(), lpl.segmenter.parameters(), strict=True))
    with torch.no_grad():
        expected = segmentation_loss(plain.segmenter(x), y, 3, label_smoothing=0.1)
    seg_plain, _, ext_plain = plain.step(x, y, ap_active=False)
    seg_lpl, _, ext_lpl = lpl.step(x, y, ap_active=False)
    assert seg_lpl.item() == pytest.approx(seg_plain.item(), rel=1e-6)
    assert seg_plain.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ext_plain.item() == 0 and ext_lpl.item() > 0  # the head's ranking loss on each slice's CE


def test_ap_variant_learns_from_held_out_slices_only():
    """train.ap_target=validation: the AP is untouched by the labelled batches and learns from the
    segmenter's eval-mode output on the held-out slices; the segmenter is unchanged by it."""
    eng = _engine(overrides=("train.ap_target=validation",))
    ap_before = [p.detach().clone() for p in eng.ap.parameters()]
    m = eng.train_epoch(_data(), global_epoch=1)
    assert m["ap_loss"] is None and all(torch.equal(a, b) for a, b in zip(ap_before, eng.ap.parameters(), strict=True))
    assert eng.train_ap_on_held_out(_data(6), global_epoch=0) is None  # silent epochs hold here too
    seg_state = {k: v.clone() for k, v in eng.segmenter.state_dict().items()}
    loss = eng.train_ap_on_held_out(_data(6), global_epoch=1)
    assert loss is not None and loss > 0
    assert not all(torch.equal(a, b) for a, b in zip(ap_before, eng.ap.parameters(), strict=True))
    assert all(torch.equal(v, eng.segmenter.state_dict()[k]) for k, v in seg_state.items())  # BN stats too
    assert eng.segmenter.training  # back in training mode for the next epoch
