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
