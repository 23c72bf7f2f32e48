"""eval-sync: onset detection, one-to-one matching, offsets, pan sign and the shuffled control."""

import json
import math

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
from utils import assert_cli_error

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


def test_near_silent_copy_is_silent(ground_truth):
    audios, events = ground_truth
    quiet = audios[0] * 10 ** (-70 / 20)  # the right onsets, 70 dB down: below -50 LUFS
    report = evaluate_sync([quiet], events[:1], reference_audios=[audios[0]])
    assert report.num_silent == 1 and report.clips[0]["silent"]
    assert report.f1 == 0.0 and report.num_detected == 0 and report.recall == 0.0
    assert report.clips[0]["loudness_lufs"] < -50
    assert report.loudness_error_db == pytest.approx(-70.0, abs=0.5)
    summary = report.to_dict()
    assert summary["num_silent"] == 1 and summary["silence_lufs"] == -50.0
    # Among loud clips only the silent one loses its onsets.
    mixed = evaluate_sync([quiet, *audios[1:]], events, reference_audios=audios)
    full = evaluate_sync(audios, events)
    assert mixed.num_silent == 1 and [clip["silent"] for clip in mixed.clips] == [True, False, False]
    assert mixed.clips[0]["num_estimated"] == 0 and mixed.clips[1]["f1"] == full.clips[1]["f1"]
    assert mixed.num_matched == full.num_matched - full.clips[0]["num_matched"]
    # 40 dB down (about -61 LUFS) the onsets are still there for the level-blind detector: without the silence
    # rule this hiss would score F1 1; with it the clips are silent.
    faint = [a * 10 ** (-40 / 20) for a in audios]
    blind = evaluate_sync(faint, events, silence_lufs=None)
    assert blind.num_silent == 0 and blind.f1 >= 0.95 and blind.loudness_lufs < -55
    gated = evaluate_sync(faint, events)
    assert gated.num_silent == 3 and gated.f1 == 0.0 and gated.pan_accuracy == 0.0


def test_quieter_copy_keeps_f1_and_reports_its_loudness_error(ground_truth):
    audios, events = ground_truth
    full = evaluate_sync(audios, events, reference_audios=audios)
    assert full.num_silent == 0 and full.loudness_error_db == 0.0 and full.abs_loudness_error_db == 0.0
    assert full.num_level_events == full.num_events
    quieter = [a * 0.1 for a in audios]  # -20 dB
    report = evaluate_sync(quieter, events, reference_audios=audios)
    assert report.num_silent == 0 and all(clip["loudness_lufs"] > -50 for clip in report.clips)
    assert report.f1 == full.f1 and report.num_matched == full.num_matched
    assert report.loudness_error_db == pytest.approx(-20.0, abs=0.5)
    assert report.abs_loudness_error_db == pytest.approx(20.0, abs=0.5)
    assert report.loudness_lufs == pytest.approx(full.loudness_lufs - 20.0, abs=0.01)
    assert report.peak_dbfs == pytest.approx(full.peak_dbfs - 20.0, abs=0.01)
    # Without references there is no loudness error; levels are still measured.
    alone = evaluate_sync(quieter, events)
    assert math.isnan(alone.loudness_error_db) and alone.num_level_events == 0 and alone.to_dict()["loudness_error_db"] is None
    with pytest.raises(ValueError, match="reference_audios"):
        evaluate_sync(quieter, events, reference_audios=audios[:1])


def test_cli_levels_reference_dir_and_silence(synthetic_dir, tmp_path, capsys):
    quiet_dir, silent_dir = tmp_path / "quiet", tmp_path / "silent"
    quiet_dir.mkdir()
    silent_dir.mkdir()
    for record in load_events(synthetic_dir / "metadata.jsonl"):
        audio, sr = sf.read(synthetic_dir / record["audio_file"])
        sf.write(quiet_dir / record["audio_file"], audio * 0.1, sr, subtype="FLOAT")
        sf.write(silent_dir / record["audio_file"], np.zeros_like(audio), sr, subtype="FLOAT")
    events = str(synthetic_dir / "metadata.jsonl")
    # The reference is found from the events file ('audio_file' next to it) or in --reference-dir.
    for extra in ([], ["--reference-dir", str(synthetic_dir)]):
        out_json = tmp_path / "quiet.json"
        assert cli_main(["eval-sync", "--audio-dir", str(quiet_dir), "--events", events, "--json", str(out_json), *extra]) == 0
        printed = capsys.readouterr().out
        assert "silent clips" in printed and "event loudness error" in printed and "median loudness (LUFS)" in printed
        written = json.loads(out_json.read_text())
        assert written["num_silent"] == 0 and written["f1"] >= 0.95
        assert written["loudness_error_db"] == pytest.approx(-20.0, abs=0.5)
        assert written["num_level_events"] == written["num_events"]
        clip = written["clips"][0]
        assert set(clip) >= {"loudness_lufs", "peak_dbfs", "dc_offset", "silent", "event_loudness_errors_db"}
    out_json = tmp_path / "silent.json"
    assert cli_main(["eval-sync", "--audio-dir", str(silent_dir), "--events", events, "--json", str(out_json)]) == 0
    capsys.readouterr()
    written = json.loads(out_json.read_text())  # valid JSON: the loudness of digital silence is null, not -inf
    assert written["num_silent"] == 3 and written["f1"] == 0.0
    assert written["loudness_lufs"] is None and written["peak_dbfs"] is None and written["dc_offset"] == 0.0
    assert written["loudness_error_db"] < -60  # silence against the true level, floored at -100 dB
    assert_cli_error(["eval-sync", "--audio-dir", quiet_dir, "--events", events, "--reference-dir", tmp_path / "no"],
                     "reference_dir", capsys)  # fmt: skip
    assert_cli_error(["eval-sync", "--audio-dir", quiet_dir, "--events", events, "--reference-dir", tmp_path],
                     "reference_dir", capsys)  # fmt: skip
