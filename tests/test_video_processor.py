"""Video decoding / resampling / muxing (foley_toolkit.utils.video_io) and encoder inputs (FoleyVideoProcessor) on
small generated videos."""

import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from foley_toolkit.audio_utils import sequence_lengths
from foley_toolkit.utils.video_io import load_video, write_video_with_audio
from foley_toolkit.video_processor import (
    CLIP_MEAN,
    CLIP_STD,
    FoleyVideoProcessor,
    fit_frames,
    preprocess_clip_frames,
    preprocess_sync_frames,
)


# Each frame shows its own index in base 4, one digit per horizontal band (grey levels survive H.264, the
# 224 px resize and the centre crop: bands span the full width and the crop only removes columns).
_BANDS = 5
_LEVELS = (32, 96, 160, 224)
_WIDTH, _HEIGHT = 64, 48


def _index_frame(index: int) -> np.ndarray:
    frame = np.zeros((_HEIGHT, _WIDTH, 3), np.uint8)
    for band in range(_BANDS):
        digit = (index // 4**band) % 4
        frame[band * _HEIGHT // _BANDS : (band + 1) * _HEIGHT // _BANDS] = _LEVELS[digit]
    return frame


def _read_index(image: torch.Tensor) -> int:
    """Inverse of `_index_frame` for a `(3, H, W)` frame of any size."""
    pixels = np.asarray(image)  # numpy: tiny torch reductions are slow on a busy 2-core machine
    height, width = pixels.shape[-2:]
    index = 0
    for band in range(_BANDS):
        row = int((band + 0.5) * height / _BANDS)
        value = pixels[:, row - 2 : row + 3, width // 4 : 3 * width // 4].mean()
        index += int(np.argmin([abs(value - level) for level in _LEVELS])) * 4**band
    return index


def _write_index_video(path, fps, num_frames, times_ms=None, codec="libx264", pix_fmt="yuv420p"):
    """Writes `num_frames` index frames at `fps`, or at explicit times (ms) for a variable frame rate."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
        stream.width, stream.height, stream.pix_fmt = _WIDTH, _HEIGHT, pix_fmt
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_index_frame(index), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = int(times_ms[index]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return str(path)


def _decode_rgb(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _expected_index(time: Fraction, fps: Fraction) -> int:
    # the source frame on screen at `time`: last frame whose timestamp k / fps is <= time
    return math.floor(time * fps)


# ----------------------------------------------------------------------------------------------------------
# load_video
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [12, 24, 25, Fraction(30000, 1001), 60], ids=["12", "24", "25", "29.97", "60"])
@pytest.mark.parametrize("seconds", [1.7, 8.0, 12.3])
def test_timestamp_resampling_any_fps(tmp_path, fps, seconds):
    fps = Fraction(fps)
    num_frames = round(seconds * fps)
    path = _write_index_video(tmp_path / "video.mp4", fps, num_frames)

    video = load_video(path)

    true_duration = Fraction(num_frames) / fps
    assert abs(video.duration - float(true_duration)) <= float(1 / fps)  # within one source frame
    assert video.fps == pytest.approx(float(fps), rel=1e-3)
    # counts: floor(d * rate) on the exact duration, and the same as the project's one sequence-length helper
    assert video.clip_frames.shape == (math.floor(true_duration * 8), 3, 224, 224)
    assert video.sync_frames.shape == (math.floor(true_duration * 25), 3, 224, 224)
    lengths = sequence_lengths(video.duration)
    assert (lengths["clip_frames"], lengths["sync_frames"]) == (len(video.clip_frames), len(video.sync_frames))
    assert video.clip_frames.dtype == video.sync_frames.dtype == torch.uint8

    clip_indices = [_read_index(frame) for frame in video.clip_frames]
    sync_indices = [_read_index(frame) for frame in video.sync_frames]
    assert clip_indices == [_expected_index(Fraction(i, 8), fps) for i in range(len(clip_indices))]
    assert sync_indices == [_expected_index(Fraction(i, 25), fps) for i in range(len(sync_indices))]


def test_variable_frame_rate(tmp_path):
    rng = np.random.default_rng(0)
    intervals = rng.choice([20, 33, 50], size=90)  # ms
    times = np.concatenate([[0], np.cumsum(intervals)[:-1]])
    path = _write_index_video(tmp_path / "vfr.mp4", 30, len(times), times_ms=times)

    video = load_video(path)

    assert abs(video.duration - times[-1] / 1000) <= intervals.max() / 1000
    assert len(video.sync_frames) == math.floor(Fraction(video.duration).limit_denominator(10**6) * 25)

    def on_screen(t_ms: Fraction) -> int:
        return int(np.searchsorted(times, float(t_ms), side="right") - 1)

    sync_expected = [on_screen(Fraction(1000 * i, 25)) for i in range(len(video.sync_frames))]
    clip_expected = [on_screen(Fraction(1000 * i, 8)) for i in range(len(video.clip_frames))]
    assert [_read_index(f) for f in video.sync_frames] == sync_expected
    assert [_read_index(f) for f in video.clip_frames] == clip_expected


def test_path_bytes_numpy_tensor_inputs_agree(tmp_path):
    path = _write_index_video(tmp_path / "video.mp4", 24, 41)
    rgb = _decode_rgb(path)  # (41, 48, 64, 3) uint8

    reference = load_video(path)
    variants = [
        load_video(open(path, "rb").read()),
        load_video(rgb, fps=24),
        load_video(torch.from_numpy(rgb).permute(0, 3, 1, 2), fps=24),  # (T, 3, H, W) uint8
        load_video(torch.from_numpy(rgb).float() / 255.0, fps=24.0),  # (T, H, W, 3) float in [0, 1]
    ]
    for other in variants:
        assert torch.equal(other.clip_frames, reference.clip_frames)
        assert torch.equal(other.sync_frames, reference.sync_frames)
        assert other.duration == pytest.approx(reference.duration)
        assert other.fps == pytest.approx(24.0)


def test_centre_crop_and_clip_resize_geometry():
    # left half black, right half white, on a wide 4:3 frame: the sync crop (short side 224, centre crop)
    # keeps the central 3/4 of the width, the CLIP frame keeps the whole width
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :, 32:] = 255
    frames[:, :, :4] = 128  # a border stripe that only the whole-frame CLIP resize keeps
    video = load_video(frames, fps=4)
    sync, clip = video.sync_frames[0].float(), video.clip_frames[0].float()
    assert sync.shape == clip.shape == (3, 224, 224)
    assert sync[:, :, :100].mean() < 5 and sync[:, :, 124:].mean() > 250  # the black/white edge sits in the middle
    assert (sync[:, :, :5] - 128).abs().max() > 100  # the 4-px grey stripe at the left border was cropped away
    assert (clip[:, :, :8] - 128).abs().mean() < 10  # ... and kept (stretched to 14 px) in the CLIP frame


def test_short_clip_is_padded_by_repeating_last_frame():
    frames = np.stack([_index_frame(i) for i in range(10)])  # 10 frames at 24 fps: 0.417 s < 0.64 s
    video = load_video(frames, fps=24)
    assert video.duration == pytest.approx(10 / 24)
    assert video.clip_frames.shape[0] == 3  # floor(0.417 * 8)
    assert video.sync_frames.shape[0] == 16  # floor(0.417 * 25) = 10, padded to one Synchformer segment
    # frames keep following the timestamps while inside the clip (t = 10/25 s still shows frame 9), then the
    # video's last frame is repeated
    indices = [_read_index(f) for f in video.sync_frames]
    assert indices == [min(_expected_index(Fraction(i, 25), Fraction(24)), 9) for i in range(16)]
    assert indices[-6:] == [9] * 6

    tiny = load_video(frames[:1], fps=24)  # one frame, 1/24 s: one CLIP frame, 16 sync frames
    assert tiny.clip_frames.shape[0] == 1 and tiny.sync_frames.shape[0] == 16


def test_explicit_cuts(tmp_path):
    path = _write_index_video(tmp_path / "video.mp4", 24, 48)  # 2 s

    cut = load_video(path, duration=1.0)
    assert cut.duration == pytest.approx(1.0)
    assert (len(cut.clip_frames), len(cut.sync_frames)) == (8, 25)

    late = load_video(path, start_time=0.5, max_duration=10.0)  # cap longer than the video: no cut
    assert late.duration == pytest.approx(1.5)
    assert _read_index(late.sync_frames[0]) == 12 and _read_index(late.clip_frames[1]) == 15  # 0.625 s * 24

    with pytest.raises(ValueError, match="`duration`"):
        load_video(path, duration=3.0)  # never padded to a longer duration
    with pytest.raises(ValueError, match="`start_time`"):
        load_video(path, start_time=2.5)


def test_load_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="`video`"):
        load_video(tmp_path / "missing.mp4")

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(ValueError, match="`video`"):
        load_video(text)
    with pytest.raises(ValueError, match="`video`"):
        load_video(b"\x00\x01 not a video" * 100)

    audio_only = tmp_path / "tone.wav"
    with av.open(str(audio_only), "w") as output:
        stream = output.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    with pytest.raises(ValueError, match=r"`video` '.*tone\.wav' has no video stream"):
        load_video(audio_only)

    # a valid MP4 whose coded pictures are all zeros: a video stream, packets, but no decodable frame
    corrupt = bytearray(open(_write_index_video(tmp_path / "corrupt.mp4", 25, 5), "rb").read())
    mdat = corrupt.find(b"mdat")
    mdat_size = int.from_bytes(corrupt[mdat - 4 : mdat], "big")
    corrupt[mdat + 4 : mdat - 4 + mdat_size] = bytes(mdat_size - 8)
    with pytest.raises(ValueError, match=r"`video` <\d+ bytes> contains no decodable video frames"):
        load_video(bytes(corrupt))

    frames = np.zeros((5, 48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="`fps`"):
        load_video(frames)
    with pytest.raises(ValueError, match="`video` has no frames"):
        load_video(frames[:0], fps=25)
    with pytest.raises(ValueError, match="`fps`"):
        load_video(_write_index_video(tmp_path / "v.mp4", 25, 5), fps=25)  # fps only applies to arrays
    with pytest.raises(ValueError, match="`video`"):
        load_video(np.zeros((5, 48, 64), np.uint8), fps=25)


# ----------------------------------------------------------------------------------------------------------
# preprocess_*
# ----------------------------------------------------------------------------------------------------------


def test_preprocess_normalisation_and_shapes():
    black = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
    white = torch.full((2, 3, 224, 224), 255, dtype=torch.uint8)

    clip_black, clip_white = preprocess_clip_frames(black), preprocess_clip_frames(white)
    assert clip_black.dtype == torch.float32 and clip_black.shape == (2, 3, 224, 224)
    for channel in range(3):
        assert clip_black[:, channel].unique().item() == pytest.approx(-CLIP_MEAN[channel] / CLIP_STD[channel])
        assert clip_white[:, channel].unique().item() == pytest.approx((1 - CLIP_MEAN[channel]) / CLIP_STD[channel])

    assert preprocess_sync_frames(black).unique().tolist() == [-1.0]
    assert preprocess_sync_frames(white).unique().tolist() == [1.0]
    mid = preprocess_sync_frames(torch.full((1, 3, 224, 224), 0.25))  # float input in [0, 1]
    assert mid.unique().tolist() == [-0.5]

    # other sizes and leading batch dims: CLIP resizes the whole frame, sync resizes + centre-crops
    odd = torch.randint(0, 256, (2, 5, 3, 48, 64), dtype=torch.uint8)
    assert preprocess_clip_frames(odd, image_size=112).shape == (2, 5, 3, 112, 112)
    assert preprocess_sync_frames(odd).shape == (2, 5, 3, 224, 224)
    with pytest.raises(ValueError, match="`frames`"):
        preprocess_clip_frames(torch.zeros(2, 224, 224, 3))


# ----------------------------------------------------------------------------------------------------------
# write_video_with_audio
# ----------------------------------------------------------------------------------------------------------


def _read_back(path):
    with av.open(str(path)) as container:
        video_stream = container.streams.video[0]
        packets = [bytes(p) for p in container.demux(video_stream) if p.size]
        codec = video_stream.codec_context.name
    with av.open(str(path)) as container:
        num_frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        info = (stream.codec_context.name, stream.codec_context.channels, stream.codec_context.sample_rate)
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)  # fltp (2, N)
    return codec, packets, num_frames, info, audio


def _dominant_frequency(signal: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return np.fft.rfftfreq(len(signal), 1 / sample_rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_write_copies_video_stream_and_adds_aac(tmp_path, suffix):
    fps = Fraction(30000, 1001)
    source = _write_index_video(tmp_path / "source.mp4", fps, 51)  # 1.7017 s
    src_codec, src_packets, src_frames, _, _ = (None, None, None, None, None)
    with av.open(source) as container:
        src_codec = container.streams.video[0].codec_context.name
        src_packets = [bytes(p) for p in container.demux(video=0) if p.size]
    duration = 51 / float(fps)

    # stereo 44.1 kHz input, longer than the video: left 440 Hz, right silent -> trimmed to the video
    t = np.arange(int(2.5 * 44100)) / 44100
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)]).astype(np.float32)
    out = write_video_with_audio(source, audio, 44100, tmp_path / f"out{suffix}")

    codec, packets, num_frames, audio_info, decoded = _read_back(out)
    assert codec == src_codec and packets == src_packets  # copied, not re-encoded
    assert num_frames == len(src_packets) == 51
    assert audio_info == ("aac", 2, 44100)
    assert abs(decoded.shape[1] - duration * 44100) <= 1024  # within one AAC frame
    assert _dominant_frequency(decoded[0, 4096:-4096], 44100) == pytest.approx(440, abs=5)
    assert np.abs(decoded[1]).max() < 0.02 < np.abs(decoded[0]).max()


def test_write_mono_resampled_and_padded(tmp_path):
    source = _write_index_video(tmp_path / "source.mp4", 25, 50)  # 2 s
    t = np.arange(16000) / 16000  # 1 s of mono 1 kHz at 16 kHz: resampled to 44.1 kHz, padded to 2 s
    audio = torch.from_numpy(0.5 * np.sin(2 * np.pi * 1000 * t)).float()
    out = write_video_with_audio(open(source, "rb").read(), audio, 16000, tmp_path / "out.mp4")

    _, _, num_frames, audio_info, decoded = _read_back(out)
    assert num_frames == 50 and audio_info == ("aac", 2, 44100)
    assert abs(decoded.shape[1] - 2 * 44100) <= 1024
    np.testing.assert_allclose(decoded[0], decoded[1], atol=1e-3)  # mono duplicated
    assert _dominant_frequency(decoded[0, 4096:40000], 44100) == pytest.approx(1000, abs=5)
    assert np.abs(decoded[0, 50000:80000]).max() < 0.02  # the padding is silence


def test_write_from_frames_and_reencode_fallback(tmp_path):
    frames = np.stack([_index_frame(i) for i in range(30)])
    out = write_video_with_audio(frames, np.zeros(100, np.float32), 44100, tmp_path / "frames.mkv", fps=25)
    video = load_video(out)
    assert video.duration == pytest.approx(1.2)
    assert [_read_index(f) for f in video.sync_frames] == list(range(30))

    # raw video cannot go into MP4: the pictures are re-encoded with their timestamps
    raw = _write_index_video(tmp_path / "raw.nut", 24, 24, codec="rawvideo")
    out = write_video_with_audio(raw, np.zeros(100, np.float32), 44100, tmp_path / "raw.mp4")
    with av.open(out) as container:
        assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]
    video = load_video(out)
    assert video.duration == pytest.approx(1.0)
    expected = [_expected_index(Fraction(i, 8), Fraction(24)) for i in range(8)]
    assert [_read_index(f) for f in video.clip_frames] == expected


def test_write_errors_name_the_argument(tmp_path):
    source = _write_index_video(tmp_path / "source.mp4", 25, 10)
    with pytest.raises(ValueError, match="`out_path`"):
        write_video_with_audio(source, np.zeros(10), 44100, tmp_path / "out.avi")
    with pytest.raises(ValueError, match="`audio`"):
        write_video_with_audio(source, np.zeros((3, 10)), 44100, tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="`sample_rate`"):
        write_video_with_audio(source, np.zeros(10), 0, tmp_path / "out.mp4")
    with pytest.raises(FileNotFoundError, match="`video`"):
        write_video_with_audio(tmp_path / "missing.mp4", np.zeros(10), 44100, tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="`fps`"):
        write_video_with_audio(np.zeros((5, 48, 64, 3), np.uint8), np.zeros(10), 44100, tmp_path / "out.mp4")


def test_late_start_time_seeks_to_the_same_frames(tmp_path):
    # keyframes every 12 frames: a start at 7.3 s seeks to the keyframe before it and decodes from there
    path = tmp_path / "gop.mp4"
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=24, options={"g": "12", "keyint_min": "12"})
        stream.width, stream.height, stream.pix_fmt = _WIDTH, _HEIGHT, "yuv420p"
        for index in range(24 * 10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_index_frame(index), format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    reference = load_video(_decode_rgb(path), fps=24, start_time=7.3, duration=2.0)  # arrays: no seeking
    seeked = load_video(path, start_time=7.3, duration=2.0)
    assert seeked.duration == pytest.approx(2.0)
    assert torch.equal(seeked.sync_frames, reference.sync_frames)
    assert torch.equal(seeked.clip_frames, reference.clip_frames)
    assert _read_index(seeked.sync_frames[0]) == math.floor(7.3 * 24)
    tail = load_video(path, start_time=9.5)  # to the end: the full duration is still measured
    assert tail.duration == pytest.approx(0.5)


def test_video_processor_fits_tracks_to_the_duration_and_normalises():
    """`FoleyVideoProcessor.preprocess`: each track cut (or its last frame repeated) to the duration's counts, with
    one CLIP frame and one Synchformer segment at least; CLIP pixels resized to the encoder's resolution."""
    frames = np.stack([_index_frame(i) for i in range(40)])  # 1.6 s at 25 fps
    video = load_video(frames, fps=25)
    processor = FoleyVideoProcessor(clip_image_size=32, sync_image_size=48, sync_segment_frames=16)
    clip, sync = processor.preprocess([video, video], num_clip_frames=5, num_sync_frames=30)
    assert clip.shape == (2, 5, 3, 32, 32) and clip.dtype == torch.float32
    assert sync.shape == (2, 30, 3, 224, 224) and sync.dtype == torch.uint8
    assert [_read_index(f) for f in sync[0]] == list(range(30))
    torch.testing.assert_close(clip[1], preprocess_clip_frames(video.clip_frames[:5], image_size=32))
    # too short for the requested counts: the last frame repeats; fewer than a segment: one segment
    clip, sync = processor.preprocess([video], num_clip_frames=0, num_sync_frames=3)
    assert clip.shape[1] == 1 and sync.shape[1] == 16
    clip, sync = processor.preprocess([video], num_clip_frames=20, num_sync_frames=45)
    assert clip.shape[1] == 20 and [_read_index(f) for f in sync[0, 38:]] == [38, 39, 39, 39, 39, 39, 39]
    # sync pixels for the encoder: the 224 px crop in [-1, 1], resized to the encoder's 48 px
    pixels = processor.preprocess_sync(sync[0, :4])
    assert pixels.shape == (4, 3, 48, 48) and pixels.min() >= -1 and pixels.max() <= 1
    full = preprocess_sync_frames(sync[0, :4])
    torch.testing.assert_close(pixels.mean(dim=(-1, -2)), full.mean(dim=(-1, -2)), atol=2e-3, rtol=0)
    assert FoleyVideoProcessor().preprocess_sync(sync[0, :4]).equal(full)
    assert torch.equal(fit_frames(sync[0, :2], 3), sync[0, [0, 1, 1]])
    with pytest.raises(ValueError, match="videos"):
        processor.preprocess([], 1, 16)
    with pytest.raises(ValueError, match="clip_image_size"):
        FoleyVideoProcessor(clip_image_size=0)


def test_load_video_at_other_frame_rates():
    frames = np.stack([_index_frame(i) for i in range(50)])  # 2 s at 25 fps
    video = load_video(frames, fps=25, clip_frame_rate=5, sync_frame_rate=12.5)
    assert video.clip_frames.shape[0] == 10 and video.sync_frames.shape[0] == 25
    assert [_read_index(f) for f in video.sync_frames[:4]] == [0, 2, 4, 6]  # every other source frame
    assert [_read_index(f) for f in video.clip_frames[:3]] == [0, 5, 10]
    with pytest.raises(ValueError, match="rates must be positive"):
        load_video(frames, fps=25, sync_frame_rate=0)
