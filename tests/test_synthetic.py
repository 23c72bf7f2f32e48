"""Synthetic audio-visual dataset: determinism, files that decode, event timing, captions and panning."""

import json

import av
import numpy as np
import pytest
import soundfile as sf

from foley_toolkit.synthetic import (
    EVENT_CLASSES,
    SyntheticEvent,
    clip_seed,
    constant_power_pan,
    generate_clip,
    generate_dataset,
    make_caption,
    render_audio,
    render_video,
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
