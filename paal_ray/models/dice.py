"""Dice scores: the AP's per-slice regression target and the dataset-level validation score."""

from __future__ import annotations

import torch


def dice_targets(pred_labels: torch.Tensor, labels: torch.Tensor, num_classes: int, smooth: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-class hard Dice of argmax masks, background included.

    pred_labels, labels: [B, H, W] integer class maps. Returns [B, num_classes] float32. A class
    absent from both prediction and label scores 1.0 (nothing to find, nothing found).
    """
    if pred_labels.shape != labels.shape:
        raise ValueError(f"dice_targets: shapes differ {tuple(pred_labels.shape)} vs {tuple(labels.shape)}")
    b = labels.shape[0]
    p = torch.nn.functional.one_hot(pred_labels.long().reshape(b, -1), num_classes).float()
    t = torch.nn.functional.one_hot(labels.long().reshape(b, -1), num_classes).float()
    inter = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    dice = (2 * inter + smooth) / (total + smooth)
    return torch.where(total == 0, torch.ones_like(dice), dice)


def confusion_counts(pred_labels: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, 3] global TP, FP, FN counts for dataset-level Dice (summed across batches/workers)."""
    p = pred_labels.reshape(-1).long()
    t = labels.reshape(-1).long()
    tp = torch.bincount(t[p == t], minlength=num_classes)
    pred_count = torch.bincount(p, minlength=num_classes)
    true_count = torch.bincount(t, minlength=num_classes)
    return torch.stack([tp, pred_count - tp, true_count - tp], dim=1).double()


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-class Dice 2TP / (2TP + FP + FN) from global counts; 1.0 for a class never seen nor predicted."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
