"""A synthetic audio-visual dataset whose sound events have known times and positions, in many looks.

No Kling-Foley weights can be downloaded, so the demo pipeline is trained on this data. It is designed
to be learnable by a tiny model on a CPU: four visually obvious event classes, each with its own short,
percussive sound, events at least ``min_event_gap`` seconds apart and small frames. Every visual event
happens exactly on a video frame, and the matching sound starts at the same instant, so the ground truth
for temporal alignment is exact.

| class     | what you see (the cue is the same in every look)          | what you hear                   | moving |
|-----------|-----------------------------------------------------------|---------------------------------|--------|
| `bounce`  | the ball's velocity reverses where it touches the floor   | wooden knock (damped partials)  | yes    |
| `collide` | two blocks slide together and touch                       | metallic clang (inharmonic)     | yes    |
| `flash`   | a sudden brightness jump (bright shape + whole frame)     | noise burst                     | no     |
| `beep`    | a lamp switches on (for 150 ms)                           | sine beep                       | no     |

Every sound is panned by the horizontal position ``x`` (-1 left .. 1 right) of its object at the event
time with a constant-power pan law. Moving objects hit at a position at least ``0.25`` off centre, so
the sign of the pan (left or right) is well defined and testable. Captions name the classes in the words
of the classic look ("a red ball bounces") whatever the look: the text says what happens, not how it is drawn.

Looks
-----
A model trained on one look learns that look, not sync: each clip's appearance is therefore drawn from a
*look family* (`LOOK_FAMILIES`, `--looks`). A [`Look`] holds every drawn parameter: frame size and aspect
ratio (96-192 px per side), background (`solid`, `gradient`, value `noise`, `stripes`, `checker`, or a
`moving` pattern), floor colour and height, each object's shape (disc, box, diamond, ring, frame),
colour, texture (solid, stripes, checker, shaded) and size, glow halos, camera shake (whole-pixel, smooth),
a slow global brightness drift (at most a few percent per frame, so it never looks like a flash), per-frame
grain, distractors (objects that move on smooth paths, always visible, never touch the floor, never make a
sound) and silent stretches (25-45% of a clip with no events, while the distractors keep moving).

| family     | what it looks like                                                                               |
|------------|--------------------------------------------------------------------------------------------------|
| `classic`  | the original world: 96x96, plain dark background, red ball, blue/orange blocks, green lamp |
| `pastel`   | light low-saturation solid/gradient backgrounds, soft pastel flat or shaded objects, landscape frames |
| `textured` | mid-tone stripes/checker/noise backgrounds, striped and checkered objects, 1-2 distractors |
| `noisy`    | noise or moving backgrounds, strong grain, camera shake and lighting drift, 2-4 distractors, silences |
| `neon`     | near-black backgrounds, saturated hollow rings/frames with glow, portrait and wide frames        |

``looks="all", held_out_looks="neon"`` draws every family but neon (for training); ``looks="neon"`` makes the
held-out set. The look comes from a random stream of its own: a seed has the same events and audio in
every family (up to a silent stretch), and ``classic`` reproduces the clips made before looks existed.

Output folder layout of [`generate_dataset`]:

```
out/
  metadata.jsonl     {"file_name": "clip_00000.mp4", "caption": ..., "duration": ..., "fps": ...,
                      "events": [{"time": s, "class": ..., "x": ..., "moving": ..., "frame": ...}], "seed": ...,
                      "audio_file": "clip_00000.wav", "width": ..., "height": ..., "num_frames": ...,
                      "num_samples": ..., "sample_rate": 44100, "look_family": "pastel", "look": {...},
                      "silent_span": [start_s, end_s] or null}
  clip_00000.mp4     H.264 yuv420p video + AAC stereo 44.1 kHz audio
  clip_00000.wav     the same audio, lossless (16-bit PCM)
```
The ``file_name``/``caption`` keys follow the ``metadata.jsonl`` convention of Hugging Face ``datasets``
folder builders. The wav link is stored as ``audio_file`` (not ``audio_file_name``, which ``datasets``
would treat as a second linked media column).
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass, field
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
# Looks: how a clip is drawn (never what happens in it)
# ----------------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]

SHAPES = ("disc", "box", "diamond", "ring", "frame")
TEXTURES = ("solid", "stripes", "checker", "shaded")
BACKGROUNDS = ("solid", "gradient", "noise", "stripes", "checker", "moving")
MAX_SIDE = 192  # the demo's encoders resize to 112 px: larger frames only cost time
MIN_SIDE = 96

# The look is drawn from its own random stream, so the events and audio of a seed are the same in every
# family, and the `classic` family reproduces the clips generated before looks existed, byte for byte.
_LOOK_STREAM = 0x100C


@dataclass(frozen=True)
class ObjectStyle:
    """How one object is drawn.

    Args:
        shape: One of `SHAPES`: `disc` (ellipse), `box`, `diamond`, `ring` (hollow ellipse), `frame` (hollow box).
        color: Main RGB colour (0-255).
        color2: Second colour of a texture (unused by `solid`).
        texture: One of `TEXTURES`; the pattern is attached to the object and moves with it.
        period: Stripe / checker period in pixels.
        angle: Stripe direction in radians.
    """

    shape: str
    color: RGB
    color2: RGB
    texture: str = "solid"
    period: float = 6.0
    angle: float = 0.0


@dataclass(frozen=True)
class Distractor:
    """An object that moves on a smooth Lissajous path and never makes a sound.

    Its centre at time `t` is `(x0 + ax sin(2 pi fx t + phase_x), y0 + ay sin(2 pi fy t + phase_y))` pixels:
    it is visible on every frame (it never appears suddenly, like a lamp), changes direction only smoothly
    (never like a bounce) and stays above the floor.
    """

    style: ObjectStyle
    radius: float
    x0: float
    y0: float
    ax: float
    ay: float
    fx: float
    fy: float
    phase_x: float
    phase_y: float


@dataclass(frozen=True)
class Look:
    """Every drawn parameter of one clip's appearance (see the module docstring for the families).

    Sizes are fractions of `min(width, height)` and vertical positions fractions of `height`, so a look
    scales with the frame. Colours are RGB 0-255.

    Args:
        family: Name of the look family it was drawn from.
        width, height: Frame size in pixels (even).
        background: One of `BACKGROUNDS`. `moving` scrolls a stripe / checker / noise pattern at
            `background_speed` px/s in direction `background_angle`.
        background_colors: The two colours of the background pattern (`solid` uses the first).
        background_pattern: Pattern of `moving` (`stripes`, `checker` or `noise`); else equal to `background`.
        background_period: Stripe / checker / noise-cell size in pixels.
        floor_y, floor_color: Top of the floor band (the ball bounces on it) and its colour.
        ball, block_left, block_right, lamp, flash: Styles of the event objects.
        ball_radius, block_size, lamp_size, flash_radius: Object sizes.
        block_y, lamp_y, flash_y: Vertical centres of the blocks, lamps and flash disc.
        flash_gain: How far the flash brightens the whole frame toward white on its frame (0..1).
        lamp_housing: Whether an unlit lamp is visible before it switches on.
        glow: Alpha of a soft halo around the ball, blocks and distractors (0: none).
        shake, shake_freq: Camera shake amplitude (pixels, whole-pixel steps) and base frequency (Hz).
        drift, drift_period, drift_phase: Slow global brightness drift `1 + drift sin(2 pi t / period + phase)`.
            Its largest frame-to-frame change is `2 pi drift / period / fps`, a few percent: a flash is a
            sudden jump of tens of percent.
        grain: Standard deviation of per-frame sensor noise (0-255 units).
        distractors: Silent moving objects.
        texture_seed: Seed of the noise patterns, grain and shake phases.
    """

    family: str
    width: int
    height: int
    background: str
    background_colors: tuple[RGB, RGB]
    background_pattern: str
    background_period: float
    background_angle: float
    background_speed: float
    floor_y: float
    floor_color: RGB
    ball: ObjectStyle
    block_left: ObjectStyle
    block_right: ObjectStyle
    lamp: ObjectStyle
    flash: ObjectStyle
    ball_radius: float
    block_size: float
    lamp_size: float
    flash_radius: float
    block_y: float
    lamp_y: float
    flash_y: float
    flash_gain: float
    lamp_housing: bool
    glow: float
    shake: float
    shake_freq: float
    drift: float
    drift_period: float
    drift_phase: float
    grain: float
    distractors: tuple[Distractor, ...]
    texture_seed: int

    def camera_offsets(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-pixel camera shake `(dx, dy)` at `times` `(N,)` seconds, each `(N,)` int within `shake`.

        Smooth sums of two sines per axis (phases from `texture_seed`); the whole picture, floor and objects
        included, moves by `(dx, dy)`, so contacts stay exact in the image.
        """
        times = np.asarray(times, dtype=np.float64)
        if self.shake <= 0:
            zero = np.zeros(times.shape, dtype=int)
            return zero, zero
        p = np.random.default_rng([self.texture_seed, 1]).uniform(0.0, 2 * np.pi, 4)
        w = 2 * np.pi * self.shake_freq * times
        dx = (np.sin(w + p[0]) + 0.5 * np.sin(2.3 * w + p[1])) / 1.5
        dy = (np.sin(1.3 * w + p[2]) + 0.5 * np.sin(2.9 * w + p[3])) / 1.5
        return np.round(self.shake * dx).astype(int), np.round(self.shake * dy).astype(int)

    def to_dict(self) -> dict:
        """The look as JSON-native values (lists, floats rounded to 4 decimals), as stored in `metadata.jsonl`."""
        return _jsonable(asdict(self))


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4)
    return value


@dataclass(frozen=True)
class LookFamily:
    """A distribution over looks. Ranges are `(low, high)`, drawn uniformly; tuples of names are drawn from.

    Args:
        name: Family name (`--looks`).
        description: One line for `--help` and the docs.
        short_side: Range of the shorter frame side in pixels (the longer side is capped at `MAX_SIDE`).
        aspects: Width / height ratios to draw from.
        backgrounds: Background kinds to draw from.
        background_saturation, background_value: HSV ranges of the first background colour.
        background_contrast: Range of the HSV value difference of the second background colour.
        object_saturation, object_value: HSV ranges of the object colours.
        shapes, textures: Object shapes and textures to draw from.
        glow, shake, drift, grain: Ranges of the `Look` fields of those names.
        distractors: Range of the number of distractors (inclusive).
        silent_probability: Probability that a clip has a silent stretch (see `generate_clip`).
        lamp_housing_probability: Probability that the unlit lamp is visible.
        flash_gain: Range of `Look.flash_gain`.
    """

    name: str
    description: str
    short_side: tuple[int, int] = (96, 96)
    aspects: tuple[float, ...] = (1.0,)
    backgrounds: tuple[str, ...] = ("solid",)
    background_saturation: tuple[float, float] = (0.0, 0.3)
    background_value: tuple[float, float] = (0.1, 0.2)
    background_contrast: tuple[float, float] = (0.0, 0.0)
    object_saturation: tuple[float, float] = (0.6, 0.9)
    object_value: tuple[float, float] = (0.8, 1.0)
    shapes: tuple[str, ...] = ("disc", "box")
    textures: tuple[str, ...] = ("solid",)
    glow: tuple[float, float] = (0.0, 0.0)
    shake: tuple[float, float] = (0.0, 0.0)
    drift: tuple[float, float] = (0.0, 0.0)
    grain: tuple[float, float] = (0.0, 0.0)
    distractors: tuple[int, int] = (0, 0)
    silent_probability: float = 0.0
    lamp_housing_probability: float = 0.0
    flash_gain: tuple[float, float] = (0.35, 0.35)


LOOK_FAMILIES: dict[str, LookFamily] = {
    family.name: family
    for family in (
        LookFamily(
            "classic",
            "the original world: 96x96, plain dark background, red ball, blue/orange blocks, green lamp, "
            "no shake, drift, grain, distractors or silent stretches",
        ),
        LookFamily(
            "pastel",
            "light, low-saturation solid or gradient backgrounds, soft pastel objects (disc/box/diamond, "
            "flat or shaded), landscape frames, barely any shake, 0-1 distractor",
            short_side=(96, 144),
            aspects=(4 / 3, 3 / 2, 16 / 9),
            backgrounds=("solid", "gradient"),
            background_saturation=(0.08, 0.25),
            background_value=(0.62, 0.8),
            background_contrast=(0.05, 0.15),
            object_saturation=(0.25, 0.55),
            object_value=(0.85, 1.0),
            shapes=("disc", "box", "diamond"),
            textures=("solid", "shaded"),
            shake=(0.0, 1.0),
            drift=(0.0, 0.08),
            distractors=(0, 1),
            silent_probability=0.3,
            lamp_housing_probability=0.5,
            flash_gain=(0.55, 0.7),
        ),
        LookFamily(
            "textured",
            "mid-tone striped / checkered / value-noise backgrounds, striped and checkered objects of any "
            "shape, square or near-square frames, light shake, 1-2 distractors",
            short_side=(96, 160),
            aspects=(1.0, 4 / 3, 3 / 4),
            backgrounds=("stripes", "checker", "noise"),
            background_saturation=(0.2, 0.6),
            background_value=(0.3, 0.55),
            background_contrast=(0.12, 0.3),
            object_saturation=(0.5, 0.9),
            object_value=(0.65, 1.0),
            shapes=("disc", "box", "diamond", "frame"),
            textures=("stripes", "checker"),
            shake=(0.0, 2.0),
            drift=(0.0, 0.1),
            grain=(0.0, 2.0),
            distractors=(1, 2),
            silent_probability=0.3,
            lamp_housing_probability=0.5,
            flash_gain=(0.45, 0.6),
        ),
        LookFamily(
            "noisy",
            "value-noise or moving backgrounds, strong per-frame grain, camera shake and lighting drift, "
            "2-4 distractors, frequent silent stretches, square / 16:9 / 9:16 frames",
            short_side=(96, 128),
            aspects=(1.0, 16 / 9, 9 / 16),
            backgrounds=("noise", "moving"),
            background_saturation=(0.0, 0.4),
            background_value=(0.2, 0.5),
            background_contrast=(0.15, 0.35),
            object_saturation=(0.4, 0.9),
            object_value=(0.7, 1.0),
            shapes=("disc", "box", "diamond", "ring"),
            textures=("solid", "shaded", "stripes"),
            shake=(2.0, 5.0),
            drift=(0.1, 0.2),
            grain=(6.0, 14.0),
            distractors=(2, 4),
            silent_probability=0.5,
            lamp_housing_probability=0.5,
            flash_gain=(0.45, 0.6),
        ),
        LookFamily(
            "neon",
            "near-black backgrounds (plain, faint gradient or slowly moving pattern), saturated hollow "
            "rings / frames with glow halos, portrait and wide frames, 1-3 distractors",
            short_side=(96, 144),
            aspects=(1.0, 3 / 4, 9 / 16, 2.0),
            backgrounds=("solid", "gradient", "moving"),
            background_saturation=(0.3, 0.9),
            background_value=(0.02, 0.1),
            background_contrast=(0.0, 0.08),
            object_saturation=(0.85, 1.0),
            object_value=(1.0, 1.0),
            shapes=("ring", "frame", "disc", "diamond"),
            textures=("solid",),
            glow=(0.25, 0.45),
            shake=(0.0, 1.5),
            drift=(0.0, 0.1),
            grain=(0.0, 3.0),
            distractors=(1, 3),
            silent_probability=0.3,
            lamp_housing_probability=0.7,
            flash_gain=(0.35, 0.5),
        ),
    )
}


def resolve_looks(looks: str | Sequence[str] = "classic", held_out_looks: str | Sequence[str] = ()) -> tuple[str, ...]:
    """The look families to draw from: `looks` (names, or `"all"` for every family) minus `held_out_looks`.

    Names may be given as a sequence or one comma-separated string. The result follows the order of
    `LOOK_FAMILIES`, so it does not depend on how the names were ordered.

    Raises:
        ValueError: an unknown name; a held-out family that `looks` names explicitly (it would be in
            training and held out at once); or nothing left to draw from.
    """

    def names(value, argument: str, allow_all: bool) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [str(item).strip() for item in items if str(item).strip()]
        for item in items:
            if item not in LOOK_FAMILIES and not (allow_all and item == "all"):
                expected = (["all"] if allow_all else []) + list(LOOK_FAMILIES)
                raise ValueError(f"{argument}: unknown look family {item!r}, expected some of {expected}")
        return items

    wanted = names(looks, "looks (--looks)", allow_all=True)
    held_out = set(names(held_out_looks, "held_out_looks (--held-out-looks)", allow_all=False))
    if not wanted:
        raise ValueError(f"looks (--looks): expected at least one family of {['all'] + list(LOOK_FAMILIES)}")
    both = sorted(held_out & set(wanted), key=list(LOOK_FAMILIES).index)
    if both:
        raise ValueError(
            f"held_out_looks (--held-out-looks): {both} also requested in looks (--looks) {wanted}; a held-out "
            "family must be left out of training (use --looks all --held-out-looks NAME, and --looks NAME "
            "for the held-out set)"
        )
    chosen = set(LOOK_FAMILIES) if "all" in wanted else set(wanted)
    result = tuple(name for name in LOOK_FAMILIES if name in chosen and name not in held_out)
    if not result:
        raise ValueError(f"looks (--looks): nothing left after holding out {sorted(held_out)}")
    return result


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))) * 255.0


def _rgb(color: np.ndarray) -> RGB:
    r, g, b = (int(round(c)) for c in np.clip(color, 0, 255))
    return (r, g, b)


def _even(value: float) -> int:
    return int(2 * round(value / 2))


def _classic_look(width: int, height: int) -> Look:
    def solid(color: RGB, shape: str) -> ObjectStyle:
        return ObjectStyle(shape, color, color)

    return Look(
        family="classic",
        width=width,
        height=height,
        background="solid",
        background_colors=((28, 30, 40), (28, 30, 40)),
        background_pattern="solid",
        background_period=8.0,
        background_angle=0.0,
        background_speed=0.0,
        floor_y=0.88,
        floor_color=(96, 84, 72),
        ball=solid((225, 40, 40), "disc"),
        block_left=solid((60, 120, 235), "box"),
        block_right=solid((245, 160, 40), "box"),
        lamp=solid((70, 240, 100), "box"),
        flash=solid((255, 255, 255), "disc"),
        ball_radius=0.08,
        block_size=0.15,
        lamp_size=0.12,
        flash_radius=0.18,
        block_y=0.45,
        lamp_y=0.14,
        flash_y=0.3,
        flash_gain=0.35,
        lamp_housing=False,
        glow=0.0,
        shake=0.0,
        shake_freq=0.0,
        drift=0.0,
        drift_period=1.0,
        drift_phase=0.0,
        grain=0.0,
        distractors=(),
        texture_seed=0,
    )


def sample_look(
    family: str | LookFamily, rng: np.random.Generator, width: int | None = None, height: int | None = None
) -> Look:
    """Draws one [`Look`] from `family`; `width`/`height` (both or neither) override the family's frame sizes.

    The `classic` family has a single look: today's world (96x96 unless overridden).
    """
    if isinstance(family, str):
        if family not in LOOK_FAMILIES:
            raise ValueError(f"family: unknown look family {family!r}, expected one of {list(LOOK_FAMILIES)}")
        family = LOOK_FAMILIES[family]
    if (width is None) != (height is None):
        raise ValueError(f"width and height must be given together (or neither), got {width} and {height}")
    if family.name == "classic":
        return _classic_look(width or 96, height or 96)

    def uniform(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    def pick(options: Sequence):
        return options[int(rng.integers(0, len(options)))]

    if width is None:
        short = uniform(family.short_side)
        aspect = float(pick(family.aspects))
        w, h = (short * aspect, short) if aspect >= 1 else (short, short / aspect)
        scale = min(1.0, MAX_SIDE / max(w, h))
        width, height = max(MIN_SIDE, _even(w * scale)), max(MIN_SIDE, _even(h * scale))

    background = pick(family.backgrounds)
    pattern = pick(("stripes", "checker", "noise")) if background == "moving" else background
    hue = float(rng.uniform())
    bg1 = _hsv(hue, uniform(family.background_saturation), uniform(family.background_value))
    contrast = uniform(family.background_contrast) * float(pick((-1.0, 1.0)))
    bg1_value = max(bg1) / 255.0
    if not 0.5 * family.background_value[0] <= bg1_value + contrast <= 1.0:  # stay in the family's range
        contrast = -contrast
    bg2 = _hsv(hue + rng.uniform(-0.08, 0.08), uniform(family.background_saturation), bg1_value + contrast)
    floor = _hsv(float(rng.uniform()), uniform((0.2, 0.5)), float(np.clip(bg1_value + pick((-0.25, 0.25)), 0.15, 0.8)))

    used: list[np.ndarray] = [bg1, bg2, floor]

    def object_color() -> np.ndarray:
        # Objects must stand out from the background and from each other (RGB distance >= 80).
        for _ in range(30):
            color = _hsv(float(rng.uniform()), uniform(family.object_saturation), uniform(family.object_value))
            if min(np.linalg.norm(color - other) for other in used) >= 80:
                break
        used.append(color)
        return color

    def style(shapes: Sequence[str] | None = None, textures: Sequence[str] | None = None) -> ObjectStyle:
        color = object_color()
        texture = pick(textures or family.textures)
        if texture == "shaded":
            second = color * 0.55
        else:
            second = color * float(rng.uniform(0.35, 0.6)) + (255.0 - color) * float(rng.uniform(0.0, 0.3))
        return ObjectStyle(
            shape=pick(shapes or family.shapes),
            color=_rgb(color),
            color2=_rgb(second),
            texture=texture,
            period=round(uniform((3.0, 7.0)), 2),
            angle=round(uniform((0.0, np.pi)), 3),
        )

    ball = style()
    block_shapes = tuple(s for s in family.shapes if s in ("box", "frame", "disc", "diamond")) or ("box",)
    block_left = style(block_shapes)
    block_right = style(block_shapes)
    lamp = style()
    # The flash stays near white in every family: it is a sudden brightness jump, tinted at most slightly.
    tint = _hsv(float(rng.uniform()), uniform((0.0, 0.25)), 1.0)
    flash = ObjectStyle(pick(("disc", "box", "diamond")), _rgb(tint), _rgb(tint), "solid")

    floor_y = uniform((0.8, 0.9))
    size = min(width, height)
    distractors = []
    for _ in range(int(rng.integers(family.distractors[0], family.distractors[1] + 1))):
        radius = uniform((0.05, 0.1)) * size
        top, bottom = 0.08 * height + radius, floor_y * height - 0.08 * height - radius
        left, right = radius, width - radius
        ax, ay = uniform((0.15, 0.5)) * (right - left), uniform((0.1, 0.5)) * (bottom - top)
        distractors.append(
            Distractor(
                style=style(textures=family.textures),
                radius=radius,
                x0=uniform((left + ax, right - ax)),
                y0=uniform((top + ay, bottom - ay)) if bottom - ay > top + ay else 0.5 * (top + bottom),
                ax=ax,
                ay=ay,
                fx=uniform((0.05, 0.35)),
                fy=uniform((0.05, 0.35)),
                phase_x=uniform((0.0, 2 * np.pi)),
                phase_y=uniform((0.0, 2 * np.pi)),
            )
        )

    return Look(
        family=family.name,
        width=int(width),
        height=int(height),
        background=background,
        background_colors=(_rgb(bg1), _rgb(bg2)),
        background_pattern=pattern,
        background_period=uniform((6.0, 20.0)),
        background_angle=uniform((0.0, np.pi)),
        background_speed=uniform((6.0, 24.0)) if background == "moving" else 0.0,
        floor_y=floor_y,
        floor_color=_rgb(floor),
        ball=ball,
        block_left=block_left,
        block_right=block_right,
        lamp=lamp,
        flash=flash,
        ball_radius=uniform((0.06, 0.1)),
        block_size=uniform((0.12, 0.2)),
        lamp_size=uniform((0.09, 0.14)),
        flash_radius=uniform((0.14, 0.22)),
        block_y=uniform((0.35, 0.55)),
        lamp_y=uniform((0.1, 0.22)),
        flash_y=uniform((0.22, 0.4)),
        flash_gain=uniform(family.flash_gain),
        lamp_housing=bool(rng.uniform() < family.lamp_housing_probability),
        glow=uniform(family.glow),
        shake=uniform(family.shake),
        shake_freq=uniform((0.5, 2.5)),
        drift=uniform(family.drift),
        drift_period=uniform((5.0, 12.0)),
        drift_phase=uniform((0.0, 2 * np.pi)),
        grain=uniform(family.grain),
        distractors=tuple(distractors),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------

_FLASH_DECAY = 0.05  # seconds; the flash is brightest on the event frame
_LAMP_ON = 0.15  # seconds, as long as the beep
_BLOCK_APPROACH = 0.5  # seconds the blocks slide before they touch (and recede after)
_BLOCK_SPEED = 0.9  # x units (half frame widths) per second, each block
_GLOW_SCALE = 1.7  # halo extent relative to the object
_WINDOW_FRAMES = 16  # frames that share one drawing window (the union of the object's boxes over them)
_GRAIN_BANK = 6  # grain images cycled over the frames (drawing fresh noise per frame would dominate the cost)


def _to_pixels(x: np.ndarray, width: int) -> np.ndarray:
    return (np.asarray(x) + 1.0) * 0.5 * width


def _shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, rx, ry) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a shape with half-extents `rx`, `ry` at offsets `dx`, `dy` from its centre."""
    if shape in ("disc", "ring"):
        if np.isscalar(rx) and rx == ry:
            dist = np.sqrt(dx**2 + dy**2)
            outer = np.clip(rx - dist + 0.5, 0.0, 1.0)
            if shape == "disc":
                return outer
            return outer - np.clip(rx - max(1.5, 0.35 * rx) - dist + 0.5, 0.0, 1.0)
        dist = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
        scale = np.minimum(rx, ry)
        outer = np.clip((1 - dist) * scale + 0.5, 0.0, 1.0)
        if shape == "disc":
            return outer
        return outer - np.clip((1 - dist) * scale - np.maximum(1.5, 0.35 * scale) + 0.5, 0.0, 1.0)
    if shape in ("box", "frame"):
        ax = np.clip(rx + 0.5 - np.abs(dx), 0.0, 1.0)
        ay = np.clip(ry + 0.5 - np.abs(dy), 0.0, 1.0)
        if shape == "box":
            return ax * ay
        t = np.maximum(1.5, 0.3 * np.minimum(rx, ry))
        inner = np.clip(rx - t + 0.5 - np.abs(dx), 0.0, 1.0) * np.clip(ry - t + 0.5 - np.abs(dy), 0.0, 1.0)
        return ax * ay - inner
    if shape == "diamond":
        # Scaled so that its area is close to the disc's of the same extents.
        d = np.abs(dx) / (rx * 1.2) + np.abs(dy) / (ry * 1.2)
        return np.clip((1 - d) * np.minimum(rx, ry) * 0.85 + 0.5, 0.0, 1.0)
    raise ValueError(f"shape: unknown shape {shape!r}, expected one of {list(SHAPES)}")


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float, angle: float) -> np.ndarray:
    """Two-tone pattern in {0, 1} (stripes, checker) or [0, 1] (shaded) at pixel offsets `u`, `v`."""
    if kind == "stripes":
        along = u * np.float32(np.cos(angle)) + v * np.float32(np.sin(angle))
        return (np.floor(along / period) % 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    raise ValueError(f"unknown pattern {kind!r}")


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise `(height, width)` in [0, 1]: random values on a grid of `cell` px, bilinearly interpolated."""
    gh, gw = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
    grid = rng.uniform(0.0, 1.0, (gh, gw)).astype(np.float32)
    y, x = np.arange(height, dtype=np.float32) / cell, np.arange(width, dtype=np.float32) / cell
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no visible grid lines
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _draw_shape(
    window: np.ndarray, style: ObjectStyle, dx: np.ndarray, dy: np.ndarray, rx, ry, opacity, glow: float
) -> np.ndarray:
    """`window` `(n, h, w, 3)` float32 with `style` drawn over it at pixel offsets `dx`/`dy` from its centre.

    `rx`, `ry` and `opacity` are scalars or `(n,)` arrays (one per frame); `glow` > 0 adds a soft halo.
    """

    def paint(window: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
        a = alpha[..., None]
        return window * (1 - a) + color * a

    if opacity is not None and np.ndim(opacity) > 0:
        opacity = np.asarray(opacity)[:, None, None]
    if np.ndim(rx) > 0:
        rx, ry = np.asarray(rx)[:, None, None], np.asarray(ry)[:, None, None]
    color = np.array(style.color, dtype=np.float32)
    if glow > 0:
        halo = _shape_alpha("disc", dx, dy, rx * _GLOW_SCALE, ry * _GLOW_SCALE) * glow
        window = paint(window, halo if opacity is None else halo * opacity, color)
    alpha = _shape_alpha(style.shape, dx, dy, rx, ry)
    if opacity is not None:
        alpha = alpha * opacity
    if style.texture == "shaded":
        # Lit from the top left: the colour darkens toward the bottom right of the object.
        reach = np.float32(2.0) * (np.asarray(rx, np.float32) + np.asarray(ry, np.float32))
        mix = np.clip(0.5 + (dx + dy) / reach, 0.0, 1.0)
        color = color + (np.array(style.color2, np.float32) - color) * mix[..., None]
    elif style.texture != "solid":
        mix = _pattern(style.texture, dx, dy, style.period, style.angle)
        color = color + (np.array(style.color2, np.float32) - color) * mix[..., None]
    return paint(window, alpha, color)


class _Scene:
    """Per-frame object trajectories for one clip in one look; `render(times, frames)` draws a chunk of frames."""

    def __init__(self, events: Sequence[SyntheticEvent], duration: float, look: Look):
        self.look = look
        width, height = look.width, look.height
        self.width, self.height, self.duration = width, height, duration
        size = min(width, height)
        self.floor_y = look.floor_y * height
        self.ball_radius = look.ball_radius * size
        self.block_size = look.block_size * size
        self.flash_radius = look.flash_radius * size
        self.lamp_size = look.lamp_size * size
        # Gravity in pixels/s^2 such that a 0.6 s hop peaks at 40% of the frame height.
        self.gravity = 8 * 0.4 * height / 0.36
        self.bounces = sorted((e for e in events if e.event_class == "bounce"), key=lambda e: e.time)
        self.collisions = [e for e in events if e.event_class == "collide"]
        self.flashes = [e for e in events if e.event_class == "flash"]
        self.beeps = [e for e in events if e.event_class == "beep"]

        rng = np.random.default_rng(look.texture_seed)
        self.margin = int(np.ceil(look.shake))
        # The background is a static canvas, larger than the frame by the shake margin and the distance a
        # moving background travels; each frame is a whole-pixel crop of it (cheap, and sharp).
        self.scroll = np.array([np.cos(look.background_angle), np.sin(look.background_angle)]) * look.background_speed
        self.travel = np.ceil(np.abs(self.scroll) * duration).astype(int) + 1  # (x, y) pixels
        self.canvas = None
        if look.background != "solid":
            ch = height + 2 * self.margin + int(self.travel[1])
            cw = width + 2 * self.margin + int(self.travel[0])
            c1, c2 = (np.array(c, dtype=np.float32) for c in look.background_colors)
            if look.background_pattern == "gradient":
                v, u = np.mgrid[0:ch, 0:cw].astype(np.float32)
                along = u * np.cos(look.background_angle) + v * np.sin(look.background_angle)
                mix = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
            elif look.background_pattern == "noise":
                mix = _value_noise(rng, ch, cw, look.background_period)
            else:
                v, u = np.mgrid[0:ch, 0:cw].astype(np.float32)
                mix = _pattern(look.background_pattern, u, v, look.background_period / 2, look.background_angle)
            self.canvas = (c1 + (c2 - c1) * mix[..., None]).astype(np.float32)
        self.grain = None
        if look.grain > 0:
            self.grain = (rng.standard_normal((_GRAIN_BANK, height, width, 1)) * look.grain).astype(np.float32)

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

    def render(self, times: np.ndarray, frame_numbers: np.ndarray) -> np.ndarray:
        """Frames at `times` (seconds; `frame_numbers` their indices) as `(len(times), height, width, 3)` uint8."""
        look = self.look
        width, height = self.width, self.height
        num = len(times)
        px = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]  # (1, 1, W)
        py = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1)
        sx, sy = look.camera_offsets(times)

        if self.canvas is None:
            background = np.array(look.background_colors[0], dtype=np.float32)
        else:
            # Crop origin: where the scrolling pattern is at time t, minus the camera shake, whole pixels.
            shift = np.round(np.abs(self.scroll)[None, :] * times[:, None]).astype(int)  # (N, 2)
            origin = np.where(self.scroll[None, :] >= 0, self.travel[None, :] - shift, shift)
            ox, oy = origin[:, 0] + self.margin - sx, origin[:, 1] + self.margin - sy
            background = np.stack([self.canvas[y : y + height, x : x + width] for x, y in zip(ox, oy)])
        floor_top = (self.floor_y + sy).astype(np.float32)[:, None, None, None] if look.shake > 0 else self.floor_y
        floor_alpha = np.clip(py[..., None] - floor_top + 0.5, 0.0, 1.0)  # (N or 1, H, 1, 1), soft edge
        floor_color = np.array(look.floor_color, dtype=np.float32)
        frames = background * (1 - floor_alpha) + floor_color * floor_alpha
        frames = np.broadcast_to(frames, (num, height, width, 3)).astype(np.float32)

        # Each object is drawn only on the frames where it is visible: most objects live for a fraction
        # of a second, so this keeps rendering cheap.
        def draw(active, style: ObjectStyle, cx, cy, rx, ry, opacity=None, glow: float = 0.0) -> None:
            """Draws `style` centred at `(cx, cy)` (one per active frame) with half-extents `rx`, `ry`.

            `rx`, `ry` and `opacity` are scalars or one value per active frame. Only a window around the
            object is touched (per group of frames): the rest of the frame is where its alpha is 0.
            """
            index = np.flatnonzero(active)
            count = index.size
            cx = np.broadcast_to(np.asarray(cx, dtype=np.float32), (count,))
            cy = np.broadcast_to(np.asarray(cy, dtype=np.float32), (count,))
            per_frame = [np.ndim(value) > 0 for value in (rx, ry, opacity)]
            for lo in range(0, count, _WINDOW_FRAMES):
                hi = min(count, lo + _WINDOW_FRAMES)
                wrx, wry, wop = (v[lo:hi] if pf else v for v, pf in zip((rx, ry, opacity), per_frame))
                reach = 1.3 * float(max(np.max(wrx), np.max(wry))) * (_GLOW_SCALE if glow > 0 else 1.0) + 3.0
                x0 = max(0, int(np.floor(cx[lo:hi].min() - reach)))
                x1 = min(width, int(np.ceil(cx[lo:hi].max() + reach)))
                y0 = max(0, int(np.floor(cy[lo:hi].min() - reach)))
                y1 = min(height, int(np.ceil(cy[lo:hi].max() + reach)))
                if x0 >= x1 or y0 >= y1:
                    continue
                rows = index[lo:hi, None, None]
                window = frames[rows, np.arange(y0, y1)[None, :, None], np.arange(x0, x1)[None, None, :]]
                dx = px[..., x0:x1] - cx[lo:hi, None, None]
                dy = py[:, y0:y1] - cy[lo:hi, None, None]
                frames[rows, np.arange(y0, y1)[None, :, None], np.arange(x0, x1)[None, None, :]] = _draw_shape(
                    window, style, dx, dy, wrx, wry, wop, glow
                )

        def const(value: float, count: int) -> np.ndarray:
            return np.full(count, value, dtype=np.float32)

        everywhere = np.ones(num, dtype=bool)
        for distractor in look.distractors:
            x = distractor.x0 + distractor.ax * np.sin(2 * np.pi * distractor.fx * times + distractor.phase_x)
            y = distractor.y0 + distractor.ay * np.sin(2 * np.pi * distractor.fy * times + distractor.phase_y)
            draw(everywhere, distractor.style, x + sx, y + sy, distractor.radius, distractor.radius, glow=look.glow)

        if look.lamp_housing:
            # Unlit lamps, dimmed toward the background, so that lighting up is the only change at a beep.
            dim_color = _rgb(np.array(look.lamp.color) * 0.3 + np.array(look.background_colors[0]) * 0.7)
            dim = ObjectStyle(look.lamp.shape, dim_color, dim_color)
            half_lamp = self.lamp_size / 2
            for x in sorted({e.x for e in self.beeps}):
                draw(everywhere, dim, _to_pixels(x, width) + sx, look.lamp_y * height + sy, half_lamp, half_lamp)

        # Flash: the whole frame brightens (the disc is drawn last, on top of everything).
        flash_strengths = []
        for event in self.flashes:
            dt = times - event.time
            active = (dt >= -1e-6) & (dt < 8 * _FLASH_DECAY)
            strength = np.exp(-np.maximum(dt[active], 0) / _FLASH_DECAY).astype(np.float32)
            flash_strengths.append((event, active, strength))
            if active.any():
                frames[active] += (255.0 - frames[active]) * (look.flash_gain * strength)[:, None, None, None]

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
            centre = _to_pixels(event.x, width) + sx[active]
            fade = np.where(
                dt < 0, np.clip((dt + _BLOCK_APPROACH) / 0.1, 0, 1), np.clip(1 - dt / _BLOCK_APPROACH, 0, 1)
            )
            fade = fade.astype(np.float32)
            cy = const(look.block_y * height, len(dt)) + sy[active]
            left, right = centre - gap_px - half, centre + gap_px + half
            draw(active, look.block_left, left.astype(np.float32), cy, half, half, fade, look.glow)
            draw(active, look.block_right, right.astype(np.float32), cy, half, half, fade, look.glow)

        if self.bounces:
            x, hop = self.ball_position(times.astype(np.float64))
            # Squash on contact (within ~20 ms of a bounce): wider and flatter, bottom on the floor.
            nearest = np.min(np.abs(times[:, None] - np.array([e.time for e in self.bounces])[None, :]), axis=1)
            squash = 0.3 * np.exp(-((nearest / 0.02) ** 2))
            radius_x = self.ball_radius * (1 + squash)
            radius_y = self.ball_radius * (1 - squash)
            cx = _to_pixels(x, width) + sx
            cy = self.floor_y - radius_y - hop + sy
            r = self.ball_radius * 1.3 + 1
            active = (cy > -r) & (cx > -r) & (cx < width + r)
            if active.any():
                draw(
                    active,
                    look.ball,
                    cx[active].astype(np.float32),
                    cy[active].astype(np.float32),
                    radius_x[active].astype(np.float32),
                    radius_y[active].astype(np.float32),
                    glow=look.glow,
                )

        lamp_glow = ObjectStyle("disc", look.lamp.color, look.lamp.color)
        for event in self.beeps:
            dt = times - event.time
            active = (dt >= -1e-6) & (dt < _LAMP_ON)  # the event frame is always lit, even at low fps
            if not active.any():
                continue
            count = int(active.sum())
            cx = const(_to_pixels(event.x, width), count) + sx[active]
            cy = const(look.lamp_y * height, count) + sy[active]
            draw(active, lamp_glow, cx, cy, self.lamp_size, self.lamp_size, 0.35)
            draw(active, look.lamp, cx, cy, self.lamp_size / 2, self.lamp_size / 2)

        for event, active, strength in flash_strengths:
            if not active.any():
                continue
            count = int(active.sum())
            cx = const(_to_pixels(event.x, width), count) + sx[active]
            cy = const(look.flash_y * height, count) + sy[active]
            r = self.flash_radius
            draw(active, look.flash, cx, cy, r, r, strength)

        if look.drift > 0:
            # Slow global lighting change (clouds, a dimmer): never faster than a few percent per frame.
            gain = 1.0 + look.drift * np.sin(2 * np.pi * times / look.drift_period + look.drift_phase)
            frames *= gain.astype(np.float32)[:, None, None, None]
        if self.grain is not None:
            frames += self.grain[frame_numbers % _GRAIN_BANK]
        return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def render_video(
    events: Sequence[SyntheticEvent],
    num_frames: int,
    fps: float,
    width: int | None = None,
    height: int | None = None,
    chunk_frames: int = 128,
    look: Look | None = None,
) -> np.ndarray:
    """Renders `(num_frames, height, width, 3)` uint8 RGB frames; frame `k` shows time `k / fps`.

    Args:
        look: How to draw the clip; the `classic` look at `width` x `height` (default 96x96) when None.
            When given, `width`/`height` must be None or equal to the look's.

    Rendering is vectorised over chunks of `chunk_frames` frames (bounded memory at any size).
    """
    if look is None:
        look = _classic_look(width or 96, height or 96)
    elif (width is not None and width != look.width) or (height is not None and height != look.height):
        raise ValueError(f"width/height {width}x{height} differ from the look's {look.width}x{look.height}")
    _check_size(look.width, look.height)
    duration = num_frames / fps
    scene = _Scene(events, duration, look)
    times = np.arange(num_frames, dtype=np.float64) / fps
    numbers = np.arange(num_frames)
    chunks = [
        scene.render(times[i : i + chunk_frames], numbers[i : i + chunk_frames])
        for i in range(0, num_frames, chunk_frames)
    ]
    return np.concatenate(chunks, axis=0)


# ----------------------------------------------------------------------------------------------------
# Clips and datasets
# ----------------------------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    # yuv420p subsamples chroma by 2 in both directions: H.264 needs even sizes.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 16 (yuv420p), got {width}x{height}")


def _check_event_classes(event_classes: Sequence[str]) -> None:
    if not len(event_classes):
        raise ValueError(f"event_classes (--classes): expected some of {list(EVENT_CLASSES)}, got none")
    for name in event_classes:
        if name not in EVENT_CLASSES:
            raise ValueError(
                f"event_classes (--classes): unknown class {name!r}, expected some of {list(EVENT_CLASSES)}"
            )


def _silent_stretch(
    rng: np.random.Generator, family: LookFamily, num_frames: int, fps: float, min_active: float = 2.0
) -> tuple[int, int]:
    """`(first_frame, num_frames)` of a span without events (`(0, 0)` for none), drawn from the look stream.

    It takes 25-45% of the clip, and only when at least `min_active` seconds remain for the events.
    """
    if family.silent_probability <= 0 or rng.uniform() >= family.silent_probability:
        return 0, 0
    length = int(round(rng.uniform(0.25, 0.45) * num_frames))
    if (num_frames - length) / fps < min_active or length < 1:
        return 0, 0
    return int(rng.integers(0, num_frames - length + 1)), length


def draw_look(
    seed: int,
    looks: str | Sequence[str],
    num_frames: int,
    fps: float,
    width: int | None = None,
    height: int | None = None,
) -> tuple[Look, tuple[int, int]]:
    """The look and silent stretch of clip `seed`, as [`generate_clip`] draws them (cheap: nothing is rendered).

    The family is drawn uniformly from `resolve_looks(looks)`, from a random stream of the seed's own that
    the events and audio do not use.

    Returns:
        `(look, (first_frame, num_frames))` of the silent stretch (`(0, 0)` for none).
    """
    families = resolve_looks(looks)
    rng = np.random.default_rng([int(seed), _LOOK_STREAM])
    name = families[int(rng.integers(0, len(families)))] if len(families) > 1 else families[0]
    look = sample_look(name, rng, width, height)
    return look, _silent_stretch(rng, LOOK_FAMILIES[name], num_frames, fps)


def generate_clip(
    seed: int,
    duration: float | None = None,
    fps: float | None = None,
    width: int | None = None,
    height: int | None = None,
    min_duration: float = 2.0,
    max_duration: float = 12.0,
    fps_choices: Sequence[float] = DEFAULT_FPS_CHOICES,
    event_classes: Sequence[str] = tuple(EVENT_CLASSES),
    max_events: int = 4,
    min_event_gap: float = 0.3,
    sample_rate: int = SAMPLE_RATE,
    noise_level: float = 3e-4,
    looks: str | Sequence[str] = "classic",
) -> SyntheticClip:
    """Generates one clip, fully determined by `seed` and the other arguments.

    Args:
        seed: Random seed of this clip (see [`clip_seed`] for clips of a dataset).
        duration: Seconds; drawn uniformly from `[min_duration, max_duration]` when None. Rounded to a whole
            number of frames: the clip has `round(duration * fps)` frames and lasts `num_frames / fps` s.
        fps: Frame rate; drawn from `fps_choices` when None.
        width, height: Frame size in pixels (even), both or neither; None: drawn by the look family
            (`classic`: 96x96).
        event_classes: Classes to draw from (see `EVENT_CLASSES`).
        max_events: At most this many events per clip (1..max_events, fewer in short clips).
        min_event_gap: Minimum seconds between any two events.
        sample_rate: Audio sample rate.
        noise_level: Standard deviation of the background noise floor.
        looks: Look families to draw this clip's family from (names, comma-separated string or `"all"`;
            see [`resolve_looks`]). The family and look come from a random stream of their own, so events,
            audio and caption of a seed are the same in every family, except that a family with silent
            stretches moves the events after the stretch later by its length.

    Returns:
        [`SyntheticClip`] with frames `(num_frames, height, width, 3)` uint8, audio `(2, num_samples)`, and
        `metadata_extra` holding `look_family`, `look` ([`Look.to_dict`]) and `silent_span` (`[start, end]`
        seconds, or None).
    """
    if width is not None or height is not None:
        if width is None or height is None:
            raise ValueError(f"width and height must be given together (or neither), got {width} and {height}")
        _check_size(width, height)
    _check_event_classes(event_classes)
    families = resolve_looks(looks)
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

    look, (silent_start, silent_frames) = draw_look(seed, families, num_frames, fps, width, height)

    # Events are drawn on the clip without its silent stretch, then the ones after it move later.
    events = sample_events(
        rng, (num_frames - silent_frames) / fps, fps, event_classes, max_events=max_events, min_event_gap=min_event_gap
    )
    if silent_frames:
        for event in events:
            if event.frame >= silent_start:
                event.frame += silent_frames
                event.time = event.frame / fps
    audio = render_audio(events, num_samples, rng, sample_rate, noise_level=noise_level)
    frames = render_video(events, num_frames, fps, look=look)
    silent_span = None
    if silent_frames:
        silent_span = [round(silent_start / fps, 6), round((silent_start + silent_frames) / fps, 6)]
    return SyntheticClip(
        frames=frames,
        audio=audio,
        fps=float(fps),
        sample_rate=sample_rate,
        duration=duration,
        events=events,
        caption=make_caption(events),
        seed=int(seed),
        metadata_extra={"look_family": look.family, "look": look.to_dict(), "silent_span": silent_span},
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
        # Single-threaded x264 without macroblock-tree rate control keeps output bytes identical across runs:
        # with mbtree on, x264 gave two different streams for the same frames in about half of the runs
        # (measured on 112x112 and 134x134 frames with grain). Frames are tiny, the cost is nil.
        video_stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
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
    width: int | None = None,
    height: int | None = None,
    event_classes: Sequence[str] = tuple(EVENT_CLASSES),
    max_events: int = 4,
    write_wav: bool = True,
    num_workers: int = 1,
    progress: bool = False,
    looks: str | Sequence[str] = "classic",
    held_out_looks: str | Sequence[str] = (),
) -> list[dict]:
    """Writes `num_clips` clips plus `metadata.jsonl` to `out_dir` and returns the metadata records.

    Clip `i` uses seed [`clip_seed`]`(seed, i)`, so the dataset is deterministic given `seed` whatever
    `num_workers` is, and any clip can be regenerated alone from its recorded `seed` (with the same
    `looks`, `held_out_looks` and size arguments).

    Args:
        looks: Look families each clip's family is drawn from (uniformly): names, a comma-separated string
            or `"all"`. Default `"classic"`: the original single-look world.
        held_out_looks: Families never drawn here, e.g. `looks="all", held_out_looks="neon"` for training and
            `looks="neon"` for the held-out set. Naming a family in both raises.
        width, height: Fixed frame size for every clip (both or neither); None: drawn per clip by its family.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips (--num-clips) must be >= 1, got {num_clips}")
    families = resolve_looks(looks, held_out_looks)
    _check_event_classes(event_classes)
    if width is not None or height is not None:
        if width is None or height is None:
            raise ValueError(f"width and height must be given together (or neither), got {width} and {height}")
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
        looks=families,
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
    "LOOK_FAMILIES",
    "Distractor",
    "EventClass",
    "Look",
    "LookFamily",
    "ObjectStyle",
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
    "draw_look",
    "resolve_looks",
    "sample_events",
    "sample_look",
    "write_clip",
]
