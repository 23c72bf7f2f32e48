"""Pretrained audio models behind one interface (`embed`, `classify`, `extract`) for the distribution metrics."""

from .base import AudioFeatureExtractor
from .panns import Cnn14, PANNsExtractor, cnn14_from_checkpoint, convert_panns_checkpoint, load_panns_checkpoint
from .clap import ClapExtractor
from .vggish import VGGish, VGGishExtractor, vggish_examples, vggish_from_checkpoint
from .synchformer_desync import (
    AV_BENCHMARK_OFFSET_GRID,
    AV_BENCHMARK_WINDOW_SEGMENTS,
    SynchformerDeSync,
    SynchformerOffsetDeSync,
    desync_clip_offsets,
    desync_score,
    desync_window_starts,
)

__all__ = [
    "AV_BENCHMARK_OFFSET_GRID",
    "AV_BENCHMARK_WINDOW_SEGMENTS",
    "AudioFeatureExtractor",
    "ClapExtractor",
    "Cnn14",
    "PANNsExtractor",
    "SynchformerDeSync",
    "SynchformerOffsetDeSync",
    "VGGish",
    "VGGishExtractor",
    "cnn14_from_checkpoint",
    "convert_panns_checkpoint",
    "desync_clip_offsets",
    "desync_score",
    "desync_window_starts",
    "load_panns_checkpoint",
    "vggish_examples",
    "vggish_from_checkpoint",
]
