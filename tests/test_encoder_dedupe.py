"""`KlingFoleyPipeline.encode_clip_frames`: runs of equal consecutive CLIP frames (static shots) go through the vision
encoder once, and the features equal encoding every frame (tiny real components)."""

import numpy as np
import pytest
import torch
from utils import get_dummy_components, make_test_video

from foley_toolkit import KlingFoleyPipeline


def _pipeline(dtype=torch.float32):
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.vision_encoder.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _FrameCounter:
    """Frames per vision-encoder forward (the batch size of its `pixel_values`)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(kwargs["pixel_values"].shape[0])

    def remove(self):
        self.handle.remove()


def _encode_both_ways(pipe, video, **kwargs):
    """`(deduplicated features, frames it encoded, plain features, frames the plain path encoded)`."""
    counts = {}
    features = {}
    for deduplicate in (True, False):
        pipe.deduplicate_frames = deduplicate
        counter = _FrameCounter(pipe.vision_encoder)
        try:
            with torch.no_grad():
                features[deduplicate] = pipe.encode_video(video, **kwargs)[0]
        finally:
            counter.remove()
            pipe.deduplicate_frames = True
        counts[deduplicate] = counter.calls
    return features[True], counts[True], features[False], counts[False]


def _two_shot_video(seconds_each=1.0, fps=25, size=(40, 32)):
    """Two static shots (a different constant image each), `(frames, height, width, 3)` uint8."""
    rng = np.random.default_rng(0)
    width, height = size
    shots = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    frames = int(seconds_each * fps)
    return np.concatenate([np.repeat(shot[None], frames, axis=0) for shot in shots])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vision_batch_size", [64, 3])
def test_static_shots_are_encoded_once_and_equal_the_plain_path(dtype, vision_batch_size):
    pipe = _pipeline(dtype)
    pipe.vision_batch_size = vision_batch_size  # 3: several chunks on the plain path, the last one of 1 frame
    video = _two_shot_video()
    fast, fast_calls, plain, plain_calls = _encode_both_ways(pipe, video, video_fps=25)

    clip_frames = pipe.sequence_lengths(2.0)["clip_frames"]
    assert fast.shape == plain.shape == (1, clip_frames, pipe.vision_encoder.config.projection_dim)
    assert fast.dtype == dtype
    if vision_batch_size == 64 or dtype == torch.bfloat16:
        assert torch.equal(fast, plain)
    else:
        # The plain path's last chunk is one frame, and a one-image batch takes another fp32 GEMM path than a larger
        # one (its embedding differs by rounding): the plain path itself is equal only up to fp32 rounding here.
        torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)
    assert sum(plain_calls) == clip_frames == 16
    assert sum(fast_calls) == 2  # one frame per shot
    # Every frame of a shot has its shot's embedding; the two shots differ.
    assert torch.equal(fast[0, :8], fast[0, :1].expand(8, -1)) and torch.equal(fast[0, 8:], fast[0, 8:9].expand(8, -1))
    assert not torch.equal(fast[0, 0], fast[0, 8])


def test_moving_video_encodes_every_frame(tmp_path):
    pipe = _pipeline()
    video = make_test_video(tmp_path / "moving.mp4", duration=1.5, fps=25)
    fast, fast_calls, plain, plain_calls = _encode_both_ways(pipe, video)
    assert torch.equal(fast, plain)
    assert sum(fast_calls) == sum(plain_calls) == fast.shape[1] == 12


def test_batch_of_clips_and_equal_frames_across_the_join():
    # Two clips in one call: frames are flattened over clips, so a static clip next to another is still one run
    # per distinct image, and each clip gets its own features back.
    pipe = _pipeline()
    video = _two_shot_video(seconds_each=1.0)
    still = np.repeat(video[-1:], 50, axis=0)  # clip 2: the last image of clip 1, static
    fast, fast_calls, plain, plain_calls = _encode_both_ways(pipe, [video, still], video_fps=25)
    assert fast.shape[0] == 2 and torch.equal(fast, plain)
    assert sum(plain_calls) == 32 and sum(fast_calls) == 2
    assert torch.equal(fast[1], fast[0, -1:].expand(16, -1))


def test_encode_clip_frames_rejects_a_frame_batch_of_the_wrong_rank():
    pipe = _pipeline()
    with pytest.raises(ValueError, match="pixel_values"):
        pipe.encode_clip_frames(torch.zeros(3, 224, 224))
