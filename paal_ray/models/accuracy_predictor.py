"""The Accuracy Predictor (AP): a ResNet-18 that predicts the segmenter's per-class Dice on a slice.

``width`` is the channel count of the first stage (64 in ResNet-18, the paper's). The CPU preset
uses a narrower ResNet-18 (same depth and blocks, width 16; the work scales with width squared):
at 64 px the full width costs ~3x the light segmenter's step and would dominate a laptop run.

Input is the image concatenated with the segmenter's class probabilities (both detached by the
caller), so the first convolution takes in_channels + num_classes channels. Head: global average
pooling, dropout 0.5, a linear layer to num_classes outputs, sigmoid (Dice lies in [0, 1]).
Trained from scratch; nothing is downloaded.

Why not torchvision's ResNet: importing torchvision pulls in torch._dynamo and sympy, 2-5 s in
every scoring actor and training worker on a 2-core machine, each round, for ~60 lines of model.
The network here is torchvision's ResNet (v1.5: stride on the 3x3 conv) with its module names,
initialisation and parameter count; a test checks that its state dict loads into torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn

_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetTrunk(nn.Module):
    """A ResNet with stage widths (w, 2w, 4w, 8w), ending in global average pooling (no fc)."""

    def __init__(self, in_channels: int, layers: list[int], width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, inplanes = [], width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [BasicBlock(inplanes, planes, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = inplanes
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class AccuracyPredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, arch: str = "resnet18", dropout: float = 0.5,
                 width: int = 64):
        super().__init__()
        if arch not in _LAYERS:
            raise ValueError(f"AccuracyPredictor arch {arch!r}: expected one of {sorted(_LAYERS)}")
        if width < 4:
            raise ValueError(f"AccuracyPredictor width {width}: must be at least 4")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.backbone = ResNetTrunk(in_channels + num_classes, _LAYERS[arch], width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_features, num_classes),
                                  nn.Sigmoid())

    def forward(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """image [B, C, H, W], probs [B, K, H, W] -> predicted Dice [B, K] in (0, 1)."""
        if image.shape[1] != self.in_channels or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"AccuracyPredictor expects {self.in_channels} image and {self.num_classes} probability "
                f"channels, got {image.shape[1]} and {probs.shape[1]}"
            )
        return self.head(self.backbone(torch.cat([image, probs.to(image.dtype)], dim=1)))
