"""A synthetic audio-visual dataset whose sound events have known times and positions.

No Kling-Foley weights can be downloaded, so the demo pipeline is trained on this data. It is designed
to be learnable by a tiny model on a CPU: four visually obvious event classes, each with its own short,
percussive sound, events at least ``min_event_gap`` seconds apart, a small frame size and a clean,
dark background. Every visual event happens exactly on a video frame, and the matching sound starts at
the same instant, so the ground truth for temporal alignment is exact.

| class     | what you see                                            | what you hear                   | moving |
|-----------|---------------------------------------------------------|---------------------------------|--------|
| `bounce`  | a red ball touches the floor                            | wooden knock (damped partials)  | yes    |
| `collide` | a blue and an orange block slide together and touch     | metallic clang (inharmonic)     | yes    |
| `flash`   | a white flash (bright disc + frame brightening)         | noise burst                     | no     |
| `beep`    | a green lamp lights up                                  | sine beep                       | no     |

Every sound is panned by the horizontal position ``x`` (-1 left .. 1 right) of its object at the event
time with a constant-power pan law. Moving objects hit at a position at least ``0.25`` off centre, so
the sign of the pan (left or right) is well defined and testable.

Output folder layout of [`generate_dataset`]:

```
out/
  metadata.jsonl     {"file_name": "clip_00000.mp4", "caption": ..., "duration": ..., "fps": ...,
                      "events": [{"time": s, "class": ..., "x": ..., "moving": ..., "frame": ...}], "seed": ...,
                      "audio_file": "clip_00000.wav", "width": ..., "height": ..., "num_frames": ...,
                      "num_samples": ..., "sample_rate": 44100}
  clip_00000.mp4     H.264 yuv420p video + AAC stereo 44.1 kHz audio
  clip_00000.wav     the same audio, lossless (16-bit PCM)
```
The ``file_name``/``caption`` keys follow the ``metadata.jsonl`` convention of Hugging Face ``datasets``
folder builders. The wav link is stored as ``audio_file`` (not ``audio_file_name``, which ``datasets``
would treat as a second linked media column).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .audio_utils import SAMPLE_RATE
DEFAULT_FPS_CHOICES: tuple[float, ...] = (12, 24, 25, 30, 60)

# Horizontal positions of events stay inside the frame; moving objects hit at least this far off centre.
MAX_ABS_X = 0.85
MIN_ABS_X_MOVING = 0.25


@dataclass(frozen=True)
class EventClass:
    """One kind of audio-visual event.

    Args:
        name: Class name stored in the metadata (`"bounce"`, ...).
        moving: Whether the object moves, so its position at the event varies along a trajectory.
        sound: Short description of the sound, for documentation.
        min_same_class_gap: Minimum time in seconds between two events of this class (their visuals need room).
        caption_one / caption_many: Caption phrases; `{count}` is replaced by "twice", "three times", ...
    """

    name: str
    moving: bool
    sound: str
    min_same_class_gap: float
    caption_one: str
    caption_many: str


EVENT_CLASSES: dict[str, EventClass] = {
    "bounce": EventClass("bounce", True, "wooden knock", 0.5, "a red ball bounces", "a red ball bounces {count}"),
    "collide": EventClass("collide", True, "metallic clang", 1.1, "two blocks collide", "two blocks collide {count}"),
    "flash": EventClass("flash", False, "noise burst", 0.3, "a white flash", "{number} white flashes"),
    "beep": EventClass("beep", False, "sine beep", 0.3, "a green light beeps", "a green light beeps {count}"),
}

_COUNT_WORDS = {2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass
class SyntheticEvent:
    """One event: its sound starts at `time` seconds, exactly on video frame `frame`."""

    time: float
    event_class: str
    x: float
    moving: bool
    frame: int

    def to_dict(self) -> dict:
        """The event as a JSON-able dict, one entry of a clip's ``events`` in ``metadata.jsonl`` (time in seconds)."""
        return {
            "time": round(self.time, 6),
            "class": self.event_class,
            "x": round(self.x, 4),
            "moving": self.moving,
            "frame": self.frame,
        }


@dataclass
class SyntheticClip:
    """A rendered clip.

    Attributes:
        frames: `(num_frames, height, width, 3)` uint8 RGB.
        audio: `(2, num_samples)` float32 stereo in [-1, 1].
        fps: Video frame rate.
        sample_rate: Audio sample rate (44,100).
        duration: `num_frames / fps` seconds; the audio has `round(duration * sample_rate)` samples.
        events: Events sorted by time.
        caption: Text description, e.g. `"a red ball bounces twice, a white flash"`.
        seed: The seed that regenerates this exact clip with [`generate_clip`].
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    duration: float
    events: list[SyntheticEvent]
    caption: str
    seed: int
    metadata_extra: dict = field(default_factory=dict)

    def metadata(self, file_name: str, audio_file: str | None = None) -> dict:
        """The `metadata.jsonl` record of this clip."""
        record = {
            "file_name": file_name,
            "caption": self.caption,
            "duration": round(self.duration, 6),
            "fps": float(self.fps),
            "events": [event.to_dict() for event in self.events],
            "seed": int(self.seed),
        }
        if audio_file is not None:
            record["audio_file"] = audio_file
        record.update(
            {
                "width": int(self.frames.shape[2]),
                "height": int(self.frames.shape[1]),
                "num_frames": int(self.frames.shape[0]),
                "num_samples": int(self.audio.shape[1]),
                "sample_rate": int(self.sample_rate),
            }
        )
        record.update(self.metadata_extra)
        return record


# ----------------------------------------------------------------------------------------------------
# Event sampling
# ----------------------------------------------------------------------------------------------------


def clip_seed(seed: int, index: int) -> int:
    """Seed of clip `index` in a dataset generated with `seed` (independent streams, order-free)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def sample_events(
    rng: np.random.Generator,
    duration: float,
    fps: float,
    event_classes: Sequence[str] = tuple(EVENT_CLASSES),
    max_events: int = 4,
    min_event_gap: float = 0.3,
    start_margin: float = 0.25,
    end_margin: float = 0.4,
    seconds_per_event: float = 0.8,
) -> list[SyntheticEvent]:
    """Draws 1..`max_events` events at times snapped to video frames.

    Events are at least `min_event_gap` seconds apart (so onsets are separable), at least each class's
    `min_same_class_gap` apart within a class, and inside `[start_margin, duration - end_margin]` (so every
    sound starts, and mostly decays, inside the clip). The count is also capped at
    `1 + usable_seconds / seconds_per_event`: sparse events keep the shuffled-pair control of
    `eval-sync` near chance.
    """
    for name in event_classes:
        if name not in EVENT_CLASSES:
            raise ValueError(f"event_classes: unknown class {name!r}, expected some of {list(EVENT_CLASSES)}")
    if max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    low, high = start_margin, duration - end_margin
    if high <= low:
        raise ValueError(f"duration {duration} s is too short for events (need > {start_margin + end_margin} s)")
    event_classes = list(event_classes)
    cap = min(max_events, 1 + int((high - low) / seconds_per_event))
    num_events = int(rng.integers(1, cap + 1))
    while num_events > 0:
        for _ in range(200):
            classes = [event_classes[i] for i in rng.integers(0, len(event_classes), num_events)]
            frames = np.sort(np.round(rng.uniform(low, high, num_events) * fps).astype(int))
            times = frames / fps
            if num_events > 1 and np.min(np.diff(times)) < min_event_gap - 1e-9:
                continue
            ordered = sorted(zip(times, frames, classes))
            ok = True
            for name in set(classes):
                same = [t for t, _, c in ordered if c == name]
                if len(same) > 1 and np.min(np.diff(same)) < EVENT_CLASSES[name].min_same_class_gap - 1e-9:
                    ok = False
            if not ok:
                continue
            events = []
            for time, frame, name in ordered:
                moving = EVENT_CLASSES[name].moving
                if moving:
                    x = float(rng.choice([-1.0, 1.0]) * rng.uniform(MIN_ABS_X_MOVING, MAX_ABS_X))
                else:
                    x = float(rng.uniform(-MAX_ABS_X, MAX_ABS_X))
                events.append(SyntheticEvent(float(time), name, x, moving, int(frame)))
            return events
        num_events -= 1
    raise ValueError(f"could not place any event in a {duration} s clip at {fps} fps")


def make_caption(events: Sequence[SyntheticEvent]) -> str:
    """Caption naming each class once, in order of first occurrence, with its count."""
    order: list[str] = []
    counts: dict[str, int] = {}
    for event in sorted(events, key=lambda e: e.time):
        if event.event_class not in counts:
            order.append(event.event_class)
            counts[event.event_class] = 0
        counts[event.event_class] += 1
    phrases = []
    for name in order:
        spec, count = EVENT_CLASSES[name], counts[name]
        if count == 1:
            phrases.append(spec.caption_one)
        else:
            phrases.append(
                spec.caption_many.format(
                    count=_COUNT_WORDS.get(count, f"{count} times"), number=_NUMBER_WORDS.get(count, str(count))
                )
            )
    return ", ".join(phrases)


# ----------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------


def constant_power_pan(x: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left/right gains for horizontal position `x` in [-1, 1]: `cos`/`sin` of `(x + 1) * pi / 4`.

    The summed power `left**2 + right**2` is 1 everywhere, so a sound keeps its loudness as it moves;
    at the centre both gains are `1/sqrt(2)`.
    """
    theta = (np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0) + 1.0) * (np.pi / 4.0)
    return np.cos(theta), np.sin(theta)


def _damped_partials(
    t: np.ndarray, freqs: Iterable[float], decays: Iterable[float], amps: Iterable[float]
) -> np.ndarray:
    out = np.zeros_like(t)
    for f, d, a in zip(freqs, decays, amps):
        out += a * np.sin(2 * np.pi * f * t) * np.exp(-t / d)
    return out


def event_sound(event_class: str, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono waveform `(samples,)` of one event, peak 1, starting with a sharp attack at sample 0.

    Each class has its own spectrum and envelope so that the classes are easy to tell apart; pitch and
    decay vary by a few percent per event.
    """
    detune = rng.uniform(0.94, 1.06)
    if event_class == "bounce":
        # Wooden knock: low damped partials plus a 3 ms click for a crisp onset.
        t = np.arange(int(0.3 * sample_rate)) / sample_rate
        f0 = 180.0 * detune
        wave = _damped_partials(t, [f0, 2.31 * f0, 4.07 * f0], [0.06, 0.035, 0.02], [1.0, 0.6, 0.35])
        click = rng.standard_normal(t.size) * np.exp(-t / 0.003) * 0.8
        wave = wave + click
    elif event_class == "collide":
        # Metallic clang: inharmonic partials (free-bar ratios), longer ring.
        t = np.arange(int(0.5 * sample_rate)) / sample_rate
        f0 = 520.0 * detune
        ratios = [1.0, 2.756, 5.404, 8.933]
        wave = _damped_partials(t, [r * f0 for r in ratios], [0.16, 0.11, 0.07, 0.05], [1.0, 0.7, 0.5, 0.3])
    elif event_class == "flash":
        # Broadband noise burst, first-differenced to tilt it bright.
        t = np.arange(int(0.25 * sample_rate)) / sample_rate
        noise = np.diff(rng.standard_normal(t.size + 1))
        wave = noise * np.exp(-t / (0.045 * detune))
    elif event_class == "beep":
        # Pure tone, 150 ms, 2 ms attack (clickless but still a sharp onset).
        n = int(0.15 * sample_rate)
        t = np.arange(n) / sample_rate
        envelope = np.minimum(1.0, t / 0.002)
        wave = np.sin(2 * np.pi * 1000.0 * detune * t) * envelope
    else:
        raise ValueError(f"event_class: unknown class {event_class!r}, expected one of {list(EVENT_CLASSES)}")
    # Smooth raised-cosine release over the last 40 ms: a cut-off tail would splatter energy across the
    # spectrum and read as a second onset.
    release = int(0.04 * sample_rate)
    wave[-release:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, release))
    return (wave / np.max(np.abs(wave))).astype(np.float64)


def render_audio(
    events: Sequence[SyntheticEvent],
    num_samples: int,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    noise_level: float = 3e-4,
) -> np.ndarray:
    """Mixes the panned event sounds into `(2, num_samples)` float32 stereo audio.

    Each sound starts at sample `round(event.time * sample_rate)` with a gain in [0.5, 0.8] and is panned by
    `event.x` (constant power). A faint noise floor (`noise_level` std, about -70 dBFS) keeps the audio
    realistic for codec training without creating onsets.
    """
    audio = np.zeros((2, num_samples), dtype=np.float64)
    for event in events:
        sound = event_sound(event.event_class, rng, sample_rate) * rng.uniform(0.5, 0.8)
        start = int(round(event.time * sample_rate))
        stop = min(num_samples, start + sound.size)
        if start >= num_samples:
            continue
        left, right = constant_power_pan(event.x)
        audio[0, start:stop] += left * sound[: stop - start]
        audio[1, start:stop] += right * sound[: stop - start]
    if noise_level > 0:
        audio += rng.standard_normal(audio.shape) * noise_level
    peak = np.max(np.abs(audio))
    if peak > 0.98:  # overlapping sounds: scale down rather than clip
        audio *= 0.98 / peak
    return audio.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------

_BACKGROUND = np.array([28, 30, 40], dtype=np.float32)
_FLOOR = np.array([96, 84, 72], dtype=np.float32)
_BALL = np.array([225, 40, 40], dtype=np.float32)
_BLOCK_LEFT = np.array([60, 120, 235], dtype=np.float32)
_BLOCK_RIGHT = np.array([245, 160, 40], dtype=np.float32)
_FLASH = np.array([255, 255, 255], dtype=np.float32)
_LAMP = np.array([70, 240, 100], dtype=np.float32)

_FLASH_DECAY = 0.05  # seconds; the flash is brightest on the event frame
_LAMP_ON = 0.15  # seconds, as long as the beep
_BLOCK_APPROACH = 0.5  # seconds the blocks slide before they touch (and recede after)
_BLOCK_SPEED = 0.9  # x units (half frame widths) per second, each block


def _to_pixels(x: np.ndarray, width: int) -> np.ndarray:
    return (np.asarray(x) + 1.0) * 0.5 * width


class _Scene:
    """Per-frame object trajectories for one clip; `render(times)` draws a chunk of frames at once."""

    def __init__(self, events: Sequence[SyntheticEvent], duration: float, width: int, height: int):
        self.width, self.height, self.duration = width, height, duration
        size = min(width, height)
        self.floor_y = 0.88 * height
        self.ball_radius = 0.08 * size
        self.block_size = 0.15 * size
        self.flash_radius = 0.18 * size
        self.lamp_size = 0.12 * size
        # Gravity in pixels/s^2 such that a 0.6 s hop peaks at 40% of the frame height.
        self.gravity = 8 * 0.4 * height / 0.36
        self.bounces = sorted((e for e in events if e.event_class == "bounce"), key=lambda e: e.time)
        self.collisions = [e for e in events if e.event_class == "collide"]
        self.flashes = [e for e in events if e.event_class == "flash"]
        self.beeps = [e for e in events if e.event_class == "beep"]

    def ball_position(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ball centre `(x in [-1, 1], height above the floor in pixels)` at `times`.

        The ball is on the floor exactly at each bounce time and in flight in between (parabolas). Before the
        first bounce it comes down on an arc launched before the clip starts, and after the last one it flies
        up on an arc that lands only after the clip ends: it never touches the floor without a sound, and it
        always hits the floor fast, so the contact frame stands out from its neighbours.
        """
        impacts = np.array([e.time for e in self.bounces])
        xs = np.array([e.x for e in self.bounces])
        g = self.gravity
        if len(impacts) > 1:
            first_vx = (xs[1] - xs[0]) / (impacts[1] - impacts[0])
            last_vx = (xs[-1] - xs[-2]) / (impacts[-1] - impacts[-2])
        else:
            # A single bounce: drift toward the centre so the ball crosses part of the frame.
            first_vx = last_vx = -0.35 * np.sign(xs[0])
        x = np.interp(times, impacts, xs)
        x = np.where(times < impacts[0], xs[0] + first_vx * (times - impacts[0]), x)
        x = np.where(times > impacts[-1], xs[-1] + last_vx * (times - impacts[-1]), x)
        height = np.zeros_like(times)
        before = times < impacts[0]
        launch = -0.5  # the arc before the first bounce "started" half a second before the clip
        height[before] = 0.5 * g * (impacts[0] - times[before]) * (times[before] - launch)
        for start, stop in zip(impacts[:-1], impacts[1:]):
            inside = (times >= start) & (times <= stop)
            height[inside] = 0.5 * g * (times[inside] - start) * (stop - times[inside])
        after = times > impacts[-1]
        flight = (self.duration - impacts[-1]) + 0.5  # lands half a second after the end
        height[after] = 0.5 * g * (times[after] - impacts[-1]) * (impacts[-1] + flight - times[after])
        return x, height

    def render(self, times: np.ndarray) -> np.ndarray:
        """Frames at `times` (seconds) as `(len(times), height, width, 3)` uint8."""
        width, height = self.width, self.height
        num = len(times)
        px = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]  # (1, 1, W)
        py = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1)

        floor_alpha = np.clip(py[0] - self.floor_y + 0.5, 0.0, 1.0)[..., None]  # (H, 1, 1), soft edge
        empty = _BACKGROUND * (1 - floor_alpha) + _FLOOR * floor_alpha  # (H, 1, 3)
        frames = np.broadcast_to(empty, (num, height, width, 3)).astype(np.float32)

        # Each object is drawn only on the frames where it is visible: most objects live for a fraction
        # of a second, so this keeps rendering cheap.
        def paint(active: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
            a = alpha[..., None]
            frames[active] = frames[active] * (1 - a) + color * a

        def disc(cx: np.ndarray, cy: np.ndarray, radius: float) -> np.ndarray:
            dist = np.sqrt((px - cx[:, None, None]) ** 2 + (py - cy[:, None, None]) ** 2)
            return np.clip(radius - dist + 0.5, 0.0, 1.0)  # antialiased edge

        def ellipse(cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
            rx, ry = rx[:, None, None], ry[:, None, None]
            dist = np.sqrt(((px - cx[:, None, None]) / rx) ** 2 + ((py - cy[:, None, None]) / ry) ** 2)
            return np.clip((1 - dist) * np.minimum(rx, ry) + 0.5, 0.0, 1.0)

        def box(cx: np.ndarray, cy: np.ndarray, half: float) -> np.ndarray:
            ax = np.clip(half + 0.5 - np.abs(px - cx[:, None, None]), 0.0, 1.0)
            ay = np.clip(half + 0.5 - np.abs(py - cy[:, None, None]), 0.0, 1.0)
            return ax * ay

        def const(value: float, count: int) -> np.ndarray:
            return np.full(count, value, dtype=np.float32)

        # Flash: the whole frame brightens a little (the disc is drawn last, on top of everything).
        flash_strengths = []
        for event in self.flashes:
            dt = times - event.time
            active = (dt >= -1e-6) & (dt < 8 * _FLASH_DECAY)
            strength = np.exp(-np.maximum(dt[active], 0) / _FLASH_DECAY).astype(np.float32)
            flash_strengths.append((event, active, strength))
            if active.any():
                frames[active] += (255.0 - frames[active]) * (0.35 * strength)[:, None, None, None]

        # Colliding blocks: slide together at _BLOCK_SPEED, touch at the event, recede at half speed and fade.
        half = self.block_size / 2
        for event in self.collisions:
            dt = times - event.time
            active = (dt >= -_BLOCK_APPROACH) & (dt <= _BLOCK_APPROACH)
            if not active.any():
                continue
            dt = dt[active]
            gap = np.where(dt < 0, -dt * _BLOCK_SPEED, dt * _BLOCK_SPEED * 0.5)  # distance of each face, x units
            gap_px = gap * 0.5 * width
            centre = _to_pixels(event.x, width)
            fade = np.where(
                dt < 0, np.clip((dt + _BLOCK_APPROACH) / 0.1, 0, 1), np.clip(1 - dt / _BLOCK_APPROACH, 0, 1)
            )
            fade = fade.astype(np.float32)[:, None, None]
            cy = const(0.45 * height, len(dt))
            paint(active, box((centre - gap_px - half).astype(np.float32), cy, half) * fade, _BLOCK_LEFT)
            paint(active, box((centre + gap_px + half).astype(np.float32), cy, half) * fade, _BLOCK_RIGHT)

        if self.bounces:
            x, hop = self.ball_position(times.astype(np.float64))
            # Squash on contact (within ~20 ms of a bounce): wider and flatter, bottom on the floor.
            nearest = np.min(np.abs(times[:, None] - np.array([e.time for e in self.bounces])[None, :]), axis=1)
            squash = 0.3 * np.exp(-((nearest / 0.02) ** 2))
            radius_x = self.ball_radius * (1 + squash)
            radius_y = self.ball_radius * (1 - squash)
            cx = _to_pixels(x, width)
            cy = self.floor_y - radius_y - hop
            r = self.ball_radius * 1.3 + 1
            active = (cy > -r) & (cx > -r) & (cx < width + r)
            if active.any():
                paint(
                    active,
                    ellipse(
                        cx[active].astype(np.float32),
                        cy[active].astype(np.float32),
                        radius_x[active].astype(np.float32),
                        radius_y[active].astype(np.float32),
                    ),
                    _BALL,
                )

        for event in self.beeps:
            dt = times - event.time
            active = (dt >= -1e-6) & (dt < _LAMP_ON)  # the event frame is always lit, even at low fps
            if not active.any():
                continue
            count = int(active.sum())
            cx, cy = const(_to_pixels(event.x, width), count), const(0.14 * height, count)
            paint(active, disc(cx, cy, self.lamp_size) * 0.35, _LAMP)  # glow
            paint(active, box(cx, cy, self.lamp_size / 2), _LAMP)

        for event, active, strength in flash_strengths:
            if not active.any():
                continue
            count = int(active.sum())
            cx, cy = const(_to_pixels(event.x, width), count), const(0.3 * height, count)
            paint(active, disc(cx, cy, self.flash_radius) * strength[:, None, None], _FLASH)

        return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def render_video(
    events: Sequence[SyntheticEvent],
    num_frames: int,
    fps: float,
    width: int = 96,
    height: int = 96,
    chunk_frames: int = 128,
) -> np.ndarray:
    """Renders `(num_frames, height, width, 3)` uint8 RGB frames; frame `k` shows time `k / fps`.

    Rendering is vectorised over chunks of `chunk_frames` frames (bounded memory at any size).
    """
    duration = num_frames / fps
    scene = _Scene(events, duration, width, height)
    times = np.arange(num_frames, dtype=np.float64) / fps
    chunks = [scene.render(times[i : i + chunk_frames]) for i in range(0, num_frames, chunk_frames)]
    return np.concatenate(chunks, axis=0)


# ----------------------------------------------------------------------------------------------------
# Clips and datasets
# ----------------------------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    # yuv420p subsamples chroma by 2 in both directions: H.264 needs even sizes.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 16 (yuv420p), got {width}x{height}")


def generate_clip(
    seed: int,
    duration: float | None = None,
    fps: float | None = None,
    width: int = 96,
    height: int = 96,
    min_duration: float = 2.0,
    max_duration: float = 12.0,
    fps_choices: Sequence[float] = DEFAULT_FPS_CHOICES,
    event_classes: Sequence[str] = tuple(EVENT_CLASSES),
    max_events: int = 4,
    min_event_gap: float = 0.3,
    sample_rate: int = SAMPLE_RATE,
    noise_level: float = 3e-4,
) -> SyntheticClip:
    """Generates one clip, fully determined by `seed` and the other arguments.

    Args:
        seed: Random seed of this clip (see [`clip_seed`] for clips of a dataset).
        duration: Seconds; drawn uniformly from `[min_duration, max_duration]` when None. Rounded to a whole
            number of frames: the clip has `round(duration * fps)` frames and lasts `num_frames / fps` s.
        fps: Frame rate; drawn from `fps_choices` when None.
        width, height: Frame size in pixels (even).
        event_classes: Classes to draw from (see `EVENT_CLASSES`).
        max_events: At most this many events per clip (1..max_events, fewer in short clips).
        min_event_gap: Minimum seconds between any two events.
        sample_rate: Audio sample rate.
        noise_level: Standard deviation of the background noise floor.

    Returns:
        [`SyntheticClip`] with frames `(num_frames, height, width, 3)` uint8 and audio `(2, num_samples)`.
    """
    _check_size(width, height)
    if not 0 < min_duration <= max_duration:
        raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration} and {max_duration}")
    if fps is None and not len(fps_choices):
        raise ValueError("fps_choices must not be empty")
    rng = np.random.default_rng(seed)
    if fps is None:
        fps = float(fps_choices[int(rng.integers(0, len(fps_choices)))])
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if duration is None:
        duration = float(rng.uniform(min_duration, max_duration))
    num_frames = max(1, int(round(duration * fps)))
    duration = num_frames / fps
    num_samples = int(round(duration * sample_rate))
    events = sample_events(rng, duration, fps, event_classes, max_events=max_events, min_event_gap=min_event_gap)
    audio = render_audio(events, num_samples, rng, sample_rate, noise_level=noise_level)
    frames = render_video(events, num_frames, fps, width, height)
    return SyntheticClip(
        frames=frames,
        audio=audio,
        fps=float(fps),
        sample_rate=sample_rate,
        duration=duration,
        events=events,
        caption=make_caption(events),
        seed=int(seed),
    )


def write_clip(
    clip: SyntheticClip,
    video_path: str | os.PathLike,
    audio_path: str | os.PathLike | None = None,
    crf: int = 18,
    audio_bit_rate: int = 192_000,
) -> None:
    """Writes `clip` as an .mp4 (H.264 yuv420p + AAC stereo) and optionally its audio as a 16-bit .wav.

    The AAC encoder's priming samples are recorded in the mp4 edit list, so FFmpeg-based readers
    (PyAV) decode audio aligned with the video from sample 0; the last AAC frame is padded, so a decoder
    may return up to 1023 extra samples at the end.
    """
    import av

    fps = Fraction(clip.fps).limit_denominator(1001)
    with av.open(str(video_path), mode="w") as container:
        video_stream = container.add_stream("libx264", rate=fps)
        video_stream.width = clip.frames.shape[2]
        video_stream.height = clip.frames.shape[1]
        video_stream.pix_fmt = "yuv420p"
        # Single-threaded x264 keeps output bytes identical across runs and machines; frames are tiny.
        video_stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        # FFmpeg's "fast" AAC coder is twice as fast as the default at no audible cost at 192 kb/s.
        audio_stream = container.add_stream(
            "aac", rate=clip.sample_rate, layout="stereo", options={"aac_coder": "fast"}
        )
        audio_stream.bit_rate = audio_bit_rate

        for frame in clip.frames:
            for packet in video_stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in video_stream.encode():
            container.mux(packet)

        audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
        audio_frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout="stereo")
        audio_frame.sample_rate = clip.sample_rate
        audio_frame.pts = 0
        for packet in audio_stream.encode(audio_frame):  # PyAV re-frames to the encoder's 1024 samples
            container.mux(packet)
        for packet in audio_stream.encode():
            container.mux(packet)

    if audio_path is not None:
        import soundfile as sf

        sf.write(str(audio_path), clip.audio.T, clip.sample_rate, subtype="PCM_16")


def _generate_one(task: tuple) -> dict:
    index, seed, out_dir, kwargs, write_wav = task
    clip = generate_clip(seed, **kwargs)
    file_name = f"clip_{index:05d}.mp4"
    audio_file = f"clip_{index:05d}.wav" if write_wav else None
    write_clip(clip, Path(out_dir) / file_name, Path(out_dir) / audio_file if audio_file else None)
    return clip.metadata(file_name, audio_file)


def generate_dataset(
    out_dir: str | os.PathLike,
    num_clips: int,
    seed: int = 0,
    min_duration: float = 2.0,
    max_duration: float = 12.0,
    fps_choices: Sequence[float] = DEFAULT_FPS_CHOICES,
    width: int = 96,
    height: int = 96,
    event_classes: Sequence[str] = tuple(EVENT_CLASSES),
    max_events: int = 4,
    write_wav: bool = True,
    num_workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Writes `num_clips` clips plus `metadata.jsonl` to `out_dir` and returns the metadata records.

    Clip `i` uses seed [`clip_seed`]`(seed, i)`, so the dataset is deterministic given `seed` whatever
    `num_workers` is, and any clip can be regenerated alone from its recorded `seed`.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    _check_size(width, height)
    for fps in fps_choices:
        if fps <= 0:
            raise ValueError(f"fps_choices must be positive, got {list(fps_choices)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        width=width,
        height=height,
        min_duration=min_duration,
        max_duration=max_duration,
        fps_choices=tuple(fps_choices),
        event_classes=tuple(event_classes),
        max_events=max_events,
    )
    tasks = [(i, clip_seed(seed, i), str(out_dir), kwargs, write_wav) for i in range(num_clips)]
    if num_workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            iterator = pool.imap(_generate_one, tasks)
            records = list(_progress(iterator, num_clips, progress))
    else:
        records = list(_progress(map(_generate_one, tasks), num_clips, progress))
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


def _progress(iterator: Iterable, total: int, enabled: bool) -> Iterable:
    if not enabled:
        return iterator
    from tqdm.auto import tqdm

    return tqdm(iterator, total=total, desc="clips")


__all__ = [
    "EVENT_CLASSES",
    "EventClass",
    "SyntheticClip",
    "SyntheticEvent",
    "clip_seed",
    "constant_power_pan",
    "event_sound",
    "generate_clip",
    "generate_dataset",
    "make_caption",
    "render_audio",
    "render_video",
    "sample_events",
    "write_clip",
]
