"""The model part of prediction: a trained segmenter applied to slices, probabilities on their grid.

``SlicePredictor`` takes slices as a pool stores them ([N, C, h, w], float in [0, 1]), resizes them
to the model's input size exactly as scoring and training do (bilinear, ``model.image_size``),
runs the segmenter, and resizes the class probabilities (bilinear; antialiased when shrinking) to
the grid the caller asks for (the volume's native in-plane grid, or the stored slice's) BEFORE the
argmax: a mask resized after the argmax would have blocky, shifted boundaries.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np


class SlicePredictor:
    def __init__(self, bundle, device: str = "cpu", batch_size: int = 64):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = max(1, int(batch_size))
        self.spec = bundle.spec
        self.num_classes = bundle.spec.num_classes
        self.model_size = bundle.spec.image_size
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.seg = bundle.segmenter.to(self.device, memory_format=fmt).eval()

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu", batch_size: int = 64) -> SlicePredictor:
        from paal_ray.models.bundle import load_model_bundle

        return cls(load_model_bundle(checkpoint), device=device, batch_size=batch_size)

    def probabilities(self, slices: np.ndarray, grid: tuple[int, int]):
        """[N, C, h, w] slices -> [N, K, H, W] float32 class probabilities on ``grid`` = (H, W), as a
        torch tensor on the predictor's device (one batch; see ``predict`` for many)."""
        torch = self.torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)).to(self.device, non_blocking=True)
        if self.model_size and tuple(x.shape[-2:]) != (self.model_size, self.model_size):
            x = F.interpolate(x, size=(self.model_size,) * 2, mode="bilinear", align_corners=False)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        with torch.inference_mode(), amp:
            logits = self.seg(x)
        probs = torch.softmax(logits.float(), dim=1)
        if tuple(probs.shape[-2:]) != tuple(grid):
            shrink = grid[0] < probs.shape[-2] or grid[1] < probs.shape[-1]
            probs = F.interpolate(probs, size=tuple(grid), mode="bilinear", align_corners=False, antialias=shrink)
        return probs

    def predict(self, slices: np.ndarray, grid: tuple[int, int], *, probabilities: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Masks [N, H, W] uint8 (argmax on ``grid``) and, if asked, probabilities [N, K, H, W]
        float32, in batches of ``batch_size`` slices."""
        n = len(slices)
        masks = np.empty((n, *grid), np.uint8)
        probs = np.empty((n, self.num_classes, *grid), np.float32) if probabilities else None
        with self.torch.inference_mode():
            for start in range(0, n, self.batch_size):
                p = self.probabilities(slices[start:start + self.batch_size], grid)
                masks[start:start + len(p)] = p.argmax(1).to(self.torch.uint8).cpu().numpy()
                if probs is not None:
                    probs[start:start + len(p)] = p.cpu().numpy()
        return masks, probs
