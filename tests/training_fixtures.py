"""Fixtures of the training tests: a saved tiny pipeline, a tiny synthetic clip dataset and its feature cache.

Import the fixtures into a test module (``from training_fixtures import *``); the training scripts are imported
in-process from ``training/`` (``import train_transformer``) so the tests pay the library import time once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINING_DIR = REPO / "training"
if str(TRAINING_DIR) not in sys.path:
    sys.path.insert(0, str(TRAINING_DIR))

# Feature extraction settings of the cached dataset: 1.5 s segments, short clips joined, one augmented clip.
SEGMENT_SECONDS = 1.5
EXTRACT_ARGS = ["--segment_seconds", str(SEGMENT_SECONDS), "--min_seconds", "0.5", "--concat_short",
                "--num_augmented_clips", "1", "--max_events", "2", "--stereo_mel"]  # fmt: skip


def reset_accelerate_state() -> None:
    """Forget the process-wide accelerate state so the next script builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """`KlingFoleyPipeline(**get_dummy_components())` saved to disk (what `--pretrained_model_name_or_path` points at)."""
    from utils import get_dummy_components

    from foley_toolkit.pipelines import KlingFoleyPipeline

    path = tmp_path_factory.mktemp("tiny_pipeline")
    KlingFoleyPipeline(**get_dummy_components(seed=0)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def clip_data_dir(tmp_path_factory) -> Path:
    """Four synthetic clips (1-2.2 s, 32x32 video, stereo AAC + wav, captions, events) and metadata.jsonl."""
    from foley_toolkit.synthetic import generate_dataset

    path = tmp_path_factory.mktemp("clips")
    generate_dataset(path, num_clips=4, seed=0, min_duration=1.0, max_duration=2.2, width=32, height=32, max_events=2)
    return path


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory, tiny_pipeline_dir, clip_data_dir) -> Path:
    import extract_features

    path = tmp_path_factory.mktemp("features")
    extract_features.main(
        extract_features.parse_args(
            ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(clip_data_dir), "--output_dir", str(path),
             *EXTRACT_ARGS]  # fmt: skip
        )
    )
    reset_accelerate_state()
    return path


def load_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files of a saved model folder."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if not tensors:
        raise FileNotFoundError(f"No safetensors file in {folder}")
    return tensors
