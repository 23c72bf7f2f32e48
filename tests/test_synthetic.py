"""Synthetic audio-visual dataset: determinism, files that decode, event timing, captions and panning."""

import json
from dataclasses import replace

import av
import numpy as np
import pytest
import soundfile as sf

from foley_toolkit.synthetic import (
    EVENT_CLASSES,
    LOOK_FAMILIES,
    SyntheticEvent,
    clip_seed,
    constant_power_pan,
    draw_look,
    generate_clip,
    generate_dataset,
    make_caption,
    render_audio,
    render_video,
    resolve_looks,
    sample_look,
)

SAMPLE_RATE = 44100
AAC_FRAME = 1024


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    records = generate_dataset(
        out, num_clips=3, seed=4, min_duration=2.0, max_duration=3.0, fps_choices=(12, 25, 30), width=64, height=48
    )
    return out, records


def test_generate_clip_is_deterministic():
    a = generate_clip(11, min_duration=2, max_duration=3, width=32, height=32)
    b = generate_clip(11, min_duration=2, max_duration=3, width=32, height=32)
    c = generate_clip(12, min_duration=2, max_duration=3, width=32, height=32)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert a.caption == b.caption
    assert not (a.audio.shape == c.audio.shape and np.array_equal(a.audio, c.audio))


def test_dataset_is_deterministic_and_clips_regenerate_from_their_seed(dataset, tmp_path):
    out, records = dataset
    again = generate_dataset(
        tmp_path,
        num_clips=3,
        seed=4,
        min_duration=2.0,
        max_duration=3.0,
        fps_choices=(12, 25, 30),
        width=64,
        height=48,
    )
    assert again == records
    assert (tmp_path / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()
    for record in records:
        for name in (record["file_name"], record["audio_file"]):
            assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    # The recorded per-clip seed regenerates the clip alone.
    assert records[1]["seed"] == clip_seed(4, 1)
    clip = generate_clip(
        records[1]["seed"], min_duration=2.0, max_duration=3.0, fps_choices=(12, 25, 30), width=64, height=48
    )
    assert [e.to_dict() for e in clip.events] == records[1]["events"]


def test_metadata_jsonl_has_one_record_per_clip(dataset):
    out, records = dataset
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    for index, record in enumerate(records):
        assert record["file_name"] == f"clip_{index:05d}.mp4"
        assert record["audio_file"] == f"clip_{index:05d}.wav"
        assert record["caption"] and isinstance(record["caption"], str)
        assert record["fps"] in (12.0, 25.0, 30.0)
        assert 2.0 - 1 / record["fps"] <= record["duration"] <= 3.0 + 1 / record["fps"]
        assert set(record["events"][0]) >= {"time", "class", "x", "moving"}


def test_video_decodes_with_expected_frames_and_audio(dataset):
    out, records = dataset
    for record in records:
        with av.open(str(out / record["file_name"])) as container:
            video = container.streams.video[0]
            audio = container.streams.audio[0]
            assert video.codec_context.name == "h264"
            assert video.codec_context.pix_fmt == "yuv420p"
            assert (video.codec_context.width, video.codec_context.height) == (64, 48)
            assert audio.codec_context.name == "aac"
            assert audio.codec_context.sample_rate == SAMPLE_RATE
            assert audio.codec_context.channels == 2
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        assert abs(len(frames) - record["duration"] * record["fps"]) < 1
        assert len(frames) == record["num_frames"]
        with av.open(str(out / record["file_name"])) as container:
            decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
        expected = record["duration"] * SAMPLE_RATE
        assert decoded.shape[0] == 2
        assert abs(decoded.shape[1] - expected) < AAC_FRAME

        wav, rate = sf.read(str(out / record["audio_file"]), always_2d=True)
        assert rate == SAMPLE_RATE and wav.shape == (record["num_samples"], 2)
        assert record["num_samples"] == round(expected)


def test_decoded_video_shows_events_on_their_frames(dataset):
    out, records = dataset
    seen = set()
    for record in records:
        with av.open(str(out / record["file_name"])) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)
        for event in record["events"]:
            k = event["frame"]
            assert k == round(event["time"] * record["fps"])
            if event["class"] == "flash":  # the flash frame is much brighter than the frame before
                assert frames[k].mean() > frames[k - 1].mean() + 20
            if event["class"] == "beep":  # the green lamp lights up on the event frame
                green = (frames[..., 1] > 180) & (frames[..., 0] < 150) & (frames[..., 2] < 170)
                assert green[k].sum() > 10 and green[k - 1].sum() < 3
        seen.update(event["class"] for event in record["events"])
    assert seen == set(EVENT_CLASSES)  # the fixture's seed covers every class


def test_events_are_inside_the_clip_and_separated(dataset):
    records = list(dataset[1])
    for seed in range(20):
        clip = generate_clip(seed, width=32, height=32, min_duration=2, max_duration=6)
        records.append(clip.metadata("x.mp4"))
    for record in records:
        times = [e["time"] for e in record["events"]]
        assert 1 <= len(times) <= 4
        assert all(0 < t < record["duration"] for t in times)
        assert times == sorted(times)
        assert np.all(np.diff(times) >= 0.3 - 1e-6)
        for event in record["events"]:
            assert event["class"] in EVENT_CLASSES
            assert event["moving"] == EVENT_CLASSES[event["class"]].moving
            assert -1 <= event["x"] <= 1
            if event["moving"]:
                assert abs(event["x"]) >= 0.25


def test_ball_touches_the_floor_exactly_on_bounce_frames():
    events = [SyntheticEvent(0.5, "bounce", -0.5, True, 6), SyntheticEvent(1.25, "bounce", 0.4, True, 15)]
    frames = render_video(events, num_frames=24, fps=12, width=96, height=96).astype(np.int32)
    red = (frames[..., 0] > 150) & (frames[..., 1] < 90) & (frames[..., 2] < 90)
    floor_y = 0.88 * 96
    lowest = np.array([np.flatnonzero(red[k].any(axis=1)).max() if red[k].any() else -1 for k in range(24)])
    touching = np.flatnonzero(lowest >= floor_y - 2)
    assert touching.tolist() == [6, 15]
    # ... on the left of the frame for x < 0, on the right for x > 0.
    assert np.flatnonzero(red[6].any(axis=0)).mean() < 48 < np.flatnonzero(red[15].any(axis=0)).mean()


def test_constant_power_pan():
    left, right = constant_power_pan(np.linspace(-1, 1, 9))
    np.testing.assert_allclose(left**2 + right**2, 1.0)
    assert left[0] == pytest.approx(1.0) and right[0] == pytest.approx(0.0, abs=1e-12)
    assert left[4] == pytest.approx(right[4])


@pytest.mark.parametrize("x", [-0.6, 0.6])
def test_audio_is_panned_toward_the_event(x):
    event = SyntheticEvent(0.2, "bounce", x, True, 5)
    audio = render_audio([event], num_samples=SAMPLE_RATE, rng=np.random.default_rng(0))
    assert audio.shape == (2, SAMPLE_RATE) and audio.dtype == np.float32
    start = int(0.2 * SAMPLE_RATE)
    left, right = (audio[:, start : start + 4410] ** 2).sum(axis=1)
    expected_left, expected_right = constant_power_pan(x)
    assert (left > right) == (x < 0)
    assert left / right == pytest.approx((expected_left / expected_right) ** 2, rel=0.02)
    # Silent (noise floor only) before the event.
    assert np.abs(audio[:, : start - 10]).max() < 0.01


def test_clip_audio_pan_matches_metadata(dataset):
    out, records = dataset
    for record in records:
        wav, _ = sf.read(str(out / record["audio_file"]), always_2d=True)
        for event in record["events"]:
            if abs(event["x"]) < 0.25:
                continue
            start = int(event["time"] * SAMPLE_RATE)
            left, right = (wav[start : start + 2205] ** 2).sum(axis=0)
            assert (left > right) == (event["x"] < 0)


def test_caption_counts_classes_in_order():
    events = [
        SyntheticEvent(0.5, "bounce", 0.3, True, 6),
        SyntheticEvent(1.0, "flash", 0.0, False, 12),
        SyntheticEvent(1.6, "bounce", -0.3, True, 19),
    ]
    assert make_caption(events) == "a red ball bounces twice, a white flash"
    assert make_caption([SyntheticEvent(t, "flash", 0, False, 0) for t in (0.5, 1, 2)]) == "three white flashes"


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="even"):
        generate_clip(0, width=33, height=32)
    with pytest.raises(ValueError, match="unknown class"):
        generate_clip(0, width=32, height=32, event_classes=("explosion",))
    with pytest.raises(ValueError, match="too short"):
        generate_clip(0, duration=0.5, fps=25, width=32, height=32)


def test_blocks_touch_exactly_on_collision_frame():
    events = [SyntheticEvent(0.5, "collide", 0.2, True, 6)]
    frames = render_video(events, num_frames=12, fps=12, width=96, height=96).astype(np.int32)
    row = frames[:, int(0.45 * 96)]  # (frames, width, 3) through the blocks' centre
    blue = (row[..., 2] > 180) & (row[..., 0] < 120)
    orange = (row[..., 0] > 200) & (row[..., 1] > 120) & (row[..., 2] < 100)

    def gap(k):
        return np.flatnonzero(orange[k]).min() - np.flatnonzero(blue[k]).max()

    assert gap(6) <= 2
    assert gap(5) > 6 and gap(7) > 3
    # They meet at x = 0.2 (pixel 57.6).
    assert abs(np.flatnonzero(blue[6]).max() + 1 - 57.6) <= 1.5


# ----------------------------------------------------------------------------------------------------
# Look families
# ----------------------------------------------------------------------------------------------------

FAMILIES = list(LOOK_FAMILIES)


def _luma_stats(frames: np.ndarray) -> dict[str, float]:
    """Per-clip statistics that tell looks apart: brightness, saturation, spatial detail, temporal change."""
    f = frames.astype(np.float32)
    top, bottom = f.max(-1), f.min(-1)
    luma = f @ np.array([0.299, 0.587, 0.114], np.float32)
    return {
        "value": float(top.mean()),
        "saturation": float(((top - bottom) / np.maximum(top, 1)).mean()),
        "detail": float(np.abs(np.diff(luma, axis=2)).mean()),
        "change": float(np.abs(np.diff(luma, axis=0)).mean()),
    }


@pytest.fixture(scope="module")
def looks_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("looks")
    kwargs = dict(num_clips=4, seed=3, min_duration=1.5, max_duration=2.5, fps_choices=(12, 25), looks="all")
    return out, generate_dataset(out, **kwargs), kwargs


def test_looks_dataset_same_seed_same_bytes(looks_dataset, tmp_path):
    out, records, kwargs = looks_dataset
    again = generate_dataset(tmp_path, **kwargs)
    assert again == records
    for record in records:
        for name in (record["file_name"], record["audio_file"]):
            assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    assert len({record["look_family"] for record in records}) >= 2
    # The recorded seed and look arguments regenerate a clip alone, look included.
    clip = generate_clip(records[2]["seed"], min_duration=1.5, max_duration=2.5, fps_choices=(12, 25), looks="all")
    assert clip.metadata(records[2]["file_name"], records[2]["audio_file"]) == records[2]


def test_looks_metadata_records_the_drawn_look(looks_dataset):
    out, records, _ = looks_dataset
    assert [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] == records
    for record in records:
        look = record["look"]
        assert look["family"] == record["look_family"] in LOOK_FAMILIES
        assert (look["width"], look["height"]) == (record["width"], record["height"])
        assert look["width"] % 2 == 0 and look["height"] % 2 == 0
        assert 96 <= min(look["width"], look["height"]) and max(look["width"], look["height"]) <= 192
        with av.open(str(out / record["file_name"])) as container:
            codec = container.streams.video[0].codec_context
            assert (codec.width, codec.height) == (record["width"], record["height"])
        times = [event["time"] for event in record["events"]]
        assert times == sorted(times) and np.all(np.diff(times) >= 0.3 - 1e-6)
        assert all(0 < t <= record["duration"] - 0.4 + 1e-6 for t in times)
        assert all(event["frame"] == round(event["time"] * record["fps"]) for event in record["events"])
        if record["silent_span"] is not None:
            start, end = record["silent_span"]
            assert 0 <= start < end <= record["duration"] + 1e-6
            assert not any(start <= event["time"] < end for event in record["events"])


def test_classic_is_the_default_and_fixed():
    a = generate_clip(5, min_duration=2, max_duration=3)
    b = generate_clip(5, min_duration=2, max_duration=3, looks="classic")
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.metadata_extra == b.metadata_extra and a.metadata_extra["look_family"] == "classic"
    assert a.frames.shape[1:] == (96, 96, 3)
    np.testing.assert_array_equal(a.frames[:, 2, 2], np.broadcast_to([28, 30, 40], (len(a.frames), 3)))
    assert sample_look("classic", np.random.default_rng(0)) == sample_look("classic", np.random.default_rng(1))


def test_families_differ_measurably():
    """Every pair of families is told apart by some statistic: the clips' ranges do not overlap."""
    stats = {
        family: [_luma_stats(generate_clip(100 + s, duration=1.5, fps=12, looks=family).frames) for s in range(4)]
        for family in FAMILIES
    }
    for i, a in enumerate(FAMILIES):
        for b in FAMILIES[i + 1 :]:
            separated = [
                key
                for key in stats[a][0]
                if min(s[key] for s in stats[a]) > max(s[key] for s in stats[b])
                or min(s[key] for s in stats[b]) > max(s[key] for s in stats[a])
            ]
            assert separated, f"{a} and {b} overlap in every statistic"
    # And within a non-classic family, looks vary from clip to clip.
    for family in FAMILIES[1:]:
        colors = {sample_look(family, np.random.default_rng(s)).background_colors for s in range(5)}
        assert len(colors) == 5


def test_held_out_family_is_never_drawn(tmp_path):
    assert resolve_looks("all", "neon") == tuple(f for f in FAMILIES if f != "neon")
    assert resolve_looks("neon,pastel") == resolve_looks(["pastel", "neon"]) == ("pastel", "neon")
    drawn = [draw_look(seed, resolve_looks("all", ["neon"]), 60, 25)[0].family for seed in range(200)]
    assert set(drawn) == set(FAMILIES) - {"neon"}
    records = generate_dataset(
        tmp_path, num_clips=3, seed=1, min_duration=1, max_duration=1.5, looks="all", held_out_looks="neon"
    )
    assert all(record["look_family"] != "neon" for record in records)
    assert {draw_look(seed, "neon", 60, 25)[0].family for seed in range(5)} == {"neon"}


@pytest.mark.parametrize("family", FAMILIES)
def test_event_cues_are_on_their_frames_in_every_look(family):
    """The same cue in every look: contact at the floor, blocks meeting, a brightness jump, a lamp coming on."""
    fps, num_frames = 12, 48
    events = [
        SyntheticEvent(0.5, "bounce", -0.5, True, 6),
        SyntheticEvent(1.25, "bounce", 0.4, True, 15),
        SyntheticEvent(2.0, "collide", 0.2, True, 24),
        SyntheticEvent(2.75, "flash", -0.3, False, 33),
        SyntheticEvent(3.25, "beep", 0.5, False, 39),
    ]
    # Halos are optical: the solid object is what touches, so measure without them.
    look = replace(sample_look(family, np.random.default_rng(7)), glow=0.0)
    width, height = look.width, look.height
    sx, sy = look.camera_offsets(np.arange(num_frames) / fps)

    def render(selected):
        return render_video(selected, num_frames, fps, look=look).astype(np.float32)

    def mask(name):  # pixels that change when the events of class `name` are added
        others = [e for e in events if e.event_class != name]
        return np.abs(render(events) - render(others)).max(axis=-1) > 12

    ball = mask("bounce")
    floor_top = look.floor_y * height + sy
    lowest = np.array([np.flatnonzero(ball[k].any(axis=1)).max() if ball[k].any() else -1 for k in range(num_frames)])
    touching = np.flatnonzero(lowest + 1 >= floor_top - 1)
    assert touching.tolist() == [6, 15]

    blocks = mask("collide")
    row = (np.round(look.block_y * height + sy)).astype(int)
    contact = np.round((0.2 + 1) / 2 * width + sx).astype(int)

    def near(k, reach):
        return blocks[k, row[k], max(0, contact[k] - reach) : contact[k] + reach + 1].any()

    assert near(24, 1) and not near(23, 2)

    frames = render(events)
    luma = frames.mean(axis=(1, 2, 3))
    quiet = render([]).mean(axis=(1, 2, 3))
    jump = luma[33] - luma[32]
    assert jump >= 25 and jump > 3 * np.abs(np.diff(quiet)).max()

    # Against the same lamp never switched on (its unlit housing, if the look has one, is in both renders).
    unlit = [e for e in events if e.event_class != "beep"] + [SyntheticEvent(99.0, "beep", 0.5, False, 1188)]
    lamp = np.abs(frames - render(unlit)).max(axis=-1) > 12
    assert not lamp[:39].any() and lamp[39].sum() >= 10


def test_lighting_drift_never_looks_like_a_flash():
    """The fastest drift the families allow changes brightness far less per frame than the weakest flash."""
    fps = 60
    for family in FAMILIES[1:]:
        spec = LOOK_FAMILIES[family]
        look = replace(sample_look(family, np.random.default_rng(3)), drift=spec.drift[1], drift_period=5.0)
        quiet = render_video([], 5 * fps, fps, look=look).astype(np.float32).mean(axis=(1, 2, 3))
        flash = replace(look, drift=0.0, grain=0.0, flash_gain=spec.flash_gain[0], distractors=(), shake=0.0)
        lit = render_video([SyntheticEvent(1.0, "flash", 0.0, False, fps)], 2 * fps, fps, look=flash)
        lit = lit.astype(np.float32).mean(axis=(1, 2, 3))
        assert lit[fps] - lit[fps - 1] > 5 * np.abs(np.diff(quiet)).max()


def test_onsets_on_event_times_while_distractors_and_silences_stay_quiet():
    from foley_toolkit.evaluation.sync_metrics import detect_onsets

    # A noisy clip with distractors and a silent stretch (found from the look stream alone, nothing rendered).
    fps, duration = 25, 6.0
    seed = next(
        s
        for s in range(200)
        if (lambda look, silent: len(look.distractors) >= 2 and silent[1] > 0)(*draw_look(s, "noisy", 150, fps))
    )
    clip = generate_clip(seed, duration=duration, fps=fps, looks="noisy")
    start, end = clip.metadata_extra["silent_span"]
    times = np.array([e.time for e in clip.events])
    assert len(times) >= 1 and not np.any((times >= start) & (times < end))
    for event in clip.events:
        assert event.time == event.frame / fps
    onsets = detect_onsets(clip.audio, SAMPLE_RATE)
    assert len(onsets) == len(times)
    np.testing.assert_allclose(np.sort(onsets), times, atol=0.015)
    # The stretch is silent once the last sound before it has rung out, yet the distractors keep moving.
    quiet_from = max([start] + [t + 0.55 for t in times if t < start])
    assert end - quiet_from > 0.2
    span = clip.audio[:, int(quiet_from * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
    assert 20 * np.log10(np.sqrt(np.mean(span.astype(np.float64) ** 2))) < -60
    k0, k1 = int(np.ceil(quiet_from * fps)), int(end * fps) - 1
    look = draw_look(seed, "noisy", clip.frames.shape[0], fps)[0]
    assert clip.metadata_extra["look"] == look.to_dict()
    still = render_video(clip.events, clip.frames.shape[0], fps, look=replace(look, distractors=()))
    moving = np.abs(clip.frames.astype(np.int16) - still).max(axis=-1) > 12
    centroid = [np.argwhere(moving[k]).mean(axis=0) for k in (k0, k1)]
    assert moving[k0].any() and np.linalg.norm(centroid[1] - centroid[0]) > 2


def test_look_and_dataset_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"looks \(--looks\): unknown look family 'sepia'"):
        generate_dataset(tmp_path, num_clips=1, looks="sepia")
    with pytest.raises(ValueError, match=r"held_out_looks \(--held-out-looks\): unknown look family 'sepia'"):
        generate_dataset(tmp_path, num_clips=1, looks="all", held_out_looks="sepia")
    with pytest.raises(ValueError, match=r"held_out_looks \(--held-out-looks\): \['neon'\] also requested"):
        generate_dataset(tmp_path, num_clips=1, looks="neon", held_out_looks="neon")
    with pytest.raises(ValueError, match="nothing left"):
        resolve_looks("all", FAMILIES)
    with pytest.raises(ValueError, match=r"event_classes \(--classes\): unknown class 'explosion'"):
        generate_dataset(tmp_path, num_clips=1, event_classes=("explosion",))
    with pytest.raises(ValueError, match=r"num_clips \(--num-clips\) must be >= 1, got 0"):
        generate_dataset(tmp_path, num_clips=0)
    with pytest.raises(ValueError, match="width and height must be given together"):
        generate_clip(0, width=64)
    assert not (tmp_path / "metadata.jsonl").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--looks", "neon", "--held-out-looks", "neon"], "--held-out-looks"),
        (["--looks", "sepia"], "--looks"),
        (["--classes", "bounce,explosion"], "--classes"),
        (["--num-clips", "0"], "--num-clips"),
    ],
)
def test_cli_rejects_bad_input(tmp_path, extra, message, capsys):
    from utils import assert_cli_error

    argv = ["make-synthetic", "--out", str(tmp_path / "out"), "--num-clips", "1", *extra]
    assert_cli_error(argv, message, capsys)
    assert not (tmp_path / "out" / "metadata.jsonl").exists()
