"""eval-sync: onset detection, one-to-one matching, offsets, pan sign and the shuffled control."""

import json

import numpy as np
import pytest
import soundfile as sf

from foley_toolkit.cli import main as cli_main
from foley_toolkit.evaluation.sync_metrics import (
    derangement,
    detect_onsets,
    evaluate_sync,
    evaluate_sync_folder,
    load_audio_for_sync,
    load_events,
    match_onsets,
    onset_scores,
    stereo_balance,
)

SAMPLE_RATE = 44100


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """Three short clips written through the CLI (seed 4 covers every class and 4 moving events)."""
    out = tmp_path_factory.mktemp("sync")
    argv = [
        "make-synthetic",
        "--out",
        str(out),
        "--num-clips",
        "3",
        "--seed",
        "4",
        "--min-duration",
        "2",
        "--max-duration",
        "3",
        "--fps-choices",
        "12,25,30",
        "--width",
        "64",
        "--height",
        "48",
    ]
    assert cli_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def ground_truth(synthetic_dir):
    records = load_events(synthetic_dir / "metadata.jsonl")
    audios = [load_audio_for_sync(synthetic_dir / r["audio_file"]) for r in records]
    return audios, [r["events"] for r in records]


def test_ground_truth_audio_scores_high(ground_truth):
    audios, events = ground_truth
    report = evaluate_sync(audios, events)
    assert report.num_clips == 3 and report.num_events == sum(len(e) for e in events)
    assert report.f1 >= 0.95
    assert report.mean_abs_offset_ms <= 10.0
    assert report.num_pan_events >= 1 and report.pan_accuracy == 1.0
    # The control pairs audio with another clip's events: far below the real pairing.
    assert report.shuffled_f1 < report.f1 - 0.5


def test_silence_scores_zero(ground_truth):
    audios, events = ground_truth
    report = evaluate_sync([np.zeros_like(a) for a in audios], events)
    assert report.num_detected == 0
    assert report.f1 == 0.0 and report.recall == 0.0
    assert np.isnan(report.mean_abs_offset_ms)
    assert report.to_dict()["mean_abs_offset_ms"] is None  # JSON-able
    assert report.pan_accuracy == 0.0  # no sound, no pan


def test_audio_late_by_40_ms_reports_40_ms_offset(ground_truth):
    audios, events = ground_truth
    shift = int(0.040 * SAMPLE_RATE)
    late = [np.concatenate([np.zeros((2, shift), np.float32), a[:, :-shift]], axis=1) for a in audios]
    report = evaluate_sync(late, events)
    assert report.recall == 1.0
    assert report.mean_abs_offset_ms == pytest.approx(40.0, abs=3.0)
    assert report.mean_offset_ms == pytest.approx(40.0, abs=3.0)  # positive: late
    # A tolerance below the shift matches nothing.
    assert evaluate_sync(late, events, tolerance_ms=20).f1 == 0.0


def test_flipped_channels_give_low_pan_accuracy(ground_truth):
    audios, events = ground_truth
    report = evaluate_sync([a[::-1] for a in audios], events)
    assert report.f1 >= 0.95  # onsets do not depend on the channel order
    assert report.pan_accuracy <= 0.1


def test_mp4_audio_scores_like_the_wav(synthetic_dir, ground_truth):
    report = evaluate_sync_folder(synthetic_dir, synthetic_dir / "metadata.jsonl", extensions=[".mp4"])
    assert [clip["name"] for clip in report.clips] == ["clip_00000.mp4", "clip_00001.mp4", "clip_00002.mp4"]
    assert report.f1 >= 0.95 and report.mean_abs_offset_ms <= 10.0 and report.pan_accuracy == 1.0
    mp4 = load_audio_for_sync(synthetic_dir / "clip_00000.mp4")
    wav = ground_truth[0][0]
    assert mp4.shape == wav.shape  # AAC padding trimmed to the stream duration


def test_cli_prints_table_and_writes_json(synthetic_dir, tmp_path, capsys):
    out_json = tmp_path / "sync.json"
    argv = [
        "eval-sync",
        "--audio-dir",
        str(synthetic_dir),
        "--events",
        str(synthetic_dir / "metadata.jsonl"),
        "--tolerance-ms",
        "80",
        "--json",
        str(out_json),
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "onset F1" in printed and "shuffled control F1" in printed
    summary = json.loads(printed[printed.index("{") :])
    written = json.loads(out_json.read_text())
    assert written["f1"] == summary["f1"] >= 0.95
    assert len(written["clips"]) == 3 and written["clips"][0]["name"] == "clip_00000.wav"


def test_folder_errors(tmp_path, synthetic_dir):
    with pytest.raises(FileNotFoundError, match="audio_dir"):
        evaluate_sync_folder(tmp_path / "missing", synthetic_dir / "metadata.jsonl")
    with pytest.raises(FileNotFoundError, match="no audio"):
        evaluate_sync_folder(tmp_path, synthetic_dir / "metadata.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "x"}\n')
    with pytest.raises(ValueError, match="file_name"):
        load_events(bad)


def test_detect_onsets_finds_clicks_at_known_times():
    rng = np.random.default_rng(0)
    times = [0.3, 0.75, 1.1, 1.9]
    audio = rng.standard_normal(2 * SAMPLE_RATE) * 1e-3
    t = np.arange(int(0.1 * SAMPLE_RATE)) / SAMPLE_RATE
    for time in times:
        start = int(time * SAMPLE_RATE)
        audio[start : start + t.size] += 0.5 * np.sin(2 * np.pi * 600 * t) * np.exp(-t / 0.02)
    onsets = detect_onsets(audio)
    assert onsets.shape == (4,)
    np.testing.assert_allclose(onsets, times, atol=0.003)
    # A steady noise floor alone has no onsets.
    assert detect_onsets(rng.standard_normal((2, SAMPLE_RATE)) * 0.05).size == 0


def test_match_onsets_is_one_to_one_and_maximal():
    # Greedy nearest-first would pair 0.07-0.06 and leave 0.0 unmatched; the optimum matches both.
    assert match_onsets([0.0, 0.07], [0.06, 0.13], tolerance=0.08) == [(0, 0), (1, 1)]
    # Two references cannot share one detection.
    assert match_onsets([1.0, 1.05], [1.02], tolerance=0.08) == [(0, 0)]  # the nearer one
    assert match_onsets([1.0], [1.2], tolerance=0.08) == []
    scores = onset_scores([1.0, 2.0], [1.01, 3.0], tolerance=0.08)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert scores["mean_offset_ms"] == pytest.approx(10.0)


def test_stereo_balance_and_derangement():
    audio = np.zeros((2, SAMPLE_RATE))
    audio[0, 22050:24000] = 0.5  # left
    audio[1, 22050:24000] = 0.1
    assert stereo_balance(audio, 0.5) < -0.9
    assert stereo_balance(audio[::-1], 0.5) > 0.9
    assert stereo_balance(audio, 0.1) == 0.0  # nothing there
    perm = derangement(7, seed=3)
    assert sorted(perm) == list(range(7)) and not np.any(perm == np.arange(7))
    np.testing.assert_array_equal(perm, derangement(7, seed=3))
