"""Mono2Stereo: identity at initialisation, shapes/errors, save/load, learning a pan direction from video features."""

import math

import pytest
import torch

from foley_toolkit import LogMelSpectrogram, Mono2Stereo
from foley_toolkit.models.mono2stereo import Mono2StereoOutput, stereo_mel_targets
from foley_toolkit.training_utils import mono2stereo_loss
from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights

VIDEO_DIM = 8
NUM_SAMPLES = 22050  # 0.5 s
VIDEO_FRAMES = 4  # 8 fps


def tiny_mono2stereo(**overrides) -> Mono2Stereo:
    config = dict(hidden_channels=32, num_layers=2, kernel_size=3, video_feature_dim=VIDEO_DIM)
    config.update(overrides)
    return Mono2Stereo(**config)


def test_identity_at_initialisation():
    model = tiny_mono2stereo().eval()
    mono = torch.randn(2, 128, 43) - 5
    for features in (None, torch.randn(2, VIDEO_FRAMES, VIDEO_DIM)):
        out = model(mono, features)
        assert isinstance(out, Mono2StereoOutput)
        assert torch.equal(out.left_mel, mono) and torch.equal(out.right_mel, mono)
    audio_only = tiny_mono2stereo(video_feature_dim=None)
    left, right = audio_only(mono, return_dict=False)
    assert torch.equal(left, mono) and torch.equal(right, mono)
    with torch.device("meta"):
        full = Mono2Stereo()
    assert full.config.mel_bins == 128 and full.config.video_feature_dim == 1280


def test_input_validation_and_save_load(tmp_path):
    model = tiny_mono2stereo()
    with pytest.raises(ValueError, match="mono_mel"):
        model(torch.randn(2, 64, 10))
    with pytest.raises(ValueError, match="video_feature_dim"):
        model(torch.randn(2, 128, 10), torch.randn(2, 3, VIDEO_DIM + 1))
    with pytest.raises(ValueError, match="video_feature_dim=None"):
        tiny_mono2stereo(video_feature_dim=None)(torch.randn(1, 128, 10), torch.randn(1, 3, VIDEO_DIM))
    torch.nn.init.normal_(model.ratio_out.weight, std=0.1)
    model.save_pretrained(tmp_path / "m2s")
    loaded = Mono2Stereo.from_pretrained(tmp_path / "m2s")
    mono, features = torch.randn(1, 128, 20) - 5, torch.randn(1, 3, VIDEO_DIM)
    assert_same_weights(loaded, model)
    torch.testing.assert_close(
        loaded(mono, features).left_mel, model(mono, features).left_mel, atol=RELOAD_ATOL, rtol=RELOAD_RTOL
    )
    # drop_video selects the null embedding per sample.
    both = model(mono.repeat(2, 1, 1), features.repeat(2, 1, 1), drop_video=torch.tensor([False, True]))
    assert torch.allclose(both.left_mel[0], model(mono, features).left_mel[0], atol=1e-5)
    assert torch.allclose(both.left_mel[1], model(mono, None).left_mel[0], atol=1e-5)


def panned_noise(count: int, direction: torch.Tensor, generator: torch.Generator):
    """Noise that moves from pan `start` to `-start` (-1 = hard left, 1 = hard right, constant-power law), and
    video features that encode the pan at 8 fps along a fixed direction, plus noise."""
    noise = torch.randn(count, NUM_SAMPLES, generator=generator) * 0.1
    start = torch.rand(count, generator=generator) * 1.6 - 0.8
    start = torch.where(start.abs() < 0.2, torch.sign(start) * 0.2 + start, start)  # keep away from centre
    pan = start[:, None] * (1 - 2 * torch.linspace(0, 1, NUM_SAMPLES))
    angle = (pan + 1) * math.pi / 4
    stereo = torch.stack([noise * torch.cos(angle), noise * torch.sin(angle)], dim=1)
    video_pan = start[:, None] * (1 - 2 * torch.linspace(0, 1, VIDEO_FRAMES))
    features = video_pan[..., None] * direction + 0.1 * torch.randn(
        count, VIDEO_FRAMES, VIDEO_DIM, generator=generator
    )
    return stereo, features, start


def test_learns_pan_direction_from_video_features():
    torch.manual_seed(0)
    mel_transform = LogMelSpectrogram()
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(VIDEO_DIM, generator=generator)
    stereo, features, _ = panned_noise(48, direction, generator)
    mono, left, right = stereo_mel_targets(stereo, mel_transform)
    model = tiny_mono2stereo()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(120):
        index = torch.randint(0, 48, (8,), generator=generator)
        out = model(mono[index], features[index])
        loss = mono2stereo_loss(out.left_mel, out.right_mel, left[index], right[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # Held-out sources: left-to-right movers start louder on the left and end louder on the right, and vice versa.
    test_stereo, test_features, test_start = panned_noise(16, direction, torch.Generator().manual_seed(123))
    test_mono, _, _ = stereo_mel_targets(test_stereo, mel_transform)
    with torch.no_grad():
        out = model(test_mono, test_features)
    quarter = test_mono.shape[-1] // 4

    def left_right_log_energy_ratio(frames: slice) -> torch.Tensor:
        left_energy = out.left_mel[..., frames].exp().pow(2).sum(dim=(1, 2))
        right_energy = out.right_mel[..., frames].exp().pow(2).sum(dim=(1, 2))
        return (left_energy / right_energy).log()

    beginning, end = left_right_log_energy_ratio(slice(0, quarter)), left_right_log_energy_ratio(slice(-quarter, None))
    starts_left = test_start < 0
    assert torch.equal(beginning > 0, starts_left)
    assert torch.equal(end > 0, ~starts_left)
    # Without video the module has no way to know the direction: it stays near centre.
    with torch.no_grad():
        blind = model(test_mono, None)
    assert (blind.left_mel - blind.right_mel).abs().mean() < (out.left_mel - out.right_mel).abs().mean()
