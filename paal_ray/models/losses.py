"""The segmentation loss: cross-entropy with label smoothing plus soft Dice over foreground classes.

As in the paper's training (section 4.1, and the authors' code): CE (label smoothing 0.1) + (1 -
mean soft Dice of the foreground classes). Background is left out of the Dice term because it
dominates every slice and would keep that term near zero. ``per_sample=True`` gives one loss per
slice, which LPL's loss-prediction head learns to rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                   per_sample: bool = False, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes 1..K-1. Batch-level sums by default ([]), else per slice ([B])."""
    if num_classes < 2:
        raise ValueError(f"soft_dice_loss: need at least one foreground class, got num_classes={num_classes}")
    probs = logits.float().softmax(1)[:, 1:]  # [B, K-1, H, W]
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (2, 3) if per_sample else (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)
    return 1 - dice.mean(-1)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                      label_smoothing: float = 0.1, per_sample: bool = False) -> torch.Tensor:
    """CE (label smoothing) + soft foreground Dice. logits [B, K, H, W], labels [B, H, W] int."""
    if logits.shape[1] != num_classes:
        raise ValueError(f"segmentation_loss: logits have {logits.shape[1]} classes, expected {num_classes}")
    labels = labels.long()
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")
    if per_sample:
        return ce.mean((1, 2)) + soft_dice_loss(logits, labels, num_classes, per_sample=True)
    return ce.mean() + soft_dice_loss(logits, labels, num_classes)


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.1) -> torch.Tensor:
    """[B] each slice's mean pixel cross-entropy (the CE term of ``segmentation_loss``): what
    LPL's loss-prediction head learns to rank."""
    ce = F.cross_entropy(logits.float(), labels.long(), label_smoothing=label_smoothing, reduction="none")
    return ce.mean((1, 2))
