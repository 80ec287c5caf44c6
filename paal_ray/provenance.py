"""What produced a result: package versions and the host, recorded with every run and pool."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_PACKAGES = (
    "paal-ray", "ray", "torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy",
    "pyarrow", "nibabel", "scikit-learn", "pydantic", "cuml-cu12",
)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
