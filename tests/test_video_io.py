"""`VideoAudioMuxer` / `write_video_with_audio` fed block by block: the same file as the whole-array call, the video's
packets copied, the audio muxed as it arrives (bounded buffering)."""

import os

import av
import numpy as np
import pytest
import torch

from foley_toolkit.pipelines.kling_foley.testing import make_test_video
from foley_toolkit.utils.video_io import VideoAudioMuxer, write_video_with_audio


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("mux") / "source.mp4", duration=7.3, fps=10, size=(32, 32))


def _noise(seconds: float, sample_rate: int = 44_100, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((channels, round(seconds * sample_rate)))).astype(np.float32)


def _read(path):
    """(video packets as bytes, decoded audio (2, N), [(stream type, dts seconds)] in file order)."""
    with av.open(str(path)) as container:
        video = [bytes(p) for p in container.demux(video=0) if p.size]
    with av.open(str(path)) as container:
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    with av.open(str(path)) as container:
        order = [(p.stream.type, float(p.dts * p.time_base)) for p in container.demux() if p.dts is not None]
    return video, audio, order


def _split(audio: np.ndarray, cuts) -> list:
    bounds = [0, *cuts, audio.shape[-1]]
    return [audio[..., a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize(
    "seconds, sample_rate, channels",
    [(6.1, 44_100, 2), (9.0, 44_100, 2), (3.2, 16_000, 1)],  # padded / trimmed to 7.3 s / mono, resampled
)
def test_blocks_give_the_same_file_as_the_whole_array(source, tmp_path, seconds, sample_rate, channels):
    audio = _noise(seconds, sample_rate, channels)
    if channels == 1:
        audio = audio[0]
    whole = write_video_with_audio(source, audio, sample_rate, tmp_path / "whole.mp4")
    # uneven blocks: empty, shorter than an encoder frame, straddling the 1 s frame offsets, tensors too
    cuts = sorted([0, 1000, 50_000, 50_001, 2 * sample_rate + 7])
    blocks = [torch.from_numpy(b) if i % 2 else b for i, b in enumerate(_split(audio, cuts))]
    streamed = write_video_with_audio(source, iter(blocks), sample_rate, tmp_path / "blocks.mp4")

    whole_video, whole_audio, _ = _read(whole)
    block_video, block_audio, order = _read(streamed)
    with av.open(source) as container:
        source_video = [bytes(p) for p in container.demux(video=0) if p.size]
    assert block_video == whole_video == source_video  # copied packet by packet, not re-encoded
    np.testing.assert_array_equal(block_audio, whole_audio)
    assert abs(block_audio.shape[1] - 7.3 * 44_100) <= 2 * 1024  # the video's length, within AAC priming/padding
    assert np.abs(block_audio[:, 2048 : 6 * 44_100]).mean() > 0.05  # the noise, not silence
    # Interleaved by time in the file: the audio does not come as one run after (or before) the pictures.
    kinds = [kind for kind, _ in order]
    assert kinds.count("video") == 73 and kinds.index("video") < 3 and kinds[-10:].count("video") >= 1
    times = [t for _, t in order]
    assert max(a - b for a, b in zip(times, times[1:])) < 0.15  # never more than a frame back in time
    with open(whole, "rb") as a, open(streamed, "rb") as b:
        assert a.read() == b.read()  # same encoder input frames -> the same bytes


def test_reencoded_frames_with_blocks_match_the_whole_array(tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
    audio = _noise(1.5)
    whole = write_video_with_audio(frames, audio, 44_100, tmp_path / "whole.mkv", fps=25)
    streamed = write_video_with_audio(frames, _split(audio, [300, 44_100]), 44_100, tmp_path / "blocks.mkv", fps=25)
    whole_video, whole_audio, whole_order = _read(whole)
    block_video, block_audio, block_order = _read(streamed)
    # The pictures are encoded twice (x264 may thread differently under load): same frames and timestamps.
    assert len(block_video) == len(whole_video) == 30
    assert [t for kind, t in block_order if kind == "video"] == [t for kind, t in whole_order if kind == "video"]
    np.testing.assert_array_equal(block_audio, whole_audio)


def test_muxer_writes_as_audio_arrives_and_holds_under_a_second(tmp_path):
    source = make_test_video(tmp_path / "source.mp4", duration=25.0, fps=4, size=(32, 32))
    path = tmp_path / "live.mp4"
    audio = _noise(25.0)
    sizes = []
    with VideoAudioMuxer(source, path, 44_100) as muxer:
        for block in _split(audio, range(30_000, audio.shape[1], 30_000)):  # 0.68 s blocks
            muxer.write(block)
            sizes.append(os.path.getsize(path))
        assert muxer.max_pending_samples < 44_100 and muxer.max_block_samples == 30_000
        assert muxer.samples_written == audio.shape[1] and float(muxer.duration) == 25.0
    # The file fills while the blocks arrive (192 kbit/s of noise: ~24 KB a second, flushed to disk in 256 KB
    # buffers), not only when it is closed: by three quarters of the audio, over 200 KB are on disk.
    assert sizes[3 * len(sizes) // 4] > 200_000 and os.path.getsize(path) > 500_000
    _, decoded, _ = _read(path)
    assert abs(decoded.shape[1] - 25 * 44_100) <= 2 * 1024


def test_muxer_errors_name_the_argument(source, tmp_path):
    with VideoAudioMuxer(source, tmp_path / "out.mp4", 44_100) as muxer:
        with pytest.raises(ValueError, match="`block`"):
            muxer.write(np.zeros((3, 10), np.float32))
        with pytest.raises(ValueError, match="`block`"):
            muxer.write(np.array([0.0, np.nan]))
        muxer.write(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="closed"):
        muxer.write(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="`sample_rate`"):
        VideoAudioMuxer(source, tmp_path / "out.mp4", 0)
    with pytest.raises(ValueError, match="`out_path`"):
        VideoAudioMuxer(source, tmp_path / "out.wav", 44_100)
    with pytest.raises(ValueError, match="`audio` has no samples"):
        write_video_with_audio(source, iter([]), 44_100, tmp_path / "empty.mp4")
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(ValueError, match="`audio`"):
        write_video_with_audio(source, 3.0, 44_100, tmp_path / "bad.mp4")
