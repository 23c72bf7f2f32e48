"""Pretrained audio models behind one interface (`embed`, `classify`, `extract`) for the distribution metrics."""

from .base import AudioFeatureExtractor
from .panns import Cnn14, PANNsExtractor, cnn14_from_checkpoint, convert_panns_checkpoint, load_panns_checkpoint

__all__ = ["AudioFeatureExtractor", "Cnn14", "PANNsExtractor", "cnn14_from_checkpoint", "convert_panns_checkpoint", "load_panns_checkpoint"]
