"""LPL's loss-prediction head (Yoo & Kweon, CVPR 2019), used by the ``lpl`` baseline.

Per encoder stage: global average pooling, a linear layer to ``hidden`` units and ReLU; the stage
vectors are concatenated and mapped to one predicted loss per sample. Trained by the ``lpl``
training extension with a pairwise ranking loss; scored by the ``lpl`` strategy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LossPredictionHead(nn.Module):
    def __init__(self, stage_channels: list[int], hidden: int = 128):
        super().__init__()
        self.stage_channels = list(stage_channels)
        self.fcs = nn.ModuleList(nn.Linear(c, hidden) for c in self.stage_channels)
        self.out = nn.Linear(hidden * len(self.stage_channels), 1)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """stages: encoder features shallow to deep -> predicted loss [B]."""
        vecs = [F.relu(fc(F.adaptive_avg_pool2d(s, 1).flatten(1))) for fc, s in zip(self.fcs, stages, strict=True)]
        return self.out(torch.cat(vecs, dim=1)).squeeze(1)
