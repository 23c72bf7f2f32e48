"""The log-mel front end (BigVGAN-v2 44.1 kHz, 128 bands) against a librosa/numpy reference, the length formulas
(`audio_utils`, the one module that owns them) and audio I/O."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from foley_toolkit.audio_utils import (
    load_audio,
    num_frames_at_rate,
    num_mel_frames,
    num_sync_segments,
    sync_window_frames,
    resample,
    save_audio,
    sequence_lengths,
)
from foley_toolkit.models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram, slaney_mel_filterbank


def reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """BigVGAN-v2's mel_spectrogram written with librosa + numpy (float64)."""
    librosa = pytest.importorskip("librosa")
    basis = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=128, fmin=0, fmax=None)
    padded = np.pad(waveform, (768, 768), mode="reflect")
    spectrum = librosa.stft(padded, n_fft=2048, hop_length=512, win_length=2048, window="hann", center=False)
    magnitude = np.sqrt(np.abs(spectrum) ** 2 + 1e-9)
    return np.log(np.clip(basis.astype(np.float64) @ magnitude, 1e-5, None))


def test_slaney_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for sample_rate, n_fft, num_mels, f_max in [(44100, 2048, 128, None), (16000, 1024, 80, 8000.0)]:
        expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_mels, fmin=0.0, fmax=f_max)
        ours = slaney_mel_filterbank(sample_rate, n_fft, num_mels, 0.0, f_max)
        assert ours.shape == expected.shape == (num_mels, n_fft // 2 + 1)
        np.testing.assert_allclose(ours, expected, atol=1e-7, rtol=0)


def test_log_mel_matches_librosa_reference_batched():
    generator = torch.Generator().manual_seed(0)
    num_samples = 44100 + 777  # not a multiple of the hop
    t = torch.arange(num_samples) / 44100
    noise = (torch.rand(num_samples, generator=generator) * 2 - 1) * 0.5
    chirp = 0.4 * torch.sin(2 * math.pi * (100 + 4000 * t) * t) * torch.exp(-2 * t)
    quiet = 1e-4 * noise  # exercises the log(clamp(., 1e-5)) floor
    batch = torch.stack([noise, chirp, quiet])
    log_mel = LogMelSpectrogram()(batch)
    assert log_mel.shape == (3, 128, num_mel_frames(num_samples))
    assert log_mel.dtype == torch.float32
    for index in range(3):
        expected = reference_log_mel(batch[index].double().numpy())
        assert np.abs(log_mel[index].double().numpy() - expected).max() < 1e-4


def test_frame_counts_and_leading_dims():
    transform = LogMelSpectrogram()
    assert num_mel_frames(352_800) == 689 == transform.num_frames(352_800)
    for num_samples in (769, 1024, 5000, 44100):
        out = transform(torch.zeros(2, 1, num_samples))
        assert out.shape == (2, 1, 128, (num_samples - 512) // 512 + 1)
    # Silence sits on the log floor.
    assert torch.allclose(transform(torch.zeros(1, 4096)), torch.full((1, 128, 8), math.log(1e-5)))
    with pytest.raises(ValueError, match="at least 769 samples"):
        transform(torch.zeros(1, 768))


def test_sequence_lengths():
    assert sequence_lengths(8.0) == {
        "num_samples": 352_800,
        "mel_frames": 689,
        "latent_frames": 345,
        "audio_tokens": 345,
        "output_mel_frames": 690,
        "clip_frames": 64,
        "sync_frames": 200,
        "sync_segments": 24,
        "sync_tokens": 192,
    }
    one = sequence_lengths(1.0)
    # 44,100 samples: 86 mel frames -> 43 latents from encode; 44 latent frames are needed to decode every sample.
    assert (one["num_samples"], one["mel_frames"], one["latent_frames"], one["audio_tokens"]) == (44100, 86, 43, 44)
    assert (one["clip_frames"], one["sync_frames"], one["sync_segments"], one["sync_tokens"]) == (8, 25, 2, 16)
    long = sequence_lengths(23.7)
    assert long["num_samples"] == 1_045_170 and long["mel_frames"] == 2041 and long["latent_frames"] == 1021
    assert long["clip_frames"] == 189 and long["sync_frames"] == 592 and long["sync_segments"] == 73
    assert sequence_lengths(4.6)["sync_frames"] == 115  # 4.6 * 25 = 114.99999999999999 in floating point
    assert sequence_lengths(0.5)["sync_segments"] == 0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="duration"):
            sequence_lengths(bad)


def test_length_formulas_take_other_configs():
    # 29 frames at 25 fps: exact for the rational duration, a float gets the same count through its tolerance.
    assert num_frames_at_rate(Fraction(29, 25), 25) == 29 == num_frames_at_rate(1.16, 25)
    assert num_frames_at_rate(Fraction(29, 25) - Fraction(1, 10**9), 25) == 28
    assert num_sync_segments(15) == 0 and num_sync_segments(16) == 1 and num_sync_segments(200) == 24
    assert num_sync_segments(200, segment_frames=8, segment_stride=4) == 49
    # the window of n segments is the shortest track holding exactly n of them
    for n, frames, stride in ((1, 16, 8), (5, 16, 8), (24, 16, 8), (7, 8, 4)):
        window = sync_window_frames(n, frames, stride)
        assert num_sync_segments(window, frames, stride) == n and num_sync_segments(window - 1, frames, stride) == n - 1
    with pytest.raises(ValueError, match="num_segments"):
        sync_window_frames(0)
    # a VAE with hop 256 and 4x downsampling, 30 fps sync frames in 32-frame segments with stride 16 and 16 tokens
    other = sequence_lengths(
        2.0, 48000, n_fft=1024, hop_length=256, latent_downsample=4, clip_frame_rate=4, sync_frame_rate=30,
        sync_segment_frames=32, sync_segment_stride=16, sync_tokens_per_segment=16,
    )  # fmt: skip
    assert other == {
        "num_samples": 96000,
        "mel_frames": (96000 - 256) // 256 + 1,
        "latent_frames": math.ceil(375 / 4),
        "audio_tokens": math.ceil(96000 / 1024),
        "output_mel_frames": 375,
        "clip_frames": 8,
        "sync_frames": 60,
        "sync_segments": 2,
        "sync_tokens": 32,
    }
    mel = LogMelSpectrogram(48000, 1024, 256)
    assert mel.num_frames(96000) == other["mel_frames"] == mel(torch.zeros(1, 96000)).shape[-1]


def test_resample_keeps_frequency_and_length():
    sine = np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000).astype(np.float32)
    out = resample(sine, 48000, 44100)
    assert out.shape == (44100,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 44100 / len(out) - 1000) < 2
    tensor_out = resample(torch.from_numpy(sine)[None], 48000, 16000)
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.shape == (1, 16000)


def test_save_and_load_audio_round_trip(tmp_path):
    t = np.arange(24000) / 48000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    path = save_audio(tmp_path / "sub" / "tone.wav", stereo, 48000, subtype="FLOAT")
    native = load_audio(path, sample_rate=48000, mono=False)
    assert native.shape == (2, 24000)
    np.testing.assert_allclose(native.numpy(), stereo, atol=1e-6)
    mono = load_audio(path, sample_rate=44100)
    assert mono.shape == (1, 22050)
    assert abs(mono.abs().max().item() - 0.375) < 0.01
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")


def test_load_audio_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "tone.m4a")
    sample_rate, num_samples = 44100, 44100
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(num_samples) / sample_rate)).astype(np.float32)
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        for start in range(0, num_samples, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = load_audio(path, sample_rate=22050)
    assert audio.shape[0] == 1 and abs(audio.shape[1] - 22050) < 2048  # AAC adds priming samples
    assert 0.2 < audio.abs().max().item() < 0.4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_log_mel_on_gpu_matches_cpu():
    waveform = torch.randn(2, 30000) * 0.1
    transform = LogMelSpectrogram()
    cpu = transform(waveform)
    gpu = transform.to("cuda")(waveform.cuda())
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
