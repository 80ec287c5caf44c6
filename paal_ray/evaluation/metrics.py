"""Segmentation metrics of a test set, computed with MONAI (``monai.metrics``), volume by volume.

Feed it one volume at a time (a case's slices stacked in ``slice_index`` order, prediction and
label as class-index arrays [D, H, W] on the evaluation grid); ``summary()`` gives:

- **Dice, dataset-level**: per class 2TP / (2TP + FP + FN) from TP/FP/FN summed over every voxel
  of the test set (MONAI's confusion matrix and its "f1 score"), background included in the list;
  the headline ``dice`` is the mean over the foreground classes. This is how validation Dice is
  computed in training (``RoundEngine.validate``), so the two compare. A class absent from both
  the labels and the predictions of the whole set has no value (null) and is left out of the
  mean (validation scores it 1.0; on a real test set every class is present).
- **Dice per volume** (MONAI ``compute_dice``, background excluded, ``ignore_empty=True``): a
  class absent from a volume's label has no value in that volume (NaN), whatever was predicted;
  predicting it there anyway is counted in ``spurious_volumes`` (and costs dataset-level Dice).
- **HD95 per volume** (MONAI ``compute_hausdorff_distance``, 95th percentile, symmetric,
  Euclidean, background excluded): with spacing (1, sy, sx), one slice through-plane and the
  pool's stored pixel in-plane, so distances are in voxels of the pool grid (pools record no
  physical spacing). A class empty in the label or in the prediction of a volume has no HD95
  (MONAI returns NaN): volumes where it was present but not predicted are counted in
  ``missed_volumes``, so a model that misses a structure is not flattered by the mean.

Aggregation (MONAI's ``do_metric_reduction``, which skips NaN): a volume's score is the mean over
its foreground classes that have a value; the headline is the mean of those over volumes with at
least one value (MONAI reduction "mean"), ± their population std; per class, the mean ± std over
the volumes where the class has a value, with that count ``n``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

HD_PERCENTILE = 95


def _num(x: float) -> float | None:
    """JSON-safe: NaN and inf become null."""
    x = float(x)
    return x if math.isfinite(x) else None


def _one_hot(vol: torch.Tensor, k: int) -> torch.Tensor:
    """[D, H, W] class indices -> [1, K, D, H, W] float one-hot (MONAI's input format)."""
    return torch.nn.functional.one_hot(vol.long(), k).permute(3, 0, 1, 2).unsqueeze(0).float()


@dataclass
class VolumeScore:
    case_id: str
    patient_id: str
    slices: int
    dice: list[float]  # per foreground class, NaN where undefined
    hd95: list[float]
    in_label: list[bool]
    in_pred: list[bool]


@dataclass
class SegmentationScores:
    """Accumulates volumes; ``summary()`` is the metrics part of test.json."""

    class_names: list[str]
    counts: torch.Tensor = field(init=False)  # [K, 4] TP, FP, TN, FN summed over every voxel
    volumes: list[VolumeScore] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError("segmentation metrics need a background and at least one foreground class")
        self.counts = torch.zeros(len(self.class_names), 4, dtype=torch.float64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def add_volume(self, case_id: str, patient_id: str, pred: Any, label: Any,
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> VolumeScore:
        """pred, label: [D, H, W] class indices of one volume (numpy or torch)."""
        from monai.metrics import compute_dice, compute_hausdorff_distance, get_confusion_matrix

        pred, label = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(label))
        if pred.shape != label.shape or pred.ndim != 3:
            raise ValueError(f"{case_id}: prediction {tuple(pred.shape)} and label {tuple(label.shape)} must be "
                             f"the same [D, H, W]")
        k = self.num_classes
        p, y = _one_hot(pred, k), _one_hot(label, k)
        self.counts += get_confusion_matrix(p, y, include_background=True)[0].double()
        with warnings.catch_warnings():
            # MONAI warns for every class empty in a volume; we count those cases instead.
            warnings.simplefilter("ignore", UserWarning)
            # MONAI 1.6 calls its own deprecated get_mask_edges argument (not ours to fix).
            warnings.simplefilter("ignore", FutureWarning)
            dice = compute_dice(p, y, include_background=False, ignore_empty=True)[0]
            hd = compute_hausdorff_distance(p, y, include_background=False, percentile=HD_PERCENTILE,
                                            spacing=[float(s) for s in spacing])[0]
        score = VolumeScore(case_id=case_id, patient_id=patient_id, slices=int(pred.shape[0]),
                            dice=[float(v) for v in dice], hd95=[float(v) for v in hd],
                            in_label=[bool(v) for v in y[0, 1:].flatten(1).any(1)],
                            in_pred=[bool(v) for v in p[0, 1:].flatten(1).any(1)])
        self.volumes.append(score)
        return score

    # -- aggregation --------------------------------------------------------------------------
    def dataset_dice(self) -> list[float]:
        """Per class (background included) Dice from the summed confusion matrix; NaN: never seen."""
        from monai.metrics import compute_confusion_matrix_metric

        return [float(v) for v in compute_confusion_matrix_metric("f1 score", self.counts.float())]

    @staticmethod
    def _reduce(values: list[list[float]]) -> dict[str, Any]:
        """[volumes, classes] with NaN -> headline mean/std/n over volumes and per class mean/std/n."""
        from monai.metrics.utils import do_metric_reduction

        f = torch.tensor(values, dtype=torch.float32).reshape(len(values), -1)
        per_volume, has = do_metric_reduction(f.clone(), "mean_channel")
        vol = per_volume[has > 0].double().numpy()
        mean, _ = do_metric_reduction(f.clone(), "mean")
        arr = f.double().numpy()
        per_class = []
        for c in range(arr.shape[1]):
            col = arr[:, c][~np.isnan(arr[:, c])]
            per_class.append({"mean": _num(col.mean()) if len(col) else None,
                              "std": _num(col.std()) if len(col) else None, "n": int(len(col))})
        return {"mean": _num(mean) if len(vol) else None, "std": _num(vol.std()) if len(vol) else None,
                "n": int(len(vol)), "per_class": per_class}

    def summary(self) -> dict[str, Any]:
        names = self.class_names
        fg = names[1:]
        ds = self.dataset_dice()
        fg_ds = [v for v in ds[1:] if not math.isnan(v)]
        vols = self.volumes
        vd = self._reduce([v.dice for v in vols]) if vols else {"mean": None, "std": None, "n": 0, "per_class": []}
        vh = self._reduce([v.hd95 for v in vols]) if vols else {"mean": None, "std": None, "n": 0, "per_class": []}
        classes = {}
        for c, name in enumerate(fg):
            classes[name] = {
                "dice": _num(ds[c + 1]),
                "volume_dice": vd["per_class"][c] if vols else {"mean": None, "std": None, "n": 0},
                "hd95": vh["per_class"][c] if vols else {"mean": None, "std": None, "n": 0},
                "missed_volumes": sum(v.in_label[c] and not v.in_pred[c] for v in vols),
                "spurious_volumes": sum(v.in_pred[c] and not v.in_label[c] for v in vols),
            }
        return {
            "class_names": names,
            "num_volumes": len(vols),
            "num_slices": sum(v.slices for v in vols),
            "dice": float(np.mean(fg_ds)) if fg_ds else None,
            "dice_per_class": [_num(v) for v in ds],
            "volume_dice": {k: vd[k] for k in ("mean", "std", "n")},
            "hd95": {k: vh[k] for k in ("mean", "std", "n")},
            "classes": classes,
            "volumes": [{"case_id": v.case_id, "patient_id": v.patient_id, "slices": v.slices,
                         "dice": {n: _num(d) for n, d in zip(fg, v.dice, strict=True)},
                         "hd95": {n: _num(h) for n, h in zip(fg, v.hd95, strict=True)}} for v in vols],
        }
