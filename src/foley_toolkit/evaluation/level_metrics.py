"""Level of an audio clip: integrated loudness (ITU-R BS.1770-4), sample peak, DC offset, and the level of short
windows at known event times.

Every audio result should be read next to its level: a metric that is also true of silence (or of a DC offset)
is not a result. These helpers are shared by `eval-sync` and `eval-codec`.

Conventions:

- `audio` is `(samples,)` (mono) or `(channels, samples)`, numpy or torch, any float dtype; up to 5 channels
  (BS.1770 order L, R, C, Ls, Rs).
- **Loudness** is pyloudnorm's BS.1770-4 integrated loudness (K-weighting, 400 ms blocks with 75 % overlap,
  absolute gate -70 LUFS, relative gate -10 LU). A clip shorter than one block is measured as a single block
  spanning the whole clip (no padding: zeros would lower its level). A clip none of whose blocks reaches the
  absolute gate, digital silence included, has loudness `-inf` (BS.1770 leaves it undefined).
- **Peak** is the sample peak `20 log10 max |x|` in dBFS (0 dBFS = full scale 1.0); `-inf` for digital silence.
- **DC offset** is the mean of each channel; the one with the largest magnitude is reported, with its sign.
- Non-finite values (`-inf`) stay floats in Python, so `loudness < threshold` works; the JSON writers of the
  commands turn them into `null`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

# BS.1770's absolute gate: integrated loudness below it is undefined (reported as -inf).
ABSOLUTE_GATE_LUFS = -70.0
BLOCK_SECONDS = 0.4
# Floor of the windowed event levels: -100 dB keeps the error of a silent window finite (and very large).
EVENT_LEVEL_FLOOR_DB = -100.0


def as_channels(audio: Any, name: str = "audio") -> np.ndarray:
    """`audio` `(samples,)` or `(channels, samples)` (numpy or torch) as float64 `(channels, samples)`."""
    if hasattr(audio, "detach"):  # torch.Tensor, without importing torch here
        audio = audio.detach().cpu().double().numpy()
    array = np.asarray(audio, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not 1 <= array.shape[0] <= 5:
        raise ValueError(f"`{name}` must be (samples,) or (channels, samples) with 1-5 channels, got {array.shape}.")
    if array.shape[1] == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or inf samples.")
    return array


def integrated_loudness(audio: Any, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS (see the module docstring for short clips and silence)."""
    import pyloudnorm

    channels = as_channels(audio)
    if sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be positive, got {sample_rate}.")
    num_samples = channels.shape[1]
    block = min(BLOCK_SECONDS, num_samples / sample_rate)
    while block * sample_rate > num_samples:  # pyloudnorm rejects a block that rounds to one sample too many
        block = float(np.nextafter(block, 0.0))
    meter = pyloudnorm.Meter(sample_rate, block_size=block)
    return float(meter.integrated_loudness(channels.T))


def peak_dbfs(audio: Any) -> float:
    """Sample peak in dBFS; `-inf` for digital silence."""
    peak = float(np.abs(as_channels(audio)).max())
    return 20.0 * math.log10(peak) if peak > 0 else float("-inf")


def dc_offset(audio: Any) -> float:
    """Mean of each channel; the one with the largest magnitude, signed."""
    means = as_channels(audio).mean(axis=1)
    return float(means[np.argmax(np.abs(means))])


def audio_level(audio: Any, sample_rate: int) -> dict[str, float]:
    """`{"loudness_lufs", "peak_dbfs", "dc_offset"}` of one clip (see the module docstring)."""
    channels = as_channels(audio)
    return {
        "loudness_lufs": integrated_loudness(channels, sample_rate),
        "peak_dbfs": peak_dbfs(channels),
        "dc_offset": dc_offset(channels),
    }


def summarize_levels(levels: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Over clips: the median loudness (a silent clip counts as `-inf`), the highest peak and the DC offset of
    largest magnitude (signed). NaN for an empty list."""
    if not levels:
        return {"loudness_lufs": float("nan"), "peak_dbfs": float("nan"), "dc_offset": float("nan")}
    dcs = np.array([level["dc_offset"] for level in levels], dtype=np.float64)
    return {
        "loudness_lufs": float(np.median([level["loudness_lufs"] for level in levels])),
        "peak_dbfs": float(max(level["peak_dbfs"] for level in levels)),
        "dc_offset": float(dcs[np.argmax(np.abs(dcs))]),
    }


def k_weighted(audio: Any, sample_rate: int) -> np.ndarray:
    """`(channels, samples)` through BS.1770's K-weighting (the two pre-filters of `pyloudnorm.Meter`:
    +4 dB high shelf at 1.5 kHz, then the RLB high-pass at 38 Hz, which also removes any DC offset)."""
    import pyloudnorm

    channels = as_channels(audio).copy()
    meter = pyloudnorm.Meter(sample_rate)
    for stage in meter._filters.values():  # pyloudnorm exposes the K-weighting stages only on the meter
        for index in range(channels.shape[0]):
            channels[index] = stage.apply_filter(channels[index])
    return channels


def event_levels(
    audio: Any, sample_rate: int, times: Sequence[float], window_ms: float = 200.0
) -> np.ndarray:
    r"""
    Level in dB of `audio` over `[t, t + window_ms]` at each of `times` (seconds).

    The level is `-0.691 + 10 log10(p)` with `p` the K-weighted mean square over the window, averaged over the
    channels (so a mono clip and the same sound on two channels have the same level), i.e. BS.1770's block
    loudness of that window for a mono signal, in LUFS. It is floored at `EVENT_LEVEL_FLOOR_DB` (-100 dB) so that a
    silent window has a finite level. The K-weighting runs over the whole clip first, so no window sees a filter
    start-up. A window is cut at the clip's end; an event at or after the end gets NaN.

    Returns:
        `(len(times),)` float array.
    """
    if window_ms <= 0:
        raise ValueError(f"`window_ms` must be positive, got {window_ms}.")
    weighted = k_weighted(audio, sample_rate)
    power = (weighted**2).mean(axis=0)  # (samples,), mean over channels
    window = max(1, int(round(window_ms / 1000.0 * sample_rate)))
    floor = 10.0 ** ((EVENT_LEVEL_FLOOR_DB + 0.691) / 10.0)
    levels = np.full(len(times), np.nan)
    for index, time in enumerate(times):
        start = max(0, int(round(float(time) * sample_rate)))
        segment = power[start : start + window]
        if segment.size:
            levels[index] = -0.691 + 10.0 * math.log10(max(float(segment.mean()), floor))
    return levels


def event_loudness_errors(
    estimate: Any, reference: Any, sample_rate: int, times: Sequence[float], window_ms: float = 200.0
) -> np.ndarray:
    """Per event, `event_levels(estimate) - event_levels(reference)` in dB (negative: the estimate is quieter);
    NaN for events past the end of either clip."""
    return event_levels(estimate, sample_rate, times, window_ms) - event_levels(reference, sample_rate, times, window_ms)


__all__ = [
    "ABSOLUTE_GATE_LUFS",
    "EVENT_LEVEL_FLOOR_DB",
    "as_channels",
    "audio_level",
    "dc_offset",
    "event_levels",
    "event_loudness_errors",
    "integrated_loudness",
    "k_weighted",
    "peak_dbfs",
    "summarize_levels",
]
