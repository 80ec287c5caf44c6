"""What can go wrong when scoring, and the score keys each pass produces (shared by the parts)."""

from __future__ import annotations

# Scores that come from the deterministic (eval-mode) forward pass.
DETERMINISTIC_KEYS = {"probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features",
                       "pred_acc", "lpl_loss", "grad_embedding", "true_dice"}
# The ones torch.compile can take as one graph (no hooks, labels or extension heads): PAAL's and
# the uncertainty and clustering baselines'.
COMPILABLE_KEYS = {"probs_mean", "pixel_entropy", "pixel_least_conf", "pixel_margin", "features", "pred_acc"}


class ScoringError(RuntimeError):
    """The pool, the checkpoint or the requested scores do not fit together."""

