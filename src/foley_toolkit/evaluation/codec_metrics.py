"""Reconstruction metrics of the latent audio codec, the set of the Kling-Foley paper's Table 3.

All metrics compare a reference waveform with its reconstruction (same sample rate, time-aligned, mono):

- `pesq` (higher is better): wideband PESQ (ITU-T P.862.2, `pesq` package) after resampling both to 16 kHz;
  NaN when PESQ finds no speech.
- `si_sdr` (higher): scale-invariant SDR in dB on zero-mean signals (Le Roux et al. 2019).
- `sdr` (higher): `10 log10(|s|^2 / |s - s_hat|^2)` in dB (no distortion filter allowed).
- `lsd` (lower): mean over frames of `sqrt(mean_f (log10 P - log10 P_hat)^2)`, power STFT 2048/512.
- `mcd` (lower): `10 / ln 10 * sqrt(2 * sum_{d=1..13} (c_d - c_hat_d)^2)` per frame, averaged; `c` are the
  cosine-series (SPTK-convention) cepstra of the codec's natural-log mel, no DTW (reconstructions are time-aligned).
- `mel_loss` (lower): mean L1 distance of the codec's log-mels (`LogMelSpectrogram`).
- `stft_loss` (lower): multi-resolution STFT loss, the mean over (2048/512, 1024/256, 512/128) of spectral
  convergence + L1 log magnitude.

Level of the reconstruction (`codec_level_metrics`, see `level_metrics`): BS.1770 integrated `loudness_lufs`,
`peak_dbfs`, `dc_offset`, and `loudness_error_db`, the reconstruction's loudness minus the original's, each floored
at BS.1770's absolute gate (-70 LUFS) so that a silent reconstruction has a finite, large error.

`griffin_lim_from_log_mel` resynthesises a waveform from the codec's log-mel with no weights at all (NNLS mel
inversion + Griffin-Lim): the floor every trained vocoder must beat.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..audio_utils import HOP_LENGTH, N_FFT, SAMPLE_RATE, resample
from .level_metrics import ABSOLUTE_GATE_LUFS, audio_level, summarize_levels

CODEC_METRICS: tuple[str, ...] = ("pesq", "si_sdr", "sdr", "lsd", "mcd", "mel_loss", "stft_loss")
HIGHER_IS_BETTER: dict[str, bool] = {
    "pesq": True,
    "si_sdr": True,
    "sdr": True,
    "lsd": False,
    "mcd": False,
    "mel_loss": False,
    "stft_loss": False,
}
# Level columns of a reconstruction (per file), and their summary over files (`summarize_codec_metrics`).
LEVEL_METRICS: tuple[str, ...] = ("loudness_lufs", "peak_dbfs", "dc_offset", "loudness_error_db")
LEVEL_SUMMARY: tuple[str, ...] = LEVEL_METRICS + ("abs_loudness_error_db",)
_LEVEL_HEADERS = {
    "loudness_lufs": "LUFS",
    "peak_dbfs": "peak dBFS",
    "dc_offset": "DC",
    "loudness_error_db": "ΔLUFS",
    "abs_loudness_error_db": "|ΔLUFS| ↓",
}
PESQ_SAMPLE_RATE = 16_000
STFT_LOSS_RESOLUTIONS: tuple[tuple[int, int], ...] = ((2048, 512), (1024, 256), (512, 128))

_EPS = 1e-12


def _as_1d_float64(signal: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(signal, np.ndarray):
        signal = torch.from_numpy(np.ascontiguousarray(signal))
    if not isinstance(signal, torch.Tensor):
        raise ValueError(f"`{name}` must be a numpy array or a torch tensor, got {type(signal).__name__}.")
    signal = signal.detach().to("cpu", torch.float64)
    if signal.ndim == 2 and signal.shape[0] == 1:
        signal = signal[0]
    if signal.ndim != 1:
        raise ValueError(
            f"`{name}` must be a mono waveform (num_samples,) or (1, num_samples), got {tuple(signal.shape)}."
        )
    return signal


def _aligned(reference, estimate) -> tuple[torch.Tensor, torch.Tensor]:
    reference = _as_1d_float64(reference, "reference")
    estimate = _as_1d_float64(estimate, "estimate")
    length = min(reference.shape[0], estimate.shape[0])
    if length == 0:
        raise ValueError("`reference` and `estimate` must not be empty.")
    return reference[:length], estimate[:length]


def si_sdr(reference, estimate, zero_mean: bool = True) -> float:
    """Scale-invariant signal-to-distortion ratio in dB: project the estimate onto the reference, compare the
    projection's energy with the residual's. Invariant to the estimate's gain; ~+inf for a perfect copy."""
    reference, estimate = _aligned(reference, estimate)
    if zero_mean:
        reference, estimate = reference - reference.mean(), estimate - estimate.mean()
    scale = torch.dot(estimate, reference) / (torch.dot(reference, reference) + _EPS)
    target = scale * reference
    residual = estimate - target
    return float(10.0 * torch.log10((target.pow(2).sum() + _EPS) / (residual.pow(2).sum() + _EPS)))


def sdr(reference, estimate) -> float:
    """Signal-to-distortion ratio in dB: `10 log10(|s|^2 / |s - s_hat|^2)` (an SNR of the reconstruction error)."""
    reference, estimate = _aligned(reference, estimate)
    return float(10.0 * torch.log10((reference.pow(2).sum() + _EPS) / ((reference - estimate).pow(2).sum() + _EPS)))


def _stft_magnitude(signal: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """|STFT| `(freq, frames)` with a periodic Hann window, centre padding (reflect; constant for short signals)."""
    pad_mode = "reflect" if signal.shape[-1] > n_fft // 2 else "constant"
    spectrum = torch.stft(
        signal,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=torch.hann_window(n_fft, dtype=signal.dtype),
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return spectrum.abs()


def log_spectral_distance(reference, estimate, n_fft: int = 2048, hop_length: int = 512, eps: float = 1e-10) -> float:
    """LSD: per frame, the RMS over frequency of `log10(|X|^2 + eps) - log10(|X_hat|^2 + eps)`; mean over frames."""
    reference, estimate = _aligned(reference, estimate)
    log_ref = torch.log10(_stft_magnitude(reference, n_fft, hop_length).pow(2) + eps)
    log_est = torch.log10(_stft_magnitude(estimate, n_fft, hop_length).pow(2) + eps)
    return float((log_ref - log_est).pow(2).mean(dim=0).sqrt().mean())


_MEL_TRANSFORMS: dict = {}


def _log_mel(signal: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The codec's log-mel `(128, frames)` (float64 in, float32 math inside `LogMelSpectrogram`)."""
    from ..models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram

    if sample_rate not in _MEL_TRANSFORMS:
        _MEL_TRANSFORMS[sample_rate] = LogMelSpectrogram(sample_rate=sample_rate)
    transform = _MEL_TRANSFORMS[sample_rate]
    if signal.shape[-1] < transform.min_num_samples:
        signal = F.pad(signal, (0, transform.min_num_samples - signal.shape[-1]))
    return transform(signal.float()).double()


def _cepstrum_matrix(num_bands: int, num_coefficients: int) -> torch.Tensor:
    """`(num_coefficients, num_bands)` map from a log spectrum sampled at band centres to its cosine-series
    coefficients, `log S(w) = c_0 + 2 * sum_m c_m cos(m w)`: `c_m = 1/N * sum_n log S_n cos(pi m (n + 0.5) / N)` (a
    DCT-II scaled by `1/N`). This is the cepstrum convention the MCD constant `10 / ln 10 * sqrt(2 * ...)` assumes
    (SPTK), so `2 * sum_m dc_m^2` is the band variance of the log difference carried by the first coefficients."""
    n = torch.arange(num_bands, dtype=torch.float64)
    m = torch.arange(num_coefficients, dtype=torch.float64)[:, None]
    return torch.cos(math.pi / num_bands * (n + 0.5) * m) / num_bands


def mel_cepstral_distortion(reference, estimate, sample_rate: int = SAMPLE_RATE, num_coefficients: int = 13) -> float:
    """MCD in dB between time-aligned signals (no DTW): mel cepstra of the codec's natural-log mel magnitudes
    (`_cepstrum_matrix`), coefficients 1..`num_coefficients` (c0, the energy, excluded), per frame
    `10 / ln 10 * sqrt(2 * sum_d (c_d - c_hat_d)^2)`, averaged over frames."""
    reference, estimate = _aligned(reference, estimate)
    return mel_cepstral_distortion_from_log_mels(
        _log_mel(reference, sample_rate), _log_mel(estimate, sample_rate), num_coefficients
    )


def mel_cepstral_distortion_from_log_mels(
    log_mel_reference: torch.Tensor, log_mel_estimate: torch.Tensor, num_coefficients: int = 13
) -> float:
    """MCD in dB from natural-log mel magnitudes of shape `(bands, frames)` (see `mel_cepstral_distortion`)."""
    if log_mel_reference.shape != log_mel_estimate.shape or log_mel_reference.ndim != 2:
        raise ValueError(
            f"`log_mel_reference` and `log_mel_estimate` must both be (bands, frames) of the same shape, got "
            f"{tuple(log_mel_reference.shape)} and {tuple(log_mel_estimate.shape)}."
        )
    difference = log_mel_reference.double() - log_mel_estimate.double()
    cepstrum = _cepstrum_matrix(difference.shape[0], num_coefficients + 1).to(difference.device)
    per_frame = (10.0 / math.log(10.0)) * torch.sqrt(2.0 * (cepstrum @ difference)[1:].pow(2).sum(dim=0))
    return float(per_frame.mean())


def mel_distance(reference, estimate, sample_rate: int = SAMPLE_RATE) -> float:
    """Mel loss: mean absolute difference of the codec's natural-log mels."""
    reference, estimate = _aligned(reference, estimate)
    return float((_log_mel(reference, sample_rate) - _log_mel(estimate, sample_rate)).abs().mean())


def multi_resolution_stft_loss(
    reference, estimate, resolutions: Sequence[tuple[int, int]] = STFT_LOSS_RESOLUTIONS, eps: float = 1e-7
) -> float:
    """Multi-resolution STFT loss (Parallel WaveGAN): for each `(n_fft, hop)`, spectral convergence
    `|S - S_hat|_F / |S|_F` plus mean `|log S - log S_hat|`; averaged over resolutions."""
    reference, estimate = _aligned(reference, estimate)
    losses = []
    for n_fft, hop_length in resolutions:
        mag_ref = _stft_magnitude(reference, n_fft, hop_length).clamp_min(eps)
        mag_est = _stft_magnitude(estimate, n_fft, hop_length).clamp_min(eps)
        convergence = torch.linalg.norm(mag_ref - mag_est) / (torch.linalg.norm(mag_ref) + _EPS)
        log_magnitude = (mag_ref.log() - mag_est.log()).abs().mean()
        losses.append(convergence + log_magnitude)
    return float(torch.stack(losses).mean())


def pesq_wideband(reference, estimate, sample_rate: int = SAMPLE_RATE) -> float:
    """Wideband PESQ (MOS-LQO, -0.5..4.64) after resampling both signals to 16 kHz; NaN when PESQ cannot score the
    pair (no utterance detected, too short)."""
    try:
        from pesq import pesq as _pesq
    except ImportError as error:
        raise ImportError(
            "The `pesq` metric needs the `pesq` package: `pip install foley-toolkit[eval]` (or drop `pesq` from the "
            "metrics)."
        ) from error

    reference, estimate = _aligned(reference, estimate)
    reference_16k = np.asarray(resample(reference.numpy(), sample_rate, PESQ_SAMPLE_RATE), dtype=np.float64)
    estimate_16k = np.asarray(resample(estimate.numpy(), sample_rate, PESQ_SAMPLE_RATE), dtype=np.float64)
    if not np.any(reference_16k) or not np.any(estimate_16k):
        warnings.warn("PESQ cannot score a silent signal; reporting NaN.")
        return float("nan")
    try:
        return float(_pesq(PESQ_SAMPLE_RATE, reference_16k, estimate_16k, "wb"))
    except Exception as error:  # pesq raises its own NoUtterancesError / BufferTooShortError / ValueError
        warnings.warn(f"PESQ could not score this pair ({type(error).__name__}: {error}); reporting NaN.")
        return float("nan")


_METRIC_FUNCTIONS = {
    "pesq": lambda ref, est, sr: pesq_wideband(ref, est, sr),
    "si_sdr": lambda ref, est, sr: si_sdr(ref, est),
    "sdr": lambda ref, est, sr: sdr(ref, est),
    "lsd": lambda ref, est, sr: log_spectral_distance(ref, est),
    "mcd": lambda ref, est, sr: mel_cepstral_distortion(ref, est, sr),
    "mel_loss": lambda ref, est, sr: mel_distance(ref, est, sr),
    "stft_loss": lambda ref, est, sr: multi_resolution_stft_loss(ref, est),
}


def compute_codec_metrics(
    reference, estimate, sample_rate: int = SAMPLE_RATE, metrics: Iterable[str] | None = None
) -> dict[str, float]:
    r"""
    Every Table 3 metric for one reference / reconstruction pair.

    Args:
        reference, estimate (`np.ndarray` or `torch.Tensor` of shape `(num_samples,)` or `(1, num_samples)`): Mono
            waveforms at `sample_rate`; the longer one is cropped to the shorter.
        sample_rate (`int`, defaults to 44100).
        metrics (`Iterable[str]`, *optional*): Subset of `CODEC_METRICS` (all by default).

    Returns:
        `dict[str, float]` in `CODEC_METRICS` order.
    """
    metrics = list(CODEC_METRICS if metrics is None else metrics)
    unknown = [name for name in metrics if name not in _METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown codec metrics {unknown} in `metrics`; choose from {list(CODEC_METRICS)}.")
    reference, estimate = _aligned(reference, estimate)
    return {name: _METRIC_FUNCTIONS[name](reference, estimate, sample_rate) for name in metrics}


def codec_level_metrics(reference, estimate, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """Level of the reconstruction `estimate` (`LEVEL_METRICS`): loudness (LUFS, `-inf` below the gate), peak
    (dBFS), DC offset, and `loudness_error_db` = loudness(estimate) - loudness(reference), both floored at -70
    LUFS (negative: the reconstruction is quieter)."""
    reference, estimate = _aligned(reference, estimate)
    level = audio_level(estimate.numpy(), sample_rate)
    reference_level = audio_level(reference.numpy(), sample_rate)
    error = max(level["loudness_lufs"], ABSOLUTE_GATE_LUFS) - max(reference_level["loudness_lufs"], ABSOLUTE_GATE_LUFS)
    return {**level, "loudness_error_db": float(error)}


def summarize_codec_metrics(per_file: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over files, ignoring NaN (e.g. PESQ on non-speech); NaN if no file has a value.

    Level columns, when present: the median loudness, the highest peak and the largest DC offset
    (`level_metrics.summarize_levels`), the mean signed loudness error and the mean absolute one
    (`abs_loudness_error_db`)."""
    names = [name for name in CODEC_METRICS if any(name in row for row in per_file)]
    summary = {}
    for name in names:
        values = [row[name] for row in per_file if name in row and math.isfinite(row[name])]
        summary[name] = float(np.mean(values)) if values else float("nan")
    level_rows = [row for row in per_file if all(name in row for name in LEVEL_METRICS)]
    if level_rows:
        summary.update(summarize_levels(level_rows))
        errors = np.array([row["loudness_error_db"] for row in level_rows], dtype=np.float64)
        summary["loudness_error_db"] = float(errors.mean())
        summary["abs_loudness_error_db"] = float(np.abs(errors).mean())
    return summary


_GRIFFIN_LIM_BASIS: dict = {}


def griffin_lim_from_log_mel(
    log_mel: np.ndarray | torch.Tensor,
    num_samples: int,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_iter: int = 32,
    seed: int = 0,
) -> np.ndarray:
    r"""
    Waveform from a natural-log mel of the codec's front end (`LogMelSpectrogram`: Slaney filterbank, magnitude,
    reflect pad `(n_fft - hop) / 2` and `center=False` frames) with no trained weights: `exp`, non-negative least
    squares onto the linear-frequency magnitude (`librosa.util.nnls`, with the project's own filterbank), then
    Griffin-Lim (`librosa.griffinlim`, momentum 0.99, seeded random phase).

    Griffin-Lim runs with `center=False` on the padded signal, i.e. in exactly the framing of the front end: frame
    `t` covers padded samples `[t * hop, t * hop + n_fft)`. Dropping the `(n_fft - hop) / 2` padded samples at the
    start then gives a waveform time-aligned with the one the mel was computed from.

    Args:
        log_mel (`np.ndarray` or `torch.Tensor` of shape `(num_mels, frames)`): Natural-log mel magnitudes.
        num_samples (`int`): Length of the returned waveform (zero-padded if the frames cover fewer samples).
        n_iter (`int`, defaults to 32): Griffin-Lim iterations.

    Returns:
        `np.ndarray` of shape `(num_samples,)`, float32.
    """
    try:
        import librosa
    except ImportError as error:  # librosa is an optional dependency (`pip install foley-toolkit[eval]`)
        raise ImportError("Griffin-Lim resynthesis needs librosa: `pip install librosa`.") from error
    from ..models.autoencoders.autoencoder_mel_vae import slaney_mel_filterbank

    if isinstance(log_mel, torch.Tensor):
        log_mel = log_mel.detach().to("cpu", torch.float64).numpy()
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2:
        raise ValueError(f"`log_mel` must be (num_mels, frames), got shape {log_mel.shape}.")
    if num_samples <= 0:
        raise ValueError(f"`num_samples` must be positive, got {num_samples}.")
    key = (sample_rate, n_fft, log_mel.shape[0])
    if key not in _GRIFFIN_LIM_BASIS:
        _GRIFFIN_LIM_BASIS[key] = np.asarray(slaney_mel_filterbank(sample_rate, n_fft, log_mel.shape[0]), np.float64)
    basis = _GRIFFIN_LIM_BASIS[key]
    magnitude = librosa.util.nnls(basis, np.exp(log_mel))  # (n_fft // 2 + 1, frames), >= 0
    padded = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=hop_length,
        win_length=n_fft,
        n_fft=n_fft,
        window="hann",
        center=False,
        init="random",
        random_state=seed,
    )
    start = (n_fft - hop_length) // 2
    waveform = padded[start : start + num_samples]
    if waveform.shape[0] < num_samples:
        waveform = np.pad(waveform, (0, num_samples - waveform.shape[0]))
    return waveform.astype(np.float32)


def format_codec_metrics_table(rows: dict[str, dict[str, float]], counts: dict[str, int] | None = None) -> str:
    """A plain-text table, one row per system (e.g. `{"MelVAE + vocoder": summary}`), metrics as columns with
    arrows for the better direction."""
    names = [name for name in CODEC_METRICS if any(name in summary for summary in rows.values())]
    levels = [name for name in LEVEL_SUMMARY if any(name in summary for summary in rows.values())]
    headers = ["system"] + [f"{name} {'↑' if HIGHER_IS_BETTER[name] else '↓'}" for name in names]
    headers += [_LEVEL_HEADERS[name] for name in levels]
    if counts is not None:
        headers.append("files")
    lines = []
    for system, summary in rows.items():
        cells = [system] + [f"{summary.get(name, float('nan')):.3f}" for name in names]
        cells += [
            (f"{summary[name]:+.5f}" if name == "dc_offset" else f"{summary[name]:.1f}") if name in summary else ""
            for name in levels
        ]
        if counts is not None:
            cells.append(str(counts.get(system, "")))
        lines.append(cells)
    widths = [max(len(headers[i]), *(len(line[i]) for line in lines)) for i in range(len(headers))]
    render = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(headers), separator] + [render(line) for line in lines])
