"""Training extensions: what a strategy may add to a training round, behind a registry.

A strategy names its extension (``RoundSpec.extension``); training looks it up here and calls the
hooks below at fixed points, so nothing in training branches on a strategy's name.

- ``lpl`` (learning loss, Yoo & Kweon 2019): a ``LossPredictionHead`` on the encoder stages,
  trained jointly with the segmenter by a pairwise ranking loss (margin 1) against each slice's
  cross-entropy (the authors' code; the segmenter's own loss is everyone's). Its input is detached
  from the encoder from the first query on (round index >= 1). Its weights go into the model bundle as
  ``extensions["lpl"]`` for the strategy to score.
- ``ceal`` (Wang et al. 2017): the slices of ``RoundSpec.pseudo_ids`` join this round's training
  set with argmax pseudo-labels from the model the round starts from; they are not kept after it.

Adding one: subclass ``TrainingExtension``, decorate with ``@register``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from paal_ray.models.loss_prediction import LossPredictionHead

_REGISTRY: dict[str, type[TrainingExtension]] = {}


def register(cls: type[TrainingExtension]) -> type[TrainingExtension]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"training extension {cls.__name__}: name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str | None) -> TrainingExtension:
    """The extension called ``name``; ``None`` gives the no-op base (plain training)."""
    if name is None:
        return TrainingExtension()
    if name not in _REGISTRY:
        raise ValueError(f"RoundSpec.extension {name!r}: unknown training extension (known: {', '.join(available())})")
    return _REGISTRY[name]()


class TrainingExtension:
    """The no-op extension; every hook has a neutral default."""

    name: ClassVar[str] = ""

    # -- driver side --------------------------------------------------------------------------
    def extra_ids(self, spec) -> dict[str, list[str]]:
        """Slices (by name of set) that every worker also reads, images only, besides the
        labelled and validation slices; they reach ``extend_training_set`` as ``extra[name]``."""
        return {}

    # -- worker side --------------------------------------------------------------------------
    def build_head(self, segmenter: nn.Module) -> nn.Module | None:
        """A module trained jointly with the segmenter (same optimiser, same DDP wrapper)."""
        return None

    def start_round(self, head: nn.Module | None, round_index: int) -> None:
        """Called once the round's index is known (0 = before the first query)."""

    def head_input(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        return stages

    def head_loss(self, head_out: torch.Tensor, per_sample_loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extend_training_set(self, predict_labels, images: torch.Tensor, labels: torch.Tensor,
                            extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add slices to this round's training tensors. ``predict_labels(images) -> labels``
        runs the round's starting segmenter in eval mode."""
        return images, labels

    def bundle_state(self, head: nn.Module | None) -> dict[str, Any] | None:
        """What goes into the model bundle's ``extensions[name]`` (None: nothing)."""
        return None

    def load_bundle_state(self, head: nn.Module | None, state: dict[str, Any]) -> None:
        pass


def pairwise_ranking_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """LPL's loss: pair slice i with slice B-1-i; the predicted losses must be ordered like the
    true ones, by at least ``margin``. An odd last slice is left out; fewer than 2 gives 0."""
    b = pred.shape[0] // 2 * 2
    if b < 2:
        return pred.sum() * 0.0
    pred, target = pred[:b], target[:b].detach()
    half = b // 2
    pi, pj = pred[:half], pred.flip(0)[:half]
    ti, tj = target[:half], target.flip(0)[:half]
    sign = torch.where(ti > tj, 1.0, -1.0).to(pred.dtype)
    return torch.clamp(margin - sign * (pi - pj), min=0).mean()


@register
class LossPredictionExtension(TrainingExtension):
    name = "lpl"
    margin = 1.0
    hidden = 128

    def __init__(self):
        self.detach_input = False

    def build_head(self, segmenter):
        return LossPredictionHead(segmenter.stage_channels, hidden=self.hidden)

    def start_round(self, head, round_index):
        self.detach_input = round_index >= 1

    def head_input(self, stages):
        return [s.detach() for s in stages] if self.detach_input else stages

    def head_loss(self, head_out, per_sample_loss):
        return pairwise_ranking_loss(head_out.float(), per_sample_loss.float(), self.margin)

    def bundle_state(self, head):
        return {"state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "stage_channels": list(head.stage_channels), "hidden": self.hidden}

    def load_bundle_state(self, head, state):
        head.load_state_dict(state["state_dict"])


@register
class PseudoLabelExtension(TrainingExtension):
    name = "ceal"

    def extra_ids(self, spec):
        return {"pseudo": list(spec.pseudo_ids)} if spec.pseudo_ids else {}

    def extend_training_set(self, predict_labels, images, labels, extra):
        pseudo = extra.get("pseudo")
        if pseudo is None or pseudo.shape[0] == 0:
            return images, labels
        pseudo_labels = predict_labels(pseudo).to(labels.dtype)
        return torch.cat([images, pseudo.to(images.dtype)]), torch.cat([labels, pseudo_labels])
