"""Evaluation metrics: codec reconstruction (Table 3), sync, distribution."""

# codec
from .codec_metrics import (
    CODEC_METRICS,
    compute_codec_metrics,
    format_codec_metrics_table,
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
