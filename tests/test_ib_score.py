"""IB-score (av-benchmark: mean cosine similarity of video and generated-audio embeddings) behind the pluggable
`AudioVisualEmbedder`; av-benchmark's ImageBind video input (0.5 fps frames, 3 spatial crops, 2-frame clips); the CLI.

ImageBind itself is not installable offline (PyPI's `imagebind` 0.0.1.dev0 is an empty placeholder), so the embedder
used here is `BandEmbedder`: real, deterministic features of the same files (mean colour of the sampled frames;
energy in three frequency bands of the audio)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foley_toolkit.audio_utils import load_audio, save_audio
from foley_toolkit.evaluation.extractors.imagebind import (
    AudioVisualEmbedder,
    ib_score,
    imagebind_video_clips,
    load_embedder,
    sample_frames,
)
from foley_toolkit.synthetic import generate_clip, write_clip
from foley_toolkit.video_processor import CLIP_MEAN, CLIP_STD


class BandEmbedder(AudioVisualEmbedder):
    """3-d embeddings: mean R, G, B of the frames at 0 and 1 s; energy below 1 kHz, 1-4 kHz, above 4 kHz."""

    name = "bands"

    def __init__(self, weights=None, device=None):
        self.weights, self.device = weights, device

    def embed_video(self, path):
        return torch.from_numpy(sample_frames(path, [0.0, 1.0]).reshape(-1, 3).mean(0) / 255.0).float()

    def embed_audio(self, path):
        audio = load_audio(path, sample_rate=16000, mono=True)[0]
        power = np.abs(np.fft.rfft(np.asarray(audio, dtype=np.float64))) ** 2
        freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
        bands = [power[freqs < 1000].sum(), power[(freqs >= 1000) & (freqs < 4000)].sum(), power[freqs >= 4000].sum()]
        return torch.tensor(bands, dtype=torch.float32) / float(power.sum())


def make_band_embedder(weights=None, device=None):
    return BandEmbedder(weights, device)


class FixedEmbedder(AudioVisualEmbedder):
    def __init__(self, table):
        self.table = table

    def embed_video(self, path):
        return self.table[path]

    def embed_audio(self, path):
        return self.table[path]


def test_ib_score_is_the_mean_cosine_of_the_pairs():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    table = {"v1": a, "a1": a * 3, "v2": a, "a2": -a, "v3": a, "a3": b}
    embedder = FixedEmbedder(table)
    assert ib_score(embedder, [("v1", "a1")]) == pytest.approx(1.0)
    assert ib_score(embedder, [("v2", "a2")]) == pytest.approx(-1.0)
    assert ib_score(embedder, [("v1", "a1"), ("v2", "a2"), ("v3", "a3")]) == pytest.approx((1 - 1 + 2**-0.5) / 3)
    with pytest.raises(ValueError, match="empty"):
        ib_score(embedder, [])
    with pytest.raises(ValueError, match="two \\(D,\\) vectors"):
        ib_score(FixedEmbedder({"v": torch.zeros(2), "a": torch.zeros(3)}), [("v", "a")])


def test_imagebind_video_clips_follow_av_benchmark():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 240, 320, 3), dtype=np.uint8)
    clips = imagebind_video_clips(frames)
    assert clips.shape == (9, 3, 2, 224, 224)  # 3 crops x 3 pairs of consecutive frames, (C, T, H, W)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    resized = F.interpolate(video, size=(224, 298), mode="bicubic", antialias=True)  # int(224 * 320 / 240) = 298
    normalised = (resized - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(clips[0].permute(1, 0, 2, 3), normalised[0:2, :, :, :224])  # left crop, frames 0-1
    torch.testing.assert_close(clips[4].permute(1, 0, 2, 3), normalised[1:3, :, :, 37:261])  # ceil(74 / 2): centre crop, frames 1-2
    torch.testing.assert_close(clips[8].permute(1, 0, 2, 3), normalised[2:4, :, :, 74:])  # right crop, frames 2-3
    with pytest.raises(ValueError, match="frames"):
        imagebind_video_clips(frames[:1])


@pytest.fixture(scope="module")
def av_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ib")
    (root / "videos").mkdir()
    for index in range(3):
        clip = generate_clip(seed=index, duration=1.5, fps=25, width=32, height=32)
        write_clip(clip, root / "videos" / f"clip{index}.mp4")
        save_audio(root / "pred" / f"clip{index}.wav", clip.audio, clip.sample_rate)
        other = generate_clip(seed=50 + index, duration=1.5, fps=25, width=32, height=32)
        save_audio(root / "ref" / f"clip{index}.wav", other.audio, other.sample_rate)
    return root


def test_sample_frames_takes_the_frame_shown_at_each_time(av_dirs):
    path = av_dirs / "videos" / "clip0.mp4"
    frames = sample_frames(path, [0.0, 0.52, 1.0])
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    all_frames = sample_frames(path, [i / 25 for i in range(37)])  # every frame of 1.5 s at 25 fps
    np.testing.assert_array_equal(frames[1], all_frames[13])  # 0.52 s = frame 13
    np.testing.assert_array_equal(frames[2], all_frames[25])
    with pytest.raises(FileNotFoundError):
        sample_frames(av_dirs / "missing.mp4", [0.0])


def test_evaluate_ib_score_with_a_plugged_embedder(av_dirs, tmp_path, capsys):
    from foley_toolkit.cli import main

    out = tmp_path / "ib.json"
    argv = ["evaluate", "--pred", str(av_dirs / "pred"), "--ref", str(av_dirs / "ref"), "--videos"]
    argv += [str(av_dirs / "videos"), "--ib-embedder", "test_ib_score:make_band_embedder", "--metrics", "ib_score"]
    argv += ["--json", str(out), "--no-progress", "--no-cache"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["IB-score"]
    report = json.loads(out.read_text())
    pairs = [(av_dirs / "videos" / f"clip{i}.mp4", av_dirs / "pred" / f"clip{i}.wav") for i in range(3)]
    expected = ib_score(BandEmbedder(), pairs)
    assert report["metrics"]["IB-score"] == pytest.approx(expected, rel=1e-6)
    assert 0 < expected < 1 and report["extractors"]["ib_score"]["name"] == "bands"
    # Errors: an embedder that is not importable; IB-score without a video folder.
    bad = argv.copy()
    bad[bad.index("test_ib_score:make_band_embedder")] = "test_ib_score:nothing_here"
    assert main(bad) == 2 and "could not be imported" in capsys.readouterr().err
    no_videos = argv[:5] + argv[7:]
    assert main(no_videos) == 2 and "IB-score needs `--videos`" in capsys.readouterr().err


def test_load_embedder_checks_what_it_gets():
    assert isinstance(load_embedder("test_ib_score:make_band_embedder", weights="w"), BandEmbedder)
    with pytest.raises(ValueError, match="package.module:factory"):
        load_embedder("no_colon")
    with pytest.raises(ValueError, match="not an AudioVisualEmbedder"):
        load_embedder("builtins:dict")


def test_imagebind_embedder_names_the_install_command():
    pytest.importorskip("numpy")  # ImageBind itself is absent here: its adapter must say how to get it
    try:
        import imagebind.models  # noqa: F401
    except ImportError:
        from foley_toolkit.evaluation.extractors.imagebind import ImageBindEmbedder

        with pytest.raises(ImportError, match="git\\+https://github.com/facebookresearch/ImageBind"):
            ImageBindEmbedder("imagebind_huge.pth")
    else:
        pytest.skip("ImageBind is installed; the install hint is not shown")
