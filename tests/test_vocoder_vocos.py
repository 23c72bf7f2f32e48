"""VocosVocoder: output contract (same as MMAudioVocoder), the inverse STFT's framing against the mel front end,
save/load, bad input, use inside KlingFoleyPipeline (save + reload through model_index.json), and that it learns
one clip from its mel within a few hundred steps."""

import json

import pytest
import torch
import torch.nn.functional as F

from foley_toolkit import KlingFoleyPipeline, LogMelSpectrogram, VocosVocoder, tiny_vocos_config, vocode
from foley_toolkit.models.vocoder import MMAudioVocoder, build_vocoder, tiny_vocoder_config

from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights, get_dummy_components

HOP = 512


def tiny_vocos(seed: int = 0) -> VocosVocoder:
    torch.manual_seed(seed)
    return VocosVocoder(**tiny_vocos_config()).eval()


def test_output_matches_the_mmaudio_vocoder_contract():
    vocos, bigvgan = tiny_vocos(), build_vocoder(tiny_vocoder_config()).eval()
    mel = torch.randn(3, 128, 7) - 5.0
    with torch.no_grad():
        out, reference = vocos(mel), bigvgan(mel)
    assert type(out) is type(reference)
    assert out.sample.shape == reference.sample.shape == (3, 1, 7 * HOP)
    assert out.sample.dtype == torch.float32
    assert out.sample.abs().max() <= 1.0 and out.sample.abs().max() > 0
    with torch.no_grad():
        (as_tuple,) = vocos(mel, return_dict=False)
    torch.testing.assert_close(as_tuple, out.sample, rtol=0, atol=0)
    assert vocos.hop_length == HOP and vocos.num_samples(7) == 7 * HOP
    # The project's `vocode` helper (stereo mels, trimming) works with it unchanged.
    stereo = vocode(vocos, torch.randn(2, 2, 128, 5) - 5.0, num_samples=2000)
    assert stereo.shape == (2, 2, 2000)


def test_frames_to_samples_follow_the_mel_front_end():
    """`frames` mel frames of `n` samples give back `frames * 512 >= n - 511` samples: the frame count the pipeline
    asks of every vocoder."""
    vocos, mel_transform = tiny_vocos(), LogMelSpectrogram()
    for num_samples in (HOP * 4, HOP * 4 + 300, 44_100):
        mel = mel_transform(torch.randn(1, num_samples) * 0.1)
        with torch.no_grad():
            waveform = vocos(mel).sample
        assert waveform.shape[-1] == mel.shape[-1] * HOP
        assert waveform.shape[-1] == (num_samples // HOP) * HOP


def test_inverse_stft_inverts_the_mel_front_ends_framing():
    """An STFT framed exactly like `LogMelSpectrogram` (reflect pad (n_fft - hop) / 2, center=False, Hann 2048,
    hop 512) comes back as the original samples: no half-hop shift, no edge loss."""
    vocos = tiny_vocos()
    waveform = torch.randn(2, HOP * 12, generator=torch.Generator().manual_seed(1)) * 0.3
    padding = (2048 - HOP) // 2
    padded = F.pad(waveform.unsqueeze(1), (padding, padding), mode="reflect").squeeze(1)
    spectrum = torch.stft(padded, 2048, HOP, 2048, torch.hann_window(2048), center=False, return_complex=True)
    assert spectrum.shape[-1] == LogMelSpectrogram()(waveform).shape[-1] == 12
    torch.testing.assert_close(vocos.inverse_stft(spectrum), waveform, rtol=0, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    vocos = tiny_vocos(seed=3)
    vocos.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "VocosVocoder"
    loaded = VocosVocoder.from_pretrained(tmp_path).eval()
    assert_same_weights(vocos, loaded)
    assert "window" not in loaded.state_dict()  # a constant, not a weight
    mel = torch.randn(2, 128, 6) - 5.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel).sample, vocos(mel).sample, rtol=RELOAD_RTOL, atol=RELOAD_ATOL)


def test_bad_input_and_bad_configs_raise():
    vocos = tiny_vocos()
    with pytest.raises(ValueError, match="mel"):
        vocos(torch.randn(1, 80, 10))
    with pytest.raises(ValueError, match="mel"):
        vocos(torch.randn(128, 10))
    with pytest.raises(ValueError, match="at least one frame"):
        vocos(torch.randn(1, 128, 0))
    with pytest.raises(ValueError, match="n_fft"):
        VocosVocoder(n_fft=512, hop_length=512)
    with pytest.raises(ValueError, match="n_fft"):
        VocosVocoder(n_fft=2047, hop_length=512)
    with pytest.raises(ValueError, match="kernel_size"):
        VocosVocoder(kernel_size=4)
    with pytest.raises(ValueError, match="num_layers"):
        VocosVocoder(num_layers=0)


def test_pipeline_with_vocos_saves_and_reloads(tmp_path):
    components = get_dummy_components()
    components["vocoder"] = tiny_vocos()
    pipe = KlingFoleyPipeline(**components)
    pipe.save_pretrained(tmp_path)
    entry = json.loads((tmp_path / "model_index.json").read_text())["vocoder"]
    assert entry == ["foley_toolkit.models.vocoder_vocos", "VocosVocoder"]
    reloaded = KlingFoleyPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.vocoder, VocosVocoder) and not isinstance(reloaded.vocoder, MMAudioVocoder)
    assert_same_weights(pipe.vocoder, reloaded.vocoder)
    mel = torch.randn(1, 2, 128, 9) - 5.0
    waveform = reloaded.mel_to_waveform(mel, num_samples=9 * HOP - 100)
    assert waveform.shape == (1, 2, 9 * HOP - 100)


def test_overfits_one_clip_within_a_few_hundred_steps():
    """A tiny Vocos learns one 0.5 s clip (a decaying 440 Hz tone plus a noise burst) from its mel: the mel L1 falls
    below 0.35 (from ~1 at init: the mel magnitude prior already gives the envelope, a plain head starts at ~5) in
    200 steps, and the level comes out right (peak within 3 dB)."""
    torch.manual_seed(0)
    sample_rate, num_samples = 44_100, HOP * 43
    t = torch.arange(num_samples) / sample_rate
    clip = 0.4 * torch.sin(2 * torch.pi * 440 * t) * torch.exp(-4 * t)
    clip[8000:12000] += 0.2 * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    clip = clip.unsqueeze(0)
    mel_transform = LogMelSpectrogram()
    target = mel_transform(clip)
    vocos = VocosVocoder(**tiny_vocos_config())
    optimizer = torch.optim.AdamW(vocos.parameters(), lr=1e-2, betas=(0.8, 0.99))
    losses = []
    for _ in range(200):
        waveform = vocos(target).sample[:, 0]
        loss = F.l1_loss(mel_transform(waveform), target)
        optimizer.zero_grad()
        (45 * loss).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8, losses[0]  # random phases: far from learned at init
    assert min(losses[-10:]) < 0.35, losses[-10:]
    with torch.no_grad():
        output = vocos(target).sample[0, 0]
    peak_db = 20 * torch.log10(output.abs().max() / clip.abs().max())
    assert abs(peak_db.item()) < 3.0, peak_db


def test_load_vocoder_picks_the_saved_class(tmp_path):
    from foley_toolkit.models.vocoder import load_vocoder, vocoder_hop_length

    tiny_vocos().save_pretrained(tmp_path / "vocos")
    build_vocoder(tiny_vocoder_config()).save_pretrained(tmp_path / "bigvgan")
    vocos, bigvgan = load_vocoder(tmp_path / "vocos"), load_vocoder(tmp_path, subfolder="bigvgan")
    assert type(vocos) is VocosVocoder and type(bigvgan) is MMAudioVocoder
    assert vocoder_hop_length(vocos) == vocoder_hop_length(bigvgan) == HOP
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "MelVAE"}))
    with pytest.raises(ValueError, match="MelVAE"):
        load_vocoder(tmp_path / "other")


def test_magnitude_ceiling_leaves_a_full_scale_tone_uncapped():
    """The predicted magnitude is clamped for stability; the default ceiling must sit above the STFT magnitude of a
    full-scale sine (2048 / 4 = 512 with the Hann window), else loud tones could never come out at their level."""
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(HOP * 8) / 44_100)
    spectrum = torch.stft(tone, 2048, HOP, 2048, torch.hann_window(2048), center=False, return_complex=True)
    assert 450 < spectrum.abs().max() < VocosVocoder().config.max_magnitude


def test_mel_magnitude_prior_gives_the_input_level_before_training():
    """With `mel_magnitude_prior` an untrained Vocos already follows the input's level: noise 40 dB quieter comes
    out 40 dB quieter, near the input's log-mel. Without it the level is set by the random head (LayerNorm removes
    the input's), the failure that left sparse Foley clips as a constant quiet bed."""
    mel_transform = LogMelSpectrogram()
    noise = torch.randn(1, 44_100 // 2, generator=torch.Generator().manual_seed(0))
    for prior in (True, False):
        torch.manual_seed(0)
        vocos = VocosVocoder(**{**tiny_vocos_config(), "mel_magnitude_prior": prior}).eval()
        rms, mel_error = [], []
        for amplitude in (0.3, 0.003):
            mel = mel_transform(noise * amplitude)
            with torch.no_grad():
                out = vocos(mel).sample[:, 0]
            rms.append(out.square().mean().sqrt().item())
            mel_error.append((mel_transform(out) - mel).mean().abs().item())
        if prior:
            assert rms[0] / rms[1] == pytest.approx(100.0, rel=0.05)
            assert max(mel_error) < 1.5  # natural-log units: within ~13 dB before any training
        else:
            assert not 50 < rms[0] / rms[1] < 200
    assert vocos.config.mel_magnitude_prior is False
    state = VocosVocoder(**{**tiny_vocos_config(), "mel_magnitude_prior": True}).state_dict()
    assert "mel_inverse" not in state  # a constant, rebuilt from the config
