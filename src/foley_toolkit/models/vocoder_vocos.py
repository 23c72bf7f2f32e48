# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""A Vocos vocoder (Siuzdak, arXiv 2306.00814) for the codec's 44.1 kHz, 128-band, hop-512 log-mel.

Vocos never upsamples in the time domain: a stack of ConvNeXt blocks runs at the mel frame rate (86 Hz) and a
linear head predicts, for every frame, the log-magnitude and phase of one STFT frame; the inverse STFT turns them
into samples. Running at the frame rate makes it far cheaper than BigVGAN (whose anti-aliased activations run at
the sample rate) and, with the magnitude predicted directly, it learns the level of a clip within a few hundred
steps.

The inverse STFT uses "same" framing: frame `i` covers samples `[i * hop - (n_fft - hop) / 2, i * hop + (n_fft +
hop) / 2)`, exactly the frames `LogMelSpectrogram` analyses (reflect pad `(n_fft - hop) / 2`, `center=False`), and
`frames` mel frames give `frames * hop` samples, like `MMAudioVocoder`. `torch.istft` cannot do this framing: with
`center=False` it rejects a Hann window whose overlap-add vanishes at the signal ends (NOLA check), and with
`center=True` its frames sit half a hop away from the mel's. So the overlap-add is written out here with
`torch.fft.irfft` and `F.fold` (the same arithmetic as `torch.istft`: windowed synthesis divided by the summed
squared window).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

from .adapters import AttentionFreeModelMixin
from .autoencoders.autoencoder_mel_vae import slaney_mel_filterbank

__all__ = ["VocosVocoder", "VocosConvNeXtBlock", "vocos_small_config", "tiny_vocos_config"]


def vocos_small_config() -> dict[str, Any]:
    """The demo-size Vocos: width 128, 8 ConvNeXt blocks (inner width 384), n_fft 2048 / hop 512 (~1.2M
    parameters, ~4.7 MB in float32), with the pseudo-inverse mel magnitude prior."""
    return {"num_mels": 128, "dim": 128, "intermediate_dim": 384, "num_layers": 8, "n_fft": 2048, "hop_length": 512,
            "mel_magnitude_prior": True}  # fmt: skip


def tiny_vocos_config() -> dict[str, Any]:
    """A tiny but structurally complete Vocos (same n_fft / hop) for tests and quick experiments."""
    return {"num_mels": 128, "dim": 32, "intermediate_dim": 64, "num_layers": 2, "n_fft": 2048, "hop_length": 512,
            "mel_magnitude_prior": True}  # fmt: skip


class VocosConvNeXtBlock(nn.Module):
    r"""
    ConvNeXt block on `(batch, dim, frames)`: depthwise conv -> LayerNorm -> Linear (dim -> intermediate) -> GELU
    -> Linear (intermediate -> dim) -> layer scale, plus the residual. The layer scale starts small so that a deep
    stack starts close to the identity.
    """

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.dwconv(hidden_states).transpose(1, 2)  # (batch, frames, dim)
        hidden_states = self.pwconv2(self.act(self.pwconv1(self.norm(hidden_states))))
        return residual + (self.gamma * hidden_states).transpose(1, 2)


class VocosVocoder(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    Vocos vocoder: log-mel `(batch, num_mels, frames)` -> waveform `(batch, 1, frames * hop_length)` in [-1, 1].

    The same contract as diffusers' `MMAudioVocoder` (BigVGAN-v2), so either can be the pipeline's `vocoder`:
    `forward(mel).sample` has shape `(batch, 1, frames * hop_length)`, clamped to [-1, 1].

    Args:
        num_mels (`int`, defaults to 128): Mel bands of the input (the codec's `LogMelSpectrogram`).
        dim (`int`, defaults to 128): Width of the ConvNeXt stack.
        intermediate_dim (`int`, defaults to 384): Inner width of each block's MLP.
        num_layers (`int`, defaults to 8): ConvNeXt blocks.
        kernel_size (`int`, defaults to 7): Kernel of the input conv and of the depthwise convs (odd).
        n_fft (`int`, defaults to 2048): FFT size (and Hann window length) of the inverse STFT.
        hop_length (`int`, defaults to 512): Samples per mel frame; `n_fft - hop_length` must be even and positive.
        layer_scale_init_value (`float`, *optional*): Initial layer scale; `1 / num_layers` if `None` (Vocos).
        max_magnitude (`float`, defaults to 1024.0): Ceiling of the predicted STFT magnitude, to keep early training
            finite (Vocos clips at 1e2). With a 2048-point Hann window a full-scale sine has magnitude 2048 / 4 = 512
            in its bin, so a ceiling of 1e2 would cap loud tones at -14 dBFS; 1024 leaves them 6 dB of room.
        mel_magnitude_prior (`bool`, defaults to `False`): Add to the predicted log-magnitude the log of the input
            mel mapped back to linear STFT bins by the pseudo-inverse of the Slaney filterbank (FreeV, Lv et al.,
            arXiv 2406.08196), so the head learns a residual. From the first step the output has the input's level
            and spectral envelope: on sparse Foley clips (short loud events on a quiet bed) a plain head learns the
            bed first and stays ~45 dB too quiet within a short budget.
        sample_rate (`int`, defaults to 44100): Sample rate of the mel filterbank (used by `mel_magnitude_prior`).

    The model has no attention layer: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    @register_to_config
    def __init__(
        self,
        num_mels: int = 128,
        dim: int = 128,
        intermediate_dim: int = 384,
        num_layers: int = 8,
        kernel_size: int = 7,
        n_fft: int = 2048,
        hop_length: int = 512,
        layer_scale_init_value: float | None = None,
        max_magnitude: float = 1024.0,
        mel_magnitude_prior: bool = False,
        sample_rate: int = 44_100,
    ) -> None:
        super().__init__()
        for name, value in (("num_mels", num_mels), ("dim", dim), ("intermediate_dim", intermediate_dim),
                            ("num_layers", num_layers), ("hop_length", hop_length)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd number, got {kernel_size}.")
        if n_fft <= hop_length or (n_fft - hop_length) % 2:
            raise ValueError(
                f"`n_fft` must exceed `hop_length` by an even number of samples, got n_fft={n_fft}, "
                f"hop_length={hop_length}."
            )
        if max_magnitude <= 0:
            raise ValueError(f"`max_magnitude` must be > 0, got {max_magnitude}.")
        scale = 1.0 / num_layers if layer_scale_init_value is None else layer_scale_init_value
        self.embed = nn.Conv1d(num_mels, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            [VocosConvNeXtBlock(dim, intermediate_dim, kernel_size, scale) for _ in range(num_layers)]
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        # One STFT frame per mel frame: n_fft // 2 + 1 log-magnitudes and as many phases.
        self.head = nn.Linear(dim, n_fft + 2)
        # The window is a constant: kept out of the state dict, rebuilt in float32 on the input's device.
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        if mel_magnitude_prior:
            # (n_fft // 2 + 1, num_mels): mel magnitudes -> linear STFT magnitudes (least squares, float64 pinv).
            basis = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, num_mels)).double()
            self.register_buffer("mel_inverse", torch.linalg.pinv(basis).float(), persistent=False)

    @property
    def hop_length(self) -> int:
        """Samples per mel frame (the vocoder's total upsampling factor)."""
        return self.config.hop_length

    def num_samples(self, num_frames: int) -> int:
        """Samples produced for `num_frames` mel frames: `num_frames * hop_length`."""
        return num_frames * self.config.hop_length

    def inverse_stft(self, spectrum: torch.Tensor) -> torch.Tensor:
        r"""
        Inverse STFT with the mel front end's framing (see the module docstring).

        Args:
            spectrum (`torch.Tensor` of shape `(batch, n_fft // 2 + 1, frames)`, complex).

        Returns:
            `torch.Tensor` of shape `(batch, frames * hop_length)`, float32.
        """
        n_fft, hop = self.config.n_fft, self.config.hop_length
        padding = (n_fft - hop) // 2
        num_frames = spectrum.shape[-1]
        window = self.window.to(device=spectrum.device, dtype=torch.float32)
        frames = torch.fft.irfft(spectrum, n=n_fft, dim=1) * window[None, :, None]  # (batch, n_fft, frames)
        length = (num_frames - 1) * hop + n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
        waveform = F.fold(frames, **fold)[:, 0, 0, padding : length - padding]
        envelope = window.square()[None, :, None].expand(1, n_fft, num_frames)
        envelope = F.fold(envelope, **fold)[0, 0, 0, padding : length - padding]
        # With a Hann window and hop <= n_fft / 2 the trimmed envelope never vanishes (>= 0.73 for 2048 / 512).
        return waveform / envelope.clamp_min(1e-11)

    def forward(self, mel: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        r"""
        Args:
            mel (`torch.Tensor` of shape `(batch, num_mels, frames)`): Natural-log mel magnitudes of
                `LogMelSpectrogram` (or a MelVAE decoding of them).
            return_dict (`bool`, defaults to `True`): Return a `DecoderOutput` instead of a tuple.

        Returns:
            `DecoderOutput(sample)` with `sample` of shape `(batch, 1, frames * hop_length)`, float32 in [-1, 1]
            (the same as `MMAudioVocoder`).
        """
        if mel.ndim != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(
                f"`mel` must have shape (batch, {self.config.num_mels}, frames), got {tuple(mel.shape)}."
            )
        if mel.shape[-1] < 1:
            raise ValueError("`mel` must have at least one frame.")
        hidden_states = self.embed(mel.to(self.dtype))
        hidden_states = self.norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        hidden_states = self.head(self.final_norm(hidden_states.transpose(1, 2))).transpose(1, 2)
        # The FFT runs in float32 whatever the weights' dtype (bf16 FFTs are not supported everywhere).
        log_magnitude, phase = hidden_states.float().chunk(2, dim=1)
        if self.config.mel_magnitude_prior:
            inverse = self.mel_inverse.to(device=mel.device, dtype=torch.float32)
            prior = torch.einsum("fm,bmt->bft", inverse, mel.float().exp()).abs().clamp_min(1e-5)
            log_magnitude = log_magnitude + prior.log()
        magnitude = torch.exp(log_magnitude).clamp(max=self.config.max_magnitude)
        spectrum = torch.polar(magnitude, phase)
        waveform = self.inverse_stft(spectrum).clamp(-1.0, 1.0).unsqueeze(1)
        if not return_dict:
            return (waveform,)
        return DecoderOutput(sample=waveform)
