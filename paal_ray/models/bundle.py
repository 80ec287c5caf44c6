"""A model bundle: everything needed to rebuild and run the trained models, in one file.

Training writes it at the end of every epoch (inside the Ray Train checkpoint folder) and the
query engine loads it once per scoring actor. ``extensions`` holds the state of optional heads
that some strategies add through the training extension point (LPL's loss-prediction head).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paal_ray.models.accuracy_predictor import AccuracyPredictor
from paal_ray.models.segmenter import Segmenter, build_segmenter

BUNDLE_FILE = "model.pt"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the segmenter and the AP; with the weights, it rebuilds both exactly."""

    in_channels: int
    num_classes: int
    encoder: str = "resnet50"
    encoder_depth: int = 5
    base_width: int = 8
    decoder_dropout: float = 0.0
    ap_arch: str = "resnet18"
    ap_dropout: float = 0.5
    ap_width: int = 64
    image_size: int | None = None

    @classmethod
    def from_config(cls, model_cfg: Any, in_channels: int, num_classes: int) -> ModelSpec:
        return cls(
            in_channels=in_channels, num_classes=num_classes, encoder=model_cfg.encoder,
            encoder_depth=model_cfg.encoder_depth, base_width=model_cfg.base_width,
            decoder_dropout=model_cfg.decoder_dropout, ap_arch=model_cfg.ap_arch, ap_width=model_cfg.ap_width,
            ap_dropout=model_cfg.ap_dropout, image_size=model_cfg.image_size,
        )

    def build(self) -> tuple[Segmenter, AccuracyPredictor]:
        seg = build_segmenter(
            self.encoder, self.in_channels, self.num_classes, encoder_depth=self.encoder_depth,
            base_width=self.base_width, decoder_dropout=self.decoder_dropout,
        )
        ap = AccuracyPredictor(self.in_channels, self.num_classes, arch=self.ap_arch, dropout=self.ap_dropout,
                                 width=self.ap_width)
        return seg, ap


@dataclass
class ModelBundle:
    spec: ModelSpec
    segmenter: Segmenter
    ap: AccuracyPredictor
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _unwrap(m: nn.Module) -> nn.Module:
    return getattr(m, "module", m)  # DistributedDataParallel


def save_model_bundle(path: str | Path, spec: ModelSpec, segmenter: nn.Module, ap: nn.Module, *,
                      extensions: dict[str, dict[str, Any]] | None = None, meta: dict | None = None) -> Path:
    """Write ``path/model.pt`` (path is a folder). Atomic: temp file, then rename."""
    import io

    from paal_ray.atomic import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    torch.save(
        {
            "spec": asdict(spec),
            "segmenter": _unwrap(segmenter).state_dict(),
            "ap": _unwrap(ap).state_dict(),
            "extensions": extensions or {},
            "meta": meta or {},
        },
        buf,
    )
    return atomic_write_bytes(path / BUNDLE_FILE, buf.getvalue())


def load_model_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    path = Path(path)
    file = path / BUNDLE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no model bundle here (expected a training checkpoint folder)")
    blob = torch.load(file, map_location=map_location, weights_only=False)
    spec = ModelSpec(**blob["spec"])
    seg, ap = spec.build()
    seg.load_state_dict(blob["segmenter"])
    ap.load_state_dict(blob["ap"])
    return ModelBundle(spec=spec, segmenter=seg, ap=ap, extensions=blob.get("extensions", {}), meta=blob.get("meta", {}))
