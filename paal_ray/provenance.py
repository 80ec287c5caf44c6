"""What produced a result: package versions and the host, recorded with every run and pool."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_PACKAGES = (
    "paal-ray", "ray", "torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy",
    "pyarrow", "nibabel", "scikit-learn", "pydantic", "monai", "cuml-cu12",
)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def source_commit() -> str | None:
    """The git commit of the paal-ray source that is running (``+dirty`` with uncommitted changes),
    or None when it is not a git checkout (an installed wheel)."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
