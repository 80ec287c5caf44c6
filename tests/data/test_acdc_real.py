"""The real ACDC data (../shared/data/acdc) ingested at native size: the manifest's counts must
equal what the label files themselves hold."""

import nibabel as nib
import numpy as np

from paal_ray.data.ingest import IngestOptions, ingest
from paal_ray.data.pool import Pool


def test_acdc_manifest_counts_match_the_label_files(ray_session, acdc_dir, tmp_path):
    labels = sorted(acdc_dir.glob("patient*/patient*_frame[0-9][0-9]_gt.nii.gz"))
    slices, with_class, pixels = 0, np.zeros(4, int), np.zeros(4, int)
    for f in labels:
        lab = np.asanyarray(nib.load(f).dataobj)
        slices += lab.shape[2]
        for k in range(4):
            with_class[k] += (lab == k).any(axis=(0, 1)).sum()
            pixels[k] += (lab == k).sum()

    m = ingest(acdc_dir, tmp_path / "pool", IngestOptions(layout="acdc", size=None))
    assert m["num_volumes"] == len(labels) and m["num_cases"] == len({f.parent.name for f in labels})
    assert m["num_slices"] == slices
    assert m["slices_with_class"] == with_class.tolist()
    assert m["pixels_per_class"] == pixels.tolist()
    assert m["image_size"] is None and m["class_names"] == ["background", "RV", "Myo", "LV"]
    pool = Pool.open(tmp_path / "pool")
    index = pool.index()
    assert index.num_rows == slices
    one = pool.read_slices(["patient002_frame01/0000"]).to_pylist()[0]
    assert one["image_shape"][0] == 1 and one["image_shape"][1:] == one["label_shape"]  # native in-plane
