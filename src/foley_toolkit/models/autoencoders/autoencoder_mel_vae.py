# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""Kling-Foley's latent audio codec (paper section 4.5): a 1D convolutional VAE over 128-band log-mel spectrograms.

waveform (44.1 kHz) -> log-mel (86.13 Hz, 128 bands) -> encoder (2x temporal downsample) -> latents (43.07 Hz)
-> decoder (2x temporal upsample) -> log-mel -> vocoder. The mel front end is identical to BigVGAN-v2's 44 kHz
128-band 512x one, so public BigVGAN-v2 weights turn the decoded mels into waveforms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ...audio_utils import num_mel_frames
from ..adapters import AttentionFreeModelMixin, FoleyPeftAdapterMixin

# ---------------------------------------------------------------------------------------------------------------
# Mel front end
# ---------------------------------------------------------------------------------------------------------------

_SLANEY_LINEAR_STEP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    linear = freq / _SLANEY_LINEAR_STEP
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_LINEAR_STEP
    log = min_log_mel + np.log(np.maximum(freq, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOG_STEP
    return np.where(freq >= _SLANEY_MIN_LOG_HZ, log, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_LINEAR_STEP
    return np.where(
        mel >= min_log_mel,
        _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - min_log_mel)),
        _SLANEY_LINEAR_STEP * mel,
    )


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, num_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    r"""
    Slaney-scale triangular mel filterbank with Slaney area normalisation: the defaults of `librosa.filters.mel`
    (`htk=False, norm="slaney"`), computed in float64 without librosa.

    Returns:
        `np.ndarray` of shape `(num_mels, n_fft // 2 + 1)`, float32.
    """
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_edges = np.linspace(_hz_to_slaney_mel(f_min), _hz_to_slaney_mel(f_max), num_mels + 2)
    hz_edges = _slaney_mel_to_hz(mel_edges)
    edge_widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / edge_widths[:-1, None]
    upper = ramps[2:] / edge_widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney normalisation: every triangle has the same area, so band energy does not grow with bandwidth.
    weights *= (2.0 / (hz_edges[2 : num_mels + 2] - hz_edges[:num_mels]))[:, None]
    return weights.astype(np.float32)


class LogMelSpectrogram(nn.Module):
    r"""
    The log-mel front end of the codec, identical to BigVGAN-v2's `mel_spectrogram` (44 kHz, 128 bands, 512x):
    reflect pad `(n_fft - hop) / 2` on both sides, `center=False` STFT with a periodic Hann window, magnitude
    `sqrt(re^2 + im^2 + 1e-9)`, Slaney mel filterbank, natural log of `clamp(x, 1e-5)`.

    The filterbank and window are constants kept outside the state dict and materialised per device in
    `compute_dtype`: casting a model to bf16 never degrades the front end, and checkpoints do not store them.

    Args:
        sample_rate (`int`, defaults to 44100): Waveform sample rate.
        n_fft (`int`, defaults to 2048): FFT size (also the window length).
        hop_length (`int`, defaults to 512): Hop between frames.
        num_mels (`int`, defaults to 128): Mel bands.
        f_min (`float`, defaults to 0): Lowest filter edge in Hz.
        f_max (`float`, *optional*): Highest filter edge in Hz; `sample_rate / 2` if `None`.
        clamp_min (`float`, defaults to 1e-5): Floor applied before the log (log-mel floor is `log(1e-5) = -11.51`).
        compute_dtype (`torch.dtype`, defaults to `torch.float64`): Precision of the STFT and filterbank product. In
            float32, quiet bins next to loud ones carry FFT round-off of ~1e-3 in log-mel; float64 keeps the front end
            within 1e-6 of a float64 reference at a negligible cost next to the networks. The output is float32.
    """

    def __init__(
        self,
        sample_rate: int = 44_100,
        n_fft: int = 2048,
        hop_length: int = 512,
        num_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        clamp_min: float = 1e-5,
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if n_fft <= hop_length or (n_fft - hop_length) % 2:
            raise ValueError(
                f"`n_fft` must exceed `hop_length` by an even number of samples, got n_fft={n_fft}, hop={hop_length}."
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_mels = num_mels
        self.clamp_min = clamp_min
        self.compute_dtype = compute_dtype
        self.padding = (n_fft - hop_length) // 2
        self._mel_basis = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, num_mels, f_min, f_max))
        self._constants: dict = {}

    @property
    def mel_basis(self) -> torch.Tensor:
        """The Slaney filterbank `(num_mels, n_fft // 2 + 1)`, float32 on CPU."""
        return self._mel_basis

    def _filterbank_and_window(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), self.compute_dtype)
        if key not in self._constants:
            # The window is built in compute_dtype: a float32-rounded window alone leaks ~1e-5 of a loud bin's
            # magnitude into quiet neighbours, a visible error after the log.
            self._constants[key] = (
                self._mel_basis.to(device=device, dtype=self.compute_dtype),
                torch.hann_window(self.n_fft, dtype=self.compute_dtype, device=device),
            )
        return self._constants[key]

    @property
    def min_num_samples(self) -> int:
        """Shortest waveform the reflect padding accepts."""
        return self.padding + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` samples (`audio_utils.num_mel_frames` with this FFT size and hop)."""
        return num_mel_frames(num_samples, self.n_fft, self.hop_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(..., num_samples)`): Waveform(s) in `[-1, 1]`; any leading dims.

        Returns:
            `torch.Tensor` of shape `(..., num_mels, frames)`, float32 natural-log mel magnitudes, with
            `frames = self.num_frames(num_samples)`.
        """
        num_samples = waveform.shape[-1]
        if num_samples < self.min_num_samples:
            raise ValueError(
                f"`waveform` needs at least {self.min_num_samples} samples for the reflect padding, got {num_samples}."
            )
        leading = waveform.shape[:-1]
        # The STFT runs in `compute_dtype` whatever the caller's dtype (bf16 FFTs are not supported everywhere).
        flat = waveform.reshape(-1, num_samples).to(self.compute_dtype)
        flat = F.pad(flat.unsqueeze(1), (self.padding, self.padding), mode="reflect").squeeze(1)
        mel_basis, window = self._filterbank_and_window(flat.device)
        spectrum = torch.stft(
            flat,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        magnitude = torch.sqrt(spectrum.real.pow(2) + spectrum.imag.pow(2) + 1e-9)
        mel = torch.matmul(mel_basis, magnitude)
        log_mel = torch.log(torch.clamp(mel, min=self.clamp_min)).float()
        return log_mel.reshape(*leading, self.num_mels, log_mel.shape[-1])


# ---------------------------------------------------------------------------------------------------------------
# Posterior with a KL that is correct for 3-D latents
# ---------------------------------------------------------------------------------------------------------------


class DiagonalGaussianDistribution1D(DiagonalGaussianDistribution):
    r"""
    diffusers' `DiagonalGaussianDistribution` for `(batch, channels, frames)` latents. The parent's `kl()` and
    `nll()` sum over dims `[1, 2, 3]` (image latents); here they sum over every non-batch dim.
    """

    def _reduce_dims(self) -> list[int]:
        return list(range(1, self.mean.ndim))

    def kl(self, other: "DiagonalGaussianDistribution1D | None" = None) -> torch.Tensor:
        """KL divergence to `other` (standard normal if `None`), summed per sample: shape `(batch,)`."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
            )
        return 0.5 * terms.sum(dim=self._reduce_dims())

    def nll(self, sample: torch.Tensor, dims: list[int] | None = None) -> torch.Tensor:
        """Negative log-likelihood of `sample`, summed over `dims` (every non-batch dim by default)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        dims = self._reduce_dims() if dims is None else dims
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels, independently per frame. Unlike GroupNorm it never pools over time, so a chunk of a
    long sequence is processed exactly as the same frames inside the whole sequence (chunked decoding is exact)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states.transpose(1, 2)).transpose(1, 2)


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


class _MelConvStack1D(nn.Module):
    """What the encoder and the decoder share: stacks of residual blocks run with optional gradient checkpointing
    (diffusers' `enable_gradient_checkpointing` sets `gradient_checkpointing` and `_gradient_checkpointing_func`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    @staticmethod
    def _resnet_blocks(channels: int, kernel_size: int, eps: float, num_blocks: int) -> nn.ModuleList:
        return nn.ModuleList([MelResnetBlock1D(channels, kernel_size, eps) for _ in range(num_blocks)])

    def _run_blocks(self, blocks: nn.ModuleList, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, frames)` through every block of `blocks`, same shape out."""
        for block in blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states)
            else:
                hidden_states = block(hidden_states)
        return hidden_states


class MelEncoder1D(_MelConvStack1D):
    """conv_in -> blocks at the mel rate -> stride-2 conv -> blocks at the latent rate -> norm -> conv_out
    (`2 * latent_channels`: mean and log-variance)."""

    def __init__(
        self,
        mel_bins: int,
        latent_channels: int,
        block_out_channels: tuple[int, int],
        layers_per_block: int,
        kernel_size: int,
        eps: float,
    ) -> None:
        super().__init__()
        mel_rate_channels, latent_rate_channels = block_out_channels
        self.conv_in = nn.Conv1d(mel_bins, mel_rate_channels, kernel_size, padding=kernel_size // 2)
        self.mel_rate_blocks = self._resnet_blocks(mel_rate_channels, kernel_size, eps, layers_per_block)
        # kernel 3, stride 2, padding 1: ceil(T / 2) output frames, latent j centred on mel frame 2j.
        self.downsample = nn.Conv1d(mel_rate_channels, latent_rate_channels, 3, stride=2, padding=1)
        self.latent_rate_blocks = self._resnet_blocks(latent_rate_channels, kernel_size, eps, layers_per_block)
        self.norm_out = ChannelLayerNorm(latent_rate_channels, eps)
        self.conv_out = nn.Conv1d(latent_rate_channels, 2 * latent_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel `(batch, mel_bins, frames)` -> posterior moments
        `(batch, 2 * latent_channels, ceil(frames / 2))`."""
        hidden_states = self._run_blocks(self.mel_rate_blocks, self.conv_in(mel))
        hidden_states = self._run_blocks(self.latent_rate_blocks, self.downsample(hidden_states))
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class MelDecoder1D(_MelConvStack1D):
    """Mirror of the encoder: conv_in -> blocks at the latent rate -> 2x transposed conv -> blocks at the mel rate ->
    norm -> conv_out (`mel_bins`)."""

    def __init__(
        self,
        mel_bins: int,
        latent_channels: int,
        block_out_channels: tuple[int, int],
        layers_per_block: int,
        kernel_size: int,
        eps: float,
    ) -> None:
        super().__init__()
        mel_rate_channels, latent_rate_channels = block_out_channels
        self.conv_in = nn.Conv1d(latent_channels, latent_rate_channels, kernel_size, padding=kernel_size // 2)
        self.latent_rate_blocks = self._resnet_blocks(latent_rate_channels, kernel_size, eps, layers_per_block)
        # kernel 4, stride 2, padding 1: exactly 2 * T output frames.
        self.upsample = nn.ConvTranspose1d(latent_rate_channels, mel_rate_channels, 4, stride=2, padding=1)
        self.mel_rate_blocks = self._resnet_blocks(mel_rate_channels, kernel_size, eps, layers_per_block)
        self.norm_out = ChannelLayerNorm(mel_rate_channels, eps)
        self.conv_out = nn.Conv1d(mel_rate_channels, mel_bins, kernel_size, padding=kernel_size // 2)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """`(batch, latent_channels, frames)` -> normalised log-mel `(batch, mel_bins, 2 * frames)`."""
        hidden_states = self._run_blocks(self.latent_rate_blocks, self.conv_in(latents))
        hidden_states = self._run_blocks(self.mel_rate_blocks, self.upsample(hidden_states))
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


# ---------------------------------------------------------------------------------------------------------------
# MelVAE
# ---------------------------------------------------------------------------------------------------------------


def _chunk_windows(latent_frames: int, chunk_size: int, overlap: int):
    """Yield `(start, end, window_start, window_end)` in latent frames: each chunk `[start, end)` of `chunk_size`
    frames and the window around it with `overlap` frames of context on each side (clipped to the sequence)."""
    for start in range(0, latent_frames, chunk_size):
        end = min(start + chunk_size, latent_frames)
        yield start, end, max(0, start - overlap), min(latent_frames, end + overlap)


class MelVAE(AttentionFreeModelMixin, ModelMixin, AutoencoderMixin, ConfigMixin, FoleyPeftAdapterMixin):
    r"""
    Kling-Foley's Mel-VAE (paper section 4.5): an `AutoencoderKL`-style VAE over 128-band log-mel spectrograms with
    one 2x temporal downsample, turning 44.1 kHz audio into 43.07 Hz latents (1024 samples per latent frame).

    The encoder stacks 1D convolutional residual layers (Make-An-Audio 2-like): `conv_in`, `layers_per_block`
    residual blocks at the mel rate, a stride-2 convolution, `layers_per_block` blocks at the latent rate, `conv_out`
    and the 1x1 `quant_conv`, i.e. `4 + 4 * layers_per_block` convolutions — 32 at the default 7, the paper's count.
    The decoder mirrors it with a transposed convolution. Normalisation is per frame (no statistics over time), so
    the network is local and `decode(z, chunk_size=...)` equals a full decode when chunks overlap by
    `decoder_receptive_radius` latent frames.

    Args:
        mel_bins (`int`, defaults to 128): Mel bands.
        latent_channels (`int`, defaults to 40): Latent channels.
        block_out_channels (`tuple[int, int]`, defaults to `(384, 768)`): Widths at the mel rate and at the latent
            rate.
        layers_per_block (`int`, defaults to 7): Residual blocks (two convolutions each) per rate, in both encoder
            and decoder.
        kernel_size (`int`, defaults to 5): Temporal kernel of the residual convolutions (odd).
        norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        mel_mean (`float`, defaults to -5.0), mel_std (`float`, defaults to 3.0): Fixed affine map applied to the
            log-mel before the encoder (and inverted after the decoder) so the network works on unit-scale values.
        sample_rate, n_fft, hop_length, f_min, f_max: The mel front end (BigVGAN-v2's 44.1 kHz log-mel: 2048-point
            FFT, hop 512, 128 bands; `f_max=None` is `sample_rate / 2`).
        latents_mean (`list[float]`, *optional*), latents_std (`list[float]`, *optional*): Per-channel latent
            statistics measured on data; used by `normalize_latents` / `denormalize_latents`.
        scaling_factor (`float`, defaults to 1.0): Multiplies the (standardised) latents, diffusers-style.

    LoRA (diffusers' `PeftAdapterMixin`; keys in pipeline LoRA files start with `vae.`): `default_lora_target_modules`
    is the decoder's `Conv1d` layers — `decoder.conv_in`, both convolutions of every residual block at the latent and
    the mel rate, and `decoder.conv_out`. Decoder only, because generation only decodes, and adapting the encoder
    would move the latent space the transformer was trained in (and every cached latent) away from it. The
    `ConvTranspose1d` upsampler stays frozen (peft has no LoRA layer for transposed convolutions); so do the 1x1
    `post_quant_conv` (a per-frame channel mix that the LoRA on `decoder.conv_in` can already express) and the
    parameter-free mel front end.

    The model is convolutional: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    lora_prefix = "vae"
    default_lora_target_modules = r"decoder\.(conv_in|conv_out|(latent_rate_blocks|mel_rate_blocks)\.\d+\.conv[12])"

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MelResnetBlock1D"]

    @register_to_config
    def __init__(
        self,
        mel_bins: int = 128,
        latent_channels: int = 40,
        block_out_channels: tuple[int, int] = (384, 768),
        layers_per_block: int = 7,
        kernel_size: int = 5,
        norm_eps: float = 1e-6,
        mel_mean: float = -5.0,
        mel_std: float = 3.0,
        sample_rate: int = 44_100,
        n_fft: int = 2048,
        hop_length: int = 512,
        f_min: float = 0.0,
        f_max: float | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if len(block_out_channels) != 2:
            raise ValueError(
                f"`block_out_channels` must be (mel_rate_width, latent_rate_width), got {block_out_channels}."
            )
        if kernel_size % 2 != 1:
            raise ValueError(f"`kernel_size` must be odd (same-length convolutions), got {kernel_size}.")
        if mel_std <= 0 or scaling_factor <= 0:
            raise ValueError(f"`mel_std` and `scaling_factor` must be > 0, got {mel_std} and {scaling_factor}.")
        self._check_latent_statistics(latents_mean, latents_std, latent_channels)

        self.log_mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, mel_bins, f_min, f_max)
        block_out_channels = tuple(block_out_channels)
        self.encoder = MelEncoder1D(
            mel_bins, latent_channels, block_out_channels, layers_per_block, kernel_size, norm_eps
        )
        self.quant_conv = nn.Conv1d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv1d(latent_channels, latent_channels, 1)
        self.decoder = MelDecoder1D(
            mel_bins, latent_channels, block_out_channels, layers_per_block, kernel_size, norm_eps
        )

        # Chunked ("tiled") processing along time, off by default; see `enable_tiling`.
        self.use_tiling = False
        self.use_slicing = False
        self.tile_latent_frames = 512  # ~11.9 s per chunk
        self.tile_overlap_frames: int | None = None  # None: the receptive radius (exact)

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    @staticmethod
    def _check_latent_statistics(latents_mean, latents_std, latent_channels: int) -> None:
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("`latents_mean` and `latents_std` must be given together (or both None).")
        if latents_mean is not None:
            if len(latents_mean) != latent_channels or len(latents_std) != latent_channels:
                raise ValueError(
                    f"`latents_mean`/`latents_std` need {latent_channels} values (latent_channels), got "
                    f"{len(latents_mean)} and {len(latents_std)}."
                )
            if min(latents_std) <= 0:
                raise ValueError("`latents_std` values must be > 0.")

    @property
    def samples_per_latent_frame(self) -> int:
        """Waveform samples per latent frame: `hop_length * 2` (1024)."""
        return self.config.hop_length * 2

    @property
    def decoder_receptive_radius(self) -> int:
        """Latent frames on each side that influence one decoded frame (overlap that makes chunked decoding exact)."""
        half_kernel = self.config.kernel_size // 2
        convs_per_rate = 2 * self.config.layers_per_block + 1
        mel_rate_radius = half_kernel * convs_per_rate  # mel-rate blocks + conv_out, in mel frames
        return half_kernel * convs_per_rate + 1 + math.ceil(mel_rate_radius / 2) + 1

    @property
    def encoder_receptive_radius(self) -> int:
        """Latent frames on each side whose mel frames influence one latent frame."""
        half_kernel = self.config.kernel_size // 2
        convs_per_rate = 2 * self.config.layers_per_block + 1
        mel_rate_radius = half_kernel * convs_per_rate + 1  # conv_in + blocks + downsample, in mel frames
        return math.ceil(mel_rate_radius / 2) + half_kernel * convs_per_rate + 1

    def enable_tiling(self, chunk_size: int | None = None, overlap: int | None = None) -> None:
        r"""
        Encode and decode long inputs in overlapping chunks along time, so memory stays flat with length.

        Args:
            chunk_size (`int`, *optional*): Latent frames per chunk (default 512, ~11.9 s).
            overlap (`int`, *optional*): Latent frames of context on each side of a chunk, cropped after processing;
                `None` uses the receptive radius, which makes chunked results equal full ones.
        """
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f"`chunk_size` must be >= 1 latent frame, got {chunk_size}.")
            self.tile_latent_frames = int(chunk_size)
        if overlap is not None:
            if overlap < 0:
                raise ValueError(f"`overlap` must be >= 0, got {overlap}.")
        self.tile_overlap_frames = overlap
        self.use_tiling = True

    def set_latent_statistics(
        self, latents_mean: list[float] | torch.Tensor, latents_std: list[float] | torch.Tensor, scaling_factor=None
    ) -> None:
        """Store per-channel latent statistics (and optionally a new `scaling_factor`) in the config."""
        latents_mean = [float(v) for v in torch.as_tensor(latents_mean).flatten().tolist()]
        latents_std = [float(v) for v in torch.as_tensor(latents_std).flatten().tolist()]
        self._check_latent_statistics(latents_mean, latents_std, self.config.latent_channels)
        updates = {"latents_mean": latents_mean, "latents_std": latents_std}
        if scaling_factor is not None:
            if scaling_factor <= 0:
                raise ValueError(f"`scaling_factor` must be > 0, got {scaling_factor}.")
            updates["scaling_factor"] = float(scaling_factor)
        self.register_to_config(**updates)

    def _latent_statistics(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.latents_mean is None:
            return None
        shape = (1, -1) + (1,) * (latents.ndim - 2)
        mean = torch.tensor(self.config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(self.config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
        return mean, std

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        r"""
        Raw VAE latents -> the space the flow transformer models: `(z - latents_mean) / latents_std * scaling_factor`
        (or `z * scaling_factor` without statistics).

        Args:
            latents (`torch.Tensor` of shape `(batch, latent_channels, frames)`).
        """
        stats = self._latent_statistics(latents)
        if stats is not None:
            latents = (latents - stats[0]) / stats[1]
        return latents * self.config.scaling_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latents`: the transformer's latents -> raw latents for `decode`."""
        latents = latents / self.config.scaling_factor
        stats = self._latent_statistics(latents)
        if stats is not None:
            latents = latents * stats[1] + stats[0]
        return latents

    # -- mel front end -------------------------------------------------------------------------------------------

    def mel_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, num_samples)` or `(batch, 1, num_samples)`): Mono 44.1 kHz.

        Returns:
            `torch.Tensor` of shape `(batch, mel_bins, mel_frames)`, float32 log-mel.
        """
        if waveform.ndim == 3:
            if waveform.shape[1] != 1:
                raise ValueError(
                    f"`waveform` must be mono (batch, 1, num_samples), got shape {tuple(waveform.shape)}."
                )
            waveform = waveform[:, 0]
        if waveform.ndim != 2:
            raise ValueError(
                "`waveform` must have shape (batch, num_samples) or (batch, 1, num_samples), got "
                f"{tuple(waveform.shape)}."
            )
        return self.log_mel(waveform)

    def _as_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform `(B, N)` / `(B, 1, N)` or mel `(B, mel_bins, T)` -> mel `(B, mel_bins, T)`."""
        if x.ndim == 2 or (x.ndim == 3 and x.shape[1] == 1 and self.config.mel_bins != 1):
            return self.mel_spectrogram(x)
        if x.ndim == 3 and x.shape[1] == self.config.mel_bins:
            return x
        raise ValueError(
            f"`x` must be a waveform (batch, num_samples) / (batch, 1, num_samples) or a mel "
            f"(batch, {self.config.mel_bins}, frames), got shape {tuple(x.shape)}."
        )

    # -- chunking and slicing, shared by encode and decode ----------------------------------------------------------

    def _resolve_chunk_size(self, chunk_size: int | None, latent_frames: int) -> int | None:
        """The chunk length in latent frames: `chunk_size` if given, else `tile_latent_frames` when tiling is on and
        the input is longer than one tile, else `None` (no chunking)."""
        if chunk_size is None and self.use_tiling and latent_frames > self.tile_latent_frames:
            chunk_size = self.tile_latent_frames
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1 latent frame, got {chunk_size}.")
        return chunk_size

    def _map_batch_slices(self, function, inputs: torch.Tensor) -> torch.Tensor:
        """`function` over the batch: sample by sample when slicing is on (`enable_slicing`), else all at once."""
        if self.use_slicing and inputs.shape[0] > 1:
            return torch.cat([function(batch_slice) for batch_slice in inputs.split(1)])
        return function(inputs)

    # -- encode ---------------------------------------------------------------------------------------------------

    def _encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        hidden_states = (mel.to(self.dtype) - self.config.mel_mean) / self.config.mel_std
        return self.quant_conv(self.encoder(hidden_states))

    def _chunked_encode_mel(self, mel: torch.Tensor, chunk_size: int, overlap: int) -> torch.Tensor:
        mel_frames = mel.shape[-1]
        chunks = []
        for start, end, window_start, window_end in _chunk_windows(math.ceil(mel_frames / 2), chunk_size, overlap):
            # Windows start on even mel frames, so latent frame j of a window is latent frame window_start + j.
            moments = self._encode_mel(mel[..., 2 * window_start : min(mel_frames, 2 * window_end)])
            chunks.append(moments[..., start - window_start : end - window_start])
        return torch.cat(chunks, dim=-1)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True, chunk_size: int | None = None
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution1D]:
        r"""
        Encode a waveform or a log-mel into the latent posterior.

        Args:
            x (`torch.Tensor`): Mono 44.1 kHz waveform of shape `(batch, num_samples)` or `(batch, 1, num_samples)`,
                or a log-mel of shape `(batch, mel_bins, mel_frames)` from `mel_spectrogram`.
            return_dict (`bool`, defaults to `True`): Return an `AutoencoderKLOutput` instead of a tuple.
            chunk_size (`int`, *optional*): Encode in chunks of this many latent frames (overrides `enable_tiling`).

        Returns:
            `AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution1D)` whose mean/std have shape
            `(batch, latent_channels, ceil(mel_frames / 2))`.
        """
        mel = self._as_mel(x)
        chunk_size = self._resolve_chunk_size(chunk_size, math.ceil(mel.shape[-1] / 2))
        overlap = self.tile_overlap_frames if self.tile_overlap_frames is not None else self.encoder_receptive_radius

        def encode_one(mel_batch: torch.Tensor) -> torch.Tensor:
            if chunk_size is not None and math.ceil(mel_batch.shape[-1] / 2) > chunk_size:
                return self._chunked_encode_mel(mel_batch, chunk_size, overlap)
            return self._encode_mel(mel_batch)

        moments = self._map_batch_slices(encode_one, mel)
        posterior = DiagonalGaussianDistribution1D(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # -- decode ---------------------------------------------------------------------------------------------------

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mel = self.decoder(self.post_quant_conv(latents.to(self.dtype)))
        return mel * self.config.mel_std + self.config.mel_mean

    def _chunked_decode_latents(self, latents: torch.Tensor, chunk_size: int, overlap: int) -> torch.Tensor:
        chunks = []
        for start, end, window_start, window_end in _chunk_windows(latents.shape[-1], chunk_size, overlap):
            mel = self._decode_latents(latents[..., window_start:window_end])
            chunks.append(mel[..., 2 * (start - window_start) : 2 * (end - window_start)])
        return torch.cat(chunks, dim=-1)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, return_dict: bool = True, chunk_size: int | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Decode raw latents (apply `denormalize_latents` first to the transformer's output) into a log-mel.

        Args:
            z (`torch.Tensor` of shape `(batch, latent_channels, latent_frames)`): Latents.
            return_dict (`bool`, defaults to `True`): Return a `DecoderOutput` instead of a tuple.
            chunk_size (`int`, *optional*): Decode in overlapping chunks of this many latent frames (memory stays
                flat with length; overlap from `enable_tiling`, the exact receptive radius by default).

        Returns:
            `DecoderOutput(sample=mel)` with `mel` of shape `(batch, mel_bins, 2 * latent_frames)`.
        """
        if z.ndim != 3 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"`z` must have shape (batch, {self.config.latent_channels}, latent_frames), got {tuple(z.shape)}."
            )
        chunk_size = self._resolve_chunk_size(chunk_size, z.shape[-1])
        overlap = self.tile_overlap_frames if self.tile_overlap_frames is not None else self.decoder_receptive_radius

        def decode_one(latents: torch.Tensor) -> torch.Tensor:
            if chunk_size is not None and latents.shape[-1] > chunk_size:
                return self._chunked_decode_latents(latents, chunk_size, overlap)
            return self._decode_latents(latents)

        mel = self._map_batch_slices(decode_one, z)
        if not return_dict:
            return (mel,)
        return DecoderOutput(sample=mel)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Reconstruct a waveform's (or a mel's) log-mel.

        Args:
            sample (`torch.Tensor`): Waveform `(batch, num_samples)` / `(batch, 1, num_samples)` or log-mel
                `(batch, mel_bins, mel_frames)`.
            sample_posterior (`bool`, defaults to `False`): Sample the posterior instead of taking its mean.
            return_dict (`bool`, defaults to `True`): Return a `DecoderOutput` instead of a tuple.
            generator (`torch.Generator`, *optional*): For posterior sampling.

        Returns:
            `DecoderOutput(sample=mel)` with `mel` of shape `(batch, mel_bins, mel_frames)` (cropped to the input's
            frames; the decoder itself returns `2 * ceil(mel_frames / 2)`).
        """
        mel = self._as_mel(sample)
        posterior = self.encode(mel).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        reconstruction = self.decode(latents).sample[..., : mel.shape[-1]]
        if not return_dict:
            return (reconstruction,)
        return DecoderOutput(sample=reconstruction)
