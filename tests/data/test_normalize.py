"""Intensity normalisation, resizing and shard planning."""

import numpy as np

from paal_ray.data.ingest import shard_groups
from paal_ray.data.normalize import (
    ct_window,
    normalise_volume,
    percentile_clip,
    resize_images,
    resize_labels,
)


def test_ct_window_maps_window_to_unit_range():
    x = np.array([-2000, -800, -200, 400, 3000], np.int16)
    np.testing.assert_allclose(ct_window(x, (-800, 400)), [0, 0, 0.5, 1, 1])


def test_percentile_clip_ignores_outliers_and_constant_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, 10_000).astype(np.float32)
    x[:5] = 1e6  # hot pixels must not squash the range
    y = percentile_clip(x, (0.5, 99.5))
    assert y.min() == 0 and y.max() == 1 and 0.4 < np.median(y) < 0.6
    assert not percentile_clip(np.full(10, 7.0)).any()


def test_normalise_volume_per_channel_kind():
    ct = np.full((2, 4, 4, 3), 400, np.float32)
    ct[1] = np.arange(96).reshape(4, 4, 6)[..., :3]
    out = normalise_volume(ct, ["ct", "mr"], window=(-800, 400))
    assert out.dtype == np.float32 and (out[0] == 1).all() and out[1].min() == 0 and out[1].max() == 1


def test_resize_images_bilinear_labels_nearest():
    labels = np.zeros((2, 40, 30), np.uint8)
    labels[:, 10:30, 5:25] = 3
    small = resize_labels(labels, 20)
    assert small.shape == (2, 20, 20) and set(np.unique(small)) == {0, 3}  # never blended
    assert small[0, 5:15, 4:16].min() == 3 and small[0, :4].max() == 0
    images = (labels[:, None] / 3.0).astype(np.float32)
    img = resize_images(images, 20)
    assert img.shape == (2, 1, 20, 20) and 0 <= img.min() and img.max() <= 1
    assert 0 < img[0, 0, 4, 10] < 1  # edges interpolate
    assert resize_images(img, 20) is img and resize_labels(small, 20) is small


def test_resize_matches_torch_bilinear_when_growing_and_averages_when_shrinking():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = rng.random((1, 2, 10, 14)).astype(np.float32)
    ours = resize_images(x, 24)
    ref = F.interpolate(torch.from_numpy(x), size=(24, 24), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[None, None]
    np.testing.assert_allclose(resize_images(checker, 16), 0.5, atol=0.01)  # no aliasing
    np.testing.assert_allclose(resize_images(np.full((1, 1, 50, 30), 0.3, np.float32), 20), 0.3, atol=1e-6)


def test_shard_groups_cover_all_volumes_in_order():
    slices = [10, 20, 5, 30, 7, 8, 9, 11, 2, 40]
    groups = shard_groups(slices, slice_bytes=1000, shard_bytes=30_000, min_shards=2)
    assert [i for g in groups for i in g] == list(range(10))
    assert len(groups) >= 5  # 142 slices x 1000 bytes / 30_000
    assert shard_groups([5, 5, 5], 10, min_shards=8) == [[0], [1], [2]]
