"""Video input and output for Kling-Foley: opening and checking media, decoding with timestamp resampling, muxing.

The counterpart of diffusers' `loading_utils` / `export_utils` for video; `foley_toolkit.video_processor` turns
the decoded frames into encoder inputs.

Kling-Foley conditions on two frame streams cut from the same video:

* **CLIP frames** at 8 fps for the MetaCLIP vision encoder (semantics),
* **sync frames** at 25 fps, 224 px centre crops, for the Synchformer encoder (timing).

`load_video` decodes a file (path or bytes) or takes decoded frames (numpy / torch) and produces both
streams in **one** decoding pass, whatever the source frame rate (12, 24, 25, 29.97, 60 fps or variable):
every target frame is chosen by its timestamp, never by counting source frames.

Conventions (documented choices):

* **Timestamps.** Time 0 is the start of the video stream (normally its first frame). Frame ``i`` of a track at
  ``rate`` fps is the source frame on screen at ``start_time + i / rate``: the last source frame whose
  presentation time is ``<= start_time + i / rate`` (exact rational arithmetic on the container's pts).
* **Duration.** The video's duration is measured from its frames: last frame's presentation time plus its
  display duration (the container's frame duration, else the last frame interval, else ``1 / average_rate``),
  minus ``start_time``. It is never cut silently; ``duration=`` (exact cut) and ``max_duration=`` (cap) cut
  explicitly. A late ``start_time`` seeks to the keyframe before it instead of decoding from the start.
* **Frame counts.** `audio_utils.num_frames_at_rate` of the duration at 8 and 25 fps, computed on the exact rational
  duration, so a 29-frame 25 fps clip gives 29 sync frames (a float product would give 28).
* **Short clips.** Synchformer needs one full 16-frame segment (0.64 s): a shorter clip's sync track is
  padded to 16 frames (the timestamp rule continues up to the clip's end, then the video's last frame is
  repeated); clips shorter than 1/8 s get one CLIP frame. Padding is the only case where a track holds more
  frames than the duration's count.
* **Sizes.** Sync frames: resize the short side to 224 px (bicubic, aspect kept), then centre crop 224x224,
  as Synchformer was trained. CLIP frames: resized directly to 224x224 (bicubic, aspect not kept, whole field
  of view, as MMAudio feeds its CLIP encoder); this keeps them small in memory (147 KB each) and ready for
  `FoleyVideoProcessor`. All inputs (files, bytes, arrays, tensors) go through the same RGB resampler
  (FFmpeg's swscale, bicubic), so a file and its decoded frames give identical outputs.
* Display-rotation metadata (phone videos) is not applied: frames come in their stored orientation.
* **Bad files.** A still image (png, jpeg, ... whatever its extension) is refused with a ValueError naming the file,
  not read as a one-frame video. A file whose frames end more than ``TRUNCATION_TOLERANCE_SECONDS`` (plus one frame)
  before the duration its container index claims (a truncated download of an mp4 whose index is at the front) gives
  a `TruncatedMediaWarning` (``on_truncated="raise"``: a ValueError) instead of a silently shorter clip; damaged
  packets are skipped.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import av
import numpy as np
import torch

from ..audio_utils import CLIP_FRAME_RATE, SYNC_FRAME_RATE, SYNC_SEGMENT_FRAMES, num_frames_at_rate, seconds_to_samples
from ..audio_utils import SAMPLE_RATE as AUDIO_OUTPUT_SAMPLE_RATE


# Decoded media may end this much earlier than its container claims without being called truncated: AAC priming and
# padding (1024-2048 samples, under 50 ms at 44.1 kHz) and edit lists move an intact file's end by a few tens of ms.
TRUNCATION_TOLERANCE_SECONDS = 0.1
TRUNCATION_ACTIONS = ("warn", "raise", "ignore")


class TruncatedMediaWarning(UserWarning):
    """Decoding a file gave less media than its container's index claims (a truncated or damaged file).

    Turn it into an error everywhere with ``warnings.filterwarnings("error", category=TruncatedMediaWarning)``, or
    per call with ``on_truncated="raise"``."""


def media_label(source) -> str:
    """How error messages name a media source: the path, or what kind of in-memory object it is."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def check_decoded_duration(
    decoded: float,
    claimed: float | None,
    label: str,
    what: str,
    on_truncated: str = "warn",
    tolerance: float = TRUNCATION_TOLERANCE_SECONDS,
) -> None:
    r"""
    Warns or raises when `decoded` seconds of media fall short of the `claimed` seconds of its container index by more
    than `tolerance` (a truncated file: its header promises the full length, its data stops early).

    Args:
        decoded (`float`): Seconds actually decoded.
        claimed (`float`, *optional*): Seconds the container says the stream lasts; None (unknown) checks nothing.
        label (`str`): The file, as named in the message.
        what (`str`): "audio" or "video".
        on_truncated (`str`, defaults to `"warn"`): ``"warn"`` (`TruncatedMediaWarning`), ``"raise"`` (`ValueError`)
            or ``"ignore"``.
        tolerance (`float`, defaults to `TRUNCATION_TOLERANCE_SECONDS`): Allowed shortfall in seconds.
    """
    if on_truncated not in TRUNCATION_ACTIONS:
        raise ValueError(f"`on_truncated` must be one of {TRUNCATION_ACTIONS}, got {on_truncated!r}.")
    if claimed is None or not math.isfinite(claimed) or on_truncated == "ignore":
        return
    if claimed - decoded <= tolerance:
        return
    message = (
        f"{label} is truncated or damaged: its {what} decodes to {decoded:.3f} s but the container claims "
        f"{claimed:.3f} s (more than {tolerance:.3g} s missing)."
    )
    if on_truncated == "raise":
        raise ValueError(message)
    warnings.warn(message, TruncatedMediaWarning, stacklevel=4)  # the caller of load_audio / load_video


def is_image_container(container) -> bool:
    """Whether FFmpeg opened a still image (png, jpeg, webp, ... whatever its file name says) rather than a media
    container: its demuxer is an image pipe (``png_pipe``, ``jpeg_pipe``, ...) or the ``image2`` sequence reader."""
    names = container.format.name.split(",")
    return any(name.endswith("_pipe") or name in ("image2", "image2pipe") for name in names)


def open_media(source, label: str, kind: str):
    """`av.open(source)` for reading a `kind` (``"video"`` or ``"audio"``) stream, with the errors a user can act on:
    a ValueError naming `label` when FFmpeg cannot open it, when it is a still image (which FFmpeg would read as a
    1/25 s "video"), or when it has no `kind` stream. Returns the open container (close it, or use ``with``)."""
    import av

    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        what = "a video" if kind == "video" else "audio"
        raise ValueError(f"{label} could not be opened as {what}: {error}") from error
    reason = None
    if is_image_container(container):
        what = "a video" if kind == "video" else "audio or video"
        reason = f"is an image ({container.format.name}), not {what}: it has no {kind} stream."
    elif not (container.streams.video if kind == "video" else container.streams.audio):
        reason = f"has no {kind} stream."
    if reason is not None:
        container.close()
        raise ValueError(f"{label} {reason}")
    return container


def claimed_stream_seconds(container, stream) -> float | None:
    """Seconds `stream` lasts according to the container index (per-stream duration, else the container's when it holds
    only this stream); None when the container does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        import av

        return container.duration / av.time_base
    return None


# ----------------------------------------------------------------------------------------------------------
# Video frames
# ----------------------------------------------------------------------------------------------------------

CLIP_IMAGE_SIZE = 224
SYNC_IMAGE_SIZE = 224

_VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")

VideoLike = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase, np.ndarray, torch.Tensor]


@dataclass
class VideoInput:
    """Decoded, resampled video ready for the conditioning encoders.

    Args:
        clip_frames (`torch.Tensor`): uint8 `(frames_8fps, 3, 224, 224)`, RGB, 8 fps, whole frame resized to
            224x224.
        sync_frames (`torch.Tensor`): uint8 `(frames_25fps, 3, 224, 224)`, RGB, 25 fps, 224 px centre crop;
            at least 16 frames (short clips padded with their last frame).
        duration (`float`): seconds covered by the two tracks (the video's duration unless cut explicitly).
        fps (`float`): frame rate of the source (average rate for variable-frame-rate videos).
    """

    clip_frames: torch.Tensor
    sync_frames: torch.Tensor
    duration: float
    fps: float


# ----------------------------------------------------------------------------------------------------------
# Resampling helpers
# ----------------------------------------------------------------------------------------------------------


def _to_fraction(value: float, name: str) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number of seconds, got {value!r}.")
    # 29.97 -> 2997/100 and 30000/1001 -> 30000/1001: floats that stand for simple rationals become them
    return Fraction(value).limit_denominator(1_000_000)


def _resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a `(height, width, 3)` uint8 RGB image with FFmpeg's swscale (area-aware filter)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=width, height=height, interpolation="BICUBIC").to_ndarray()


# Frames are assembled with numpy: small torch copies and `torch.stack` of uint8 frames go through intra-op
# threading, which costs many times the copy itself when cores are busy.


def _clip_view(rgb: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` uint8 -> `(3, 224, 224)` uint8, whole frame resized (aspect not kept)."""
    resized = _resize_rgb(rgb, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def _sync_view(rgb: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` uint8 -> `(3, 224, 224)` uint8: short side to 224 (aspect kept), then centre crop."""
    height, width = rgb.shape[:2]
    scale = SYNC_IMAGE_SIZE / min(height, width)
    new_height = max(SYNC_IMAGE_SIZE, round(height * scale))
    new_width = max(SYNC_IMAGE_SIZE, round(width * scale))
    resized = _resize_rgb(rgb, new_width, new_height)
    top = (new_height - SYNC_IMAGE_SIZE) // 2
    left = (new_width - SYNC_IMAGE_SIZE) // 2
    crop = resized[top : top + SYNC_IMAGE_SIZE, left : left + SYNC_IMAGE_SIZE]
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


class _SourceFrame:
    """One source frame; its RGB pixels and the two resized views are computed only if some target uses it."""

    def __init__(self, time: Fraction, pixels):
        self.time = time
        self._pixels = pixels  # av.VideoFrame or (H, W, 3) uint8 ndarray
        self._clip: Optional[np.ndarray] = None
        self._sync: Optional[np.ndarray] = None

    def _rgb(self) -> np.ndarray:
        if isinstance(self._pixels, av.VideoFrame):
            self._pixels = self._pixels.to_ndarray(format="rgb24")
        return self._pixels

    def clip(self) -> np.ndarray:
        if self._clip is None:
            self._clip = _clip_view(self._rgb())
        return self._clip

    def sync(self) -> np.ndarray:
        if self._sync is None:
            self._sync = _sync_view(self._rgb())
        return self._sync


class _TwoRateSampler:
    """Streams source frames once and fills the 8 fps and 25 fps tracks by timestamp.

    Target ``i`` of a track (time ``start + i / rate``) receives the last source frame with time ``<=`` it;
    targets before the first source frame receive the first frame. A source frame's targets are known once
    the next frame (or the end of the stream) arrives, so only one frame is held back.
    """

    def __init__(
        self,
        start: Fraction,
        end: Optional[Fraction],
        rates: Tuple[Fraction, Fraction] = (Fraction(CLIP_FRAME_RATE), Fraction(SYNC_FRAME_RATE)),
    ):
        self.start = start
        self.clip_rate, self.sync_rate = rates
        self.end = end  # exclusive; None = until the stream ends
        self.clip: List[np.ndarray] = []
        self.sync: List[np.ndarray] = []
        self.pending: Optional[_SourceFrame] = None
        self.num_source_frames = 0

    def _target_time(self, index: int, rate: Fraction) -> Fraction:
        return self.start + index / rate

    def _assign(self, frame: _SourceFrame, until: Optional[Fraction]) -> None:
        # give `frame` to every unassigned target with time < until (None: no bound yet, caller truncates)
        for track, rate, view in ((self.clip, self.clip_rate, frame.clip), (self.sync, self.sync_rate, frame.sync)):
            while True:
                t = self._target_time(len(track), rate)
                if (until is not None and t >= until) or (self.end is not None and t >= self.end):
                    break
                track.append(view())

    def push(self, frame: _SourceFrame) -> bool:
        """Adds the next source frame (increasing time). Returns False once no later frame can matter."""
        if self.pending is not None:
            if frame.time <= self.pending.time:  # duplicate / non-monotonic timestamp: keep the first one
                return True
            self._assign(self.pending, until=frame.time)
        self.pending = frame
        self.num_source_frames += 1
        return self.end is None or frame.time < self.end

    def finish(self, stop: Fraction) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fills targets up to `stop` (exclusive) with the last frame and stacks `(T, 3, 224, 224)` tracks."""
        if self.pending is None:
            raise RuntimeError("no frames were pushed")
        self._assign(self.pending, until=stop)
        # exact floor on the rational duration (a float `int(d * rate)` loses frames at exact multiples); at least
        # one CLIP frame and one full Synchformer segment
        num_clip, num_sync = (
            max(least, num_frames_at_rate(stop - self.start, rate))
            for rate, least in ((self.clip_rate, 1), (self.sync_rate, SYNC_SEGMENT_FRAMES))
        )
        clip, sync = self.clip[:num_clip], self.sync[:num_sync]
        # short clips: repeat the last frame
        clip = clip + [clip[-1] if clip else self.pending.clip()] * (num_clip - len(clip))
        sync = sync + [sync[-1] if sync else self.pending.sync()] * (num_sync - len(sync))
        return torch.from_numpy(np.stack(clip)), torch.from_numpy(np.stack(sync))


def _cut_bounds(
    video_duration: Fraction, start_time: Fraction, duration: Optional[Fraction], max_duration: Optional[Fraction]
) -> Fraction:
    """Returns the exclusive end time of the output given the video's full duration (from time 0)."""
    available = video_duration - start_time
    if available <= 0:
        raise ValueError(
            f"`start_time`={float(start_time)} s is at or after the end of the video ({float(video_duration):.3f} s)."
        )
    if duration is not None:
        if duration > available:
            raise ValueError(
                f"`duration`={float(duration)} s is longer than the video after `start_time` "
                f"({float(available):.3f} s); a video is never padded to a longer duration."
            )
        available = duration
    if max_duration is not None:
        available = min(available, max_duration)
    return start_time + available


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _frames_to_thwc_uint8(frames, name: str) -> np.ndarray:
    """numpy/torch `(T, H, W, 3)` or `(T, 3, H, W)`, uint8 or float in [0, 1] -> `(T, H, W, 3)` uint8 numpy."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype == torch.bfloat16:
            frames = frames.float()
        frames = frames.numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(
            f"`{name}` frames must be 4-D (frames, height, width, 3) or (frames, 3, height, width), "
            f"got shape {tuple(frames.shape)}."
        )
    if frames.shape[-1] == 3:
        pass
    elif frames.shape[1] == 3:
        frames = frames.transpose(0, 2, 3, 1)
    else:
        raise ValueError(f"`{name}` frames must have 3 RGB channels first or last, got shape {tuple(frames.shape)}.")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"`{name}` has no frames (shape {tuple(frames.shape)}).")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        # float frames are RGB in [0, 1]
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"`{name}` must be uint8 or float in [0, 1], got dtype {frames.dtype}.")


def _open_input(video, name: str = "video"):
    """Opens a path / bytes / file object with PyAV, with errors that name the argument and the file; refuses still
    images and containers without a video stream."""
    label = f"`{name}` {media_label(video)}"
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`{name}`: no such video file: {path!r}.")
        source = path
    elif isinstance(video, (bytes, bytearray, memoryview)):
        if len(video) == 0:
            raise ValueError(f"`{name}` is empty bytes, not a video.")
        source = io.BytesIO(bytes(video))
    elif hasattr(video, "read"):
        source = video
    else:
        raise ValueError(
            f"`{name}` must be a path, bytes, a file object, a numpy array or a torch tensor, "
            f"got {type(video).__name__}."
        )
    container = open_media(source, label, "video")
    return container


def _decode_frames(container, stream) -> Iterator[Optional[av.VideoFrame]]:
    """Frames of `stream` in presentation order; None for each packet the decoder rejects."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()  # the final empty packet flushes the decoder
        except av.InvalidDataError:
            yield None
            continue
        yield from frames


def _frames_after_seek(container, stream, time: Fraction) -> Optional[Iterator[Optional[av.VideoFrame]]]:
    """Frames from the keyframe at or before `time` (seconds on the stream's clock), so that a late `start_time`
    does not decode everything before it. None (and the container back at its start) when the seek is not exact
    enough: a first frame after `time`, or no timestamps."""
    try:
        container.seek(math.floor(time / stream.time_base), stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        return None  # not seekable: nothing was read yet, decode from the start
    frames = _decode_frames(container, stream)
    for frame in frames:
        if frame is None:
            continue
        if frame.pts is not None and frame.time_base is not None and frame.pts * frame.time_base <= time:
            return itertools.chain([frame], frames)
        break
    container.seek(stream.start_time, stream=stream, backward=True, any_frame=False)
    return None


def _decode(
    container,
    name: str,
    start_time: Fraction,
    duration,
    max_duration,
    label: str = "",
    on_truncated: str = "warn",
    rates: Tuple[Fraction, Fraction] = (Fraction(CLIP_FRAME_RATE), Fraction(SYNC_FRAME_RATE)),
) -> VideoInput:
    label = label or f"`{name}`"
    stream = container.streams.video[0]
    claimed = claimed_stream_seconds(container, stream)
    stream.thread_type = "AUTO"  # frame + slice threads; decoding dominates the cost of long videos
    rate = stream.average_rate or stream.guessed_rate or None
    rate = Fraction(rate) if rate else None

    # when the cut is known up front, stop decoding after it
    end = None
    if duration is not None:
        end = start_time + duration
    if max_duration is not None:
        end = min(end, start_time + max_duration) if end is not None else start_time + max_duration
    sampler = _TwoRateSampler(start=start_time, end=end, rates=rates)

    # time 0 = the stream's start (its first frame's timestamp); the first decoded frame's time without one
    first_time = None
    if stream.start_time is not None and stream.time_base is not None:
        first_time = stream.start_time * stream.time_base
    last_time = previous_time = None
    last_frame_duration = None
    skipped_packets = 0
    stopped_at_cut = False
    try:
        frames = None
        if start_time > 0 and first_time is not None:
            frames = _frames_after_seek(container, stream, first_time + start_time)
        if frames is None:
            frames = _decode_frames(container, stream)
        index = 0
        for frame in frames:
            if frame is None:  # a corrupt packet: skipped, as FFmpeg's command line does
                skipped_packets += 1
                continue
            if frame.pts is not None and frame.time_base is not None:
                absolute = frame.pts * frame.time_base  # exact rational seconds
                if first_time is None:
                    first_time = absolute
                time = absolute - first_time
            elif rate:  # no timestamps (some raw streams): frames are evenly spaced
                time = Fraction(index) / rate
            else:
                raise ValueError(f"`{name}`: frames carry no timestamps and the stream has no frame rate.")
            index += 1
            if last_time is not None and time <= last_time:
                continue
            previous_time, last_time = last_time, time
            if frame.duration and frame.time_base is not None:
                last_frame_duration = frame.duration * frame.time_base
            else:
                last_frame_duration = None
            if not sampler.push(_SourceFrame(time, frame)):
                stopped_at_cut = True
                break
    except av.FFmpegError as error:
        raise ValueError(f"{label} could not be decoded as a video: {error}") from error
    finally:
        container.close()

    if last_time is None:
        detail = f" ({skipped_packets} corrupt packets)" if skipped_packets else ""
        raise ValueError(f"{label} contains no decodable video frames{detail}.")
    if not last_frame_duration:
        if previous_time is not None:
            last_frame_duration = last_time - previous_time
        elif rate:
            last_frame_duration = 1 / rate
        else:
            raise ValueError(f"`{name}` has a single frame and no frame rate: its duration is unknown.")
    # when decoding stopped early at the cut, `video_duration` is a lower bound that still covers the cut
    video_duration = last_time + last_frame_duration
    if not stopped_at_cut:
        # the stream ended: it must reach the container's claimed duration (one frame of slack for timestamp rounding)
        check_decoded_duration(
            float(video_duration), claimed, label, "video", on_truncated,
            tolerance=TRUNCATION_TOLERANCE_SECONDS + float(last_frame_duration),
        )  # fmt: skip
    stop = _cut_bounds(video_duration, start_time, duration, max_duration)
    clip, sync = sampler.finish(stop)
    if rate is None:
        rate = Fraction(sampler.num_source_frames) / video_duration
    return VideoInput(clip_frames=clip, sync_frames=sync, duration=float(stop - start_time), fps=float(rate))


def _from_frames(frames, fps, name: str, start_time: Fraction, duration, max_duration, rates) -> VideoInput:
    if fps is None:
        raise ValueError(f"`fps` is required when `{name}` is an array of frames (frames per second of `{name}`).")
    fps_value = _to_fraction(fps, "fps")
    if fps_value <= 0:
        raise ValueError(f"`fps` must be positive, got {fps!r}.")
    frames = _frames_to_thwc_uint8(frames, name)
    num_frames = frames.shape[0]
    video_duration = Fraction(num_frames) / fps_value
    stop = _cut_bounds(video_duration, start_time, duration, max_duration)
    sampler = _TwoRateSampler(start=start_time, end=stop, rates=rates)
    for index in range(num_frames):
        if not sampler.push(_SourceFrame(Fraction(index) / fps_value, frames[index])):
            break
    clip, sync = sampler.finish(stop)
    return VideoInput(clip_frames=clip, sync_frames=sync, duration=float(stop - start_time), fps=float(fps_value))


def load_video(
    video: VideoLike,
    fps: Optional[float] = None,
    *,
    start_time: float = 0.0,
    duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    on_truncated: str = "warn",
    clip_frame_rate: float = CLIP_FRAME_RATE,
    sync_frame_rate: float = SYNC_FRAME_RATE,
) -> VideoInput:
    """Decodes a video and resamples it by timestamps to 8 fps CLIP frames and 25 fps sync frames (one pass).

    Args:
        video: a path, the bytes of a video file, a binary file object, a numpy array `(frames, height, width, 3)`
            or a torch tensor `(frames, 3, height, width)` / `(frames, height, width, 3)`; arrays are uint8 RGB or
            float RGB in [0, 1].
        fps (`float`, *optional*): frame rate of `video` when it is an array (required then); must be None for
            files, whose timestamps come from the container.
        start_time (`float`): seconds to skip at the start.
        duration (`float`, *optional*): cut the output to exactly this many seconds (ValueError if the video is
            shorter).
        max_duration (`float`, *optional*): cut the output to at most this many seconds.
        on_truncated (`str`, defaults to `"warn"`): what to do when a file's frames end more than
            `TRUNCATION_TOLERANCE_SECONDS` plus one frame before the duration its container index claims (a truncated
            file; checked when decoding reaches the end of the stream): ``"warn"`` (`TruncatedMediaWarning`),
            ``"raise"`` (ValueError) or ``"ignore"``.
        clip_frame_rate, sync_frame_rate (`float`, defaults to 8 and 25): rates of the two tracks.

    Returns:
        `VideoInput` with `clip_frames` uint8 `(clip_frames, 3, 224, 224)` and `sync_frames` uint8
        `(sync_frames, 3, 224, 224)` (`audio_utils.num_frames_at_rate` of the duration at each rate, at least 1 and
        16), `duration` in seconds and the source `fps`.

    Raises:
        FileNotFoundError: `video` is a path that does not exist.
        ValueError: `video` is not a video (e.g. a still image), has no video stream or no frames; `fps` missing for
            arrays; bad cuts; a truncated file with ``on_truncated="raise"``.
    """
    if on_truncated not in TRUNCATION_ACTIONS:
        raise ValueError(f"`on_truncated` must be one of {TRUNCATION_ACTIONS}, got {on_truncated!r}.")
    start = _to_fraction(start_time, "start_time")
    if start < 0:
        raise ValueError(f"`start_time` must be >= 0, got {start_time!r}.")
    cut = None if duration is None else _to_fraction(duration, "duration")
    cap = None if max_duration is None else _to_fraction(max_duration, "max_duration")
    for arg_name, value in (("duration", cut), ("max_duration", cap)):
        if value is not None and value <= 0:
            raise ValueError(f"`{arg_name}` must be positive, got {float(value)}.")
    rates = (_to_fraction(clip_frame_rate, "clip_frame_rate"), _to_fraction(sync_frame_rate, "sync_frame_rate"))
    if min(rates) <= 0:
        raise ValueError(f"Frame rates must be positive, got {clip_frame_rate!r} and {sync_frame_rate!r}.")

    if isinstance(video, (np.ndarray, torch.Tensor)):
        return _from_frames(video, fps, "video", start, cut, cap, rates)
    if fps is not None:
        raise ValueError(
            "`fps` is only for arrays of frames; a video file's timestamps come from its container "
            f"(got fps={fps!r} with a {type(video).__name__})."
        )
    container = _open_input(video, "video")
    return _decode(container, "video", start, cut, cap, f"`video` {media_label(video)}", on_truncated, rates)


# ----------------------------------------------------------------------------------------------------------
# Writing: the source video stream (copied) + generated audio (AAC)
# ----------------------------------------------------------------------------------------------------------


def _audio_to_channels_first(audio, name: str = "audio", allow_empty: bool = False) -> np.ndarray:
    """1-D `(samples,)` or `(channels, samples)` float in [-1, 1] -> float32 `(2, samples)` (mono duplicated)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"`{name}` must be float samples in [-1, 1], got dtype {audio.dtype}.")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(
            f"`{name}` must be (samples,) or (channels, samples) with 1 or 2 channels, got shape {audio.shape}."
        )
    if audio.shape[1] == 0 and not allow_empty:
        raise ValueError(f"`{name}` has no samples.")
    if not np.isfinite(audio).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


def _packet_time(packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return (ts or 0) * packet.time_base


def _video_stream_extent(path_or_bytes, name: str) -> Tuple[Fraction, Fraction, int]:
    """(first presentation time, duration, packet count) of the first video stream, from packets only."""
    container = _open_input(path_or_bytes, name)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        first = last_end = None
        count = 0
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            count += 1
            start = packet.pts * packet.time_base
            if packet.duration:
                length = packet.duration * packet.time_base
            else:
                length = 1 / Fraction(rate) if rate else Fraction(0)
            first = start if first is None else min(first, start)
            last_end = start + length if last_end is None else max(last_end, start + length)
    finally:
        container.close()
    if count == 0:
        raise ValueError(f"`{name}` contains no video packets.")
    return first, last_end - first, count


def _pick_video_encoder() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _add_encoded_video_stream(output, width: int, height: int, rate: Fraction):
    stream = output.add_stream(_pick_video_encoder(), rate=rate)
    # yuv420p needs even sizes: drop at most one row / column
    stream.width, stream.height = width - width % 2, height - height % 2
    stream.pix_fmt = "yuv420p"
    if stream.codec_context.name == "libx264":
        stream.options = {"crf": "18", "preset": "veryfast"}
    return stream


def _check_out_path(out_path) -> str:
    out_path = os.fspath(out_path)
    if not out_path.lower().endswith(_VIDEO_SUFFIXES):
        raise ValueError(f"`out_path` must end with one of {_VIDEO_SUFFIXES}, got {out_path!r}.")
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    return out_path


class _CannotCopy(Exception):
    """The output container cannot hold the source's video codec as it is."""


class VideoAudioMuxer:
    r"""
    Writes a video with a soundtrack that arrives block by block (.mp4, .mov or .mkv), so a long generation is muxed
    as it is produced instead of being held whole.

    The video stream of a source file is copied packet by packet (no re-encoding, identical pictures and timestamps)
    when the output container supports its codec; otherwise, and for frame arrays, it is encoded with H.264 (libx264,
    crf 18, yuv420p; odd sizes lose one row/column). The audio is encoded as AAC, stereo, 44.1 kHz (resampled if
    `sample_rate` differs; mono blocks duplicated to both channels), trimmed to the video's duration (samples past
    its end are dropped) and padded with silence up to it on `close()`, aligned with its first frame. Other streams
    of the source (its original audio, subtitles) are dropped.

    Audio packets are interleaved with the video packets by decode time as they are encoded: an audio packet goes
    after every video packet that starts before it. The audio is handed to the encoder in frames of one second at
    fixed offsets whatever the block sizes, so any split of the same samples into blocks writes the same packets.
    Memory: the caller's block plus at most one second of pending audio; the video is read one packet ahead.

    Args:
        video: path / bytes / file object of the source video, or frames `(frames, height, width, 3)` /
            `(frames, 3, height, width)` (uint8, or float in [0, 1]) together with `fps`.
        out_path: output file, `.mp4`, `.mov` or `.mkv`; written in place (wrap it in
            `training_utils.atomic_output` for an atomic write).
        sample_rate (`int`): sample rate of the blocks.
        fps (`float`, *optional*): frame rate, only (and required) for frame arrays.
        audio_bit_rate (`int`, defaults to 192000): AAC bit rate.

    Use as a context manager (an exception closes the files without finishing the soundtrack) or call `close()`.
    `write(block)` takes float samples in [-1, 1], `(samples,)` or `(channels, samples)` with 1 or 2 channels.
    `duration` is the video's length in seconds (a `Fraction`), `samples_written` counts the samples received
    (before trimming), `max_block_samples` the longest block and `max_pending_samples` the most audio held between
    blocks.
    """

    def __init__(
        self,
        video: VideoLike,
        out_path: Union[str, os.PathLike],
        sample_rate: int,
        fps: Optional[float] = None,
        audio_bit_rate: int = 192_000,
    ):
        if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
            raise ValueError(f"`sample_rate` must be a positive integer, got {sample_rate!r}.")
        self.sample_rate = int(sample_rate)
        self.audio_bit_rate = int(audio_bit_rate)
        self.out_path = _check_out_path(out_path)
        self._input = self._output = self._audio_stream = None
        self._next_video = None
        self._closed = False

        if isinstance(video, (np.ndarray, torch.Tensor)):
            self._open_frames(video, fps)
        else:
            if fps is not None:
                raise ValueError("`fps` is only for arrays of frames; a video file keeps its own timestamps.")
            if hasattr(video, "read"):  # a file object is read twice (extent, then packets)
                video = video.read()
            if isinstance(video, (bytearray, memoryview)):
                video = bytes(video)
            self.first, self.duration, _ = _video_stream_extent(video, "video")
            if not self._open_copied(video):
                self._open_reencoded(video)

        self._num_samples = seconds_to_samples(self.duration, self.sample_rate)
        self._start_samples = seconds_to_samples(self.first, self.sample_rate)
        self._encoded = 0  # samples handed to the encoder
        self._pending: List[np.ndarray] = []  # < one encoder frame (one second) of audio, (2, n) each
        self._pending_samples = 0
        self.samples_written = 0
        self.max_block_samples = 0
        self.max_pending_samples = 0

    # -- opening ------------------------------------------------------------------------------------------------

    def _add_audio_stream(self) -> None:
        stream = self._output.add_stream("aac", rate=AUDIO_OUTPUT_SAMPLE_RATE)
        stream.layout = "stereo"
        stream.bit_rate = self.audio_bit_rate
        self._audio_stream = stream

    def _open_copied(self, source) -> bool:
        """Opens the output with the source's video stream copied. False if the container cannot hold its codec."""
        self._input = _open_input(source, "video")
        in_stream = self._input.streams.video[0]
        self._output = av.open(self.out_path, mode="w")
        try:
            if in_stream.codec_context.name not in self._output.supported_codecs:
                raise _CannotCopy
            out_stream = self._output.add_stream_from_template(in_stream)
            self._add_audio_stream()
            # The header is written now, before any audio is taken: a codec tag the container refuses fails here,
            # while re-encoding the pictures is still possible.
            self._output.start_encoding()
        except (_CannotCopy, av.FFmpegError):
            self._release()
            return False

        def video_packets():
            for packet in self._input.demux(in_stream):
                if packet.dts is None and packet.pts is None:  # demuxer flush packet
                    continue
                packet.stream = out_stream
                yield packet

        self._video_packets = video_packets()
        return True

    def _open_encoded(self, frames: Iterator[av.VideoFrame], size: Tuple[int, int], rate, time_base) -> None:
        """Opens the output with `frames` (timestamps in `time_base`, kept as they are) encoded as H.264."""
        self._output = av.open(self.out_path, mode="w")
        stream = _add_encoded_video_stream(self._output, size[0], size[1], rate)
        # encode in the frames' own time base: variable frame rates keep their exact timestamps
        stream.time_base = stream.codec_context.time_base = time_base
        self._add_audio_stream()

        def video_packets():
            for frame in frames:
                yield from stream.encode(frame)
            yield from stream.encode(None)

        self._video_packets = video_packets()

    def _open_reencoded(self, source) -> None:
        """The output container cannot hold the source codec: decode and re-encode the pictures, keeping timestamps."""
        self._input = _open_input(source, "video")
        in_stream = self._input.streams.video[0]
        rate = Fraction(in_stream.average_rate or in_stream.guessed_rate or 25)
        width, height = in_stream.codec_context.width, in_stream.codec_context.height

        def frames():
            for frame in self._input.decode(in_stream):
                out = frame.reformat(format="yuv420p", width=width - width % 2, height=height - height % 2)
                out.pts, out.time_base = frame.pts, frame.time_base
                yield out

        self._open_encoded(frames(), (width, height), rate, in_stream.time_base)

    def _open_frames(self, video, fps) -> None:
        if fps is None:
            raise ValueError("`fps` is required when `video` is an array of frames.")
        rate = _to_fraction(fps, "fps")
        if rate <= 0:
            raise ValueError(f"`fps` must be positive, got {fps!r}.")
        pixels = _frames_to_thwc_uint8(video, "video")
        height, width = pixels.shape[1:3]
        if height < 2 or width < 2:
            raise ValueError(f"`video` frames must be at least 2x2 pixels, got {width}x{height}.")
        pixels = pixels[:, : height - height % 2, : width - width % 2]

        def frames():
            for index, picture in enumerate(pixels):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
                frame.pts = index
                frame.time_base = 1 / rate
                yield frame

        self.first, self.duration = Fraction(0), Fraction(len(pixels)) / rate
        self._open_encoded(frames(), (width, height), rate, 1 / rate)

    # -- writing ------------------------------------------------------------------------------------------------

    def write(self, block: Union[np.ndarray, torch.Tensor]) -> None:
        """Appends `block` (`(samples,)` or `(channels, samples)`, 1 or 2 channels) to the soundtrack."""
        if self._closed:
            raise ValueError("This VideoAudioMuxer is closed.")
        block = _audio_to_channels_first(block, "block", allow_empty=True)
        self.max_block_samples = max(self.max_block_samples, block.shape[1])
        keep = max(0, min(block.shape[1], self._num_samples - self.samples_written))  # past the video's end: dropped
        self.samples_written += block.shape[1]
        self._feed(block[:, :keep])

    def _feed(self, audio: np.ndarray) -> None:
        """Hands `audio` to the encoder in one-second frames at fixed offsets; keeps the remainder pending."""
        chunk, position = self.sample_rate, 0
        if self._pending_samples:
            take = min(chunk - self._pending_samples, audio.shape[1])
            self._pending.append(audio[:, :take])
            self._pending_samples += take
            position = take
            if self._pending_samples < chunk:
                self.max_pending_samples = max(self.max_pending_samples, self._pending_samples)
                return
            self._encode(np.concatenate(self._pending, axis=1))
            self._pending, self._pending_samples = [], 0
        while audio.shape[1] - position >= chunk:
            self._encode(audio[:, position : position + chunk])
            position += chunk
        if position < audio.shape[1]:
            self._pending = [audio[:, position:].copy()]  # a copy: the caller's block is not kept alive
            self._pending_samples = audio.shape[1] - position
        self.max_pending_samples = max(self.max_pending_samples, self._pending_samples)

    def _encode(self, samples: Optional[np.ndarray]) -> None:
        """Encodes one frame of audio (None: flush) and muxes its packets after the video packets that precede them."""
        frame = None
        if samples is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._start_samples + self._encoded
            self._encoded += samples.shape[1]
        # PyAV resamples (any rate -> 44.1 kHz) and re-chunks to the AAC frame size inside `encode`
        for packet in self._audio_stream.encode(frame):
            self._mux_video_before(_packet_time(packet))
            self._output.mux(packet)

    def _mux_video_before(self, time: Optional[Fraction]) -> None:
        """Muxes the video packets whose decode time is before `time` (all of them for None)."""
        while True:
            if self._next_video is None:
                self._next_video = next(self._video_packets, None)
                if self._next_video is None:
                    return
            if time is not None and _packet_time(self._next_video) >= time:
                return
            self._output.mux(self._next_video)
            self._next_video = None

    def close(self) -> None:
        """Pads the soundtrack with silence to the video's duration, flushes the encoder, muxes the rest of the
        video and closes the file."""
        if self._closed:
            return
        self._closed = True
        try:
            missing = self._num_samples - min(self.samples_written, self._num_samples)
            while missing > 0:
                length = min(missing, self.sample_rate)
                self._feed(np.zeros((2, length), dtype=np.float32))
                missing -= length
            if self._pending_samples:  # the last, shorter frame
                self._encode(np.concatenate(self._pending, axis=1))
                self._pending, self._pending_samples = [], 0
            self._encode(None)
            self._mux_video_before(None)
        finally:
            self._release()

    def _release(self) -> None:
        """Closes both containers (the output as it is)."""
        for container in (self._output, self._input):
            if container is not None:
                container.close()
        self._output = self._input = None

    def __enter__(self) -> "VideoAudioMuxer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._release()


def write_video_with_audio(
    video: VideoLike,
    audio: Union[np.ndarray, torch.Tensor, Iterable[Union[np.ndarray, torch.Tensor]]],
    sample_rate: int,
    out_path: Union[str, os.PathLike],
    fps: Optional[float] = None,
    audio_bit_rate: int = 192_000,
) -> str:
    """Writes `video` with `audio` as its soundtrack (.mp4, .mov or .mkv), with a `VideoAudioMuxer`.

    The video stream of a source file is copied packet by packet (no re-encoding, identical pictures and
    timestamps) when the output container supports its codec; otherwise, and for frame arrays, it is encoded
    with H.264 (libx264, crf 18, yuv420p; odd sizes lose one row/column). The audio is encoded as AAC,
    stereo, 44.1 kHz (resampled if `sample_rate` differs; mono duplicated to both channels), padded with
    silence or trimmed to the video's duration and aligned with its first frame. Other streams of the source
    (its original audio, subtitles) are dropped.

    Args:
        video: path / bytes of the source video, or frames `(frames, height, width, 3)` / `(frames, 3, height,
            width)` (uint8, or float in [0, 1]) together with `fps`.
        audio: float samples in [-1, 1], `(samples,)` or `(channels, samples)` with 1 or 2 channels; or an
            iterable of such blocks (consumed as it yields them: a long soundtrack is never held whole). Either
            way the file is the same for the same samples.
        sample_rate (`int`): sample rate of `audio`.
        out_path: output file, `.mp4`, `.mov` or `.mkv`.
        fps (`float`, *optional*): frame rate, only (and required) for frame arrays.

    Returns:
        `out_path` as a string.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be a positive integer, got {sample_rate!r}.")
    whole = isinstance(audio, (np.ndarray, torch.Tensor))
    if whole:
        audio = _audio_to_channels_first(audio, "audio")
    elif isinstance(audio, (str, bytes)) or not hasattr(audio, "__iter__"):
        raise ValueError(f"`audio` must be an array of samples or an iterable of blocks, got {type(audio).__name__}.")
    with VideoAudioMuxer(video, out_path, sample_rate, fps=fps, audio_bit_rate=audio_bit_rate) as muxer:
        for block in [audio] if whole else audio:
            muxer.write(block)
        if muxer.samples_written == 0:
            muxer._release()
            os.remove(muxer.out_path)  # no soundtrack: leave no file behind, as for an empty array
            raise ValueError("`audio` has no samples.")
    return muxer.out_path


__all__ = [
    "TRUNCATION_ACTIONS",
    "TRUNCATION_TOLERANCE_SECONDS",
    "TruncatedMediaWarning",
    "VideoAudioMuxer",
    "VideoInput",
    "check_decoded_duration",
    "claimed_stream_seconds",
    "is_image_container",
    "load_video",
    "media_label",
    "open_media",
    "write_video_with_audio",
]
