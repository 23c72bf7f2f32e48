"""Audio-visual synchronisation metrics for clips whose event times are known.

The audio of each clip (generated, or the ground truth) goes through an onset detector; detected onsets
are matched one-to-one with the known event times, within a tolerance (±80 ms by default), and scored:

- **precision / recall / F1** of the matching, micro-averaged over all clips;
- **mean absolute offset** (ms) of matched onsets, and the signed mean (positive: the sound is late);
- **shuffled control**: the same scores with every clip's audio paired with the events of another clip
  (a fixed-seed derangement). Audio that follows the picture scores high on the first and low here;
  audio that only has the right onset density scores the same on both;
- **pan accuracy**: for moving events, the share whose stereo balance just after the onset has the
  sign of the object's horizontal position (`x < 0`: more energy on the left);
- **level** of every clip (`level_metrics`: BS.1770 integrated loudness, sample peak, DC offset). A clip quieter
  than `silence_lufs` (-50 LUFS) is **silent**: its detected onsets are discarded, so all its events are misses;
  the onset detector itself is level-blind (it compares each band with the clip's own loudest moment), and a
  faint hiss at -60 LUFS would otherwise score like real sound;
- **per-event loudness error** when the reference (true) audio of a clip is known: the generated level minus the
  reference level over `[t, t + 200 ms]` at each event time `t` (`level_metrics.event_levels`: K-weighted mean
  square averaged over channels, in dB, floored at -100 dB), as mean signed and mean absolute error over events.

Onset detector (numpy/scipy only; all parameters are arguments of [`detect_onsets`]):

| step | what | default |
|---|---|---|
| front end | mono mix, resampled to 44.1 kHz; Hann STFT, centred frames, reflect-padded ends | `n_fft=1024` (23 ms), `hop_length=128` (2.9 ms) |
| bands | power summed in log-spaced bands (narrow low bands merged up to `min_bins` bins), in dB (0 dB = full-scale sine), floored at `floor_db` and at the clip's loudest band level minus `dynamic_range_db` | 3 bands/octave, 50 Hz–16 kHz, `min_bins=4` (17 bands), -100 dB, 60 dB |
| novelty | log-band spectral flux: mean over bands of the rectified rise `L[t] - L[t - lag]` (dB); the lag spans most of a window, so the whole rise of an onset counts, not a sliver of it | `lag=6` frames (17 ms) |
| gate | frames quieter than `silence_db` (total level) cannot hold onsets | -60 dBFS |
| threshold | adaptive: running median of the novelty over ±`threshold_window_ms`, plus `delta_db` | ±200 ms, +3 dB |
| peak picking | local maxima within ±`peak_window_ms`, then strongest-first suppression within `min_gap_ms`; none in the last `n_fft / 2` samples (the clip's cut-off) | ±30 ms, 100 ms |
| timing | a flux peak is offset from the attack by an amount that depends on the sound; the onset is refined to the steepest rise of a 1 ms log-energy envelope within ±`refine_window_ms` of the peak | 30 ms |
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.ndimage import maximum_filter1d, median_filter
from scipy.optimize import linear_sum_assignment

from ..audio_utils import SAMPLE_RATE, load_audio
from .level_metrics import audio_level, event_loudness_errors, summarize_levels

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp4", ".m4a", ".mkv", ".mov", ".webm", ".aac", ".mp3")


# ----------------------------------------------------------------------------------------------------
# Audio loading
# ----------------------------------------------------------------------------------------------------


def load_audio_for_sync(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads audio as float32 `(channels, samples)` at `sample_rate`, keeping the channels.

    The package's one audio reader, `audio_utils.load_audio` (soundfile for `.wav`/`.flac`/`.ogg`, PyAV for
    anything else, e.g. `.mp4` with an audio track; container audio trimmed to the stream's duration, since AAC
    pads its last frame), as a NumPy array.
    """
    return load_audio(path, sample_rate=sample_rate, mono=False).numpy()


# ----------------------------------------------------------------------------------------------------
# Onset detection
# ----------------------------------------------------------------------------------------------------


def _to_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:
        return audio.mean(axis=0)
    raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {audio.shape}")


def _band_matrix(
    n_fft: int, sample_rate: int, bands_per_octave: int, fmin: float, fmax: float, min_bins: int
) -> np.ndarray:
    """`(n_fft // 2 + 1, bands)` 0/1 matrix assigning STFT bins to log-spaced bands.

    Bands narrower than `min_bins` bins are merged with their upper neighbours: the level of a band of one
    or two bins fluctuates by several dB in noise, which would read as onsets.
    """
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    fmax = min(fmax, sample_rate / 2)
    valid = np.flatnonzero((freqs >= fmin) & (freqs <= fmax))
    index = np.floor(bands_per_octave * np.log2(freqs[valid] / fmin)).astype(int)
    groups: list[list[int]] = []
    current: list[int] = []
    for position, bin_index in enumerate(valid):
        current.append(int(bin_index))
        last_of_band = position + 1 == len(valid) or index[position + 1] != index[position]
        if last_of_band and len(current) >= min_bins:
            groups.append(current)
            current = []
    if current:  # a short top band joins the one below
        if groups:
            groups[-1] += current
        else:
            groups.append(current)
    matrix = np.zeros((freqs.size, len(groups)))
    for band, bins in enumerate(groups):
        matrix[bins, band] = 1.0
    return matrix


def onset_envelope(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 1024,
    hop_length: int = 128,
    bands_per_octave: int = 3,
    fmin: float = 50.0,
    fmax: float = 16000.0,
    lag: int = 6,
    min_bins: int = 4,
    floor_db: float = -100.0,
    dynamic_range_db: float | None = 60.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-band spectral flux of `audio` `(samples,)` or `(channels, samples)` (mixed to mono).

    Returns:
        `(novelty, times, level_db)`, each `(frames,)`: the mean rectified rise in dB per band between frame
        `t - lag` and frame `t`, the centre time of each frame in seconds, and the total level of each frame in
        dB (0 dB = a full-scale sine).
    """
    mono = _to_mono(audio)
    if mono.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    # Centred frames (frame t is centred on sample t * hop_length) so times need no window-length offset.
    # Reflect padding: zeros after a clip that ends mid-sound would be a hard cut, i.e. a false onset.
    padded = np.pad(mono, (n_fft // 2, n_fft // 2), mode="reflect" if mono.size > n_fft // 2 else "constant")
    num_frames = 1 + (padded.size - n_fft) // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:num_frames]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    power /= (window.sum() / 2) ** 2  # a full-scale sine peaks at 1 (0 dB)
    bands = power @ _band_matrix(n_fft, sample_rate, bands_per_octave, fmin, fmax, min_bins)
    floor = 10.0 ** (floor_db / 10)
    level = 10.0 * np.log10(np.maximum(bands, floor))
    if dynamic_range_db is not None:
        # Band levels far below the clip's loudest moment are floored: fluctuations of a faint noise floor,
        # or spectral leakage of a fading tone, would otherwise count as much as a real attack.
        level = np.maximum(level, level.max() - dynamic_range_db)
    rise = np.zeros_like(level)
    rise[lag:] = np.maximum(level[lag:] - level[:-lag], 0.0)
    novelty = rise.mean(axis=1)
    level_db = 10.0 * np.log10(np.maximum(power.sum(axis=1), floor))
    times = np.arange(num_frames) * hop_length / sample_rate
    return novelty, times, level_db


def _refine_onsets(mono: np.ndarray, sample_rate: int, peak_times: np.ndarray, window_ms: float) -> np.ndarray:
    """Moves each onset to the steepest rise of a fine log-energy envelope within ±`window_ms` of it.

    Spectral flux over 23 ms windows peaks several ms away from the attack, by an amount that depends on
    the sound; the energy envelope over 1 ms blocks localises the attack itself.
    """
    block = max(1, int(round(0.001 * sample_rate)))
    num_blocks = mono.size // block
    if num_blocks < 4 or not len(peak_times):
        return peak_times
    energy = (mono[: num_blocks * block].reshape(num_blocks, block) ** 2).mean(axis=1)
    log_energy = 10.0 * np.log10(energy + 1e-10)
    # Rise over 2 ms, so a single noisy block does not dominate.
    rise = np.full(num_blocks, -np.inf)
    rise[2:] = log_energy[2:] - log_energy[:-2]
    refined = peak_times.copy()
    span = int(round(window_ms / 1000 * sample_rate / block))
    for i, t in enumerate(peak_times):
        centre = int(round(t * sample_rate / block))
        start, end = max(2, centre - span), min(num_blocks, centre + span + 1)
        if end - start < 2:
            continue
        best = start + int(np.argmax(rise[start:end]))
        # Block `best` is the first loud block: the attack starts at its beginning, one block after the
        # quiet reference of the 2-block difference.
        refined[i] = (best - 1) * block / sample_rate
    return refined


def detect_onsets(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 1024,
    hop_length: int = 128,
    bands_per_octave: int = 3,
    fmin: float = 50.0,
    fmax: float = 16000.0,
    lag: int = 6,
    min_bins: int = 4,
    dynamic_range_db: float | None = 60.0,
    delta_db: float = 3.0,
    threshold_window_ms: float = 200.0,
    peak_window_ms: float = 30.0,
    min_gap_ms: float = 100.0,
    silence_db: float = -60.0,
    refine: bool = True,
    refine_window_ms: float = 30.0,
) -> np.ndarray:
    """Onset times in seconds of `audio` `(samples,)` or `(channels, samples)` at `sample_rate`.

    See the module docstring for the algorithm and its parameters. Silence (or a steady noise floor) yields
    no onsets: the threshold is a running median plus `delta_db`, and quiet frames are gated by `silence_db`.

    Returns:
        Sorted `(num_onsets,)` float array.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    novelty, times, level_db = onset_envelope(
        audio,
        sample_rate,
        n_fft,
        hop_length,
        bands_per_octave,
        fmin,
        fmax,
        lag,
        min_bins,
        dynamic_range_db=dynamic_range_db,
    )
    if novelty.size == 0:
        return np.zeros(0)
    frames_per_ms = sample_rate / hop_length / 1000.0
    threshold_size = 2 * int(round(threshold_window_ms * frames_per_ms)) + 1
    threshold = median_filter(novelty, size=threshold_size, mode="nearest") + delta_db
    peak_size = 2 * int(round(peak_window_ms * frames_per_ms)) + 1
    is_peak = (novelty == maximum_filter1d(novelty, size=peak_size, mode="nearest")) & (novelty > threshold)
    is_peak &= level_db > silence_db
    # A window that reaches past the last sample sees the clip's cut-off as a transient: no onsets there.
    is_peak &= times < (np.shape(audio)[-1] - n_fft // 2) / sample_rate
    candidates = np.flatnonzero(is_peak)
    # Strongest first; a weaker peak within min_gap_ms of an accepted one is the same onset (or its echo).
    min_gap = min_gap_ms / 1000.0
    accepted: list[int] = []
    for index in candidates[np.argsort(-novelty[candidates], kind="stable")]:
        if all(abs(times[index] - times[other]) >= min_gap for other in accepted):
            accepted.append(int(index))
    onsets = np.sort(times[accepted]) if accepted else np.zeros(0)
    if refine and onsets.size:
        onsets = _refine_onsets(_to_mono(audio), sample_rate, onsets, refine_window_ms)
        onsets = np.sort(np.maximum(onsets, 0.0))
    return onsets


# ----------------------------------------------------------------------------------------------------
# Matching and scores
# ----------------------------------------------------------------------------------------------------


def match_onsets(
    reference: Sequence[float], estimated: Sequence[float], tolerance: float = 0.08
) -> list[tuple[int, int]]:
    """One-to-one matching of reference and estimated times (seconds) within `tolerance`.

    Maximum-cardinality matching with the smallest total distance (Hungarian algorithm): pairs farther apart
    than `tolerance` cost more than any feasible set, so they are only used when nothing else fits, and then
    dropped.

    Returns:
        `(reference_index, estimated_index)` pairs sorted by reference index.
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    estimated = np.asarray(estimated, dtype=np.float64).reshape(-1)
    if reference.size == 0 or estimated.size == 0:
        return []
    distance = np.abs(reference[:, None] - estimated[None, :])
    feasible = distance <= tolerance + 1e-9
    cost = np.where(feasible, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols) if feasible[r, c])


def _prf(matched: int, num_reference: int, num_estimated: int) -> tuple[float, float, float]:
    if num_reference == 0 and num_estimated == 0:
        return 1.0, 1.0, 1.0
    precision = matched / num_estimated if num_estimated else 0.0
    recall = matched / num_reference if num_reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def onset_scores(reference: Sequence[float], estimated: Sequence[float], tolerance: float = 0.08) -> dict[str, float]:
    """Precision, recall, F1 and offsets of one clip's detected onsets against its event times (seconds).

    Returns:
        dict with `precision`, `recall`, `f1`, `num_matched`, `num_reference`, `num_estimated`,
        `mean_abs_offset_ms` and `mean_offset_ms` (estimated minus reference; NaN when nothing matched).
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    estimated = np.asarray(estimated, dtype=np.float64).reshape(-1)
    pairs = match_onsets(reference, estimated, tolerance)
    precision, recall, f1 = _prf(len(pairs), reference.size, estimated.size)
    offsets = np.array([estimated[e] - reference[r] for r, e in pairs]) * 1000.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "num_matched": len(pairs),
        "num_reference": int(reference.size),
        "num_estimated": int(estimated.size),
        "mean_abs_offset_ms": float(np.mean(np.abs(offsets))) if offsets.size else float("nan"),
        "mean_offset_ms": float(np.mean(offsets)) if offsets.size else float("nan"),
    }


def stereo_balance(
    audio: np.ndarray, time: float, sample_rate: int = SAMPLE_RATE, window_ms: float = 50.0, guard_ms: float = 5.0
) -> float:
    """Left/right balance of the sound starting at `time` in stereo `audio` `(2, samples)`, in [-1, 1].

    Uses the energy each channel gains in `[time - guard, time + window]` over the same-length window just
    before, so that the tail of an earlier sound does not count: `(gain_right - gain_left) / (gain_right +
    gain_left)`; negative means left. Returns 0 when neither channel gains energy (undefined).
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 2 or audio.shape[0] != 2:
        raise ValueError(f"audio must be stereo (2, samples), got shape {audio.shape}")
    window = int(round(window_ms / 1000 * sample_rate))
    start = int(round((time - guard_ms / 1000) * sample_rate))
    post = audio[:, max(0, start) : max(0, start + window)]
    pre = audio[:, max(0, start - window) : max(0, start)]
    if post.shape[1] == 0:
        return 0.0
    post_energy = (post**2).mean(axis=1)
    pre_energy = (pre**2).mean(axis=1) if pre.shape[1] else np.zeros(2)
    gain = np.maximum(post_energy - pre_energy, 0.0)
    total = gain.sum()
    if total <= 1e-12:
        return 0.0
    return float((gain[1] - gain[0]) / total)


# ----------------------------------------------------------------------------------------------------
# Whole evaluations
# ----------------------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """Scores of an [`evaluate_sync`] run; offsets in ms; NaN where undefined (e.g. nothing matched).

    Levels: `loudness_lufs` is the median of the clips' BS.1770 integrated loudness (`-inf` when most clips are
    below the -70 LUFS gate), `peak_dbfs` the highest clip peak, `dc_offset` the per-channel mean of largest
    magnitude over all clips (signed); `num_silent` clips were quieter than `silence_lufs` and scored as having no
    onsets. `loudness_error_db` / `abs_loudness_error_db` are the mean signed / absolute per-event level error
    (generated minus reference, dB) over the `num_level_events` events whose clip has reference audio.
    In `to_dict` (JSON) NaN and -inf become None.
    """

    num_clips: int
    num_events: int
    num_detected: int
    num_matched: int
    precision: float
    recall: float
    f1: float
    mean_abs_offset_ms: float
    mean_offset_ms: float
    pan_accuracy: float
    num_pan_events: int
    pan_accuracy_all: float
    num_pan_events_all: int
    shuffled_precision: float
    shuffled_recall: float
    shuffled_f1: float
    tolerance_ms: float
    num_silent: int = 0
    silence_lufs: float = -50.0
    loudness_lufs: float = float("nan")
    peak_dbfs: float = float("nan")
    dc_offset: float = float("nan")
    loudness_error_db: float = float("nan")
    abs_loudness_error_db: float = float("nan")
    num_level_events: int = 0
    clips: list[dict] = field(default_factory=list)

    SUMMARY_KEYS = (
        ("f1", "onset F1"),
        ("precision", "onset precision"),
        ("recall", "onset recall"),
        ("mean_abs_offset_ms", "mean |offset| (ms)"),
        ("mean_offset_ms", "mean offset (ms, + = late)"),
        ("pan_accuracy", "pan sign accuracy (moving)"),
        ("pan_accuracy_all", "pan sign accuracy (all)"),
        ("shuffled_f1", "shuffled control F1"),
        ("shuffled_precision", "shuffled control precision"),
        ("shuffled_recall", "shuffled control recall"),
        ("num_clips", "clips"),
        ("num_events", "events"),
        ("num_detected", "detected onsets"),
        ("num_matched", "matched onsets"),
        ("num_pan_events", "moving events (pan)"),
        ("tolerance_ms", "tolerance (ms)"),
        ("num_silent", "silent clips"),
        ("silence_lufs", "silence threshold (LUFS)"),
        ("loudness_lufs", "median loudness (LUFS)"),
        ("peak_dbfs", "max peak (dBFS)"),
        ("dc_offset", "largest DC offset"),
        ("loudness_error_db", "event loudness error (dB, + = louder)"),
        ("abs_loudness_error_db", "event |loudness error| (dB)"),
        ("num_level_events", "events with reference level"),
    )

    def to_dict(self, with_clips: bool = False) -> dict[str, Any]:
        """JSON-able dict (NaN becomes None)."""
        out = {key: _json_number(getattr(self, key)) for key, _ in self.SUMMARY_KEYS}
        if with_clips:
            out["clips"] = [{k: _json_number(v) for k, v in clip.items()} for clip in self.clips]
        return out

    def format_table(self) -> str:
        """Two-column text table of the summary scores."""
        rows = []
        for key, label in self.SUMMARY_KEYS:
            value = getattr(self, key)
            if isinstance(value, (int, np.integer)):
                text = str(int(value))
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                text = "n/a"
            elif key == "dc_offset":
                text = f"{value:+.5f}"
            elif "ms" in key or "lufs" in key or "db" in key:
                text = f"{value:.1f}"  # -inf prints as "-inf"
            else:
                text = f"{value:.3f}"
            rows.append((label, text))
        width = max(len(label) for label, _ in rows)
        lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
        lines += [f"{label.ljust(width)}  {text}" for label, text in rows]
        return "\n".join(lines)


def _json_number(value: Any) -> Any:
    """NaN and +-inf (undefined scores, the loudness of silence) become None: JSON has neither."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def derangement(num: int, seed: int = 0) -> np.ndarray:
    """A permutation of `range(num)` with no fixed point (`num >= 2`), drawn with `seed`."""
    if num < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {num}")
    rng = np.random.default_rng(seed)
    while True:  # a random permutation is a derangement with probability ~1/e
        perm = rng.permutation(num)
        if not np.any(perm == np.arange(num)):
            return perm


def _event_fields(event: Mapping) -> tuple[float, float | None, bool]:
    if "time" not in event:
        raise ValueError(f"each event needs a 'time' (seconds), got {dict(event)}")
    x = event.get("x")
    return float(event["time"]), (None if x is None else float(x)), bool(event.get("moving", False))


def evaluate_sync(
    audios: Sequence[np.ndarray],
    events: Sequence[Sequence[Mapping]],
    sample_rate: int = SAMPLE_RATE,
    tolerance_ms: float = 80.0,
    names: Sequence[str] | None = None,
    shuffle_seed: int = 0,
    min_abs_x: float = 0.1,
    pan_window_ms: float = 50.0,
    detector_kwargs: Mapping[str, Any] | None = None,
    reference_audios: Sequence[np.ndarray | None] | None = None,
    silence_lufs: float | None = -50.0,
    level_window_ms: float = 200.0,
) -> SyncReport:
    """Scores how well the onsets of `audios` land on the known `events`.

    Args:
        audios: One array per clip, `(samples,)` or `(channels, samples)` (stereo needed for pan scores).
        events: One list per clip of event dicts with `time` (seconds) and optionally `x` (-1 left .. 1 right)
            and `moving` (the `events` field of the synthetic `metadata.jsonl`).
        sample_rate: Sample rate of `audios`.
        tolerance_ms: A detected onset matches an event within this distance.
        names: Clip names, for the per-clip results.
        shuffle_seed: Seed of the derangement used by the shuffled control.
        min_abs_x: Events closer than this to the centre have no defined pan sign and are skipped.
        pan_window_ms: Length of the window after the onset used for the stereo balance.
        detector_kwargs: Extra arguments for [`detect_onsets`].
        reference_audios: Optional, one per clip (or None where unknown): the true audio of the clip, at
            `sample_rate`, for the per-event loudness error.
        silence_lufs: Clips whose integrated loudness is below this are silent: they get no onsets (every
            event a miss, also in the shuffled control). None disables the rule.
        level_window_ms: Window after each event time over which the loudness error is measured.

    Returns:
        [`SyncReport`]: micro-averaged scores over all clips, the shuffled control (NaN with fewer than
        2 clips), pan accuracies, levels (median loudness, max peak, largest DC offset, silent clips), the
        loudness error over all events that have a reference (mean signed and mean absolute, dB; NaN without
        references), and per-clip results in `clips`.
    """
    if len(audios) != len(events):
        raise ValueError(f"audios and events must have the same length, got {len(audios)} and {len(events)}")
    if not len(audios):
        raise ValueError("audios must contain at least one clip")
    if names is not None and len(names) != len(audios):
        raise ValueError(f"names must have one entry per clip, got {len(names)} for {len(audios)} clips")
    if reference_audios is not None and len(reference_audios) != len(audios):
        raise ValueError(
            f"reference_audios must have one entry per clip (None where unknown), got {len(reference_audios)} "
            f"for {len(audios)} clips"
        )
    tolerance = tolerance_ms / 1000.0
    detector_kwargs = dict(detector_kwargs or {})
    parsed = [[_event_fields(event) for event in clip_events] for clip_events in events]
    levels = [audio_level(audio, sample_rate) for audio in audios]
    silent = [silence_lufs is not None and level["loudness_lufs"] < silence_lufs for level in levels]
    # A silent clip has no onsets whatever the (level-blind) detector finds in its hiss or DC.
    detections = [
        np.zeros(0) if is_silent else detect_onsets(audio, sample_rate, **detector_kwargs)
        for audio, is_silent in zip(audios, silent)
    ]
    level_errors: list[float] = []

    clips = []
    total_matched = total_events = total_detected = 0
    offsets: list[float] = []
    pan_hits = {"moving": [0, 0], "all": [0, 0]}
    for index, (audio, clip_events, onsets) in enumerate(zip(audios, parsed, detections)):
        times = np.array([t for t, _, _ in clip_events], dtype=np.float64)
        scores = onset_scores(times, onsets, tolerance)
        pairs = match_onsets(times, onsets, tolerance)
        offsets += [(onsets[e] - times[r]) * 1000.0 for r, e in pairs]
        total_matched += len(pairs)
        total_events += times.size
        total_detected += onsets.size
        matched_onset = dict(pairs)
        clip_pan = [0, 0]
        is_stereo = np.ndim(audio) == 2 and np.shape(audio)[0] == 2
        if is_stereo:
            for event_index, (time, x, moving) in enumerate(clip_events):
                if x is None or abs(x) < min_abs_x:
                    continue
                # Measure at the detected onset when there is one, else where the sound should be.
                at = onsets[matched_onset[event_index]] if event_index in matched_onset else time
                balance = stereo_balance(audio, at, sample_rate, pan_window_ms)
                # A silent clip has no sound to pan: its events count as wrong, as with digital silence.
                correct = int(not silent[index] and balance != 0.0 and np.sign(balance) == np.sign(x))
                for key in ("moving", "all") if moving else ("all",):
                    pan_hits[key][0] += correct
                    pan_hits[key][1] += 1
                if moving:
                    clip_pan[0] += correct
                    clip_pan[1] += 1
        clip_errors = np.full(times.size, np.nan)
        reference = reference_audios[index] if reference_audios is not None else None
        if reference is not None and times.size:
            clip_errors = event_loudness_errors(audio, reference, sample_rate, times, level_window_ms)
            level_errors += [float(e) for e in clip_errors if np.isfinite(e)]
        finite_errors = clip_errors[np.isfinite(clip_errors)]
        clips.append(
            {
                "name": names[index] if names is not None else str(index),
                **scores,
                "pan_accuracy": clip_pan[0] / clip_pan[1] if clip_pan[1] else float("nan"),
                "onsets": [round(float(t), 4) for t in onsets],
                **levels[index],
                "silent": bool(silent[index]),
                "loudness_error_db": float(finite_errors.mean()) if finite_errors.size else float("nan"),
                "abs_loudness_error_db": float(np.abs(finite_errors).mean()) if finite_errors.size else float("nan"),
                "event_loudness_errors_db": [round(float(e), 2) if np.isfinite(e) else None for e in clip_errors],
            }
        )

    precision, recall, f1 = _prf(total_matched, total_events, total_detected)

    shuffled = (float("nan"),) * 3
    if len(audios) >= 2:
        perm = derangement(len(audios), shuffle_seed)
        matched = reference_count = 0
        for audio_index, events_index in enumerate(perm):
            times = [t for t, _, _ in parsed[events_index]]
            matched += len(match_onsets(times, detections[audio_index], tolerance))
            reference_count += len(times)
        shuffled = _prf(matched, reference_count, total_detected)

    def share(hits: list[int]) -> float:
        return hits[0] / hits[1] if hits[1] else float("nan")

    return SyncReport(
        num_clips=len(audios),
        num_events=total_events,
        num_detected=total_detected,
        num_matched=total_matched,
        precision=precision,
        recall=recall,
        f1=f1,
        mean_abs_offset_ms=float(np.mean(np.abs(offsets))) if offsets else float("nan"),
        mean_offset_ms=float(np.mean(offsets)) if offsets else float("nan"),
        pan_accuracy=share(pan_hits["moving"]),
        num_pan_events=pan_hits["moving"][1],
        pan_accuracy_all=share(pan_hits["all"]),
        num_pan_events_all=pan_hits["all"][1],
        shuffled_precision=shuffled[0],
        shuffled_recall=shuffled[1],
        shuffled_f1=shuffled[2],
        tolerance_ms=float(tolerance_ms),
        num_silent=int(sum(silent)),
        silence_lufs=float("nan") if silence_lufs is None else float(silence_lufs),
        **summarize_levels(levels),
        loudness_error_db=float(np.mean(level_errors)) if level_errors else float("nan"),
        abs_loudness_error_db=float(np.mean(np.abs(level_errors))) if level_errors else float("nan"),
        num_level_events=len(level_errors),
        clips=clips,
    )


def load_events(path: str | os.PathLike) -> list[dict]:
    """Reads an events file: `metadata.jsonl` (one JSON object per line) or a JSON list of such objects.

    Each record needs `file_name` (matched to audio files by stem) and `events` (list of `{"time": s, ...}`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for number, record in enumerate(records):
        if "file_name" not in record or "events" not in record:
            raise ValueError(f"{path}: record {number} needs 'file_name' and 'events' keys, got {sorted(record)}")
    return records


def find_audio_file(
    audio_dir: str | os.PathLike, stem: str, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> Path | None:
    """First `audio_dir/<stem><ext>` that exists, trying `extensions` in order (lossless .wav first)."""
    for ext in extensions:
        candidate = Path(audio_dir) / f"{stem}{ext if ext.startswith('.') else '.' + ext}"
        if candidate.is_file():
            return candidate
    return None


def find_reference_audio(
    record: Mapping, events_dir: str | os.PathLike, reference_dir: str | os.PathLike | None = None,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
) -> Path | None:
    """The true audio of one `metadata.jsonl` record, or None.

    With `reference_dir`: the file there with the record's stem (first of `extensions`). Otherwise, next to the
    events file: the record's `audio_file_name` / `audio_file` (the lossless track `make-synthetic` writes), else
    its `file_name` when that is an audio file (a video's own track is tried by the caller, see
    [`evaluate_sync_folder`]).
    """
    if reference_dir is not None:
        return find_audio_file(reference_dir, Path(record["file_name"]).stem, extensions)
    for key in ("audio_file_name", "audio_file", "file_name"):
        name = record.get(key)
        if name:
            candidate = Path(events_dir) / name
            if candidate.is_file() and candidate.suffix.lower() in AUDIO_EXTENSIONS:
                return candidate
    return None


def evaluate_sync_folder(
    audio_dir: str | os.PathLike,
    events_file: str | os.PathLike,
    tolerance_ms: float = 80.0,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    shuffle_seed: int = 0,
    reference_dir: str | os.PathLike | None = None,
    use_references: bool = True,
    **kwargs: Any,
) -> SyncReport:
    """[`evaluate_sync`] over a folder: each record of `events_file` is paired with the audio file in
    `audio_dir` that has the same stem as its `file_name` (first of `extensions` that exists).

    The true audio of each clip, for the loudness error, is found by [`find_reference_audio`]: in
    `reference_dir` when given (a missing file there raises `FileNotFoundError`), else the files the record
    names next to `events_file` (a video without an audio track is skipped with a warning). `use_references=False`
    skips it. Clips without an audio file are skipped with a warning; none at all raises `FileNotFoundError`.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio_dir is not a directory: {audio_dir}")
    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise FileNotFoundError(f"reference_dir is not a directory: {reference_dir}")
    records = load_events(events_file)
    audios, events, names, references, missing = [], [], [], [], []
    for record in records:
        stem = Path(record["file_name"]).stem
        path = find_audio_file(audio_dir, stem, extensions)
        if path is None:
            missing.append(stem)
            continue
        audios.append(load_audio_for_sync(path))
        events.append(record["events"])
        names.append(path.name)
        reference = None
        if use_references:
            reference_path = find_reference_audio(record, Path(events_file).parent, reference_dir)
            if reference_path is None and reference_dir is not None:
                raise FileNotFoundError(f"reference_dir {reference_dir} has no audio for clip {stem!r}")
            if reference_path is not None:
                try:
                    reference = load_audio_for_sync(reference_path)
                except ValueError as error:  # e.g. a video without an audio track
                    warnings.warn(f"no reference audio for {stem!r}: {error}")
        references.append(reference)
    if not audios:
        raise FileNotFoundError(
            f"no audio in {audio_dir} matches the {len(records)} clips of {events_file} (extensions {list(extensions)})"
        )
    if missing:
        warnings.warn(f"{len(missing)} clips have no audio in {audio_dir} and are skipped: {missing[:5]}...")
    return evaluate_sync(
        audios,
        events,
        SAMPLE_RATE,
        tolerance_ms,
        names=names,
        shuffle_seed=shuffle_seed,
        reference_audios=references,
        **kwargs,
    )


__all__ = [
    "SyncReport",
    "derangement",
    "detect_onsets",
    "evaluate_sync",
    "evaluate_sync_folder",
    "find_audio_file",
    "find_reference_audio",
    "load_audio_for_sync",
    "load_events",
    "match_onsets",
    "onset_envelope",
    "onset_scores",
    "stereo_balance",
]
