"""Joint image + mask augmentation on a whole batch, in one resampling pass.

Each slice draws its own rotation (one of ``cfg.rotations`` degrees), vertical flip (p
``vflip_p``) and elastic distortion (p ``elastic_p``; a Gaussian-smoothed random displacement
field of ``elastic_alpha`` pixels per unit, smoothing ``elastic_sigma`` pixels, as in Simard et al.).
They are composed into ONE sampling grid, applied with ``grid_sample``: bilinear for the image,
nearest for the mask, so image and mask stay aligned. Salt-and-pepper noise (p ``salt_pepper_p``)
then touches the image only. Vectorised torch ops: cheap on a CPU core, negligible on a GPU,
and the elastic strength is the same on every call (the authors' version decays: fixed).

Why not torchvision.transforms.v2: its transforms draw one set of parameters per call, so a
batch would share one rotation and one displacement field; per-sample loops cost more on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _elastic_field(b: int, h: int, w: int, alpha: float, sigma: float, gen: torch.Generator,
                   device, dtype) -> torch.Tensor:
    """[B, H, W, 2] displacement in pixels (x, y)."""
    noise = torch.rand(b * 2, 1, h, w, generator=gen, device=device, dtype=dtype) * 2 - 1
    k = _gaussian_kernel(sigma, device, dtype)
    r = k.numel() // 2
    noise = F.conv2d(F.pad(noise, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return (alpha * noise).view(b, 2, h, w).permute(0, 2, 3, 1)


def augment_batch(images: torch.Tensor, labels: torch.Tensor, cfg, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B, C, H, W] float, labels [B, H, W] int -> augmented copies (same shapes and dtypes).

    ``cfg`` is an ``AugmentConfig``; ``gen`` a torch.Generator on the images' device (seeded by the
    caller: the same seed gives the same augmentations).
    """
    if not cfg.enabled or images.shape[0] == 0:
        return images, labels
    b, _, h, w = images.shape
    dev, dt = images.device, torch.float32

    angles = torch.tensor(list(cfg.rotations) or [0.0], device=dev, dtype=dt)
    theta = angles[torch.randint(len(angles), (b,), generator=gen, device=dev)] * (math.pi / 180)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.vflip_p, -1.0, 1.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Output (x, y) samples input A @ (x, y): rotation, then the vertical flip negates y.
    mat = torch.zeros(b, 2, 3, device=dev, dtype=dt)
    mat[:, 0, 0], mat[:, 0, 1] = cos, -sin
    mat[:, 1, 0], mat[:, 1, 1] = sin * flip, cos * flip
    grid = F.affine_grid(mat, [b, 1, h, w], align_corners=False)

    if cfg.elastic_p > 0:
        use = (torch.rand(b, generator=gen, device=dev) < cfg.elastic_p).to(dt)
        # On a GPU the field is cheap and asking use.any() would stall the launch queue; on a CPU
        # core skipping it when no slice drew elastic saves real time.
        if dev.type == "cuda" or bool(use.any()):
            disp = _elastic_field(b, h, w, cfg.elastic_alpha, cfg.elastic_sigma, gen, dev, dt)
            scale = torch.tensor([2.0 / w, 2.0 / h], device=dev, dtype=dt)  # pixels -> [-1, 1] units
            grid = grid + disp * scale * use.view(b, 1, 1, 1)

    img = F.grid_sample(images.to(dt), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(labels.unsqueeze(1).to(dt), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False).squeeze(1).round().to(labels.dtype)

    if cfg.salt_pepper_p > 0:
        use = torch.rand(b, 1, 1, 1, generator=gen, device=dev) < cfg.salt_pepper_p
        hit = (torch.rand(b, 1, h, w, generator=gen, device=dev) < cfg.salt_pepper_amount) & use
        salt = torch.rand(b, 1, h, w, generator=gen, device=dev) < 0.5
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = torch.where(hit, torch.where(salt, hi, lo), img)
    return img.to(images.dtype), lab
