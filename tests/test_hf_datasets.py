"""🤗 ``datasets`` input without torchcodec: ``videofolder`` / ``audiofolder`` on a clips folder written by
`foley_toolkit.synthetic`, ``Audio`` columns holding encoded bytes, and ``--hf_dataset ... --hf_data_dir`` in the
training scripts. The media are decoded by the project (soundfile / PyAV), never by ``datasets``."""

import argparse
import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from foley_toolkit import data as data_module
from foley_toolkit.audio_utils import SAMPLE_RATE
from foley_toolkit.data import FoleyClipDataset, load_hf_dataset
from foley_toolkit.synthetic import generate_dataset

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    """Two 1 s synthetic clips: clip_XXXXX.mp4 (H.264 + AAC) + clip_XXXXX.wav + metadata.jsonl (`audio_file`)."""
    folder = tmp_path_factory.mktemp("clips")
    generate_dataset(folder, num_clips=2, seed=7, min_duration=1.0, max_duration=1.0, width=64, height=64)
    return folder


def _peak_dbfs(audio: torch.Tensor) -> float:
    return 20 * np.log10(float(audio.abs().max()))


def test_videofolder_rows_decode_without_torchcodec_like_the_folder(clips_dir, tmp_path):
    hf = datasets.load_dataset("videofolder", data_dir=str(clips_dir), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(hf.features["video"], datasets.Video) and hf.features["video"].decode  # datasets' default
    from_hf = FoleyClipDataset.from_hf_dataset(hf, data_dir=clips_dir, segment_seconds=None, min_seconds=0.5)
    from_folder = FoleyClipDataset.from_folder(clips_dir, segment_seconds=None, min_seconds=0.5)

    # same clips, named by their files, each video with its separate wav (the relative `audio_file` column)
    assert [s.id for s in from_hf.sources] == [s.id for s in from_folder.sources] == ["clip_00000", "clip_00001"]
    assert [s.audio for s in from_hf.sources] == [str(clips_dir / f"clip_0000{i}.wav") for i in range(2)]
    hf_item, folder_item = from_hf[1], from_folder[1]
    assert hf_item["has_video"] and hf_item["caption"] == folder_item["caption"] != ""
    assert torch.equal(hf_item["audio"], folder_item["audio"]) and hf_item["audio"].shape == (1, SAMPLE_RATE)
    assert _peak_dbfs(hf_item["audio"]) > -30  # the clip's events, not silence
    assert torch.equal(hf_item["clip_frames"], folder_item["clip_frames"])
    assert hf_item["sync_frames"].shape == (25, 3, 224, 224)

    with pytest.raises(FileNotFoundError, match=r"column `audio_file`: 'clip_00000\.wav' is not a file \(relative paths need `data_dir`\)"):
        FoleyClipDataset.from_hf_dataset(hf, segment_seconds=None)


def test_audiofolder_on_a_clips_folder_gives_audio_only_clips(clips_dir, tmp_path, monkeypatch):
    # datasets 5 builds an audiofolder with torchcodec; here (and on any CPU install) torchcodec cannot load
    monkeypatch.setattr(data_module, "torchcodec_available", lambda: False)
    hf = load_hf_dataset("audiofolder", data_dir=clips_dir, cache_dir=tmp_path / "cache")
    assert hf.features["audio"] == datasets.Audio(decode=False)
    assert hf[0]["audio"] == {"path": str(clips_dir.resolve() / "clip_00000.mp4"), "bytes": None}
    records = [json.loads(line) for line in open(clips_dir / "metadata.jsonl")]
    assert hf["caption"] == [r["caption"] for r in records]

    clips = FoleyClipDataset.from_hf_dataset(hf, segment_seconds=None, min_seconds=0.5, load_video=False)
    assert [s.id for s in clips.sources] == ["clip_00000", "clip_00001"]
    assert not any(s.has_video for s in clips.sources)
    item = clips[0]
    assert not item["has_video"] and item["duration"] == pytest.approx(1.0)
    # the audio is the mp4's AAC track: about the wav's level (AAC's low-pass takes the top of these broadband
    # clicks: -1.6 dB RMS, measured) and aligned with it (residual about 5 dB below the signal, measured; one sample
    # of shift raises it above the signal)
    wav = torch.from_numpy(sf.read(clips_dir / "clip_00000.wav", dtype="float32")[0].mean(1))[None]
    audio = item["audio"]
    assert audio.shape == wav.shape == (1, SAMPLE_RATE) and _peak_dbfs(audio) > -30
    assert 20 * np.log10(float(audio.square().mean().sqrt() / wav.square().mean().sqrt())) == pytest.approx(0, abs=2.5)
    residual_db = [
        10 * np.log10(float((audio[:, lag:] - wav[:, : SAMPLE_RATE - lag]).square().mean() / wav.square().mean()))
        for lag in (0, 1)
    ]
    assert residual_db[0] < -3 < 0 < residual_db[1]

    with pytest.raises(ValueError, match="`data_dir` is required with 'audiofolder'"):
        load_hf_dataset("audiofolder")
    with pytest.raises(ValueError, match="`split` 'test'"):
        load_hf_dataset("audiofolder", data_dir=clips_dir, split="test", cache_dir=tmp_path / "cache")


def test_audio_column_with_encoded_bytes_from_a_saved_dataset(tmp_path):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(22_050) / 22_050).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, tone, 22_050, format="WAV", subtype="FLOAT")
    rows = {"audio": [{"bytes": buffer.getvalue(), "path": "tone.wav"}], "caption": ["a pure tone"]}
    hf = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())  # as the Hub stores audio
    hf.save_to_disk(str(tmp_path / "saved"))

    clips = FoleyClipDataset.from_hf_dataset(load_hf_dataset(tmp_path / "saved"), segment_seconds=None, load_video=False)
    assert clips.sources[0].id == "tone" and isinstance(clips.sources[0].audio, bytes)
    item = clips[0]
    assert item["audio"].shape == (1, SAMPLE_RATE) and item["duration"] == pytest.approx(1.0)
    # resampled 22.05 -> 44.1 kHz: still a 440 Hz tone at -6 dBFS
    spectrum = np.abs(np.fft.rfft(item["audio"][0].numpy()))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1
    assert _peak_dbfs(item["audio"]) == pytest.approx(20 * np.log10(0.5), abs=0.1)


def test_training_scripts_take_hf_dataset_videofolder_with_hf_data_dir(clips_dir):
    from foley_toolkit import training

    parser = argparse.ArgumentParser()
    training.add_audio_data_args(parser)
    args = parser.parse_args(["--hf_dataset", "videofolder", "--hf_data_dir", str(clips_dir)])
    args.seed = 0
    clips = training.build_clip_dataset(args, segment_seconds=None, min_seconds=0.5, load_video=False)
    assert [s.id for s in clips.sources] == ["clip_00000", "clip_00001"]
    assert all(s.has_video for s in clips.sources)
    assert torch.equal(clips[0]["audio"], FoleyClipDataset.from_folder(clips_dir, segment_seconds=None, load_video=False)[0]["audio"])
