"""The shared ``phantom_pool`` fixture: what other areas' integration tests rely on."""

import numpy as np

from paal_ray.data.pool import Pool, decode_images, decode_labels


def test_phantom_pool_fixture_shape_and_classes(phantom_pool):
    pool = Pool.open(phantom_pool)
    m = pool.manifest
    assert (m["num_volumes"], m["num_slices"], m["channels"], m["image_size"]) == (10, 160, 1, 64)
    assert pool.class_names == ["background", "organ", "core", "lesion"]
    with_class = m["slices_with_class"]
    # organ in most slices, lesion in few, some slices hold no structure at all
    assert with_class[1] > with_class[2] > with_class[3] > 0
    assert with_class[3] < 0.25 * m["num_slices"]
    assert 0 < m["slices_without_structure"] < 0.4 * m["num_slices"]
    ids = pool.slice_ids()[:8]
    batch = pool.read_slices(ids).to_pydict()
    images, labels = decode_images(batch), decode_labels(batch)
    assert images.shape == (8, 1, 64, 64) and images.dtype == np.float32
    assert labels.shape == (8, 64, 64) and 0.0 <= images.min() and images.max() <= 1.0
