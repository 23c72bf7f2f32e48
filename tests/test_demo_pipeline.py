"""The shipped demo pipeline (checkpoints/kling-foley-demo): it loads, generates, and eval-sync scores its output.

Thresholds belong to the benchmark (`training/recipes/finish_demo.py`, the model card), not to these tests.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.audio_utils import save_audio
from foley_toolkit.evaluation.sync_metrics import evaluate_sync_folder
from foley_toolkit.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "checkpoints" / "kling-foley-demo"
DEMO_VIDEO = REPO / "examples" / "assets" / "demo.mp4"


@pytest.fixture(scope="module")
def demo_pipeline():
    pipeline = KlingFoleyPipeline.from_pretrained(DEMO_DIR)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_demo_files_are_safetensors_and_small():
    files = [f for f in DEMO_DIR.rglob("*") if f.is_file()]
    assert (DEMO_DIR / "model_index.json").is_file() and (DEMO_DIR / "README.md").is_file()
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    assert DEMO_VIDEO.is_file()


def test_demo_generates_two_seconds_of_stereo(demo_pipeline):
    output = demo_pipeline(
        video=str(DEMO_VIDEO), duration=2.0, num_inference_steps=4, generator=torch.Generator().manual_seed(0)
    )
    audio = output.audios
    assert output.sample_rate == 44100
    assert audio.shape == (1, 2, 88200)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 1e-4  # not silence


def test_eval_sync_on_three_generated_clips(demo_pipeline, tmp_path):
    clips_dir, audio_dir = tmp_path / "clips", tmp_path / "generated"
    generate_dataset(clips_dir, num_clips=3, seed=12345, min_duration=2.0, max_duration=3.0, write_wav=False)
    audio_dir.mkdir()
    for video in sorted(clips_dir.glob("*.mp4")):
        output = demo_pipeline(video=str(video), num_inference_steps=4, generator=torch.Generator().manual_seed(0))
        save_audio(audio_dir / (video.stem + ".wav"), output.audios[0], output.sample_rate)
    report = evaluate_sync_folder(audio_dir, clips_dir / "metadata.jsonl")
    summary = report.to_dict()
    assert summary["num_clips"] == 3 and summary["num_events"] >= 3
    for key in ("precision", "recall", "f1", "shuffled_f1"):
        assert summary[key] is None or 0.0 <= summary[key] <= 1.0
    assert summary["f1"] is not None


def test_demo_video_output_is_audible_and_dc_free(demo_pipeline):
    """README command 1 with the shipped settings: the sound must be heard (peak above -20 dBFS, louder than the
    -50 LUFS silence threshold of eval-sync) and carry no DC offset."""
    from foley_toolkit.evaluation.level_metrics import audio_level

    output = demo_pipeline(video=str(DEMO_VIDEO), generator=torch.Generator().manual_seed(0))
    level = audio_level(output.audios[0], output.sample_rate)
    assert level["peak_dbfs"] > -20.0, level
    assert level["loudness_lufs"] > -50.0, level
    assert abs(level["dc_offset"]) < 1e-3, level
