"""Turns decoded video frames into Kling-Foley's encoder inputs: `FoleyVideoProcessor`.

Decoding and muxing live in `foley_toolkit.utils.video_io` (`load_video` resamples a video by timestamps to 8 fps
CLIP frames and 25 fps sync frames, uint8, 224 px); this module fits those frames to the duration being generated and
normalises them for the two video encoders:

* CLIP frames -> MetaCLIP input: resized to the vision encoder's resolution, normalised with the OpenAI/MetaCLIP mean
  and std (`preprocess_clip_frames`);
* sync frames -> Synchformer input: 224 px centre crops normalised to [-1, 1] (`preprocess_sync_frames`), resized to
  the sync encoder's resolution. Synchformer encodes a long video chunk by chunk; it calls
  `FoleyVideoProcessor.preprocess_sync` on each chunk (see `SynchformerEncoder.forward`), so the 25 fps track is
  never held in float as a whole.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .audio_utils import CLIP_FRAME_RATE, SYNC_FRAME_RATE, SYNC_SEGMENT_FRAMES
from .utils.video_io import CLIP_IMAGE_SIZE, SYNC_IMAGE_SIZE, VideoInput, VideoLike, load_video, write_video_with_audio


# OpenAI CLIP statistics, also used by MetaCLIP (open_clip `OPENAI_DATASET_MEAN/STD`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Synchformer normalises RGB in [0, 1] with mean 0.5 / std 0.5, i.e. to [-1, 1].
SYNC_MEAN = (0.5, 0.5, 0.5)
SYNC_STD = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------------------
# Normalisation for the encoders
# ----------------------------------------------------------------------------------------------------------


def _to_unit_float(frames: torch.Tensor, name: str, device) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"`{name}` must be `(..., 3, height, width)` RGB frames, got shape {tuple(frames.shape)}.")
    frames = frames.to(device=device)
    if frames.dtype == torch.uint8:
        return frames.to(torch.float32) / 255.0
    if frames.is_floating_point():
        return frames.to(torch.float32)
    raise ValueError(f"`{name}` must be uint8 or float in [0, 1], got dtype {frames.dtype}.")


def _resize_images(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    flat = F.interpolate(flat, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return flat.clamp(0.0, 1.0).reshape(*lead, 3, height, width)


def _normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean_t) / std_t


def preprocess_clip_frames(
    frames: torch.Tensor,
    image_size: int = CLIP_IMAGE_SIZE,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """CLIP frames -> vision-encoder input.

    Args:
        frames: `(..., 3, height, width)` uint8 RGB or float RGB in [0, 1] (e.g. `VideoInput.clip_frames`).
        image_size: encoder resolution; frames of another size are resized to `image_size` x `image_size`
            (bicubic, antialiased, whole frame, as `load_video` does).

    Returns:
        `(..., 3, image_size, image_size)` float, normalised with the OpenAI/MetaCLIP mean and std.
    """
    frames = _to_unit_float(frames, "frames", device)
    if frames.shape[-2:] != (image_size, image_size):
        frames = _resize_images(frames, image_size, image_size)
    return _normalize(frames, CLIP_MEAN, CLIP_STD).to(dtype)


def preprocess_sync_frames(
    frames: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Sync frames -> Synchformer input.

    Args:
        frames: `(..., 3, height, width)` uint8 RGB or float RGB in [0, 1] (e.g. `VideoInput.sync_frames`).
            Frames that are not 224x224 get the Synchformer transform: short side to 224, centre crop.

    Returns:
        `(..., 3, 224, 224)` float in [-1, 1] (mean 0.5, std 0.5 per channel).
    """
    frames = _to_unit_float(frames, "frames", device)
    height, width = frames.shape[-2:]
    if (height, width) != (SYNC_IMAGE_SIZE, SYNC_IMAGE_SIZE):
        scale = SYNC_IMAGE_SIZE / min(height, width)
        new_height = max(SYNC_IMAGE_SIZE, round(height * scale))
        new_width = max(SYNC_IMAGE_SIZE, round(width * scale))
        frames = _resize_images(frames, new_height, new_width)
        top, left = (new_height - SYNC_IMAGE_SIZE) // 2, (new_width - SYNC_IMAGE_SIZE) // 2
        frames = frames[..., top : top + SYNC_IMAGE_SIZE, left : left + SYNC_IMAGE_SIZE]
    return _normalize(frames, SYNC_MEAN, SYNC_STD).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------


def fit_frames(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Cut `frames` `(T, ...)` to `num_frames`, repeating the last frame if there are fewer (a decoder that returned
    a frame less than the duration's count, or a clip shorter than one Synchformer segment)."""
    if frames.shape[0] >= num_frames:
        return frames[:num_frames]
    pad = frames[-1:].expand(num_frames - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, pad], dim=0)


class FoleyVideoProcessor(ConfigMixin):
    r"""
    Decoded video ([`VideoInput`], from `load_video`) -> inputs of Kling-Foley's vision (CLIP) and sync (Synchformer)
    encoders for a given number of frames, in the spirit of diffusers' `VideoProcessor`. `KlingFoleyPipeline` builds
    one from its encoders' configs and decodes with `load_video` at the processor's frame rates.

    Args:
        clip_frame_rate (`float`, defaults to 8): Frame rate of the CLIP track.
        sync_frame_rate (`float`, defaults to 25): Frame rate of the Synchformer track.
        clip_image_size (`int`, defaults to 224): Resolution of the vision encoder.
        sync_image_size (`int`, defaults to 224): Resolution of the sync encoder (Synchformer's 224 px crops are resized
            to it; tiny test encoders use less).
        sync_segment_frames (`int`, defaults to 16): Frames of one Synchformer segment, the least a sync track holds.
    """

    config_name = "video_processor_config.json"

    @register_to_config
    def __init__(
        self,
        clip_frame_rate: float = CLIP_FRAME_RATE,
        sync_frame_rate: float = SYNC_FRAME_RATE,
        clip_image_size: int = CLIP_IMAGE_SIZE,
        sync_image_size: int = SYNC_IMAGE_SIZE,
        sync_segment_frames: int = SYNC_SEGMENT_FRAMES,
    ):
        super().__init__()
        for name, value in (("clip_image_size", clip_image_size), ("sync_image_size", sync_image_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if not clip_frame_rate > 0 or not sync_frame_rate > 0:
            raise ValueError(f"Frame rates must be positive, got {clip_frame_rate!r} and {sync_frame_rate!r}.")

    def preprocess(
        self,
        videos: Sequence[VideoInput],
        num_clip_frames: int,
        num_sync_frames: int,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Fit each video's two tracks to the frame counts of the duration being generated and make the CLIP pixels.

        Args:
            videos (`list[VideoInput]`): Decoded videos, each at least as long as the duration (`load_video`).
            num_clip_frames (`int`): CLIP frames of the duration; at least 1 are returned.
            num_sync_frames (`int`): Sync frames of the duration; at least `sync_segment_frames` are returned (a
                shorter clip repeats its last frame to fill one segment).
            dtype (`torch.dtype`, defaults to float32): dtype of the CLIP pixel values.
            device (*optional*): Device of the CLIP pixel values.

        Returns:
            `(clip_pixel_values, sync_frames)`: float `(batch, clip_frames, 3, clip_image_size, clip_image_size)`
            normalised for CLIP on `device` (8 fps: 4.8 MB per second of video in float32), and uint8
            `(batch, sync_frames, 3, 224, 224)` where the decoder left them, for the sync encoder, which normalises
            (and moves) them chunk by chunk with `preprocess_sync`.
        """
        if len(videos) == 0:
            raise ValueError("`videos` must hold at least one `VideoInput`.")
        num_clip_frames = max(int(num_clip_frames), 1)
        num_sync_frames = max(int(num_sync_frames), self.config.sync_segment_frames)
        clip_frames = torch.stack([fit_frames(video.clip_frames, num_clip_frames) for video in videos])
        sync_frames = torch.stack([fit_frames(video.sync_frames, num_sync_frames) for video in videos])
        clip_pixel_values = preprocess_clip_frames(
            clip_frames, image_size=self.config.clip_image_size, dtype=dtype, device=device
        )
        return clip_pixel_values, sync_frames

    def preprocess_sync(
        self,
        frames: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> torch.Tensor:
        r"""
        Sync frames -> Synchformer input: `preprocess_sync_frames` (224 px crop, [-1, 1]), then resized to
        `sync_image_size` (bilinear, antialiased) when the encoder takes another resolution.

        Args:
            frames (`torch.Tensor`): `(..., 3, height, width)` uint8 RGB or float RGB in [0, 1].
            dtype (`torch.dtype`, defaults to float32): Output dtype; the resize runs in float32 (the antialiased
                resize has no CPU kernel for bf16 / fp16).
            device (*optional*): Device of the output.

        Returns:
            `(..., 3, sync_image_size, sync_image_size)` float in [-1, 1].
        """
        frames = preprocess_sync_frames(frames, dtype=torch.float32, device=device)
        size = self.config.sync_image_size
        if frames.shape[-1] != size:
            lead = frames.shape[:-3]
            frames = frames.reshape(-1, *frames.shape[-3:])
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True)
            frames = frames.reshape(*lead, *frames.shape[-3:])
        return frames.to(dtype)


__all__ = [
    "CLIP_FRAME_RATE",
    "SYNC_FRAME_RATE",
    "CLIP_MEAN",
    "CLIP_STD",
    "SYNC_MEAN",
    "SYNC_STD",
    "FoleyVideoProcessor",
    "VideoInput",
    "VideoLike",
    "fit_frames",
    "load_video",
    "preprocess_clip_frames",
    "preprocess_sync_frames",
    "write_video_with_audio",
]
