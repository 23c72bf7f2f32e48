r"""DeSync: the audio-visual offset a Synchformer-style offset classifier predicts, averaged in seconds.

av-benchmark's convention (``av_bench/evaluate.py``, README "DeSync Score"): the 8 s clip is cut into Synchformer
segments (16 frames = 0.64 s at 25 fps, a new one every 8 frames = 0.32 s; 24 segments for 8 s); the offset
classifier sees the **first** ``W`` segments and the **last** ``W`` segments (``W = 14``: 4.8 s windows, the
training window of the public Synchformer), each window's predicted class is mapped to its offset on the class grid
(``linspace(-2, 2, 21)`` s for the public model) and

    DeSync = mean over clips and both windows of |predicted offset|   (seconds)

Both windows are always scored, also when they coincide (a clip of exactly ``W`` segments), as av-benchmark does.

`desync_clip_offsets` is that windowing for any classifier ``(visual_tokens, audio) -> logits``.
`SynchformerOffsetDeSync` is av-benchmark's own model: the public Synchformer's visual branch (`SynchformerEncoder`
converted by ``foley-toolkit convert synchformer``) and its audio branch + offset classifier
(`SynchformerOffsetClassifier`, ``--head-out``) on 16 kHz audio. av-benchmark encodes the 24 segments of the whole
8 s clip and classifies segments ``[:14]`` and ``[-14:]``; both branches encode each segment on its own and the
windows start on the segment grid (segment ``s`` = samples ``5120 s ... 5120 s + 10240`` at 16 kHz = frames
``8 s ... 8 s + 15`` at 25 fps), so classifying the cut windows gives the same logits.
`SynchformerDeSync` plugs in the project's `SynchformerEncoder` (visual tokens of the whole clip) and its trained
`SynchformerSyncHead` (audio branch on the project's 44.1 kHz log-mel + offset classes ``(k - K // 2) *
offset_step``, see ``training/train_sync_encoder.py``).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from ...audio_utils import SYNC_FRAME_RATE, SYNC_SEGMENT_FRAMES, SYNC_SEGMENT_STRIDE, SYNC_TOKENS_PER_SEGMENT

# The public Synchformer's offset classes and window (av-benchmark).
AV_BENCHMARK_OFFSET_GRID = tuple(float(x) for x in np.linspace(-2.0, 2.0, 21))
AV_BENCHMARK_WINDOW_SEGMENTS = 14

OffsetClassifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def desync_window_starts(num_segments: int, window_segments: int) -> tuple[int, int]:
    """First segment of the first and of the last window of `window_segments` segments among `num_segments`."""
    if window_segments <= 0:
        raise ValueError(f"`window_segments` must be positive, got {window_segments}.")
    if num_segments < window_segments:
        seconds = (SYNC_SEGMENT_FRAMES + SYNC_SEGMENT_STRIDE * (window_segments - 1)) / SYNC_FRAME_RATE
        raise ValueError(
            f"the clip has {num_segments} Synchformer segments, fewer than the {window_segments} of a DeSync window "
            f"({seconds:.2f} s)."
        )
    return 0, num_segments - window_segments


def segment_window_seconds(start_segment: int, window_segments: int) -> tuple[float, float]:
    """``(start, duration)`` in seconds of the window of `window_segments` segments from `start_segment`."""
    frames = SYNC_SEGMENT_FRAMES + SYNC_SEGMENT_STRIDE * (window_segments - 1)
    return start_segment * SYNC_SEGMENT_STRIDE / SYNC_FRAME_RATE, frames / SYNC_FRAME_RATE


def desync_clip_offsets(
    classifier: OffsetClassifier,
    visual_tokens: torch.Tensor,
    audio: torch.Tensor,
    sample_rate: int,
    offset_grid: Sequence[float],
    window_segments: int = AV_BENCHMARK_WINDOW_SEGMENTS,
) -> list[float]:
    r"""
    The predicted offsets (seconds, signed) of the first and the last window of one clip.

    Args:
        classifier (`Callable`): ``(visual_tokens (1, window_segments * 8, D), audio (1, samples)) -> logits (1, K)``.
        visual_tokens (`torch.Tensor` of shape `(num_segments * 8, D)`): Synchformer tokens of the whole clip
            (segment ``s`` gives tokens ``8 s ... 8 s + 7``).
        audio (`torch.Tensor` of shape `(samples,)`): The clip's mono audio at `sample_rate`, starting with the video.
        sample_rate (`int`): Its rate.
        offset_grid (`Sequence[float]`): Offset in seconds of each of the K classes.
        window_segments (`int`, defaults to 14): Segments per window.

    Returns:
        `[first_window_offset, last_window_offset]`.
    """
    if visual_tokens.ndim != 2 or visual_tokens.shape[0] % SYNC_TOKENS_PER_SEGMENT:
        raise ValueError(
            f"`visual_tokens` must be (segments * {SYNC_TOKENS_PER_SEGMENT}, dim), got {tuple(visual_tokens.shape)}."
        )
    if audio.ndim != 1:
        raise ValueError(f"`audio` must be mono (samples,), got {tuple(audio.shape)}.")
    grid = torch.as_tensor(list(offset_grid), dtype=torch.float64)
    num_segments = visual_tokens.shape[0] // SYNC_TOKENS_PER_SEGMENT
    offsets = []
    for start in desync_window_starts(num_segments, window_segments):
        start_s, duration_s = segment_window_seconds(start, window_segments)
        first, length = int(round(start_s * sample_rate)), int(round(duration_s * sample_rate))
        if first + length > audio.shape[0]:
            raise ValueError(
                f"`audio` has {audio.shape[0] / sample_rate:.3f} s; the DeSync window at {start_s:.2f} s needs "
                f"{start_s + duration_s:.3f} s (the audio must last as long as the video)."
            )
        tokens = visual_tokens[start * SYNC_TOKENS_PER_SEGMENT : (start + window_segments) * SYNC_TOKENS_PER_SEGMENT]
        logits = classifier(tokens[None], audio[first : first + length][None])
        if logits.ndim != 2 or logits.shape != (1, grid.numel()):
            raise ValueError(f"the classifier returned {tuple(logits.shape)} logits, expected (1, {grid.numel()}).")
        offsets.append(float(grid[int(logits[0].argmax())]))
    return offsets


def desync_score(clip_offsets: Sequence[Sequence[float]]) -> float:
    """DeSync (seconds): the mean |offset| over every window of every clip."""
    values = [abs(float(x)) for offsets in clip_offsets for x in offsets]
    if not values:
        raise ValueError("`clip_offsets` is empty: no window was scored.")
    return float(np.mean(values))


class SynchformerDeSync:
    r"""
    DeSync with the project's Synchformer: `SynchformerEncoder` tokens of the video, `SynchformerSyncHead` logits.

    Args:
        encoder (`SynchformerEncoder`): The visual encoder (the pipeline's ``sync_encoder``).
        head (`SynchformerSyncHead`): Its trained audio branch + offset classifier (``output_dir/sync_head`` of
            ``training/train_sync_encoder.py``).
        offset_step (`float`): Seconds between offset classes it was trained with (``--offset_step``); class ``k`` is
            ``(k - K // 2) * offset_step``.
        window_segments (`int`, defaults to 14): Segments per window (av-benchmark's 14 = 4.8 s; the head was trained
            on ``--num_segments`` windows and accepts any length).
        device (`str` or `torch.device`, *optional*): Where both run.
    """

    sample_rate = 44_100  # the head's audio branch reads the project's 44.1 kHz log-mel

    def __init__(self, encoder, head, offset_step: float, window_segments: int = AV_BENCHMARK_WINDOW_SEGMENTS, device=None):
        from ...models.autoencoders import LogMelSpectrogram

        if offset_step <= 0:
            raise ValueError(f"`offset_step` must be positive, got {offset_step}.")
        if head.config.visual_dim != encoder.config.hidden_size:
            raise ValueError(
                f"`head` expects {head.config.visual_dim}-d visual tokens, `encoder` gives {encoder.config.hidden_size}."
            )
        self.encoder = encoder.eval() if device is None else encoder.to(device).eval()
        self.head = head.eval() if device is None else head.to(device).eval()
        self.mel = LogMelSpectrogram(sample_rate=self.sample_rate, num_mels=head.config.num_mels)
        num_classes = head.config.num_classes
        self.offset_grid = tuple((k - num_classes // 2) * float(offset_step) for k in range(num_classes))
        self.window_segments = window_segments

    @classmethod
    def from_pretrained(cls, encoder_path: str | os.PathLike, head_path: str | os.PathLike, offset_step: float, **kwargs):
        """From the ``sync_encoder`` and ``sync_head`` folders (or Hub ids) written by ``train_sync_encoder.py``."""
        from ...models.encoders.synchformer import SynchformerEncoder
        from ...models.encoders.synchformer_sync_head import SynchformerSyncHead

        encoder = SynchformerEncoder.from_pretrained(os.fspath(encoder_path))
        head = SynchformerSyncHead.from_pretrained(os.fspath(head_path))
        return cls(encoder, head, offset_step=offset_step, **kwargs)

    @staticmethod
    def head_class_name(head_path: str | os.PathLike) -> str:
        """The model class a head folder (or Hub id) holds, read from its ``config.json`` (``_class_name``)."""
        from diffusers.configuration_utils import ConfigMixin

        class _Reader(ConfigMixin):
            config_name = "config.json"

        try:
            config = _Reader.load_config(os.fspath(head_path))
        except (EnvironmentError, ValueError) as error:
            raise FileNotFoundError(f"`head_path` {os.fspath(head_path)!r} holds no readable config.json: {error}") from error
        return str(config.get("_class_name", ""))

    @torch.inference_mode()
    def classify(self, visual_tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """`(1, W * 8, D)` tokens + `(1, samples)` 44.1 kHz audio -> `(1, K)` offset logits."""
        device = next(self.head.parameters()).device
        mel = self.mel.to(device)(audio.to(device, torch.float32))
        return self.head(visual_tokens.to(device), mel).float().cpu()

    @torch.inference_mode()
    def clip_offsets(self, frames: torch.Tensor, audio: torch.Tensor) -> list[float]:
        r"""
        Args:
            frames (`torch.Tensor` of shape `(frames, 3, H, W)`): 25 fps sync frames normalised to [-1, 1]
                (`foley_toolkit.video_processor.preprocess_sync_frames`).
            audio (`torch.Tensor` of shape `(samples,)`): Mono 44.1 kHz audio of the same clip.

        Returns:
            The signed predicted offsets of the first and last window (seconds).
        """
        device = next(self.encoder.parameters()).device
        tokens = self.encoder(frames[None].to(device))[0]
        return desync_clip_offsets(self.classify, tokens, audio, self.sample_rate, self.offset_grid, self.window_segments)

    @torch.inference_mode()
    def file_offsets(
        self, video_path: str | os.PathLike, audio_path: str | os.PathLike, max_seconds: float | None = 8.0
    ) -> list[float]:
        """`clip_offsets` for a video file (its picture; its own audio track is ignored) and an audio file, both cut
        to `max_seconds` (av-benchmark's 8 s) and to the shorter of the two."""
        import torch.nn.functional as F

        from ...audio_utils import load_audio
        from ...video_processor import SYNC_IMAGE_SIZE, load_video, preprocess_sync_frames

        audio = load_audio(audio_path, sample_rate=self.sample_rate, mono=True)[0]
        video = load_video(os.fspath(video_path), max_duration=max_seconds)
        if max_seconds is not None:
            audio = audio[: int(round(max_seconds * self.sample_rate))]
        # Only frames the audio also covers (a generated clip may be a few ms shorter than its video).
        num_frames = min(video.sync_frames.shape[0], int(audio.shape[0] / self.sample_rate * SYNC_FRAME_RATE + 1e-6))
        frames = preprocess_sync_frames(video.sync_frames[:num_frames], dtype=torch.float32)
        image_size = self.encoder.config.image_size
        if image_size != SYNC_IMAGE_SIZE:
            # Encoders configured for another resolution (tiny test models) see the 224 px crop resized, as in the
            # pipeline.
            frames = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", antialias=True)
        return self.clip_offsets(frames.to(self.encoder.dtype), audio)


class SynchformerOffsetDeSync(SynchformerDeSync):
    r"""
    DeSync with the public Synchformer (av-benchmark's model): `SynchformerEncoder` tokens of the video and the
    `SynchformerOffsetClassifier` (audio branch on 16 kHz audio + offset classifier, 21 classes -2..+2 s).

    Args:
        encoder (`SynchformerEncoder`): The converted visual branch.
        classifier (`SynchformerOffsetClassifier`): The converted audio branch and offset classifier; its window
            (14 segments = 4.8 s) and class grid (``linspace(-2, 2, 21)`` s) are the scorer's.
        device (`str` or `torch.device`, *optional*): Where both run.
    """

    sample_rate = 16_000

    def __init__(self, encoder, classifier, device=None):
        if classifier.config.visual_dim != encoder.config.hidden_size:
            raise ValueError(
                f"`classifier` expects {classifier.config.visual_dim}-d visual tokens, `encoder` gives "
                f"{encoder.config.hidden_size}."
            )
        self.encoder = encoder.eval() if device is None else encoder.to(device).eval()
        self.head = classifier.eval() if device is None else classifier.to(device).eval()
        self.sample_rate = int(classifier.config.sample_rate)
        self.offset_grid = classifier.offset_grid
        self.window_segments = int(classifier.config.window_segments)

    @classmethod
    def from_pretrained(cls, encoder_path: str | os.PathLike, classifier_path: str | os.PathLike, **kwargs):
        """From the folders (or Hub ids) written by ``foley-toolkit convert synchformer --out ... --head-out ...``."""
        from ...models.encoders.synchformer import SynchformerEncoder
        from ...models.encoders.synchformer_offset_classifier import SynchformerOffsetClassifier

        encoder = SynchformerEncoder.from_pretrained(os.fspath(encoder_path))
        classifier = SynchformerOffsetClassifier.from_pretrained(os.fspath(classifier_path))
        return cls(encoder, classifier, **kwargs)

    @torch.inference_mode()
    def classify(self, visual_tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """`(1, W * 8, D)` tokens + `(1, window_samples)` 16 kHz audio -> `(1, 21)` offset logits."""
        device = next(self.head.parameters()).device
        return self.head(visual_tokens.to(device), audio.to(device, torch.float32)).float().cpu()
