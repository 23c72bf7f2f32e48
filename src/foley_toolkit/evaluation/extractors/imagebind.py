r"""IB-score: the ImageBind audio-visual score of av-benchmark, behind a pluggable embedder.

    IB-score = mean over clips of cos(video_embedding(source video), audio_embedding(generated audio))

(av-benchmark ``evaluate.py``: ``torch.cosine_similarity(video, audio, dim=-1).mean()``; some papers print it x100.)

Any `AudioVisualEmbedder` (``embed_video(path) -> (D,)``, ``embed_audio(path) -> (D,)``, both in one joint space) can
be plugged in (``foley-toolkit evaluate --ib-embedder module:factory``). `ImageBindEmbedder` adapts Meta's ImageBind
(imagebind_huge, CC-BY-NC 4.0) with av-benchmark's inputs. ImageBind has no usable PyPI release: the ``imagebind``
0.0.1.dev0 package is an empty placeholder (a wheel with metadata only, no module); install the code from its
repository (``pip install git+https://github.com/facebookresearch/ImageBind`` or av-benchmark's fork
``git+https://github.com/hkchengrex/ImageBind``) and download ``imagebind_huge.pth``
(``https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth``). The adapter is not exercised by this repository's
tests (the package cannot be installed offline); the score's arithmetic and the CLI are, with a test embedder.

av-benchmark's inputs (``av_bench/data/video_dataset.py``, ``audio_dataset.py``, ``extract_video.py``):

* video: the first ``duration`` (8) s at 0.5 fps = 4 frames; shorter side resized to 224 (bicubic), scaled to [0, 1],
  CLIP mean / std (here the resize runs on float frames, torchvision's on uint8: differences <= 1/255); 3 spatial
  crops of 224 (ImageBind's ``SpatialCrop``: start, centre, end of the longer side); the
  clips are every 2 consecutive frames (3 clips) of every crop -> 9 clips of 2 frames, averaged by ImageBind;
* audio: ImageBind's own ``data.load_and_transform_audio_data`` (16 kHz, 3 clips of 2 s spread over the clip, Kaldi
  fbank 128 x 204, mean -4.268, std 9.138).
"""

from __future__ import annotations

import importlib
import math
import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch

IMAGEBIND_INSTALL_HINT = (
    "IB-score with ImageBind needs Meta's ImageBind code, which is not on PyPI (the `imagebind` 0.0.1.dev0 package "
    "is an empty placeholder): `pip install git+https://github.com/facebookresearch/ImageBind` (or av-benchmark's "
    "fork git+https://github.com/hkchengrex/ImageBind), and the weights "
    "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth (CC-BY-NC 4.0)."
)


class AudioVisualEmbedder(ABC):
    """Embeds a video (its picture) and an audio file into one joint space."""

    name: str = "audio-visual"

    @abstractmethod
    def embed_video(self, path: str | os.PathLike) -> torch.Tensor:
        """`(D,)` embedding of a video file's picture."""

    @abstractmethod
    def embed_audio(self, path: str | os.PathLike) -> torch.Tensor:
        """`(D,)` embedding of an audio file."""


def ib_score(embedder: AudioVisualEmbedder, pairs: Sequence[tuple[str, str]]) -> float:
    r"""
    IB-score of `(video_path, generated_audio_path)` pairs: the mean cosine similarity of their embeddings.

    Returns:
        `float` in [-1, 1].
    """
    from ..distribution_metrics import mean_cosine_similarity

    if not pairs:
        raise ValueError("`pairs` is empty: IB-score needs at least one (video, audio) pair.")
    videos, audios = [], []
    for video_path, audio_path in pairs:
        video, audio = embedder.embed_video(video_path), embedder.embed_audio(audio_path)
        if video.ndim != 1 or video.shape != audio.shape:
            raise ValueError(
                f"{type(embedder).__name__} returned a {tuple(video.shape)} video and a {tuple(audio.shape)} audio "
                f"embedding for {os.fspath(video_path)!r}; expected two (D,) vectors."
            )
        videos.append(video.float().cpu())
        audios.append(audio.float().cpu())
    return mean_cosine_similarity(torch.stack(videos), torch.stack(audios))


def load_embedder(spec: str, **kwargs) -> AudioVisualEmbedder:
    """The embedder that ``"package.module:factory"`` names, called with `kwargs` (e.g. ``weights=``, ``device=``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"`--ib-embedder` must be 'package.module:factory', got {spec!r}.")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"`--ib-embedder` {spec!r} could not be imported: {type(error).__name__}: {error}") from error
    embedder = factory(**kwargs)
    if not isinstance(embedder, AudioVisualEmbedder):
        raise ValueError(f"`--ib-embedder` {spec!r} returned a {type(embedder).__name__}, not an AudioVisualEmbedder.")
    return embedder


def sample_frames(path: str | os.PathLike, times: Sequence[float]) -> np.ndarray:
    """`(len(times), H, W, 3)` uint8 RGB: for each time, the last frame shown at it (PyAV decode, native size)."""
    from ...audio_utils import open_media

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {os.fspath(path)!r} does not exist.")
    frames, wanted = [], sorted(times)
    with open_media(os.fspath(path), f"video {os.fspath(path)!r}", "video") as container:
        stream = container.streams.video[0]
        last = None
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            while wanted and t > wanted[0] + 1e-6:
                frames.append(last if last is not None else frame.to_ndarray(format="rgb24"))
                wanted.pop(0)
            last = frame.to_ndarray(format="rgb24")
            if not wanted:
                break
        while wanted and last is not None:  # times at or after the last frame
            frames.append(last)
            wanted.pop(0)
    if len(frames) != len(times):
        raise ValueError(f"{os.fspath(path)!r} has no decodable video frames.")
    return np.stack(frames)


def imagebind_video_clips(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    r"""
    av-benchmark's ImageBind video input from `frames` `(T, H, W, 3)` uint8 (T = 4 for 8 s at 0.5 fps).

    Returns:
        `torch.Tensor` of shape `(3 * (T - 1), 3, 2, size, size)`: every 2 consecutive frames of each of 3 spatial
        crops, CLIP-normalised.
    """
    import torch.nn.functional as F

    from ...video_processor import CLIP_MEAN, CLIP_STD

    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must be (T >= 2, H, W, 3) RGB, got {frames.shape}.")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    h, w = video.shape[-2:]
    # torchvision's Resize(224): the shorter side to `size`, the longer one to int(size * long / short).
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    video = F.interpolate(video, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    video = (video - mean) / std
    crops = []
    for index in range(3):  # ImageBind's SpatialCrop(224, 3): start, centre (ceil), end along the longer side
        top, left = math.ceil((new_h - size) / 2), math.ceil((new_w - size) / 2)
        if new_h > new_w:
            top = {0: 0, 1: top, 2: new_h - size}[index]
        else:
            left = {0: 0, 1: left, 2: new_w - size}[index]
        crops.append(video[:, :, top : top + size, left : left + size])
    # av-benchmark's order: for each pair of consecutive frames, the 3 crops (ImageBind averages over all clips).
    clips = [crop[i : i + 2] for i in range(video.shape[0] - 1) for crop in crops]  # (2, 3, size, size) each
    return torch.stack(clips).permute(0, 2, 1, 3, 4)  # (clips, 3, 2, size, size)


class ImageBindEmbedder(AudioVisualEmbedder):
    r"""
    ImageBind (imagebind_huge) audio and vision embeddings with av-benchmark's inputs; needs Meta's ImageBind package.

    Args:
        weights (`str`): Local ``imagebind_huge.pth``.
        device (`str`, *optional*): Where it runs.
        duration (`float`, defaults to 8.0): Seconds of video sampled at 0.5 fps (av-benchmark's ``audio_length``).
    """

    name = "imagebind"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None, duration: float = 8.0):
        try:
            from imagebind import data as imagebind_data
            from imagebind.models import imagebind_model
            from imagebind.models.imagebind_model import ModalityType
        except ImportError as error:
            raise ImportError(f"{IMAGEBIND_INSTALL_HINT} ({type(error).__name__}: {error})") from error
        from ...conversion.common import load_checkpoint, unwrap_state_dict

        if weights is None:
            raise ValueError("`--imagebind-weights` is required: a local imagebind_huge.pth.")
        weights = os.fspath(weights)
        self.device = device or "cpu"
        self.model = imagebind_model.imagebind_huge(pretrained=False)
        state = unwrap_state_dict(load_checkpoint(weights, "weights"), weights, wrappers=("model", "state_dict"))
        self.model.load_state_dict(state, strict=True)
        self.model = self.model.to(self.device).eval()
        self.data, self.modality = imagebind_data, ModalityType
        self.duration = float(duration)

    @torch.inference_mode()
    def embed_video(self, path: str | os.PathLike) -> torch.Tensor:
        times = [2.0 * i for i in range(int(self.duration * 0.5))]  # 0.5 fps: 0, 2, 4, 6 s for 8 s
        clips = imagebind_video_clips(sample_frames(path, times))[None].to(self.device)
        return self.model({self.modality.VISION: clips})[self.modality.VISION][0].float().cpu()

    @torch.inference_mode()
    def embed_audio(self, path: str | os.PathLike) -> torch.Tensor:
        inputs = self.data.load_and_transform_audio_data([os.fspath(path)], self.device)
        return self.model({self.modality.AUDIO: inputs})[self.modality.AUDIO][0].float().cpu()
