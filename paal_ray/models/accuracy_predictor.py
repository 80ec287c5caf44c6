"""The Accuracy Predictor (AP): a ResNet-18 that predicts the segmenter's per-class Dice on a slice.

Input is the image concatenated with the segmenter's class probabilities (both detached by the
caller), so the first convolution takes in_channels + num_classes channels. Head: global average
pooling, dropout 0.5, a linear layer to num_classes outputs, sigmoid (Dice lies in [0, 1]).
Trained from scratch; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18, resnet34

_ARCHS = {"resnet18": resnet18, "resnet34": resnet34}


class AccuracyPredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, arch: str = "resnet18", dropout: float = 0.5):
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"AccuracyPredictor arch {arch!r}: expected one of {sorted(_ARCHS)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        net = _ARCHS[arch](weights=None)
        net.conv1 = nn.Conv2d(in_channels + num_classes, 64, kernel_size=7, stride=2, padding=3, bias=False)
        width = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net  # torchvision's ResNet already ends in global average pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes), nn.Sigmoid())

    def forward(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """image [B, C, H, W], probs [B, K, H, W] -> predicted Dice [B, K] in (0, 1)."""
        if image.shape[1] != self.in_channels or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"AccuracyPredictor expects {self.in_channels} image and {self.num_classes} probability "
                f"channels, got {image.shape[1]} and {probs.shape[1]}"
            )
        return self.head(self.backbone(torch.cat([image, probs.to(image.dtype)], dim=1)))
