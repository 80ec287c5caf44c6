"""The one global learning-rate schedule of a run, and AdamW parameter groups.

The schedule is a pure function of the (fractional) global epoch: linear warm-up, then cosine
decay to ``min_lr`` at ``schedule_epochs``, flat afterwards. Because it holds no state of its own,
it continues across rounds by construction: a round only needs the global epoch counter stored in
its checkpoint.
"""

from __future__ import annotations

import math

from torch import nn


def lr_at(epoch: float, base_lr: float, *, warmup_epochs: int, schedule_epochs: int, min_lr: float) -> float:
    """Learning rate at a fractional global epoch (0 = start of the run)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (epoch + 1e-3) / warmup_epochs  # never exactly 0: the first step still learns
    span = max(1, schedule_epochs - warmup_epochs)
    t = min(1.0, max(0.0, (epoch - warmup_epochs) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on weight matrices and kernels only, none on biases and
    normalisation weights (every 0-d or 1-d parameter). The authors' code decays those too: fixed."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
