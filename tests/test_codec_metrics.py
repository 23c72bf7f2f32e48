"""Codec metrics (paper Table 3) on signals with known answers."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from foley_toolkit.evaluation import (
    CODEC_METRICS,
    LEVEL_METRICS,
    audio_level,
    codec_level_metrics,
    compute_codec_metrics,
    dc_offset,
    event_levels,
    event_loudness_errors,
    format_codec_metrics_table,
    griffin_lim_from_log_mel,
    integrated_loudness,
    log_spectral_distance,
    mel_cepstral_distortion,
    mel_cepstral_distortion_from_log_mels,
    mel_distance,
    multi_resolution_stft_loss,
    peak_dbfs,
    pesq_wideband,
    sdr,
    si_sdr,
    summarize_codec_metrics,
    summarize_levels,
)
from foley_toolkit.evaluation.codec_metrics import _log_mel

SAMPLE_RATE = 44100


def speech_like(seconds: float = 3.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A glottal pulse train (gliding f0) through three formant resonators with a syllable envelope: enough
    speech structure for PESQ's voice activity detection."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    pulses = (np.diff(np.floor(np.cumsum(f0 / sample_rate)), prepend=0) > 0).astype(np.float64)
    signal = pulses
    for centre, bandwidth in ((700, 110), (1200, 120), (2600, 160)):
        radius = np.exp(-np.pi * bandwidth / sample_rate)
        theta = 2 * np.pi * centre / sample_rate
        signal = lfilter([1 - radius], [1, -2 * radius * np.cos(theta), radius**2], signal)
    signal = signal * np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5 + 1e-3 * rng.standard_normal(t.shape)
    return 0.3 * signal / np.abs(signal).max()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return speech_like()


def test_identical_signals(reference):
    metrics = compute_codec_metrics(reference, reference.copy())
    assert list(metrics) == list(CODEC_METRICS)
    assert metrics["si_sdr"] > 100 and metrics["sdr"] > 100
    assert metrics["lsd"] == 0 and metrics["mcd"] == 0
    assert metrics["mel_loss"] == 0 and metrics["stft_loss"] == pytest.approx(0, abs=1e-9)
    assert metrics["pesq"] > 4.5  # wideband PESQ tops out at 4.64


def test_scaled_copy_keeps_si_sdr_but_not_sdr(reference):
    assert si_sdr(reference, 0.5 * reference) > 100
    assert si_sdr(reference, 3.0 * reference) > 100
    # SDR is not scale invariant: s_hat = s / 2 leaves an error of s / 2 -> 20 log10(2) dB.
    assert sdr(reference, 0.5 * reference) == pytest.approx(20 * math.log10(2), abs=1e-6)
    # A gain is a constant shift of the log spectrum: LSD = |log10(gain^2)|, mel loss = |ln(gain)| (above the floor).
    assert log_spectral_distance(reference, 0.5 * reference) == pytest.approx(abs(math.log10(0.25)), rel=1e-3)
    assert mel_distance(reference, 0.5 * reference) == pytest.approx(math.log(2), rel=0.02)
    # c0 (energy) absorbs a gain: MCD ignores it.
    assert mel_cepstral_distortion(reference, 0.5 * reference) < 0.05


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_white_noise_at_known_snr(reference, snr_db):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(reference.shape)
    noise *= np.sqrt(np.sum(reference**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    noisy = reference + noise
    assert sdr(reference, noisy) == pytest.approx(snr_db, abs=0.5)
    assert si_sdr(reference, noisy) == pytest.approx(snr_db, abs=0.5)
    assert log_spectral_distance(reference, noisy) > 0 and mel_cepstral_distortion(reference, noisy) > 0


def test_mcd_known_answer():
    # A log-spectral difference a * cos(pi * m (n + 0.5) / N) across the bands is exactly cepstral coefficient m
    # with value a / 2: MCD = 10 / ln 10 * sqrt(2) * a / 2. Beyond coefficient 13 it is invisible; offsets are c0.
    bands = torch.arange(128, dtype=torch.float64)
    reference = torch.randn(128, 20, dtype=torch.float64) - 5
    for order, amplitude in ((1, 0.3), (7, 1.0), (13, 0.5)):
        ripple = amplitude * torch.cos(math.pi * order * (bands + 0.5) / 128)[:, None]
        expected = 10 / math.log(10) * math.sqrt(2) * amplitude / 2
        assert mel_cepstral_distortion_from_log_mels(reference, reference + ripple) == pytest.approx(expected)
    ripple = torch.cos(math.pi * 20 * (bands + 0.5) / 128)[:, None]
    assert mel_cepstral_distortion_from_log_mels(reference, reference + ripple + 3.0) == pytest.approx(0, abs=1e-9)


def test_metrics_order_degradations(reference):
    rng = np.random.default_rng(2)
    light = reference + 0.01 * rng.standard_normal(reference.shape) * reference.std()
    heavy = reference + 1.0 * rng.standard_normal(reference.shape) * reference.std()
    for name, function in [
        ("lsd", log_spectral_distance),
        ("mcd", mel_cepstral_distortion),
        ("mel_loss", mel_distance),
        ("stft_loss", multi_resolution_stft_loss),
    ]:
        assert function(reference, light) < function(reference, heavy), name
    assert pesq_wideband(reference, light) > pesq_wideband(reference, heavy) + 0.5


def test_inputs_lengths_and_errors(reference):
    tensor = torch.from_numpy(reference).float()
    # Tensors, (1, N) shapes and unequal lengths (cropped to the shorter) are accepted.
    metrics = compute_codec_metrics(tensor[None], tensor[:40000], metrics=["si_sdr", "lsd"])
    assert set(metrics) == {"si_sdr", "lsd"} and metrics["lsd"] == 0
    with pytest.raises(ValueError, match="Unknown codec metrics"):
        compute_codec_metrics(reference, reference, metrics=["fad"])
    with pytest.raises(ValueError, match="mono"):
        si_sdr(np.zeros((2, 100)), np.zeros((2, 100)))
    # PESQ on silence cannot find an utterance: NaN with a warning, never an exception.
    with pytest.warns(UserWarning, match="PESQ"):
        assert math.isnan(pesq_wideband(np.zeros(SAMPLE_RATE), np.zeros(SAMPLE_RATE)))


def test_summary_and_table():
    rows = [{"pesq": float("nan"), "si_sdr": 1.0, "lsd": 2.0}, {"pesq": 3.0, "si_sdr": 3.0, "lsd": 4.0}]
    summary = summarize_codec_metrics(rows)
    assert summary == {"pesq": 3.0, "si_sdr": 2.0, "lsd": 3.0}
    table = format_codec_metrics_table({"model": summary}, counts={"model": 2})
    assert "pesq ↑" in table and "lsd ↓" in table and "| 2.000 " in table and table.count("\n") == 2


# ----------------------------------------------------------------------------------------------------------------
# Level (BS.1770 loudness, peak, DC) and the Griffin-Lim floor
# ----------------------------------------------------------------------------------------------------------------


def sine(frequency: float, dbfs: float, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * frequency * t)


def test_level_known_answers():
    # A sample every quarter period at the crest: the peak of a full-scale sine is exactly 0 dBFS.
    assert peak_dbfs(sine(SAMPLE_RATE / 4, 0.0, 0.5)) == pytest.approx(0.0, abs=1e-9)
    # BS.1770-4: a 997 Hz sine at 0 dBFS on one channel reads -3.01 LUFS, on two channels 0.0 (channels add power).
    tone = sine(997, -20.0, 3.0)
    level = audio_level(tone, SAMPLE_RATE)
    assert level["loudness_lufs"] == pytest.approx(-23.01, abs=0.1)
    assert level["peak_dbfs"] == pytest.approx(-20.0, abs=0.01)
    assert abs(level["dc_offset"]) < 1e-6
    assert audio_level(np.stack([tone, tone]), SAMPLE_RATE)["loudness_lufs"] == pytest.approx(-20.0, abs=0.1)
    assert audio_level(torch.from_numpy(tone).float()[None], SAMPLE_RATE)["loudness_lufs"] == pytest.approx(
        level["loudness_lufs"], abs=0.01
    )
    # Loudness is linear in dB: -20 dB more gain, 20 LU less.
    assert integrated_loudness(0.1 * tone, SAMPLE_RATE) == pytest.approx(level["loudness_lufs"] - 20.0, abs=1e-6)
    # DC: the per-channel mean with the largest magnitude, signed; K-weighting removes it from the loudness.
    biased = np.stack([tone + 0.01, tone - 0.25])
    assert dc_offset(biased) == pytest.approx(-0.25, abs=1e-4)
    assert audio_level(biased, SAMPLE_RATE)["loudness_lufs"] == pytest.approx(-20.0, abs=0.1)
    assert peak_dbfs(biased) == pytest.approx(20 * math.log10(0.35), abs=0.01)


def test_level_short_clips_silence_and_errors():
    # Shorter than one 400 ms block: one block spanning the clip, no zero padding (which would lower the level).
    assert integrated_loudness(sine(997, -20.0, 0.1), SAMPLE_RATE) == pytest.approx(-23.01, abs=0.1)
    for length in (386, 442, 701):  # lengths whose duration * rate rounds above the sample count
        assert np.isfinite(integrated_loudness(0.1 * np.random.default_rng(length).standard_normal(length), SAMPLE_RATE))
    silence = audio_level(np.zeros((2, SAMPLE_RATE)), SAMPLE_RATE)
    assert silence == {"loudness_lufs": float("-inf"), "peak_dbfs": float("-inf"), "dc_offset": 0.0}
    # Below BS.1770's absolute gate (-70 LUFS) the integrated loudness is undefined: -inf too.
    assert integrated_loudness(sine(997, -80.0, 1.0), SAMPLE_RATE) == float("-inf")
    summary = summarize_levels([audio_level(sine(997, -20.0, 1.0), SAMPLE_RATE), silence, silence])
    assert summary["loudness_lufs"] == float("-inf") and summary["peak_dbfs"] == pytest.approx(-20.0, abs=0.01)
    with pytest.raises(ValueError, match="audio"):
        audio_level(np.zeros((2, 3, 100)), SAMPLE_RATE)
    with pytest.raises(ValueError, match="empty"):
        audio_level(np.zeros(0), SAMPLE_RATE)


def test_event_levels_and_codec_level_metrics():
    tone = sine(997, -20.0, 2.0)
    tone[: SAMPLE_RATE // 2] = 0.0  # silence, then the tone from 0.5 s
    levels = event_levels(tone, SAMPLE_RATE, [0.1, 1.0, 2.5])
    assert levels[0] == pytest.approx(-100.0)  # floor
    assert levels[1] == pytest.approx(-23.01, abs=0.1)  # a steady tone's window level is its BS.1770 loudness
    assert math.isnan(levels[2])  # past the end
    np.testing.assert_allclose(event_loudness_errors(0.1 * tone, tone, SAMPLE_RATE, [1.0, 1.5]), -20.0, atol=1e-6)
    metrics = codec_level_metrics(tone, 0.5 * tone + 0.002)
    assert list(metrics) == list(LEVEL_METRICS)
    assert metrics["loudness_error_db"] == pytest.approx(20 * math.log10(0.5), abs=0.01)
    assert metrics["dc_offset"] == pytest.approx(0.002 + 0.5 * tone.mean(), abs=1e-9)
    # A silent reconstruction: loudness -inf, its error floored at the -70 LUFS gate (finite, large).
    silent = codec_level_metrics(tone, np.zeros_like(tone))
    assert silent["loudness_lufs"] == float("-inf") and silent["loudness_error_db"] < -45
    summary = summarize_codec_metrics([{"sdr": 1.0, **metrics}, {"sdr": 3.0, **silent}])
    assert summary["sdr"] == 2.0 and summary["abs_loudness_error_db"] > summary["loudness_error_db"] * -1 - 1e-9
    assert summary["loudness_error_db"] == pytest.approx((metrics["loudness_error_db"] + silent["loudness_error_db"]) / 2)
    table = format_codec_metrics_table({"model": summary})
    assert "ΔLUFS" in table and "peak dBFS" in table


def events_signal(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Tone + noise bursts with symmetric (Gaussian, 20 ms) envelopes over a faint noise floor: Griffin-Lim smears
    a sharp attack's energy over its window, which would bias an envelope cross-correlation; a symmetric burst
    reads its true position."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signal = 1e-3 * rng.standard_normal(t.size)
    for centre, frequency in zip((0.2, 0.5, 0.8), (440.0, 1000.0, 2500.0)):
        envelope = np.exp(-((t - centre) ** 2) / (2 * 0.02**2))
        signal += envelope * (0.3 * np.sin(2 * np.pi * frequency * t) + 0.1 * rng.standard_normal(t.size))
    return signal


def envelope_lag(reference: np.ndarray, estimate: np.ndarray, max_lag: int = 1024) -> int:
    """Samples by which `estimate`'s 5 ms energy envelope is late against `reference`'s (cross-correlation)."""
    kernel = np.ones(220)
    a = np.convolve(reference**2, kernel, "same")
    b = np.convolve(np.asarray(estimate, np.float64) ** 2, kernel, "same")
    a, b = a - a.mean(), b - b.mean()
    lags = np.arange(-max_lag, max_lag + 1)
    scores = [np.dot(a[max_lag:-max_lag], b[max_lag + lag : len(b) - max_lag + lag]) for lag in lags]
    return int(lags[int(np.argmax(scores))])


def test_griffin_lim_from_true_mel_is_a_time_aligned_floor():
    signal = events_signal()
    log_mel = _log_mel(torch.from_numpy(signal), SAMPLE_RATE)
    resynthesis = griffin_lim_from_log_mel(log_mel, signal.size, n_iter=16)
    assert resynthesis.shape == signal.shape and resynthesis.dtype == np.float32
    rng = np.random.default_rng(3)
    gl_loss = mel_distance(signal, resynthesis)
    assert gl_loss < 0.5
    assert gl_loss < mel_distance(signal, np.zeros_like(signal)) / 2
    assert gl_loss < mel_distance(signal, 0.05 * rng.standard_normal(signal.size)) / 2
    # Time-aligned with the original (the check sees a shift: a 256-sample delay reads as 256).
    assert abs(envelope_lag(signal, resynthesis)) <= 32  # < 1 ms; a centre-convention slip is 256
    assert envelope_lag(signal, np.concatenate([np.zeros(256), signal[:-256]])) == 256
    # Same loudness within 1 dB: Griffin-Lim keeps the magnitudes.
    assert abs(codec_level_metrics(signal, resynthesis)["loudness_error_db"]) < 1.0
    with pytest.raises(ValueError, match="log_mel"):
        griffin_lim_from_log_mel(log_mel[None], signal.size)
