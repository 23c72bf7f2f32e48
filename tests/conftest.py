"""Shared test setup: offline, deterministic, small thread count (the CI machine has 2 cores)."""

import os

# No test downloads anything; without this a failed Hub look-up costs ~50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test models are tiny: one thread avoids thread start-up and oversubscription costs that make them 5-20x slower
# on the 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one intra-op thread, whatever an earlier test or library left set."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    """A tiny `KlingFoleyPipeline` (`get_dummy_components()`) saved once per test module."""
    from foley_toolkit import KlingFoleyPipeline
    from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components

    directory = tmp_path_factory.mktemp("tiny_pipeline")
    KlingFoleyPipeline(**get_dummy_components()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    """The tiny pipeline of `pipe_dir`, loaded with `from_pretrained`, progress bar off."""
    from foley_toolkit import KlingFoleyPipeline

    pipe = KlingFoleyPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe
