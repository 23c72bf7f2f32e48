# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""Discriminators: the multi-scale mel-spectrogram discriminator of MelVAE training (Kling-Foley paper section 4.5,
eq. 4-7), and the multi-period (MPD) and multi-resolution (MRD) waveform discriminators of vocoder training.

The mel is treated as a one-channel image `(batch, 1, mel_bins, frames)`. Each scale sees it average-pooled in time
by `2**scale` and returns a patch map of logits (PatchGAN): fine scales judge texture, coarse ones longer structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput

from .adapters import AttentionFreeModelMixin


@dataclass
class MelDiscriminatorOutput(BaseOutput):
    r"""
    Args:
        logits (`list[torch.Tensor]`): One patch-logit map `(batch, 1, bands', frames')` per scale.
        features (`list[list[torch.Tensor]]`): Hidden activations per scale (for feature-matching losses).
    """

    logits: list
    features: list


def _leaky_conv_stack(
    convs: nn.ModuleList, hidden_states: torch.Tensor, negative_slope: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run `convs` with a LeakyReLU after each; return the last activation and every activation (for feature
    matching)."""
    features = []
    for conv in convs:
        hidden_states = F.leaky_relu(conv(hidden_states), negative_slope)
        features.append(hidden_states)
    return hidden_states, features


class MelDiscriminatorScale(nn.Module):
    """2D conv stack: a stride-1 stem, strided convs (2x in bands and time), a stride-1 conv, a 1-channel head."""

    def __init__(self, channels: tuple[int, ...], kernel_size: tuple[int, int], negative_slope: float) -> None:
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        layers = [nn.Conv2d(1, channels[0], kernel_size, padding=padding)]
        for in_channels, out_channels in zip(channels[:-1], channels[1:]):
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=padding))
        layers.append(nn.Conv2d(channels[-1], channels[-1], kernel_size, padding=padding))
        self.convs = nn.ModuleList(layers)
        self.conv_out = nn.Conv2d(channels[-1], 1, (3, 3), padding=(1, 1))
        self.negative_slope = negative_slope

    def forward(self, mel_image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden_states, features = _leaky_conv_stack(self.convs, mel_image, self.negative_slope)
        return self.conv_out(hidden_states), features


class MelDiscriminator(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    Multi-scale PatchGAN discriminator over log-mel spectrograms.

    Args:
        mel_bins (`int`, defaults to 128): Mel bands.
        num_scales (`int`, defaults to 3): Temporal scales (average-pooled by 1, 2, 4, ...).
        channels (`tuple[int, ...]`, defaults to `(32, 64, 128, 256)`): Widths of the conv stack of every scale
            (`len(channels) - 1` strided convolutions).
        kernel_size (`tuple[int, int]`, defaults to `(3, 9)`): (bands, frames) kernel.
        negative_slope (`float`, defaults to 0.2): LeakyReLU slope.
        mel_mean (`float`, defaults to -5.0), mel_std (`float`, defaults to 3.0): Input normalisation (same as MelVAE).

    The model has no attention layer: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    @register_to_config
    def __init__(
        self,
        mel_bins: int = 128,
        num_scales: int = 3,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        kernel_size: tuple[int, int] = (3, 9),
        negative_slope: float = 0.2,
        mel_mean: float = -5.0,
        mel_std: float = 3.0,
    ) -> None:
        super().__init__()
        if num_scales < 1 or len(channels) < 1:
            raise ValueError(f"`num_scales` and `channels` must be non-empty, got {num_scales} and {channels}.")
        self.scales = nn.ModuleList(
            [MelDiscriminatorScale(tuple(channels), tuple(kernel_size), negative_slope) for _ in range(num_scales)]
        )

    def forward(self, mel: torch.Tensor, return_dict: bool = True) -> MelDiscriminatorOutput | tuple:
        r"""
        Args:
            mel (`torch.Tensor` of shape `(batch, mel_bins, frames)`): Real or reconstructed log-mel.

        Returns:
            `MelDiscriminatorOutput(logits, features)`: one logit map per scale (higher = more real).
        """
        if mel.ndim != 3 or mel.shape[1] != self.config.mel_bins:
            raise ValueError(f"`mel` must have shape (batch, {self.config.mel_bins}, frames), got {tuple(mel.shape)}.")
        image = ((mel.to(self.dtype) - self.config.mel_mean) / self.config.mel_std).unsqueeze(1)
        logits, features = [], []
        for index, scale in enumerate(self.scales):
            pooled = image if index == 0 else F.avg_pool2d(image, (1, 2**index), ceil_mode=True)
            scale_logits, scale_features = scale(pooled)
            logits.append(scale_logits)
            features.append(scale_features)
        if not return_dict:
            return (logits, features)
        return MelDiscriminatorOutput(logits=logits, features=features)


# ------------------------------------------------------------------------------------------------------------------
# Waveform discriminators for vocoder training (HiFi-GAN / BigVGAN): multi-period + multi-resolution
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class WaveformDiscriminatorOutput(BaseOutput):
    r"""
    Args:
        logits (`list[torch.Tensor]`): One logit map per sub-discriminator (period or resolution), higher = more real.
        features (`list[list[torch.Tensor]]`): Hidden activations per sub-discriminator (for feature matching).
    """

    logits: list
    features: list


def _as_waveform_batch(waveform: torch.Tensor) -> torch.Tensor:
    """`(batch, samples)` or `(batch, 1, samples)` -> `(batch, 1, samples)`; anything else is a `ValueError`."""
    if waveform.ndim == 2:
        waveform = waveform.unsqueeze(1)
    if waveform.ndim != 3 or waveform.shape[1] != 1:
        raise ValueError(f"`waveform` must have shape (batch, samples) or (batch, 1, samples), got {tuple(waveform.shape)}.")
    return waveform


def _run_sub_discriminators(
    discriminators: nn.ModuleList, waveform: torch.Tensor, return_dict: bool
) -> WaveformDiscriminatorOutput | tuple:
    """Every sub-discriminator on the same `(batch, 1, samples)` waveform: logits and features, one entry each."""
    outputs = [discriminator(waveform) for discriminator in discriminators]
    logits, features = [out[0] for out in outputs], [out[1] for out in outputs]
    if not return_dict:
        return (logits, features)
    return WaveformDiscriminatorOutput(logits=logits, features=features)


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's sub-discriminator for one period `p`: the waveform folded into a `(samples / p, p)` image, then
    weight-normed 2-D convs with `(kernel, 1)` kernels, so each column (samples `p` apart) is judged on its own."""

    def __init__(self, period: int, channels: tuple[int, ...], kernel_size: int, stride: int, negative_slope: float):
        super().__init__()
        self.period = period
        self.negative_slope = negative_slope
        weight_norm = nn.utils.parametrizations.weight_norm
        widths = (1, *channels)
        padding = ((kernel_size - 1) // 2, 0)
        # Every conv but the last strides in time; the last keeps the resolution (as in HiFi-GAN).
        self.convs = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv2d(widths[i], widths[i + 1], (kernel_size, 1), (stride if i < len(channels) - 1 else 1, 1), padding)
                )
                for i in range(len(channels))
            ]
        )
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _, num_samples = waveform.shape
        if num_samples % self.period:
            waveform = F.pad(waveform, (0, self.period - num_samples % self.period), mode="reflect")
        hidden_states = waveform.view(batch, 1, -1, self.period)
        hidden_states, features = _leaky_conv_stack(self.convs, hidden_states, self.negative_slope)
        logits = self.conv_post(hidden_states)
        features.append(logits)
        return logits.flatten(1, -1), features


class MultiPeriodDiscriminator(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    Multi-period waveform discriminator (HiFi-GAN, also BigVGAN's MPD): one `PeriodDiscriminator` per period.

    Args:
        periods (`tuple[int, ...]`, defaults to `(2, 3, 5, 7, 11)`): Folding periods (primes, so they overlap little).
        channels (`tuple[int, ...]`, defaults to `(32, 128, 512, 1024, 1024)`): Conv widths of every sub-discriminator.
        kernel_size (`int`, defaults to 5), stride (`int`, defaults to 3): Time kernel and stride of the convs.
        negative_slope (`float`, defaults to 0.1): LeakyReLU slope.

    The model has no attention layer: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    @register_to_config
    def __init__(
        self,
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        channels: tuple[int, ...] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if not periods or any(int(p) < 1 for p in periods):
            raise ValueError(f"`periods` must be a non-empty list of positive integers, got {periods}.")
        if not channels:
            raise ValueError(f"`channels` must be non-empty, got {channels}.")
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(int(p), tuple(channels), kernel_size, stride, negative_slope) for p in periods]
        )

    def forward(self, waveform: torch.Tensor, return_dict: bool = True) -> WaveformDiscriminatorOutput | tuple:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, samples)` or `(batch, 1, samples)`): Real or generated audio,
                `samples > max(periods)`.

        Returns:
            `WaveformDiscriminatorOutput`: per period, logits `(batch, n)` and the activations of every conv
            (the last one being the logit map itself, as HiFi-GAN matches it too).
        """
        waveform = _as_waveform_batch(waveform).to(self.dtype)
        if waveform.shape[-1] <= max(self.config.periods):
            raise ValueError(
                f"`waveform` needs more than {max(self.config.periods)} samples (the longest period), "
                f"got {waveform.shape[-1]}."
            )
        return _run_sub_discriminators(self.discriminators, waveform, return_dict)


class ResolutionDiscriminator(nn.Module):
    """UnivNet / BigVGAN MRD sub-discriminator: the linear STFT magnitude at one resolution as a `(bins, frames)`
    image, weight-normed 2-D convs with `(3, 9)` kernels striding 2 in time."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int, num_strided: int, negative_slope: float):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.negative_slope = negative_slope
        weight_norm = nn.utils.parametrizations.weight_norm
        layers = [weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4)))]
        layers += [weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(num_strided)]
        layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(layers)
        self.conv_post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(batch, 1, samples)` -> magnitude `(batch, 1, n_fft // 2 + 1, frames)`, float32."""
        padding = (self.n_fft - self.hop_length) // 2
        padded = F.pad(waveform.float(), (padding, padding), mode="reflect").squeeze(1)
        spectrum = torch.stft(
            padded, self.n_fft, self.hop_length, self.win_length, self.window.to(padded.device, torch.float32),
            center=False, return_complex=True,
        )  # fmt: skip
        # sqrt(|X|^2 + eps): finite gradients at exact zeros (digital silence).
        return (spectrum.real.square() + spectrum.imag.square() + 1e-9).sqrt().unsqueeze(1)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden_states = self.spectrogram(waveform).to(self.conv_post.weight.dtype)
        hidden_states, features = _leaky_conv_stack(self.convs, hidden_states, self.negative_slope)
        logits = self.conv_post(hidden_states)
        features.append(logits)
        return logits.flatten(1, -1), features


class MultiResolutionDiscriminator(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    Multi-resolution spectrogram discriminator (UnivNet's MRD, used by BigVGAN): one `ResolutionDiscriminator` per
    STFT resolution.

    Args:
        resolutions (`tuple[tuple[int, int, int], ...]`): `(n_fft, hop_length, win_length)` per sub-discriminator;
            defaults to BigVGAN's 44 kHz set `((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))`.
        channels (`int`, defaults to 32): Conv width.
        num_strided (`int`, defaults to 3): Convs striding 2 in time.
        negative_slope (`float`, defaults to 0.1): LeakyReLU slope.

    The model has no attention layer: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    @register_to_config
    def __init__(
        self,
        resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)),
        channels: int = 32,
        num_strided: int = 3,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if not resolutions:
            raise ValueError("`resolutions` must hold at least one (n_fft, hop_length, win_length).")
        for resolution in resolutions:
            if len(resolution) != 3:
                raise ValueError(f"Each resolution must be (n_fft, hop_length, win_length), got {resolution}.")
            n_fft, hop, win = (int(v) for v in resolution)
            if not 0 < hop <= win <= n_fft or (n_fft - hop) % 2:
                raise ValueError(
                    f"Resolution {resolution} must satisfy 0 < hop_length <= win_length <= n_fft with n_fft - hop_length even."
                )
        self.discriminators = nn.ModuleList(
            [ResolutionDiscriminator(*(int(v) for v in r), channels, num_strided, negative_slope) for r in resolutions]
        )

    @property
    def min_num_samples(self) -> int:
        """Shortest waveform every resolution accepts (its reflect padding must be shorter than the input)."""
        return max((int(n) - int(h)) // 2 for n, h, _ in self.config.resolutions) + 1

    def forward(self, waveform: torch.Tensor, return_dict: bool = True) -> WaveformDiscriminatorOutput | tuple:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, samples)` or `(batch, 1, samples)`): Real or generated audio.

        Returns:
            `WaveformDiscriminatorOutput`: per resolution, logits `(batch, n)` and the activations of every conv.
        """
        waveform = _as_waveform_batch(waveform)
        if waveform.shape[-1] < self.min_num_samples:
            raise ValueError(f"`waveform` needs at least {self.min_num_samples} samples, got {waveform.shape[-1]}.")
        return _run_sub_discriminators(self.discriminators, waveform, return_dict)
