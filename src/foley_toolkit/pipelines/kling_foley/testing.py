"""Tiny, randomly initialised [`KlingFoleyPipeline`] components and test videos.

Everything here is the real classes at toy sizes (a few hundred thousand parameters in all), built offline in
about a second: for tests (`tests/utils.py` re-exports these), for `examples/*.py --tiny`, and for trying the API
anywhere. The audio is noise-like; only shapes, lengths and plumbing are meaningful.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ...models.autoencoders.autoencoder_mel_vae import MelVAE
from ...models.encoders.presets import (
    build_sync_encoder,
    build_text_encoder,
    build_tiny_t5_tokenizer,
    build_vision_encoder,
    tiny_metaclip_config,
    tiny_synchformer_config,
    tiny_t5_config,
)
from ...models.mono2stereo import Mono2Stereo
from ...models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer
from ...models.vocoder import build_vocoder


# Two upsampling stages whose product is the mel hop (512): the cheapest vocoder that keeps the real geometry.
TINY_VOCODER_CONFIG = {
    "num_mels": 128,
    "upsample_initial_channel": 8,
    "upsample_rates": [32, 16],
    "upsample_kernel_sizes": [64, 32],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1]],
}
TINY_LATENT_CHANNELS = 8


def _randomize_zero_parameters(model: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Give zero-initialised parameters (adaLN-zero gates, zero output layers) small random values, so that a freshly
    built tiny model depends on every input — otherwise its output would be exactly zero / the identity."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() and not bool(parameter.any()):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def get_dummy_components(stereo: bool = True, seed: int = 0) -> dict:
    r"""
    Tiny components of a [`KlingFoleyPipeline`]: `KlingFoleyPipeline(**get_dummy_components())`.

    Args:
        stereo (`bool`, defaults to `True`): Include a [`Mono2Stereo`] (else `mono2stereo=None`, mono output).
        seed (`int`, defaults to 0): Seed of the random weights; the same seed gives the same weights.

    Returns:
        `dict` with `tokenizer`, `text_encoder`, `vision_encoder`, `sync_encoder`, `transformer`, `scheduler`, `vae`,
        `vocoder` and `mono2stereo`.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    tokenizer = build_tiny_t5_tokenizer()
    text_encoder = build_text_encoder(tiny_t5_config())
    vision_encoder = build_vision_encoder(tiny_metaclip_config())
    sync_encoder = build_sync_encoder(tiny_synchformer_config())

    transformer = FoleyMMDiTTransformer(
        in_channels=TINY_LATENT_CHANNELS,
        text_dim=text_encoder.config.d_model,
        clip_dim=vision_encoder.config.projection_dim,
        sync_dim=sync_encoder.config.hidden_size,
        num_attention_heads=2,
        attention_head_dim=8,
        num_joint_layers=1,
        num_single_layers=1,
        mlp_ratio=1.0,
        timestep_embedding_dim=16,
        max_seconds=32,
    )
    _randomize_zero_parameters(transformer, generator)

    vae = MelVAE(latent_channels=TINY_LATENT_CHANNELS, block_out_channels=(16, 16), layers_per_block=1, kernel_size=3)
    vocoder = build_vocoder(TINY_VOCODER_CONFIG)
    mono2stereo = None
    if stereo:
        mono2stereo = Mono2Stereo(
            hidden_channels=16, num_layers=1, kernel_size=3, video_feature_dim=vision_encoder.config.projection_dim
        )
        _randomize_zero_parameters(mono2stereo, generator)

    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vision_encoder": vision_encoder,
        "sync_encoder": sync_encoder,
        "transformer": transformer.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae.eval(),
        "vocoder": vocoder.eval(),
        "mono2stereo": None if mono2stereo is None else mono2stereo.eval(),
    }


def make_test_video(
    path: str | os.PathLike,
    duration: float,
    fps: float,
    size: tuple[int, int] = (64, 48),
    audio: bool = False,
) -> str:
    r"""
    Write a small H.264 mp4 (a bright square moving across a gradient) with PyAV.

    Args:
        path (`str` or `os.PathLike`): Output `.mp4`.
        duration (`float`): Seconds; the file holds `round(duration * fps)` frames, so its exact duration is
            `frames / fps`.
        fps (`float`): Frame rate; NTSC rates such as 29.97 are written as 30000/1001.
        size (`tuple[int, int]`, defaults to `(64, 48)`): `(width, height)`, even numbers.
        audio (`bool`, defaults to `False`): Add a 44.1 kHz stereo AAC track (a 440 Hz tone) of the same duration.

    Returns:
        `str`: The path written.
    """
    import av

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    width, height = size
    rate = Fraction(fps).limit_denominator(1000)
    for ntsc in (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001)):
        if abs(fps - float(ntsc)) < 1e-3:  # 29.97 means NTSC 30000/1001
            rate = ntsc
    num_frames = max(int(round(duration * fps)), 1)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 64)], -1)
    background = background.astype(np.uint8)
    square = max(min(width, height) // 4, 2)

    with av.open(path, mode="w") as container:
        video_stream = container.add_stream("libx264", rate=rate)
        video_stream.width, video_stream.height = width, height
        video_stream.pix_fmt = "yuv420p"
        video_stream.options = {"preset": "ultrafast", "crf": "23"}
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=44100)
            audio_stream.layout = "stereo"

        for index in range(num_frames):
            image = background.copy()
            left = int((width - square) * index / max(num_frames - 1, 1))
            image[height // 2 - square // 2 : height // 2 + square // 2, left : left + square] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in video_stream.encode(frame):
                container.mux(packet)
        for packet in video_stream.encode():
            container.mux(packet)

        if audio_stream is not None:
            num_samples = int(round(float(num_frames / rate) * 44100))
            t = np.arange(num_samples) / 44100
            tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
            samples = np.ascontiguousarray(np.stack([tone, tone]))
            chunk = 1024
            for start in range(0, num_samples, chunk):
                piece = np.ascontiguousarray(samples[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
                frame.sample_rate = 44100
                frame.pts = start
                for packet in audio_stream.encode(frame):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path
