# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""Mono2Stereo (Kling-Foley paper section 4.6): mono log-mel -> left and right log-mels.

The module predicts only the ratio of each channel to the mono mel: in log-mel, an additive offset per band and
frame (`left = mono + offset_left`). Predicting a ratio instead of a spectrogram reduces data dependency and keeps
training stable (the paper's argument); zero-initialising the output layer makes the untrained module the identity
(left = right = mono). Optional video features (e.g. CLIP frame features at 8 fps) are resampled to the mel frame
rate so the panning can follow what moves on screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput

from .adapters import AttentionFreeModelMixin, FoleyPeftAdapterMixin
from .autoencoders.autoencoder_mel_vae import LogMelSpectrogram


# Copied from foley_toolkit.models.autoencoders.autoencoder_mel_vae.ChannelLayerNorm
class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels, independently per frame. Unlike GroupNorm it never pools over time, so a chunk of a
    long sequence is processed exactly as the same frames inside the whole sequence (chunked decoding is exact)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states.transpose(1, 2)).transpose(1, 2)


# Copied from foley_toolkit.models.autoencoders.autoencoder_mel_vae.MelResnetBlock1D
class MelResnetBlock1D(nn.Module):
    """Pre-norm residual block of two 1D convolutions: `x + conv(act(norm(conv(act(norm(x))))))`."""

    def __init__(self, channels: int, kernel_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.norm1 = ChannelLayerNorm(channels, eps)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.norm2 = ChannelLayerNorm(channels, eps)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = self.conv2(F.silu(self.norm2(hidden_states)))
        return residual + hidden_states


@dataclass
class Mono2StereoOutput(BaseOutput):
    r"""
    Args:
        left_mel (`torch.Tensor` of shape `(batch, mel_bins, frames)`): Left-channel log-mel.
        right_mel (`torch.Tensor` of shape `(batch, mel_bins, frames)`): Right-channel log-mel.
    """

    left_mel: torch.Tensor
    right_mel: torch.Tensor


class Mono2Stereo(AttentionFreeModelMixin, ModelMixin, ConfigMixin, FoleyPeftAdapterMixin):
    r"""
    Predicts per-band, per-frame log ratios of the left and right mels to the mono mel.

    mono mel -> affine normalisation -> Conv1d -> (+ video features projected and resampled to the mel frames) ->
    residual conv blocks -> norm -> zero-initialised Conv1d -> `(offset_left, offset_right)`.

    Args:
        mel_bins (`int`, defaults to 128): Mel bands.
        hidden_channels (`int`, defaults to 256): Width of the convolutional trunk.
        num_layers (`int`, defaults to 4): Residual blocks (two convolutions each).
        kernel_size (`int`, defaults to 5): Temporal kernel (odd).
        video_feature_dim (`int`, *optional*, defaults to 1280): Width of the conditioning video features (MetaCLIP
            ViT-bigG-14 image embeddings); `None` builds an audio-only module.
        mel_mean (`float`, defaults to -5.0), mel_std (`float`, defaults to 3.0): Input normalisation of the log-mel.

    LoRA (diffusers' `PeftAdapterMixin`; keys in pipeline LoRA files start with `mono2stereo.`):
    `default_lora_target_modules` is every weight layer — `mel_in` (Conv1d), `video_proj` (Linear; absent with
    `video_feature_dim=None`), `conv1`/`conv2` of every residual block and `ratio_out` (Conv1d). The module is small
    (3.4M parameters at the defaults) and a new panning style needs all of it: where it looks (`video_proj`),
    how it reads the mel (`mel_in`, blocks) and how far it pans (`ratio_out`). A LoRA on the zero-initialised
    `ratio_out` starts as the identity like the layer itself (peft initialises `lora_B` to zero).

    The model is convolutional: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    lora_prefix = "mono2stereo"
    default_lora_target_modules = ["mel_in", "video_proj", "conv1", "conv2", "ratio_out"]

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        mel_bins: int = 128,
        hidden_channels: int = 256,
        num_layers: int = 4,
        kernel_size: int = 5,
        video_feature_dim: int | None = 1280,
        mel_mean: float = -5.0,
        mel_std: float = 3.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
        self.mel_in = nn.Conv1d(mel_bins, hidden_channels, kernel_size, padding=kernel_size // 2)
        if video_feature_dim is not None:
            self.video_proj = nn.Linear(video_feature_dim, hidden_channels)
            # Used when no video is given (and for condition dropout during training).
            self.null_video_embedding = nn.Parameter(torch.zeros(hidden_channels))
        else:
            self.video_proj = None
            self.null_video_embedding = None
        self.blocks = nn.ModuleList([MelResnetBlock1D(hidden_channels, kernel_size) for _ in range(num_layers)])
        self.norm_out = ChannelLayerNorm(hidden_channels)
        self.ratio_out = nn.Conv1d(hidden_channels, 2 * mel_bins, kernel_size, padding=kernel_size // 2)
        # Identity at initialisation: both offsets are exactly zero until training moves them.
        nn.init.zeros_(self.ratio_out.weight)
        nn.init.zeros_(self.ratio_out.bias)

    def _video_embedding(
        self, video_features: torch.Tensor | None, batch: int, frames: int, drop_video: torch.Tensor | None
    ) -> torch.Tensor | None:
        if self.video_proj is None:
            if video_features is not None:
                raise ValueError("`video_features` given, but this Mono2Stereo has `video_feature_dim=None`.")
            return None
        null = self.null_video_embedding.view(1, -1, 1).to(self.dtype)
        if video_features is None:
            return null.expand(batch, -1, frames)
        if video_features.ndim != 3 or video_features.shape[0] != batch:
            raise ValueError(
                f"`video_features` must have shape ({batch}, video_frames, {self.config.video_feature_dim}), got "
                f"{tuple(video_features.shape)}."
            )
        if video_features.shape[-1] != self.config.video_feature_dim:
            raise ValueError(
                f"`video_features` last dim must be video_feature_dim={self.config.video_feature_dim}, got "
                f"{video_features.shape[-1]}."
            )
        embedding = self.video_proj(video_features.to(self.dtype)).transpose(1, 2)  # (B, hidden, T_v)
        # Video (8 fps) and mel (86.13 Hz) span the same clip: linear resampling maps equal times onto each other.
        embedding = F.interpolate(embedding, size=frames, mode="linear", align_corners=False)
        if drop_video is not None:
            embedding = torch.where(drop_video.view(-1, 1, 1).to(embedding.device), null, embedding)
        return embedding

    def forward(
        self,
        mono_mel: torch.Tensor,
        video_features: torch.Tensor | None = None,
        drop_video: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Mono2StereoOutput | tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            mono_mel (`torch.Tensor` of shape `(batch, mel_bins, frames)`): Mono log-mel (e.g. `MelVAE.decode`).
            video_features (`torch.Tensor` of shape `(batch, video_frames, video_feature_dim)`, *optional*): Per-frame
                video features at any frame rate covering the same time span; the learned null embedding if `None`.
            drop_video (`torch.BoolTensor` of shape `(batch,)`, *optional*): Samples that use the null embedding
                (condition dropout for training).
            return_dict (`bool`, defaults to `True`): Return a `Mono2StereoOutput` instead of a tuple.

        Returns:
            `Mono2StereoOutput(left_mel, right_mel)`, each `(batch, mel_bins, frames)`:
            `mono_mel + predicted log ratio`.
        """
        if mono_mel.ndim != 3 or mono_mel.shape[1] != self.config.mel_bins:
            raise ValueError(
                f"`mono_mel` must have shape (batch, {self.config.mel_bins}, frames), got {tuple(mono_mel.shape)}."
            )
        batch, _, frames = mono_mel.shape
        hidden_states = self.mel_in((mono_mel.to(self.dtype) - self.config.mel_mean) / self.config.mel_std)
        video_embedding = self._video_embedding(video_features, batch, frames, drop_video)
        if video_embedding is not None:
            hidden_states = hidden_states + video_embedding
        for block in self.blocks:
            hidden_states = block(hidden_states)
        log_ratios = self.ratio_out(F.silu(self.norm_out(hidden_states)))
        left_offset, right_offset = log_ratios.to(mono_mel.dtype).chunk(2, dim=1)
        left_mel, right_mel = mono_mel + left_offset, mono_mel + right_offset
        if not return_dict:
            return (left_mel, right_mel)
        return Mono2StereoOutput(left_mel=left_mel, right_mel=right_mel)


def stereo_mel_targets(
    stereo_waveform: torch.Tensor, mel_transform: LogMelSpectrogram
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""
    Training targets from stereo recordings: the mono mel (of `(left + right) / 2`, the mono the generator makes)
    and the left and right mels.

    Args:
        stereo_waveform (`torch.Tensor` of shape `(batch, 2, num_samples)`).
        mel_transform (`LogMelSpectrogram`): The codec's front end (e.g. `vae.log_mel`).

    Returns:
        `(mono_mel, left_mel, right_mel)`, each `(batch, mel_bins, frames)`.
    """
    if stereo_waveform.ndim != 3 or stereo_waveform.shape[1] != 2:
        raise ValueError(
            f"`stereo_waveform` must have shape (batch, 2, num_samples), got {tuple(stereo_waveform.shape)}."
        )
    mono = stereo_waveform.mean(dim=1)
    mels = mel_transform(torch.cat([mono.unsqueeze(1), stereo_waveform], dim=1))  # (B, 3, mel_bins, T)
    return mels[:, 0], mels[:, 1], mels[:, 2]
