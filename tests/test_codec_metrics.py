"""Codec metrics (paper Table 3) on signals with known answers."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from foley_toolkit.evaluation import (
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
