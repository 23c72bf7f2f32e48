"""Waveform discriminators of vocoder training (multi-period, multi-resolution) and their least-squares / feature
matching losses: output shapes, what each sub-discriminator can see, save/load, bad input, known-answer losses."""

import pytest
import torch

from foley_toolkit import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from foley_toolkit.training_utils import (
    feature_matching_loss,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
)

from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights

TINY_MPD = {"periods": [2, 3, 5, 7, 11], "channels": [4, 8, 8], "kernel_size": 5, "stride": 3}
TINY_MRD = {"resolutions": [[512, 128, 512], [256, 64, 256]], "channels": 4, "num_strided": 2}


def test_multi_period_discriminator_shapes_and_period_folding():
    mpd = MultiPeriodDiscriminator(**TINY_MPD)
    waveform = torch.randn(2, 1, 1001)
    out = mpd(waveform)
    assert len(out.logits) == len(out.features) == 5
    for period, logits, features in zip(TINY_MPD["periods"], out.logits, out.features):
        height = -(-1001 // period)  # padded to a multiple of the period
        for _ in range(2):  # two strided convs, the third keeps the height
            height = (height + 2 * 2 - 5) // 3 + 1
        assert len(features) == len(TINY_MPD["channels"]) + 1  # every conv + the logit map
        assert features[0].shape[:2] == (2, 4) and features[0].shape[-1] == period
        assert features[-2].shape == (2, 8, height, period)
        assert logits.shape == (2, height * period)
    # (kernel, 1) convolutions never mix columns: a sample only moves its own column (index % period).
    bumped = waveform.clone()
    bumped[..., 600] += 1.0
    with torch.no_grad():
        before, after = mpd(waveform).features[1][-1], mpd(bumped).features[1][-1]  # period 3
    changed = (after - before).abs().sum(dim=(0, 1, 2))
    assert changed[600 % 3] > 0 and changed[[c for c in range(3) if c != 600 % 3]].abs().max() == 0
    # (batch, samples) is accepted as (batch, 1, samples).
    torch.testing.assert_close(mpd(waveform[:, 0]).logits[0], out.logits[0], rtol=0, atol=0)


def test_multi_resolution_discriminator_shapes():
    mrd = MultiResolutionDiscriminator(**TINY_MRD)
    num_samples = 3000
    out = mrd(torch.randn(2, num_samples))
    assert len(out.logits) == len(out.features) == 2
    for (n_fft, hop, _), logits, features in zip(TINY_MRD["resolutions"], out.logits, out.features):
        bins = n_fft // 2 + 1
        frames = (num_samples + (n_fft - hop) - n_fft) // hop + 1
        assert features[0].shape == (2, 4, bins, frames)
        for _ in range(2):
            frames = (frames + 2 * 4 - 9) // 2 + 1
        assert features[-1].shape == (2, 1, bins, frames)
        assert len(features) == 2 + 2 + 1  # stem, strided convs, last conv, logit map
        assert logits.shape == (2, bins * frames)
    spectrogram = mrd.discriminators[0].spectrogram(torch.zeros(1, 1, num_samples))
    assert torch.isfinite(spectrogram).all()


def test_discriminators_save_load_round_trip(tmp_path):
    waveform = torch.randn(1, 2000)
    for cls, config in ((MultiPeriodDiscriminator, TINY_MPD), (MultiResolutionDiscriminator, TINY_MRD)):
        model = cls(**config)
        model.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert_same_weights(model, loaded)
        with torch.no_grad():
            for a, b in zip(model(waveform).logits, loaded(waveform).logits):
                torch.testing.assert_close(b, a, rtol=RELOAD_RTOL, atol=RELOAD_ATOL)


def test_discriminators_reject_bad_input_and_configs():
    mpd, mrd = MultiPeriodDiscriminator(**TINY_MPD), MultiResolutionDiscriminator(**TINY_MRD)
    for model in (mpd, mrd):
        with pytest.raises(ValueError, match="waveform"):
            model(torch.randn(2, 2, 1000))
        with pytest.raises(ValueError, match="waveform"):
            model(torch.randn(1000))
    with pytest.raises(ValueError, match="11"):
        mpd(torch.randn(1, 11))
    with pytest.raises(ValueError, match=f"{mrd.min_num_samples}"):
        mrd(torch.randn(1, mrd.min_num_samples - 1))
    with pytest.raises(ValueError, match="periods"):
        MultiPeriodDiscriminator(periods=[])
    with pytest.raises(ValueError, match="n_fft"):
        MultiResolutionDiscriminator(resolutions=[[512, 600, 512]])
    with pytest.raises(ValueError, match="resolution"):
        MultiResolutionDiscriminator(resolutions=[[512, 128]])


def test_least_squares_and_feature_matching_losses_known_answers():
    ones, zeros = [torch.ones(2, 5), torch.ones(3)], [torch.zeros(2, 5), torch.zeros(3)]
    # Perfect discriminator: real -> 1, fake -> 0.
    assert least_squares_discriminator_loss(ones, zeros).item() == 0.0
    # Fully fooled one, summed over the two sub-discriminators: (1 + 1) * 2.
    assert least_squares_discriminator_loss(zeros, ones).item() == pytest.approx(4.0)
    assert least_squares_generator_loss(ones).item() == 0.0
    assert least_squares_generator_loss([torch.full((4,), 0.5), torch.zeros(2)]).item() == pytest.approx(0.25 + 1.0)
    with pytest.raises(ValueError, match="fake_logits"):
        least_squares_discriminator_loss(ones, zeros[:1])
    real = [[torch.zeros(2, 3), torch.zeros(4)], [torch.zeros(5)]]
    fake = [[torch.ones(2, 3), torch.full((4,), 2.0)], [torch.full((5,), 3.0)]]
    assert feature_matching_loss(real, fake, reduction="sum").item() == pytest.approx(6.0)
    assert feature_matching_loss(real, fake).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="reduction"):
        feature_matching_loss(real, fake, reduction="max")
