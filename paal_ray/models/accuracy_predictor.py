"""The Accuracy Predictor (AP): a ResNet-18 that predicts the segmenter's per-class Dice on a slice.

``width`` is the channel count of the first stage (64 in ResNet-18, the paper's). The CPU preset
uses a narrower ResNet-18 (same depth and blocks, width 16; the work scales with width squared):
at 64 px the full width costs ~3x the light segmenter's step and would dominate a laptop run.

Input is the image concatenated with the segmenter's class probabilities (both detached by the
caller), so the first convolution takes in_channels + num_classes channels. Head: global average
pooling, dropout 0.5, a linear layer to num_classes outputs, sigmoid (Dice lies in [0, 1]).
Trained from scratch; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18, resnet34
from torchvision.models.resnet import BasicBlock, ResNet

_ARCHS = {"resnet18": resnet18, "resnet34": resnet34}
_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


class _NarrowResNet(ResNet):
    """torchvision's ResNet with stage widths (w, 2w, 4w, 8w) instead of (64, 128, 256, 512)."""

    def __init__(self, layers: list[int], width: int):
        super().__init__(BasicBlock, layers)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(BasicBlock, width, layers[0])
        self.layer2 = self._make_layer(BasicBlock, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, layers[3], stride=2)
        self.fc = nn.Linear(8 * width, 1)
        for m in self.modules():  # torchvision's initialisation, for the rebuilt layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class AccuracyPredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, arch: str = "resnet18", dropout: float = 0.5,
                 width: int = 64):
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"AccuracyPredictor arch {arch!r}: expected one of {sorted(_ARCHS)}")
        if width < 4:
            raise ValueError(f"AccuracyPredictor width {width}: must be at least 4")
        self.in_channels = in_channels
        self.num_classes = num_classes
        net = _ARCHS[arch](weights=None) if width == 64 else _NarrowResNet(_LAYERS[arch], width)
        net.conv1 = nn.Conv2d(in_channels + num_classes, width, kernel_size=7, stride=2, padding=3, bias=False)
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
