# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
r"""
Long-form generation for [`KlingFoleyPipeline`]: any length of video with bounded memory.

The transformer is trained on clips of a few seconds and its attention grows with the square of the length, so a
clip longer than one window is generated in overlapping windows of the trained length:

1. **Windows** ([`plan_windows`]): windows of `W` latent frames start every `W - overlap` frames; the last one is
   moved back to end exactly on the clip's last frame (every window has the trained length, and the last overlap is
   longer instead of the last window shorter).
2. **Conditioning on the previous window** ([`KlingFoleyPipeline.denoise`] with `known=`): window `k` starts
   from the clip's noise at its frames. At every step, before the transformer sees it, the overlap with window
   `k - 1` (up to the end of the cross-fade) is replaced by the previous window's finished latents re-noised to the
   step's noise level with that same noise, `(1 - sigma) * x0_prev + sigma * noise` (latent-prefix inpainting, as in
   RePaint without resampling). The model thus continues the previous window's sound instead of starting a new one;
   the rest of the window is generated as usual, including the previous window's last `edge_frames`, which are
   not trusted (a window's end is where a model trained on whole clips lets the sound die away). Windows depend on
   each other, so they run one after the other (not batched across windows, which a method that averages
   independently denoised windows, like MultiDiffusion, would allow at the price of blending two sounds in every
   overlap); what is batched is everything inside a window (guidance pair, clips, waveforms per prompt).
3. **Each window is conditioned like a training clip**: its own stretch of video is decoded and encoded
   ([`encode_window_video`]), with `seconds_start = 0` and `seconds_total` = its length, so the video features,
   RoPE alignment and duration embedding are those the transformer was trained with.
4. **Join in log-mel space** ([`WindowJoiner`]): each window is decoded (VAE, then Mono2Stereo) on its own — a
   bounded chunk — and consecutive windows are cross-faded in the middle of their overlap, away from the decoder's
   edge effects (`edge_frames`). The cross-fade is equal-power: amplitude gains `cos`, `sin` of a quarter period
   (`g_out^2 + g_in^2 = 1`), applied to log-magnitudes as the power weights `w = g^2` (`w_out + w_in = 1`), so the
   joined power is `P_out^w_out * P_in^w_in`: where the two windows are equally loud the join is exactly as loud,
   whether their sounds are correlated (an inpainted continuation) or not.
5. **Vocoding and DC removal in chunks with exact overlap** ([`OverlapProcessor`]): the joined mel stream is
   vocoded in chunks that carry the vocoder's receptive radius of context on each side
   ([`vocoder_receptive_radius`]), so each output sample equals the whole-sequence vocoding; the DC high-pass
   runs the same way with half a second of context (its impulse response has decayed below 1e-8 by then).
6. **Streaming output** ([`StreamingAudioWriter`]): audio blocks go to disk as they are produced; nothing holds the
   whole waveform.

Memory is then bounded by one window (video frames, encoders, transformer, VAE, Mono2Stereo), one vocoder chunk and
the clip's initial noise (`latent_channels x 43` floats per second: 2 MB for 300 s of a 40-channel VAE).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...utils.overlap import OverlapProcessor
from ...utils.video_io import VideoInput, _video_stream_extent, load_video


# ---------------------------------------------------------------------------------------------------------------
# Window arithmetic
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    r"""
    Overlapping windows over `total_frames` latent frames.

    Attributes:
        total_frames (`int`): Latent frames of the clip.
        window_frames (`int`): Latent frames per window (every window has this length; one window covers clips no
            longer than it).
        starts (`tuple[int, ...]`): First latent frame of each window, increasing; the last window ends at
            `total_frames`.
        edge_frames (`int`): Latent frames at each window edge kept out of the cross-fade (where a window decoded on
            its own differs from the same frames decoded inside a longer sequence).
    """

    total_frames: int
    window_frames: int
    starts: tuple[int, ...]
    edge_frames: int = 0

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def window(self, index: int) -> tuple[int, int]:
        """`(start, end)` latent frames of window `index`."""
        start = self.starts[index]
        return start, min(start + self.window_frames, self.total_frames)

    def overlap(self, index: int) -> tuple[int, int]:
        """`(start, end)` latent frames shared by windows `index - 1` and `index` (`index >= 1`)."""
        if not 1 <= index < self.num_windows:
            raise ValueError(f"`index` must be in [1, {self.num_windows}), got {index}.")
        return self.starts[index], self.window(index - 1)[1]

    def crossfade(self, index: int) -> tuple[int, int]:
        """`(start, end)` latent frames where window `index - 1` fades out and window `index` fades in: the overlap
        without `edge_frames` at either end, and never before the previous cross-fade's end (the last window, moved
        back to end on the last frame, can overlap the window before the previous one when it adds only a few
        frames; each frame is cross-faded at most once)."""
        start, end = self.overlap(index)
        fade_start = start + self.edge_frames
        if index >= 2:  # the previous cross-fade ends `edge_frames` before the end of window `index - 2`
            fade_start = max(fade_start, self.window(index - 2)[1] - self.edge_frames)
        return fade_start, end - self.edge_frames


def plan_windows(total_frames: int, window_frames: int, overlap_frames: int, edge_frames: int = 0) -> WindowPlan:
    r"""
    Plan windows of `window_frames` latent frames over `total_frames`, consecutive windows sharing at least
    `overlap_frames` (the last window is moved back to end at `total_frames`, so its overlap may be longer).

    Args:
        total_frames (`int`): Latent frames to cover (>= 1).
        window_frames (`int`): Frames per window (>= 1). A clip of at most this length is one window.
        overlap_frames (`int`): Frames each window shares with the previous one, in `[1, window_frames)`.
        edge_frames (`int`, defaults to 0): Frames at each window edge excluded from the cross-fade; the cross-fade
            keeps `overlap_frames - 2 * edge_frames >= 1` frames.

    Returns:
        [`WindowPlan`]

    Raises:
        ValueError: a length is not a positive integer, the overlap is not shorter than the window, or the overlap
            leaves no frame to cross-fade after the edges.
    """
    for name, value, low in (("total_frames", total_frames, 1), ("window_frames", window_frames, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if isinstance(edge_frames, bool) or not isinstance(edge_frames, (int, np.integer)) or edge_frames < 0:
        raise ValueError(f"`edge_frames` must be an integer >= 0, got {edge_frames!r}.")
    total_frames, window_frames, edge_frames = int(total_frames), int(window_frames), int(edge_frames)
    if total_frames <= window_frames:
        return WindowPlan(total_frames, window_frames, (0,), edge_frames)
    if (
        isinstance(overlap_frames, bool)
        or not isinstance(overlap_frames, (int, np.integer))
        or not 1 <= overlap_frames < window_frames
    ):
        raise ValueError(
            f"`overlap_frames` must be an integer in [1, {window_frames}) (shorter than the window), got "
            f"{overlap_frames!r}."
        )
    if overlap_frames - 2 * edge_frames < 1:
        raise ValueError(
            f"`overlap_frames`={overlap_frames} leaves no frame to cross-fade after {edge_frames} edge frames on each "
            f"side; use an overlap of at least {2 * edge_frames + 1} latent frames."
        )
    hop = window_frames - int(overlap_frames)
    starts = [0]
    while starts[-1] + window_frames < total_frames:
        starts.append(min(starts[-1] + hop, total_frames - window_frames))
    return WindowPlan(total_frames, window_frames, tuple(starts), edge_frames)


def equal_power_gains(length: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Amplitude gains of an equal-power cross-fade over `length` frames, sampled at frame centres:
    `g_in = sin(pi / 2 * (i + 0.5) / length)`, `g_out = cos(...)`, so `g_out^2 + g_in^2 = 1` at every frame and
    the fade is symmetric (`g_in[i] = g_out[length - 1 - i]`).

    Returns:
        `(g_out, g_in)`, each `(length,)`.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"`length` must be an integer >= 1, got {length!r}.")
    phase = (torch.arange(int(length), dtype=torch.float64) + 0.5) / int(length) * (math.pi / 2)
    return torch.cos(phase).to(dtype), torch.sin(phase).to(dtype)


def log_domain_crossfade(outgoing: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    r"""
    Equal-power cross-fade of two log-magnitude spectrograms `(..., frames)` over their last axis: the power weights
    `w_out = g_out^2`, `w_in = 1 - w_out` (see [`equal_power_gains`]) blend the logs, i.e. the power is
    `P_out^w_out * P_in^w_in` — equal to both where they are equal.
    """
    if outgoing.shape != incoming.shape:
        raise ValueError(
            f"`outgoing` and `incoming` must have the same shape, got {tuple(outgoing.shape)} and "
            f"{tuple(incoming.shape)}."
        )
    g_out, _ = equal_power_gains(outgoing.shape[-1])
    w_out = g_out.square().to(device=outgoing.device, dtype=outgoing.dtype)
    return incoming + w_out * (outgoing - incoming)  # = w_out * outgoing + (1 - w_out) * incoming


class WindowJoiner:
    r"""
    Joins per-window spectrograms into one stream, in order, as they come.

    `push(index, mel)` takes window `index`'s spectrogram `(..., 2 * window_length)` (mel frames; 2 per latent frame)
    and returns the blocks of the joined stream that are final: everything up to the end of the cross-fade with the
    previous window. `finish()` returns the rest. The blocks, concatenated, are `2 * total_frames` mel frames: each
    frame comes from exactly one window, or from the cross-fade of two inside their overlap.
    """

    def __init__(self, plan: WindowPlan, frames_per_latent: int = 2):
        self.plan = plan
        self.scale = int(frames_per_latent)
        self._pending: torch.Tensor | None = None
        self._pending_start = 0  # stream frame where `_pending` starts
        self._next = 0

    def push(self, index: int, mel: torch.Tensor) -> list[torch.Tensor]:
        if index != self._next:
            raise ValueError(f"windows must be pushed in order: expected window {self._next}, got {index}.")
        start, end = (self.scale * f for f in self.plan.window(index))
        if mel.shape[-1] != end - start:
            raise ValueError(f"window {index} must have {end - start} frames, got {mel.shape[-1]}.")
        self._next += 1
        if index == 0:
            self._pending, self._pending_start = mel, start
            return []
        fade_start, fade_end = (self.scale * f for f in self.plan.crossfade(index))
        before = self._pending[..., : fade_start - self._pending_start]
        fade = log_domain_crossfade(
            self._pending[..., fade_start - self._pending_start : fade_end - self._pending_start],
            mel[..., fade_start - start : fade_end - start],
        )
        self._pending, self._pending_start = mel[..., fade_end - start :], fade_end
        return [block for block in (before, fade) if block.shape[-1] > 0]

    def finish(self) -> list[torch.Tensor]:
        if self._next != self.plan.num_windows:
            raise ValueError(f"{self.plan.num_windows - self._next} window(s) were never pushed.")
        pending, self._pending = self._pending, None
        return [] if pending is None or pending.shape[-1] == 0 else [pending]


# ---------------------------------------------------------------------------------------------------------------
# Chunked processing with exact overlap
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def vocoder_receptive_radius(vocoder: torch.nn.Module, num_mels: int | None = None, probe_frames: int = 129) -> int:
    r"""
    Mel frames on each side of a mel frame whose samples it can change: the vocoder runs on a random mel, and again
    with the middle frame changed; the samples that differ (bit for bit: samples computed without that frame are
    computed identically) span `2 * radius + 1` frames. Cached on the module.

    Args:
        vocoder (`torch.nn.Module`): Mel -> waveform, `vocoder(mel).sample` of shape `(batch, 1, frames * hop)`.
        num_mels (`int`, *optional*): Mel bands; read from the vocoder's config by default.
        probe_frames (`int`, defaults to 129): First probe length (doubled until the change fits inside it).
    """
    cached = getattr(vocoder, "_foley_receptive_radius", None)
    if cached is not None:
        return cached
    config = getattr(vocoder, "config", None)
    num_mels = num_mels or getattr(config, "num_mels", None) or getattr(config, "in_channels", None) or 128
    parameter = next(vocoder.parameters())
    generator = torch.Generator().manual_seed(0)
    frames = probe_frames
    while True:
        centre = frames // 2
        # Around the mel front end's typical level (log-magnitudes near -5), where nothing clips.
        mel = torch.randn(1, num_mels, frames, generator=generator) * 0.5 - 5.0
        changed = mel.clone()
        changed[..., centre] += 2.0
        samples = vocoder(torch.cat([mel, changed]).to(parameter.device, parameter.dtype)).sample.float()
        difference = (samples[0] - samples[1]).abs().reshape(frames, -1).amax(dim=-1)
        depends = torch.nonzero(difference > 0).flatten()
        if depends.numel() == 0:
            raise RuntimeError(f"{type(vocoder).__name__}: its samples do not depend on the mel.")
        radius = int(max(centre - int(depends.min()), int(depends.max()) - centre))
        if radius < centre - 1:
            break
        if frames > 8192:
            raise RuntimeError(f"{type(vocoder).__name__}: receptive radius beyond {frames // 2} mel frames.")
        frames = 2 * frames + 1
    vocoder._foley_receptive_radius = radius
    return radius


# ---------------------------------------------------------------------------------------------------------------
# Streaming output
# ---------------------------------------------------------------------------------------------------------------


class StreamingAudioWriter:
    r"""
    Writes audio to a `.wav` / `.flac` file block by block as it is produced (soundfile), clipped to `[-1, 1]` like
    `audio_utils.save_audio`, so a long generation never holds its whole waveform.

    Args:
        path (`str` or `os.PathLike`): Output file; the format follows the extension.
        sample_rate (`int`): Sample rate in Hz.
        channels (`int`): Channels of every block.
        subtype (`str`, *optional*): soundfile subtype; the format's default if `None` (as `save_audio`).

    Use as a context manager; `write(block)` takes `(channels, samples)`. `frames_written` counts samples per
    channel and `max_block_samples` the longest block written (what the writer ever held).
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, subtype: str | None = None):
        import soundfile as sf

        self.path = os.fspath(path)
        self.channels = int(channels)
        self.sample_rate = int(sample_rate)
        self._file = sf.SoundFile(self.path, mode="w", samplerate=self.sample_rate, channels=self.channels,
                                  subtype=subtype)  # fmt: skip
        self.frames_written = 0
        self.max_block_samples = 0

    def write(self, block: torch.Tensor | np.ndarray) -> None:
        if isinstance(block, torch.Tensor):
            block = block.detach().to("cpu", torch.float32).numpy()
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"`block` must have shape ({self.channels}, samples), got {block.shape}.")
        self._file.write(np.clip(block, -1.0, 1.0).T)
        self.frames_written += block.shape[1]
        self.max_block_samples = max(self.max_block_samples, block.shape[1])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "StreamingAudioWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Windowed generation with a pipeline
# ---------------------------------------------------------------------------------------------------------------


def probe_video_duration(video, video_fps: float | None = None) -> float:
    r"""
    Seconds of a video without decoding its frames: a decoded [`VideoInput`]'s duration, `frames / video_fps` for
    arrays, and the first video stream's packet extent for files and bytes.
    """
    if isinstance(video, VideoInput):
        return float(video.duration)
    if isinstance(video, (np.ndarray, torch.Tensor)):
        if not video_fps:
            raise ValueError("`video_fps` is required for videos given as arrays of frames.")
        return video.shape[0] / float(video_fps)
    if isinstance(video, (str, os.PathLike)) and not os.path.isfile(video):
        raise FileNotFoundError(f"`video`: no video file at {os.fspath(video)!r}.")
    try:
        _, extent, _ = _video_stream_extent(video, "video")
    except (FileNotFoundError, ValueError):
        raise
    except Exception as error:  # anything else from the demuxer: not a usable video
        raise ValueError(f"`video`: could not read {video!r} as a video ({error}).") from error
    return float(extent)


def resolve_video_duration(pipe, video, duration: float | None, video_fps: float | None = None) -> float:
    r"""The duration to generate for videos too long to decode whole: their lengths from the container
    ([`probe_video_duration`]), checked as [`KlingFoleyPipeline`] checks decoded videos (a `duration` longer than a
    video, videos of different lengths without `duration`, longer than `max_duration_seconds`)."""
    from types import SimpleNamespace

    videos = list(video) if isinstance(video, (list, tuple)) else [video]
    probed = [SimpleNamespace(duration=probe_video_duration(item, video_fps)) for item in videos]
    return pipe._resolve_video_duration(probed, duration)


def slice_video_input(video, start: float, seconds: float, clip_frame_rate: float, sync_frame_rate: float):
    r"""The frames of a decoded [`VideoInput`] (8 fps CLIP, 25 fps sync) from `start` for `seconds`: the nearest
    frames at or before each time (decoded arrays have no timestamps finer than their frame rate)."""
    def cut(frames: torch.Tensor, rate: float) -> torch.Tensor:
        first = min(int(math.floor(start * rate + 1e-6)), frames.shape[0] - 1)
        return frames[first : first + max(int(math.ceil(seconds * rate - 1e-6)), 1)]

    return VideoInput(cut(video.clip_frames, clip_frame_rate), cut(video.sync_frames, sync_frame_rate),
                      min(float(seconds), float(video.duration) - start), video.fps)  # fmt: skip


def encode_window_video(pipe, videos: Sequence, start: float, seconds: float, video_fps: float | None = None):
    r"""
    Decode `seconds` of each video from `start` (seeking; no earlier frame is kept) and encode them with the
    pipeline's encoders, as a clip of that length would be.

    Returns:
        `(clip_features, sync_features, seconds)` as [`KlingFoleyPipeline.encode_video`] returns them.
    """
    rates = pipe.video_processor.config
    clips = []
    for index, video in enumerate(videos):
        if isinstance(video, VideoInput):
            clips.append(slice_video_input(video, start, seconds, rates.clip_frame_rate, rates.sync_frame_rate))
            continue
        try:
            fps = video_fps if isinstance(video, (np.ndarray, torch.Tensor)) else None
            clip = load_video(
                video,
                fps=fps,
                start_time=start,
                max_duration=seconds,
                clip_frame_rate=rates.clip_frame_rate,
                sync_frame_rate=rates.sync_frame_rate,
            )
            clips.append(clip)
        except (FileNotFoundError, ValueError) as error:
            name = "`video`" if len(videos) == 1 else f"`video[{index}]`"
            raise type(error)(f"{name} at {start:.3f} s: {error}") from error
    seconds = min(float(seconds), min(float(clip.duration) for clip in clips))
    clip_features, sync_features = pipe._encode_video_frames(clips, pipe.sequence_lengths(seconds))
    return clip_features, sync_features, seconds


@dataclass
class LongFormSettings:
    r"""
    How a long clip is cut and streamed (defaults fit the demo and the real model alike).

    Attributes:
        overlap_seconds (`float`): Audio each window shares with the previous one (conditioning + cross-fade).
        vocoder_chunk_frames (`int`): Mel frames per vocoder call (~6 s at 86 frames/s).
        dc_chunk_seconds (`float`), dc_context_seconds (`float`): DC high-pass chunk and its context on each side;
            half a second is where the 10 Hz Butterworth's forward-backward response has decayed below 1e-8.
    """

    overlap_seconds: float = 1.5
    vocoder_chunk_frames: int = 512
    dc_chunk_seconds: float = 5.0
    dc_context_seconds: float = 0.5


def plan_for_duration(
    pipe, duration: float, window_seconds: float | None, settings: LongFormSettings | None = None
) -> WindowPlan:
    r"""
    The windows the pipeline uses for `duration` seconds: `window_seconds` long (`None`: one window over the whole
    clip), overlapping by `settings.overlap_seconds` but at most a quarter window, with the decoder's edge frames
    ([`decoder_edge_frames`]) kept out of the cross-fade (fewer when the overlap is short, keeping >= 1 frame).
    """
    settings = settings or LongFormSettings()
    total = int(pipe.sequence_lengths(duration)["audio_tokens"])
    if window_seconds is None:
        return WindowPlan(total, total, (0,), 0)
    window = int(pipe.sequence_lengths(window_seconds)["audio_tokens"])
    if window < 2:
        raise ValueError(f"`window_seconds`={window_seconds} is shorter than two latent frames.")
    overlap_seconds = min(settings.overlap_seconds, window_seconds / 4)
    overlap = round(overlap_seconds * pipe.sample_rate / pipe.vae.samples_per_latent_frame)
    overlap = min(max(overlap, 1), window - 1)
    edge = min(decoder_edge_frames(pipe), (overlap - 1) // 2)
    return plan_windows(total, window, overlap, edge)


def decoder_edge_frames(pipe) -> int:
    r"""Latent frames at a window edge whose decoding (VAE, then Mono2Stereo) sees past the window: the VAE decoder's
    receptive radius plus Mono2Stereo's (its convolutions, in latent frames)."""
    edge = int(getattr(pipe.vae, "decoder_receptive_radius", 0))
    if pipe.mono2stereo is not None:
        config = pipe.mono2stereo.config
        convs = 2 + 2 * int(config.num_layers)  # mel_in, two per block, ratio_out
        edge += math.ceil((int(config.kernel_size) // 2) * convs / 2)
    return edge


def iter_long_form(
    pipe,
    plan: WindowPlan,
    window_conditions: Callable[[int], tuple],
    noise: torch.Tensor,
    num_inference_steps: int,
    lengths: dict[str, int],
    output_type: str = "np",
    generator=None,
    sigmas=None,
    timesteps=None,
    callback_on_step_end: Callable | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    settings: LongFormSettings | None = None,
) -> Iterator[torch.Tensor]:
    r"""
    Generate a long clip window by window and yield its output in order, block by block.

    Args:
        pipe ([`KlingFoleyPipeline`]): With `_guidance_scale` / `_attention_kwargs` set (as `__call__` sets them).
        plan ([`WindowPlan`]): The windows.
        window_conditions (`Callable[[int], tuple]`): `window_conditions(k)` -> `(conditions, clip_features)` of
            window `k` (clip features `(batch, frames, dim)` for Mono2Stereo, or `None`).
        noise (`torch.Tensor`): Initial noise of the whole clip `(batch, channels, total_frames)`; each window starts
            from its frames, so the overlap's re-noising uses the noise both windows share.
        num_inference_steps, generator, sigmas, timesteps: As in `__call__` (one schedule per window).
        lengths (`dict`): `pipe.sequence_lengths(duration)`: the stream is cut to its `num_samples` samples
            (`output_mel_frames` mel frames).
        output_type (`str`): `"np"`/`"pt"`: waveform blocks `(batch, channels, n)`; `"mel"`: mel blocks
            `(batch, channels, 128, n)`; `"latent"`: latent blocks joined with
            the same weights (cross-fade of the latents).
        callback_on_step_end (`Callable`, *optional*): Called after every step of every window as
            `callback(pipe, step, t, callback_kwargs)` with the step counted over all windows (`pipe.num_timesteps`
            is the total); returned `"latents"` replace the window's.
        settings ([`LongFormSettings`], *optional*): Chunk sizes; defaults otherwise.

    Yields:
        `torch.Tensor` blocks along the last axis, float32; concatenated, they are the clip's output.
    """
    # A generator runs its body when iterated, outside the caller's `torch.no_grad()`: turn autograd off here.
    with torch.no_grad():
        yield from _iter_long_form(
            pipe, plan, window_conditions, noise, num_inference_steps, lengths, output_type, generator, sigmas,
            timesteps, callback_on_step_end, callback_on_step_end_tensor_inputs, settings or LongFormSettings(),
        )  # fmt: skip


def _iter_long_form(
    pipe, plan, window_conditions, noise, num_inference_steps, lengths, output_type, generator, sigmas, timesteps,
    callback_on_step_end, callback_on_step_end_tensor_inputs, settings,
) -> Iterator[torch.Tensor]:  # fmt: skip
    latent_output = output_type == "latent"
    joiner = WindowJoiner(plan, frames_per_latent=1 if latent_output else 2)
    stages = _output_stages(pipe, output_type, lengths["num_samples"], lengths["output_mel_frames"], settings)
    previous: tuple[int, torch.Tensor] | None = None
    steps_done = 0
    with pipe.progress_bar(total=plan.num_windows * num_inference_steps) as progress_bar:
        for index in range(plan.num_windows):
            start, end = plan.window(index)
            conditions, clip_features = window_conditions(index)
            window_timesteps = pipe._set_timesteps(
                num_inference_steps, noise.device, end - start, sigmas=sigmas, timesteps=timesteps
            )
            if index == 0:
                pipe._num_timesteps = plan.num_windows * len(window_timesteps)
            known = None
            if previous is not None:
                # The previous window's tail up to the end of the cross-fade is held; its last `edge_frames` are
                # generated again: a window's own end is where it is least reliable (the decoder's edge, and a model
                # trained on whole clips tends to let a clip's sound die away before its end).
                previous_start, previous_latents = previous
                known_end = plan.crossfade(index)[1]
                known = previous_latents[..., start - previous_start : known_end - previous_start]

            latents = pipe.denoise(
                noise[..., start:end].clone(),
                conditions,
                window_timesteps,
                generator,
                known=known,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=list(callback_on_step_end_tensor_inputs),
                step_offset=steps_done,
                progress_bar=progress_bar,
            )
            steps_done += len(window_timesteps)
            previous = (start, latents)
            window_output = latents if latent_output else pipe.decode_latents(latents, clip_features).float()
            for block in joiner.push(index, window_output):
                yield from _run_stages(stages, block)
    for block in joiner.finish():
        yield from _run_stages(stages, block)
    yield from _finish_stages(stages)


class _Truncate:
    """Passes the first `limit` positions of a stream along its last axis."""

    def __init__(self, limit: int):
        self.remaining = int(limit)

    def push(self, block: torch.Tensor) -> list[torch.Tensor]:
        block = block[..., : max(self.remaining, 0)]
        self.remaining -= block.shape[-1]
        return [block] if block.shape[-1] else []

    def finish(self) -> list[torch.Tensor]:
        return []


def _output_stages(pipe, output_type: str, num_samples: int, mel_frames: int, settings: LongFormSettings) -> list:
    """The streaming stages after the window join: vocoder, cut to length, DC removal (for waveforms)."""
    if output_type == "latent":
        return []
    if output_type == "mel":
        return [_Truncate(mel_frames)]
    vocoder = pipe.vocoder

    def vocode(mel: torch.Tensor) -> torch.Tensor:
        batch, channels = mel.shape[:2]
        return vocoder(mel.flatten(0, 1).to(vocoder.dtype)).sample.view(batch, channels, -1).float()

    radius = vocoder_receptive_radius(vocoder)
    hop = int(pipe.vae.config.hop_length)
    rate = pipe.sample_rate
    return [
        OverlapProcessor(vocode, settings.vocoder_chunk_frames, radius, scale=hop),
        _Truncate(num_samples),
        OverlapProcessor(
            pipe.remove_dc, round(settings.dc_chunk_seconds * rate), round(settings.dc_context_seconds * rate)
        ),
    ]


def _run_stages(stages: list, block: torch.Tensor, first: int = 0) -> Iterator[torch.Tensor]:
    if first == len(stages):
        yield block
        return
    for output in stages[first].push(block):
        yield from _run_stages(stages, output, first + 1)


def _finish_stages(stages: list) -> Iterator[torch.Tensor]:
    for index, stage in enumerate(stages):
        for output in stage.finish():
            yield from _run_stages(stages, output, index + 1)


def generate_long_form(
    pipe,
    plan: WindowPlan,
    videos: Sequence | None,
    video_fps: float | None,
    duration: float,
    batch_size: int,
    num_waveforms_per_prompt: int,
    text: tuple,
    num_inference_steps: int,
    generator=None,
    latents: torch.Tensor | None = None,
    output_type: str = "np",
    sigmas=None,
    timesteps=None,
    callback_on_step_end: Callable | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    device: torch.device | None = None,
    settings: LongFormSettings | None = None,
) -> Iterator[torch.Tensor]:
    r"""
    The windowed branch of [`KlingFoleyPipeline.__call__`]: yields the output of a clip longer than one window,
    block by block (see [`iter_long_form`]). Each window's video is decoded and encoded on its own
    ([`encode_window_video`]) and conditioned as a clip of the window's length; the text is encoded once.

    Args:
        pipe ([`KlingFoleyPipeline`]): With `_guidance_scale`, `_attention_kwargs` and `_interrupt` set.
        plan ([`WindowPlan`]): From [`plan_for_duration`].
        videos (`list`, *optional*): The videos as given to `__call__` (paths, bytes, arrays, `VideoInput`s).
        video_fps (`float`, *optional*): Frame rate of array videos.
        duration (`float`): Seconds to generate (at most the shortest video).
        batch_size (`int`), num_waveforms_per_prompt (`int`): As in `__call__`.
        text (`tuple`): `(prompt_embeds, prompt_mask, negative_embeds, negative_mask)` from `encode_prompt` (trimmed),
            already repeated `num_waveforms_per_prompt` times.
        latents (`torch.Tensor`, *optional*): Initial noise of the whole clip `(batch, channels, total_frames)`.
        Other arguments: as in `__call__`.
    """
    device = device or pipe._execution_device
    videos = None if videos is None else list(videos) if isinstance(videos, (list, tuple)) else [videos]
    total_batch = batch_size * num_waveforms_per_prompt
    noise = pipe.prepare_latents(
        total_batch, pipe.transformer.config.in_channels, plan.total_frames, torch.float32, device, generator, latents
    )
    seconds_per_frame = pipe.vae.samples_per_latent_frame / pipe.sample_rate
    transformer_dtype = pipe.transformer.dtype

    def window_conditions(index: int):
        start, end = plan.window(index)
        seconds = (end - start) * seconds_per_frame
        clip_features = sync_features = None
        if videos is not None:
            start_seconds = start * seconds_per_frame
            seconds = min(seconds, duration - start_seconds)
            clip_features, sync_features, seconds = encode_window_video(pipe, videos, start_seconds, seconds, video_fps)
            if clip_features.shape[0] == 1 and batch_size > 1:
                clip_features = clip_features.expand(batch_size, -1, -1)
                sync_features = sync_features.expand(batch_size, -1, -1)
            clip_features = clip_features.repeat_interleave(num_waveforms_per_prompt, dim=0)
            sync_features = sync_features.repeat_interleave(num_waveforms_per_prompt, dim=0)
        conditions = pipe.prepare_transformer_conditions(
            end - start, total_batch, seconds, *text, clip_features, sync_features,
            pipe.do_classifier_free_guidance, device, transformer_dtype,
        )  # fmt: skip
        return conditions, clip_features

    return iter_long_form(
        pipe,
        plan,
        window_conditions,
        noise,
        num_inference_steps,
        pipe.sequence_lengths(duration),
        output_type=output_type,
        generator=generator,
        sigmas=sigmas,
        timesteps=timesteps,
        callback_on_step_end=callback_on_step_end,
        callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        settings=settings,
    )
