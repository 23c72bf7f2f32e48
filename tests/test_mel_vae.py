"""MelVAE (shapes, KL, normalisation, save/load, chunked decoding, overfitting), the mel discriminator and the codec
training losses of `foley_toolkit.training_utils` (paper eq. 2-7, Algorithm 2)."""

import math

import pytest
import torch

from foley_toolkit import MelDiscriminator, MelVAE, sequence_lengths
from foley_toolkit.models.autoencoders.autoencoder_mel_vae import DiagonalGaussianDistribution1D
from foley_toolkit.training_utils import (
    CodecLossWeights,
    codec_loss_weights,
    feature_matching_loss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    latent_statistics,
    margin_kl_loss,
    mel_mse_loss,
    r1_gradient_penalty,
    set_codec_encoder_trainable,
)
from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights


def tiny_vae(**overrides) -> MelVAE:
    config = dict(latent_channels=8, block_out_channels=(32, 48), layers_per_block=1, kernel_size=3)
    config.update(overrides)
    return MelVAE(**config).eval()


def test_default_config_is_the_papers_32_conv_encoder():
    with torch.device("meta"):
        vae = MelVAE()
    encoder_convs = [m for m in [*vae.encoder.modules(), vae.quant_conv] if isinstance(m, torch.nn.Conv1d)]
    decoder_convs = [
        m
        for m in [vae.post_quant_conv, *vae.decoder.modules()]
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))
    ]
    assert len(encoder_convs) == 32 and len(decoder_convs) == 32
    assert vae.config.latent_channels == 40 and vae.config.mel_bins == 128
    assert vae.samples_per_latent_frame == 1024


@pytest.mark.parametrize("duration", [1.0, 8.0, 23.7])
def test_shapes_for_durations(duration):
    vae = tiny_vae()
    lengths = sequence_lengths(duration)
    waveform = torch.randn(2, lengths["num_samples"]) * 0.1
    with torch.no_grad():
        posterior = vae.encode(waveform).latent_dist
        assert isinstance(posterior, DiagonalGaussianDistribution1D)
        assert posterior.mean.shape == (2, 8, lengths["latent_frames"])
        mel = vae.decode(posterior.mode()).sample
        assert mel.shape == (2, 128, 2 * lengths["latent_frames"])
        assert vae(waveform).sample.shape == (2, 128, lengths["mel_frames"])
    # (batch, 1, samples) and the mel itself encode to the same posterior.
    with torch.no_grad():
        mel_in = vae.mel_spectrogram(waveform[:1])
        assert mel_in.shape == (1, 128, lengths["mel_frames"])
        a = vae.encode(waveform[:1, None]).latent_dist.mean
        b = vae.encode(mel_in).latent_dist.mean
    # Same module, but the mel arrives in a different buffer: equal within float rounding, not bit for bit.
    torch.testing.assert_close(a, b, atol=RELOAD_ATOL, rtol=RELOAD_RTOL)


def test_input_validation():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="waveform"):
        vae.encode(torch.zeros(1, 64, 10))
    with pytest.raises(ValueError, match="latent_frames"):
        vae.decode(torch.zeros(1, 7, 10))
    with pytest.raises(ValueError, match="latents_mean"):
        MelVAE(latent_channels=4, latents_mean=[0.0] * 3, latents_std=[1.0] * 3)
    with pytest.raises(ValueError, match="odd"):
        MelVAE(kernel_size=4)


def test_kl_is_correct_for_3d_latents():
    generator = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 2 * 5, 7, generator=generator)
    posterior = DiagonalGaussianDistribution1D(moments)
    mean, logvar = moments[:, :5], moments[:, 5:]
    expected = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2))
    assert torch.allclose(posterior.kl(), expected, atol=1e-5)
    other = DiagonalGaussianDistribution1D(torch.randn(3, 10, 7, generator=generator))
    assert posterior.kl(other).shape == (3,) and (posterior.kl(other) > 0).all()
    assert torch.allclose(posterior.kl(posterior), torch.zeros(3), atol=1e-5)
    assert posterior.nll(posterior.mean).shape == (3,)
    # Margin KL (paper eq. 2): max(0, KL - delta), KL per latent element by default.
    per_element = expected / 35
    assert torch.allclose(margin_kl_loss(posterior, margin=0.0), per_element.mean(), atol=1e-6)
    delta = float(per_element.median())
    assert torch.allclose(
        margin_kl_loss(posterior, margin=delta), (per_element - delta).clamp_min(0).mean(), atol=1e-6
    )
    assert margin_kl_loss(posterior, margin=float(per_element.max()) + 1) == 0
    assert torch.allclose(margin_kl_loss(expected, margin=1.0, per_element=False), (expected - 1).clamp_min(0).mean())


def test_latent_normalisation_and_save_load_round_trip(tmp_path):
    vae = tiny_vae(scaling_factor=0.5)
    latents = torch.randn(2, 8, 20) * 3 + 1
    mean, std = latent_statistics([latents[:1], latents[1:]])
    assert torch.allclose(
        torch.tensor(mean, dtype=torch.float64), latents.transpose(0, 1).reshape(8, -1).mean(1).double(), atol=1e-5
    )
    vae.set_latent_statistics(mean, std)
    normalized = vae.normalize_latents(latents)
    # Standardised per channel, then scaled by 0.5.
    assert torch.allclose(
        normalized.transpose(0, 1).reshape(8, -1).std(1, unbiased=False), torch.full((8,), 0.5), atol=1e-4
    )
    assert torch.allclose(vae.denormalize_latents(normalized), latents, atol=1e-5)

    vae.save_pretrained(tmp_path / "vae")
    loaded = MelVAE.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config.latents_mean == pytest.approx(mean) and loaded.config.scaling_factor == 0.5
    waveform = torch.randn(1, 20000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(waveform).sample, vae(waveform).sample, atol=RELOAD_ATOL, rtol=RELOAD_RTOL)
    assert_same_weights(loaded, vae)
    assert torch.allclose(loaded.normalize_latents(latents), normalized)
    # Without statistics only the scaling factor applies.
    assert torch.allclose(tiny_vae(scaling_factor=2.0).normalize_latents(latents), 2 * latents)


def test_chunked_decode_and_encode_equal_full():
    vae = tiny_vae(layers_per_block=2)
    latents = torch.randn(2, 8, 150)
    with torch.no_grad():
        full = vae.decode(latents).sample
        chunked = vae.decode(latents, chunk_size=16).sample
        assert chunked.shape == full.shape == (2, 128, 300)
        # The receptive-radius overlap makes the chunks exact everywhere, borders included.
        assert (chunked - full).abs().max() < 1e-4
        # Without overlap the borders differ: the overlap is what makes it exact.
        vae.enable_tiling(chunk_size=16, overlap=0)
        assert (vae.decode(latents).sample - full).abs().max() > 1e-3
        vae.enable_tiling(chunk_size=16)
        assert (vae.decode(latents).sample - full).abs().max() < 1e-4
        mel = torch.randn(2, 128, 301) * 2 - 5  # odd frame count
        full_moments = vae.encode(mel, chunk_size=10**6).latent_dist.parameters
        tiled_moments = vae.encode(mel).latent_dist.parameters
        assert tiled_moments.shape == full_moments.shape == (2, 16, 151)
        assert (tiled_moments - full_moments).abs().max() < 1e-4
        vae.disable_tiling()


def test_gradient_checkpointing_gives_the_same_gradients():
    vae = tiny_vae().train()
    mel = torch.randn(1, 128, 40) - 5

    def gradients():
        vae.zero_grad()
        posterior = vae.encode(mel).latent_dist
        mel_mse_loss(vae.decode(posterior.mode()).sample, mel).backward()
        return torch.cat([p.grad.flatten() for p in vae.parameters()])

    reference = gradients()
    vae.enable_gradient_checkpointing()
    assert vae.is_gradient_checkpointing
    assert torch.allclose(gradients(), reference, atol=1e-6)


def test_tiny_vae_overfits_one_clip():
    torch.manual_seed(0)
    sample_rate, num_samples = 44100, 22050
    t = torch.arange(num_samples) / sample_rate
    clip = 0.3 * torch.sin(2 * math.pi * 440 * t) * torch.exp(-3 * t) + 0.2 * torch.sin(
        2 * math.pi * (200 + 1000 * t) * t
    )
    clip = clip + 0.05 * torch.randn(num_samples) * (t > 0.25)
    vae = tiny_vae().train()
    mel = vae.mel_spectrogram(clip[None])
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(250):
        reconstruction = vae.decode(vae.encode(mel).latent_dist.mode()).sample
        loss = mel_mse_loss(reconstruction, mel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10
    assert losses[-1] < 0.25  # log-mel MSE, i.e. a reconstruction error well under one nat


def test_mel_mse_crops_the_even_decoder_output():
    target = torch.randn(2, 128, 9)
    reconstruction = torch.cat([target, torch.full((2, 128, 1), 100.0)], dim=-1)
    assert mel_mse_loss(reconstruction, target) == 0
    with pytest.raises(ValueError):
        mel_mse_loss(target[..., :5], target)


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, CodecLossWeights(stage=1, mse=1.0, kl=0.0, gan=0.0, freeze_encoder=False)),
        (100, CodecLossWeights(stage=1, mse=1.0, kl=0.0, gan=0.0, freeze_encoder=False)),
        (101, CodecLossWeights(stage=2, mse=1.0, kl=0.5 * 1 / 200, gan=0.0, freeze_encoder=False)),
        (250, CodecLossWeights(stage=2, mse=1.0, kl=0.5 * 150 / 200, gan=0.0, freeze_encoder=False)),
        (300, CodecLossWeights(stage=2, mse=1.0, kl=0.5, gan=0.0, freeze_encoder=False)),
        (301, CodecLossWeights(stage=3, mse=1.0, kl=0.5, gan=0.1 * 1 / 700, freeze_encoder=False)),
        (650, CodecLossWeights(stage=3, mse=1.0, kl=0.5, gan=0.1 * 350 / 700, freeze_encoder=False)),
        (1000, CodecLossWeights(stage=3, mse=1.0, kl=0.5, gan=0.1, freeze_encoder=False)),
        (1001, CodecLossWeights(stage=4, mse=1.0, kl=0.5, gan=0.1, freeze_encoder=True)),
        (10**6, CodecLossWeights(stage=4, mse=1.0, kl=0.5, gan=0.1, freeze_encoder=True)),
    ],
)
def test_algorithm_2_weights(step, expected):
    weights = codec_loss_weights(step, stage1_end=100, stage2_end=300, stage3_end=1000, kl_upper=0.5, gan_upper=0.1)
    assert weights.stage == expected.stage and weights.freeze_encoder == expected.freeze_encoder
    assert weights.kl == pytest.approx(expected.kl, abs=1e-12) and weights.gan == pytest.approx(
        expected.gan, abs=1e-12
    )
    assert weights.mse == 1.0


def test_algorithm_2_validation_and_freeze():
    with pytest.raises(ValueError, match="stage1_end < stage2_end < stage3_end"):
        codec_loss_weights(5, 10, 10, 20, 1.0, 1.0)
    with pytest.raises(ValueError, match="step"):
        codec_loss_weights(-1, 1, 2, 3, 1.0, 1.0)
    vae = tiny_vae()
    set_codec_encoder_trainable(vae, False)
    assert not any(p.requires_grad for p in [*vae.encoder.parameters(), *vae.quant_conv.parameters()])
    assert all(p.requires_grad for p in [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()])
    set_codec_encoder_trainable(vae, True)
    assert all(p.requires_grad for p in vae.parameters())


def test_discriminator_and_gan_losses():
    discriminator = MelDiscriminator(num_scales=2, channels=(4, 8))
    mel = torch.randn(2, 128, 37) - 5
    output = discriminator(mel)
    assert len(output.logits) == 2 and len(output.features) == 2
    assert output.logits[0].shape == (2, 1, 64, 19) and output.logits[1].shape == (2, 1, 64, 10)
    with pytest.raises(ValueError, match="mel"):
        discriminator(torch.randn(2, 64, 10))

    # Hinge losses (paper eq. 4, 6) on known logits.
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0)
    assert hinge_discriminator_loss(output, output).item() == pytest.approx(
        sum((torch.relu(1 - lg).mean() + torch.relu(1 + lg).mean()).item() for lg in output.logits) / 2,
        rel=1e-5,
    )
    assert feature_matching_loss(output, output).item() == 0

    # R1 (eq. 7) on a linear "discriminator" D(x) = sum(w * x): grad = w, penalty = |w|^2.
    weight = torch.randn(1, 128, 5)
    x = torch.randn(3, 128, 5, requires_grad=True)
    logits = (weight * x).sum(dim=(1, 2))
    assert r1_gradient_penalty(logits, x).item() == pytest.approx(weight.pow(2).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_gradient_penalty(logits, torch.randn(3, 128, 5))
    # R1 through the real discriminator is differentiable (it is a loss term).
    real_mel = mel.clone().requires_grad_(True)
    penalty = r1_gradient_penalty(discriminator(real_mel), real_mel)
    penalty.backward()
    assert penalty.item() > 0 and discriminator.scales[0].convs[0].weight.grad is not None
