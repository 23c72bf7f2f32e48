"""Pretrained audio models behind one interface (`embed`, `classify`, `extract`) for the distribution metrics."""

from .base import AudioFeatureExtractor
from .panns import Cnn14, PANNsExtractor, cnn14_from_checkpoint, convert_panns_checkpoint, load_panns_checkpoint
from .clap import ClapExtractor
from .passt import PaSSTExtractor, kaldi_mel_filters, passt_from_checkpoint, passt_log_mel
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
    "PaSSTExtractor",
    "SynchformerDeSync",
    "SynchformerOffsetDeSync",
    "VGGish",
    "VGGishExtractor",
    "cnn14_from_checkpoint",
    "convert_panns_checkpoint",
    "desync_clip_offsets",
    "desync_score",
    "desync_window_starts",
    "kaldi_mel_filters",
    "load_panns_checkpoint",
    "passt_from_checkpoint",
    "passt_log_mel",
    "vggish_examples",
    "vggish_from_checkpoint",
]
