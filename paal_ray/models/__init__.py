"""Models: the U-Net segmenter, the Accuracy Predictor, Dice targets, losses and model bundles."""

from paal_ray.models.accuracy_predictor import AccuracyPredictor
from paal_ray.models.bundle import ModelBundle, ModelSpec, load_model_bundle, save_model_bundle
from paal_ray.models.dice import confusion_counts, dice_from_counts, dice_targets
from paal_ray.models.segmenter import Segmenter, SegmenterOutput, build_segmenter

__all__ = [
    "AccuracyPredictor", "ModelBundle", "ModelSpec", "Segmenter", "SegmenterOutput", "build_segmenter",
    "confusion_counts", "dice_from_counts", "dice_targets", "load_model_bundle", "save_model_bundle",
]
