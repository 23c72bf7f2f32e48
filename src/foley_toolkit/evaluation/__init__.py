"""Evaluation metrics: codec reconstruction (Table 3), sync, distribution, and the level of any clip."""

# codec
from .codec_metrics import (
    CODEC_METRICS,
    LEVEL_METRICS,
    codec_level_metrics,
    compute_codec_metrics,
    format_codec_metrics_table,
    griffin_lim_from_log_mel,
    log_spectral_distance,
    mel_cepstral_distortion,
    mel_cepstral_distortion_from_log_mels,
    mel_distance,
    multi_resolution_stft_loss,
    pesq_wideband,
    sdr,
    si_sdr,
    summarize_codec_metrics,
)

# sync (onsets against known event times; `foley-toolkit eval-sync`)
from .sync_metrics import SyncReport, detect_onsets, evaluate_sync, evaluate_sync_folder

# level (BS.1770 loudness, peak dBFS, DC offset; per-event level at known times)
from .level_metrics import (
    audio_level,
    dc_offset,
    event_levels,
    event_loudness_errors,
    integrated_loudness,
    peak_dbfs,
    summarize_levels,
)

# distribution (FD / KL / IS of Table 1, av-benchmark's conventions; `foley-toolkit evaluate`)
from .distribution_metrics import (
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    inception_score,
    kl_divergence,
)

# extractors behind one interface (embed / classify / extract) and their on-disk cache
from .embedding_cache import EmbeddingCache, file_sha256
from .extractors import AudioFeatureExtractor, Cnn14, PANNsExtractor, cnn14_from_checkpoint, convert_panns_checkpoint

# DeSync (av-benchmark windowing) with the project's Synchformer encoder + trained sync head
from .extractors import SynchformerDeSync, SynchformerOffsetDeSync, desync_clip_offsets, desync_score
from .extractors import VGGish, VGGishExtractor
from .distribution_metrics import mean_cosine_similarity
from .extractors import ClapExtractor, PaSSTExtractor
