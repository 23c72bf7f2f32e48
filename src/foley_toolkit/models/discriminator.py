# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""Multi-scale mel-spectrogram discriminator for MelVAE training (Kling-Foley paper section 4.5, eq. 4-7).

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


@dataclass
class MelDiscriminatorOutput(BaseOutput):
    r"""
    Args:
        logits (`list[torch.Tensor]`): One patch-logit map `(batch, 1, bands', frames')` per scale.
        features (`list[list[torch.Tensor]]`): Hidden activations per scale (for feature-matching losses).
    """

    logits: list
    features: list


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
        features = []
        hidden_states = mel_image
        for conv in self.convs:
            hidden_states = F.leaky_relu(conv(hidden_states), self.negative_slope)
            features.append(hidden_states)
        return self.conv_out(hidden_states), features


class MelDiscriminator(ModelMixin, ConfigMixin):
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
