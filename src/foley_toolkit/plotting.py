"""Spectrogram pictures of generated audio, shared by `foley-toolkit generate --plot` and `foley-toolkit app`.

The picture shows what the model produces: the codec's own log-mel front end (`LogMelSpectrogram`: 128 Slaney bands,
n_fft 2048, hop 512), one panel per channel, in dB (`20 log10` of the mel magnitude), time in seconds, and the sample
peak in dBFS in the title, so a silent or clipped result is visible at a glance.

Needs matplotlib (`pip install foley-toolkit[plot]`); it is drawn with the Agg canvas directly, without pyplot's
global figure state, so concurrent app requests can draw at the same time.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .audio_utils import SAMPLE_RATE

# 20 / ln(10): natural-log mel magnitude -> dB.
_NEPER_TO_DB = 20.0 / math.log(10.0)
# The colour scale spans this many dB below the loudest bin; everything quieter is drawn at the floor colour.
DYNAMIC_RANGE_DB = 80.0
_MEL_TRANSFORMS: dict = {}


def matplotlib_available() -> bool:
    """Whether `save_spectrogram` can draw (matplotlib is an optional dependency)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def log_mel_db(audio: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    r"""
    The codec's log-mel of every channel, in dB.

    Args:
        audio (`np.ndarray` or `torch.Tensor` of shape `(channels, samples)` or `(samples,)`): Waveform in `[-1, 1]`.
        sample_rate (`int`, defaults to 44100): Its sample rate.

    Returns:
        `np.ndarray` of shape `(channels, 128, frames)`, float32, `20 log10` of the mel magnitudes (floor -100 dB, the
        front end's `clamp_min` of 1e-5).
    """
    from .models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram

    waveform = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or waveform.shape[-1] == 0:
        raise ValueError(
            f"`audio` must be (channels, samples) or (samples,) with samples > 0, got {tuple(waveform.shape)}."
        )
    if sample_rate not in _MEL_TRANSFORMS:
        _MEL_TRANSFORMS[sample_rate] = LogMelSpectrogram(sample_rate=sample_rate)
    transform = _MEL_TRANSFORMS[sample_rate]
    if waveform.shape[-1] < transform.min_num_samples:  # shorter than the reflect padding: pad with silence
        waveform = torch.nn.functional.pad(waveform, (0, transform.min_num_samples - waveform.shape[-1]))
    with torch.no_grad():
        log_mel = transform(waveform.detach().float().cpu())
    return (log_mel.numpy() * _NEPER_TO_DB).astype(np.float32)


def _band_centres_hz(mel_basis: np.ndarray, sample_rate: int) -> np.ndarray:
    """Centre frequency of each mel filter: the FFT bin where its triangle peaks."""
    bin_hz = np.linspace(0.0, sample_rate / 2, mel_basis.shape[1])
    return bin_hz[np.argmax(mel_basis, axis=1)]


def save_spectrogram(
    audio: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    title: str | None = None,
    width: int = 1000,
    height: int = 600,
    dpi: int = 100,
) -> str:
    r"""
    Draw the log-mel spectrogram of `audio` (one panel per channel) and write it as a PNG of `width x height` pixels.

    Args:
        audio (`np.ndarray` or `torch.Tensor` of shape `(channels, samples)` or `(samples,)`): Waveform in `[-1, 1]`.
        path (`str` or `os.PathLike`): Output file; must end with `.png` and its folder must exist.
        sample_rate (`int`, defaults to 44100): Sample rate of `audio`.
        title (`str`, *optional*): First part of the title; the peak level in dBFS and the duration are appended.
        width (`int`, defaults to 1000) / height (`int`, defaults to 600): Picture size in pixels.
        dpi (`int`, defaults to 100): Dots per inch (font size relative to the picture).

    Returns:
        `str`: `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .evaluation.level_metrics import peak_dbfs

    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".png":
        raise ValueError(f"`path` must end with .png, got {path!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"`path` {path!r}: folder {folder!r} does not exist.")
    if width < 100 or height < 100:
        raise ValueError(f"`width` and `height` must be at least 100 pixels, got {width} x {height}.")

    spectra = log_mel_db(audio, sample_rate)  # (channels, mels, frames)
    waveform = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio, dtype=np.float32)
    waveform = waveform[None] if waveform.ndim == 1 else waveform
    seconds = waveform.shape[-1] / sample_rate
    peak = peak_dbfs(waveform)
    top = float(spectra.max())
    centres = _band_centres_hz(_MEL_TRANSFORMS[sample_rate].mel_basis.numpy(), sample_rate)

    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(spectra), 1, sharex=True, squeeze=False)[:, 0]
    names = ["left", "right"] if len(spectra) == 2 else [f"channel {i}" for i in range(len(spectra))]
    tick_bands = np.linspace(0, len(centres) - 1, 6).round().astype(int)
    for ax, spectrum, name in zip(axes, spectra, names):
        image = ax.imshow(
            spectrum,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - DYNAMIC_RANGE_DB,
            vmax=top,
            # Frame k covers samples [k * hop, (k + 1) * hop) after the front end's centring padding.
            extent=(0.0, seconds, -0.5, spectrum.shape[0] - 0.5),
            interpolation="nearest",
        )
        # Mel bands are not equally spaced in Hz: label a few bands with their centre frequency.
        ax.set_yticks(tick_bands, [f"{centres[b] / 1000:.1f}k" if centres[b] >= 1000 else f"{centres[b]:.0f}"
                                   for b in tick_bands])  # fmt: skip
        ax.set_ylabel(f"{name}\nHz (mel)")
        figure.colorbar(image, ax=ax, label="dB", pad=0.01)
    axes[-1].set_xlabel("time (s)")
    peak_text = "silent (-inf dBFS)" if not math.isfinite(peak) else f"peak {peak:.1f} dBFS"
    axes[0].set_title(f"{title + ': ' if title else ''}{seconds:.2f} s, {peak_text}")
    figure.savefig(path, format="png", dpi=dpi)
    return path
