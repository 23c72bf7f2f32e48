"""PaSST extractor (FD_PaSST, KL_PaSST): the front end against independent references (Kaldi's mel-bank formula,
a numpy STFT), av-benchmark's 32 kHz / 10 s input, the adapter's outputs, and `foley-toolkit evaluate` wiring.

hear21passt's network imports timm, which imports torchvision: where that stack is importable the real `PaSST` class
(tiny config) runs through the extractor; elsewhere that test skips and the adapter is checked with a recording
network that has hear21passt's contract ``(batch, 1, 128, frames) -> (logits, features)``.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from foley_toolkit.audio_utils import save_audio
from foley_toolkit.evaluation.distribution_metrics import frechet_distance, kl_divergence
from foley_toolkit.evaluation.extractors import passt as passt_module
from foley_toolkit.evaluation.extractors.passt import PaSSTExtractor, kaldi_mel_filters, passt_log_mel


def _kaldi_mel_banks(num_bins, window_length_padded, sample_freq, low_freq, high_freq):
    """Kaldi's `MelBanks` (mel-computations.cc) without VTLN, written from its definition."""

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    num_fft_bins = window_length_padded // 2
    fft_bin_width = sample_freq / window_length_padded
    mel_low, mel_high = mel(low_freq), mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    banks = np.zeros((num_bins, num_fft_bins))
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for i in range(num_fft_bins):
            m = mel(fft_bin_width * i)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return np.pad(banks, ((0, 0), (0, 1)))  # hear21passt pads the Nyquist column with zeros


def _numpy_log_mel(wave: np.ndarray) -> np.ndarray:
    """AugmentMelSTFT (eval) in numpy: pre-emphasis, reflect-padded frames of 1024 with a symmetric hann(800) centred
    in them, hop 320, power spectrum, Kaldi banks (0-15000 Hz), (log(x + 1e-5) + 4.5) / 5."""
    x = wave[1:] - 0.97 * wave[:-1]
    x = np.pad(x, (512, 512), mode="reflect")
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)
    frames = np.stack([x[i : i + 1024] * window for i in range(0, len(x) - 1024 + 1, 320)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = _kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0) @ power.T
    return (np.log(mel + 1e-5) + 4.5) / 5.0


def test_mel_filters_are_kaldis():
    ours = kaldi_mel_filters(128, 1024, 32000, 0.0, 15000.0).double().numpy()
    ref = _kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert ours.shape == ref.shape == (128, 513)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert np.all(ours[:, -1] == 0) and ours.max() > 0.99  # triangles peak near 1, Nyquist column empty


def test_log_mel_matches_numpy_reference():
    wave = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    ours = passt_log_mel(torch.from_numpy(wave)[None])[0].double().numpy()
    ref = _numpy_log_mel(wave.astype(np.float64))
    assert ours.shape == ref.shape == (128, 100)  # (32000 - 1) // 320 + 1 frames
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    assert ours.std() > 0.1


class RecordingPaSST(nn.Module):
    """hear21passt's network contract: (batch, 1, 128, frames) -> (logits (batch, 527), features (batch, 768)). Its
    outputs are fixed projections of the spectrogram, so they depend on the input; it records what it saw."""

    num_classes, num_features = 527, 768

    def __init__(self):
        super().__init__()
        self.to_features = nn.Linear(128, 768)
        self.head = nn.Linear(768, 527)
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        features = self.to_features(x.mean(dim=-1)[:, 0])
        return self.head(features), features


def test_adapter_pads_to_ten_seconds_and_splits_the_outputs():
    torch.manual_seed(0)
    net = RecordingPaSST()
    extractor = PaSSTExtractor(net)
    t = np.arange(int(9.0 * 48000)) / 48000  # 9 s at 48 kHz: resampled to 32 kHz, cropped to 8 s, padded to 10 s
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05).astype(np.float32)
    out = extractor.extract(audio, 48000)
    seen = net.seen[-1]
    assert seen.shape == (1, 1, 128, 1000)  # (320000 - 1) // 320 + 1 frames
    prepared = extractor.prepare(audio, 48000)
    assert prepared.shape == (1, 256000) and abs(float(prepared.mean())) < 1e-6  # 8 s at 32 kHz, DC removed
    padded = torch.cat([prepared, torch.zeros(1, 64000)], dim=1)
    torch.testing.assert_close(seen[:, 0], passt_log_mel(padded))
    # The last 2 s are silence: after pre-emphasis the mel is log(1e-5) there, as in hear21passt.
    assert torch.allclose(seen[0, 0, :, -10:], torch.full((128, 10), (np.log(1e-5) + 4.5) / 5), atol=1e-4)
    logits, features = net(seen)
    torch.testing.assert_close(out["embedding"], features[0])
    torch.testing.assert_close(out["logits"], logits[0])
    torch.testing.assert_close(extractor.classify(audio, 48000), torch.sigmoid(logits[0]))
    assert extractor.embedding_dim == 768 and extractor.num_classes == 527
    with pytest.raises(ValueError, match="max_seconds"):
        PaSSTExtractor(net, max_seconds=12.0)


def test_real_passt_class_through_the_extractor():
    passt = pytest.importorskip("hear21passt.models.passt", reason="hear21passt / timm / torchvision not importable")
    torch.manual_seed(0)
    net = passt.PaSST(img_size=(128, 998), patch_size=16, stride=(10, 10), embed_dim=32, depth=1, num_heads=4,
                      distilled=True, num_classes=527).eval()  # fmt: skip
    extractor = PaSSTExtractor(net)
    audio = torch.randn(32000 * 2) * 0.1
    out = extractor.extract(audio, 32000)
    with torch.no_grad():
        logits, features = net(extractor.model_input(extractor.prepare(audio, 32000)))
    torch.testing.assert_close(out["embedding"], features[0])
    torch.testing.assert_close(out["logits"], logits[0])


def test_checkpoint_loading_refuses_other_files(tmp_path):
    torch.save({"fc_audioset.weight": torch.zeros(2, 2)}, tmp_path / "not_passt.pt")
    with pytest.raises(ValueError, match="not a PaSST checkpoint"):
        passt_module.load_passt_checkpoint(tmp_path / "not_passt.pt")
    with pytest.raises(FileNotFoundError):
        passt_module.load_passt_checkpoint(tmp_path / "missing.pt")


def test_evaluate_cli_fd_and_kl_passt(tmp_path, capsys, monkeypatch):
    """`--passt-weights`: FD_PaSST and KL_PaSST in Table 1 order, equal to the metrics of the extractor's outputs.
    The network is the recording stand-in (the real one needs hear21passt's stack), built from the given path."""
    from foley_toolkit.cli import main

    torch.manual_seed(0)
    net = RecordingPaSST()
    weights = tmp_path / "passt.pt"
    torch.save(net.state_dict(), weights)

    def from_checkpoint(path, **kwargs):
        model = RecordingPaSST()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model

    monkeypatch.setattr(passt_module, "passt_from_checkpoint", from_checkpoint)
    rng = np.random.default_rng(0)
    for folder in ("pred", "ref"):
        for index in range(3):
            audio = rng.standard_normal(16000).astype(np.float32) * (0.05 + 0.1 * index)
            save_audio(tmp_path / folder / f"clip{index}.wav", audio, 16000)
    out = tmp_path / "passt.json"
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--metrics", "kl_passt"]
    argv += ["fd_passt", "--passt-weights", str(weights), "--json", str(out), "--no-progress", "--no-cache"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["FD_PaSST", "KL_PaSST"]
    report = json.loads(out.read_text())
    extractor = PaSSTExtractor(net)
    outs = {f: [extractor.extract_prepared(extractor.load(tmp_path / f / f"clip{i}.wav")) for i in range(3)]
            for f in ("pred", "ref")}  # fmt: skip
    stack = lambda f, key: torch.stack([o[key] for o in outs[f]])  # noqa: E731
    assert report["metrics"]["FD_PaSST"] == pytest.approx(frechet_distance(stack("pred", "embedding"), stack("ref", "embedding")), rel=1e-4)
    assert report["metrics"]["KL_PaSST"] == pytest.approx(kl_divergence(stack("pred", "logits"), stack("ref", "logits")), rel=1e-4)
    assert report["metrics"]["KL_PaSST"] > 0 and report["extractors"]["passt"]["sample_rate"] == 32000
    # Without weights: the error names the flag and where the checkpoint comes from.
    assert main(argv[:-6] + ["--no-progress"]) == 2
    assert "--passt-weights" in capsys.readouterr().err
