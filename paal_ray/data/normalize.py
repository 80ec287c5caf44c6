"""Intensity normalisation (per volume, per channel) and slice resizing.

CT: clip to a Hounsfield window, scale to [0, 1]. MR (and anything not CT): clip to the volume's
own percentiles (scanner units are arbitrary), scale to [0, 1]. Images resize bilinearly
(antialiased when shrinking), labels by nearest neighbour on pixel centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)


def ct_window(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(x.astype(np.float32, copy=False), lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)


def percentile_clip(x: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:  # a constant channel carries no contrast
        return np.zeros_like(x, dtype=np.float32)
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32, copy=False)


def normalise_volume(image: np.ndarray, kinds: Sequence[str], *, window: tuple[float, float] | None = None,
                     percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """image [C, ...] -> float32 in [0, 1], each channel by its kind ('ct' or 'mr')."""
    out = np.empty(image.shape, np.float32)
    for c, kind in enumerate(kinds):
        if kind == "ct":
            out[c] = ct_window(image[c], window or DEFAULT_CT_WINDOW)
        else:
            out[c] = percentile_clip(image[c], percentiles)
    return out


def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] resampling matrix: linear interpolation between pixel centres; when shrinking,
    the triangle widens by the shrink factor so every input pixel contributes (antialiasing)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    w = np.clip(1 - np.abs((np.arange(n_in) + 0.5)[None, :] - centres[:, None]) / support, 0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """[N, C, H, W] float -> [N, C, size, size] float32, bilinear (antialiased when shrinking).
    Two small matrix products: no torch needed in ingest workers."""
    if images.shape[-2:] == (size, size):
        return images
    rows = linear_weights(images.shape[-2], size)
    cols = linear_weights(images.shape[-1], size)
    return (rows @ images.astype(np.float32, copy=False) @ cols.T).clip(0, 1)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, sampling at pixel centres (symmetric, no half-pixel shift)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] -> [N, size, size] by nearest neighbour: class values are never blended."""
    if labels.shape[-2:] == (size, size):
        return labels
    rows = nearest_indices(labels.shape[-2], size)
    cols = nearest_indices(labels.shape[-1], size)
    return np.ascontiguousarray(labels[:, rows][:, :, cols])
