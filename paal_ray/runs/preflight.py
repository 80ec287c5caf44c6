"""Every check that can fail before compute is spent, run at `paal run` and `paal sweep` start,
before Ray starts.

Each of these used to fail late: inside a Ray Train worker after ~30 s (slices of different shapes,
an encoder name smp does not know), or after training and scoring (a bad strategy parameter).
``preflight(cfg)`` reads only the pool's manifest and its ``image_shape`` column, smp's encoder
registry and the strategy's constructor; it raises ``PreflightError`` (a ``ConfigError``: one line
on the command line, exit status 2) naming the field and what to set.
"""

from __future__ import annotations

import difflib
from collections import Counter

from paal_ray.config import ConfigError, RunConfig


class PreflightError(ConfigError):
    """The run would fail later; the message says which setting to change."""


def preflight(cfg: RunConfig, where: str = "") -> None:
    """Check the pool, the model names and the strategy of ``cfg``; raise PreflightError."""
    prefix = f"{where}: " if where else ""
    try:
        _check_strategy(cfg)
        _check_model_names(cfg)
        _check_pool_shapes(cfg)
    except PreflightError as e:
        raise PreflightError(prefix + str(e)) from None


def _check_strategy(cfg: RunConfig) -> None:
    from paal_ray.query import strategies

    try:
        strategies.get(cfg.strategy.name, **dict(cfg.strategy.params or {}))
    except strategies.StrategyError as e:
        raise PreflightError(f"strategy: {e}") from None


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def smp_encoder_known(name: str) -> bool:
    """Whether smp can build this encoder: its own registry, or a timm model behind ``tu-``."""
    import segmentation_models_pytorch as smp

    if name in smp.encoders.get_encoder_names():
        return True
    if name.startswith("tu-"):
        import timm

        return bool(timm.is_model(name[3:].split(".")[0]))
    return False


def _check_model_names(cfg: RunConfig) -> None:
    from paal_ray.models.accuracy_predictor import _LAYERS

    m = cfg.model
    if m.encoder != "plain_unet" and not smp_encoder_known(m.encoder):
        import segmentation_models_pytorch as smp

        known = ["plain_unet", *smp.encoders.get_encoder_names()]
        raise PreflightError(f"model.encoder {m.encoder!r}: not an smp encoder nor 'plain_unet'"
                             f"{_suggest(m.encoder, known)}; timm models are named 'tu-<model>'")
    if m.ap_arch not in _LAYERS:
        raise PreflightError(f"model.ap_arch {m.ap_arch!r}: expected one of {', '.join(sorted(_LAYERS))}"
                             f"{_suggest(m.ap_arch, sorted(_LAYERS))}")
    step = 2 ** m.encoder_depth
    if m.image_size is not None and m.image_size % step:
        fit = max(step, round(m.image_size / step) * step)
        raise PreflightError(f"model.image_size {m.image_size}: a U-Net of depth {m.encoder_depth} needs a "
                             f"multiple of {step}; use --set model.image_size={fit}")


def _check_pool_shapes(cfg: RunConfig) -> None:
    """Slices of several shapes cannot be batched unless they are resized on load."""
    from paal_ray.data.pool import Pool

    pool = Pool.open(cfg.pool)
    if cfg.model.image_size is not None:
        return
    if pool.image_size:
        shapes = Counter({(pool.image_size, pool.image_size): pool.manifest.get("num_slices", 0)})
    else:
        shapes = Counter(tuple(s[-2:]) for s in pool.index(["image_shape"]).column("image_shape").to_pylist())
    step = 2 ** cfg.model.encoder_depth
    side = max(max(s) for s in shapes) if shapes else step
    size = -(-side // step) * step
    if len(shapes) > 1:
        common = [f"{'x'.join(map(str, s))} ({n})" for s, n in shapes.most_common(3)]
        raise PreflightError(
            f"pool {pool.path}: slices of {len(shapes)} different shapes (most common: {', '.join(common)}) "
            f"and model.image_size is not set, so they cannot be batched; resize them on load with "
            f"--set model.image_size={size} (or re-ingest with `paal ingest --size {size}`)")
    ((h, w),) = shapes.keys() if shapes else ((step, step),)
    if h % step or w % step:
        raise PreflightError(
            f"pool {pool.path}: slices of {h}x{w}, but a U-Net of depth {cfg.model.encoder_depth} needs sides "
            f"that are multiples of {step}; use --set model.image_size={size}")
