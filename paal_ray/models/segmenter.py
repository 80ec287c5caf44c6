"""The segmenter: an smp U-Net (any smp encoder, nothing downloaded) or the light plain U-Net.

``Segmenter`` wraps either so that callers get the logits and the encoder stages from one forward
pass: scoring needs the deepest stage (pooled, for KMeans / CoreSet / BADGE), LPL's loss head
needs every stage, and MC dropout needs a dropout layer that is really there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paal_ray.models.plain_unet import PlainUNet


@dataclass
class SegmenterOutput:
    logits: torch.Tensor  # [B, K, H, W]
    stages: list[torch.Tensor]  # encoder stages, shallow to deep

    @property
    def pooled(self) -> torch.Tensor:
        """Global-average-pooled deepest encoder stage, [B, D] (2048-d for ResNet-50)."""
        return F.adaptive_avg_pool2d(self.stages[-1], 1).flatten(1)


class Segmenter(nn.Module):
    def __init__(self, net: nn.Module, decoder_dropout: float = 0.0, decoder_takes_list: bool = True):
        super().__init__()
        self.net = net
        # Spatial dropout on the deepest stage before decoding. Inert in eval mode; MC dropout
        # switches only these modules to train mode for its stochastic passes.
        self.feature_dropout = nn.Dropout2d(decoder_dropout) if decoder_dropout > 0 else nn.Identity()
        self._decoder_takes_list = decoder_takes_list

    @property
    def stage_channels(self) -> list[int]:
        return list(self.net.encoder.out_channels)

    @property
    def feature_dim(self) -> int:
        return self.stage_channels[-1]

    def forward_features(self, x: torch.Tensor) -> SegmenterOutput:
        stages = list(self.net.encoder(x))
        dec_in = stages[:-1] + [self.feature_dropout(stages[-1])]
        dec = self.net.decoder(dec_in) if self._decoder_takes_list else self.net.decoder(*dec_in)
        return SegmenterOutput(logits=self.net.segmentation_head(dec), stages=stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


def _smp_decoder_takes_list() -> bool:
    import inspect

    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

    params = list(inspect.signature(UnetDecoder.forward).parameters.values())[1:]
    return not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def build_segmenter(encoder: str = "resnet50", in_channels: int = 1, num_classes: int = 2, *,
                    encoder_depth: int = 5, base_width: int = 8, decoder_dropout: float = 0.0) -> Segmenter:
    """A U-Net segmenter. ``encoder='plain_unet'`` gives the light CPU model; anything else is an
    smp encoder name (``resnet50`` is the paper's), always with ``encoder_weights=None``."""
    if encoder == "plain_unet":
        net = PlainUNet(in_channels, num_classes, base_width=base_width, depth=encoder_depth)
        return Segmenter(net, decoder_dropout, decoder_takes_list=True)
    import segmentation_models_pytorch as smp

    decoder_channels = [256, 128, 64, 32, 16][:encoder_depth]
    net = smp.Unet(
        encoder_name=encoder, encoder_weights=None, encoder_depth=encoder_depth, in_channels=in_channels,
        classes=num_classes, decoder_channels=decoder_channels,
    )
    return Segmenter(net, decoder_dropout, decoder_takes_list=_smp_decoder_takes_list())
