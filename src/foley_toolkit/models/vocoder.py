"""The vocoder: diffusers' `MMAudioVocoder` (BigVGAN-v2) with Kling-Foley's configs.

`MMAudioVocoder` is BigVGAN-v2's generator in its inference form (weight norm folded in, anti-aliased Snake-beta
activations, no bias and no tanh on the last convolution, output clamped to [-1, 1]): the same module names as
NVIDIA's `bigvgan.py` (`conv_pre`, `ups.{i}.0`, `resblocks.{j}.convs1/convs2/activations`, `activation_post`,
`conv_post`), so public BigVGAN-v2 checkpoints load after folding their weight norms. It consumes the exact log-mel
of `LogMelSpectrogram`. One call turns one mel into one waveform; stereo runs it once per channel (`vocode`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from diffusers import ModelMixin  # noqa: F401  (component modules import ModelMixin at top level, DESIGN.md 7)
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder

__all__ = [
    "MMAudioVocoder",
    "bigvgan_v2_44khz_128band_512x_config",
    "tiny_vocoder_config",
    "validate_vocoder_config",
    "build_vocoder",
    "load_vocoder",
    "vocoder_hop_length",
    "vocode",
]


def bigvgan_v2_44khz_128band_512x_config() -> dict[str, Any]:
    """`MMAudioVocoder` config of NVIDIA's `bigvgan_v2_44khz_128band_512x` (122M parameters): hop product
    8*4*2*2*2*2 = 512, initial width 1536, AMP resblocks with kernels 3/7/11 and dilations 1/3/5."""
    return {
        "num_mels": 128,
        "upsample_initial_channel": 1536,
        "upsample_rates": [8, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    }


def tiny_vocoder_config() -> dict[str, Any]:
    """A tiny but structurally complete config (hop product 512) for tests and quick experiments (~43k params)."""
    return {
        "num_mels": 128,
        "upsample_initial_channel": 32,
        "upsample_rates": [8, 4, 4, 4],
        "upsample_kernel_sizes": [16, 8, 8, 8],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3]],
    }


def validate_vocoder_config(config: dict[str, Any], hop_length: int = 512, num_mels: int = 128) -> dict[str, Any]:
    """Check that a vocoder config fits the mel front end: `prod(upsample_rates) == hop_length` (one mel frame ->
    `hop_length` samples) and `num_mels` bands. Returns the config; raises `ValueError` otherwise."""
    rates = list(config.get("upsample_rates", ()))
    kernels = list(config.get("upsample_kernel_sizes", ()))
    if not rates or math.prod(rates) != hop_length:
        raise ValueError(
            f"The vocoder's `upsample_rates` {rates} multiply to {math.prod(rates) if rates else 0}; they must "
            f"multiply to the mel hop length {hop_length}."
        )
    if len(kernels) != len(rates):
        raise ValueError(f"`upsample_kernel_sizes` {kernels} must have one entry per upsample rate {rates}.")
    if config.get("num_mels", 128) != num_mels:
        raise ValueError(f"The vocoder's `num_mels` ({config.get('num_mels')}) must equal the mel bands ({num_mels}).")
    return config


def build_vocoder(config: dict[str, Any] | None = None, hop_length: int = 512) -> MMAudioVocoder:
    """An untrained `MMAudioVocoder` from `config` (the full BigVGAN-v2 44 kHz 512x config if `None`), validated."""
    config = dict(bigvgan_v2_44khz_128band_512x_config() if config is None else config)
    return MMAudioVocoder(
        **validate_vocoder_config(config, hop_length=hop_length, num_mels=config.get("num_mels", 128))
    )


def vocoder_hop_length(vocoder: torch.nn.Module) -> int:
    """Samples per mel frame of a vocoder: the product of a BigVGAN's upsample rates, a Vocos's STFT hop."""
    if hasattr(vocoder.config, "upsample_rates"):
        return math.prod(vocoder.config.upsample_rates)
    return int(vocoder.config.hop_length)


def load_vocoder(pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs):
    """Load a saved vocoder of either kind (`MMAudioVocoder` or `VocosVocoder`), chosen by the `_class_name` of
    its `config.json`; `kwargs` go to `from_pretrained`."""
    from .vocoder_vocos import VocosVocoder

    classes = {cls.__name__: cls for cls in (MMAudioVocoder, VocosVocoder)}
    config = MMAudioVocoder.load_config(pretrained_model_name_or_path, subfolder=subfolder)
    name = config.get("_class_name")
    if name not in classes:
        raise ValueError(
            f"`{pretrained_model_name_or_path}` (subfolder {subfolder!r}) holds a {name!r}, expected one of {sorted(classes)}."
        )
    return classes[name].from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


@torch.no_grad()
def vocode(vocoder: MMAudioVocoder, mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    r"""
    Log-mel -> waveform, running the (mono) vocoder once per channel.

    Args:
        vocoder (`MMAudioVocoder`): The vocoder.
        mel (`torch.Tensor` of shape `(batch, num_mels, frames)` or `(batch, channels, num_mels, frames)`).
        num_samples (`int`, *optional*): Trim (or zero-pad) the output to this many samples.

    Returns:
        `torch.Tensor` of shape `(batch, channels, samples)` (channels = 1 for a 3-D `mel`), float32 in [-1, 1],
        `samples = frames * hop` unless `num_samples` is given.
    """
    if mel.ndim == 3:
        mel = mel.unsqueeze(1)
    if mel.ndim != 4:
        raise ValueError(
            f"`mel` must be (batch, num_mels, frames) or (batch, channels, num_mels, frames), got {tuple(mel.shape)}."
        )
    batch, channels = mel.shape[:2]
    param = next(vocoder.parameters())
    waveform = vocoder(mel.reshape(batch * channels, *mel.shape[2:]).to(param.device, param.dtype)).sample
    waveform = waveform.float().reshape(batch, channels, -1)
    if num_samples is not None:
        if waveform.shape[-1] >= num_samples:
            waveform = waveform[..., :num_samples]
        else:
            waveform = torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[-1]))
    return waveform
