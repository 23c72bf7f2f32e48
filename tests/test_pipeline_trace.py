"""How one `pipe(video=...)` call travels through the package: each project module is entered at most twice, the
video is decoded once, and only the sync encoder cuts Synchformer segments."""

import os
import sys
from collections import defaultdict

import pytest
import torch

import foley_toolkit

from utils import make_test_video


PACKAGE_DIR = os.path.dirname(os.path.abspath(foley_toolkit.__file__))


def project_module(filename: str) -> str | None:
    """`foley_toolkit.x.y` for a file of the package, None for any other code (libraries, tests, `<string>`)."""
    path = os.path.abspath(filename)
    if not path.startswith(PACKAGE_DIR + os.sep) or not path.endswith(".py"):
        return None
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")]
    return relative.replace(os.sep, ".").removesuffix(".__init__")


class ModuleEntries:
    r"""
    Records, with `sys.setprofile`, the entries into each project module during a call.

    Definition: module M is *entered* when a function of M is called and the nearest project frame below it (its
    caller, looking through library frames such as `nn.Module.__call__`, `functools.partial` or diffusers' hooks)
    belongs to another module, or to no project module (the test). Calls repeated from the same caller line (a loop:
    one per denoising step, one per chunk) are the same entry; calls between functions of one module are not
    entries. So `entries[M]` is the number of distinct places from which control jumps into M.
    """

    def __init__(self):
        self.entries: dict[str, set] = defaultdict(set)
        self.calls: dict[str, int] = defaultdict(int)  # every call, by qualified function name

    def _profile(self, frame, event, arg):
        if event != "call":
            return
        module = project_module(frame.f_code.co_filename)
        if module is None:
            return
        self.calls[f"{module}.{frame.f_code.co_qualname}"] += 1
        caller = frame.f_back
        while caller is not None and project_module(caller.f_code.co_filename) is None:
            caller = caller.f_back
        caller_module = None if caller is None else project_module(caller.f_code.co_filename)
        if caller_module != module:
            place = caller if caller is not None else frame.f_back  # from outside the package: its direct caller
            site = None if place is None else (os.path.basename(place.f_code.co_filename), place.f_lineno)
            self.entries[module].add((caller_module, site))

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


@pytest.fixture(scope="module")
def one_second_video(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("trace") / "clip.mp4", duration=1.0, fps=25)


@pytest.fixture(scope="module")
def traced_call(pipe, one_second_video):
    with ModuleEntries() as trace:
        out = pipe(
            video=one_second_video,
            prompt="a door slams",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
        )
    return trace, out


def test_one_call_enters_each_module_at_most_twice_and_decodes_once(traced_call):
    trace, out = traced_call
    assert out.audios.shape == (1, 2, 44100) and float(abs(out.audios).max()) > 0
    counts = {module: len(sites) for module, sites in trace.entries.items()}
    # The modules a video-to-audio call runs through (the tracer saw them all).
    for module in (
        "foley_toolkit.pipelines.kling_foley.pipeline_kling_foley",
        "foley_toolkit.utils.video_io",
        "foley_toolkit.video_processor",
        "foley_toolkit.audio_utils",
        "foley_toolkit.schedulers.scheduling_kling_foley",
        "foley_toolkit.models.encoders.synchformer",
        "foley_toolkit.models.transformers.transformer_foley_mmdit",
        "foley_toolkit.models.autoencoders.autoencoder_mel_vae",
        "foley_toolkit.models.mono2stereo",
    ):
        assert counts.get(module, 0) >= 1, (module, counts)
    too_often = {
        module: sorted(map(str, trace.entries[module]))
        for module, n in counts.items()
        if n > 2
    }
    assert not too_often, too_often
    # The pipeline is entered once (from the caller) and never called back; the video processor from the pipeline
    # and, for its chunk-by-chunk normalisation, from the sync encoder.
    assert counts["foley_toolkit.pipelines.kling_foley.pipeline_kling_foley"] == 1
    assert {caller for caller, _ in trace.entries["foley_toolkit.video_processor"]} == {
        "foley_toolkit.pipelines.kling_foley.pipeline_kling_foley",
        "foley_toolkit.models.encoders.synchformer",
    }
    # The video is decoded once, for exactly the duration generated.
    assert trace.calls["foley_toolkit.utils.video_io.load_video"] == 1


def test_only_the_sync_encoder_cuts_segments(pipe, one_second_video, monkeypatch):
    """The pipeline hands the sync encoder the whole 25 fps track of the duration once; the encoder's segments are
    the windows of that track (16 frames, stride 8) after `FoleyVideoProcessor.preprocess_sync`."""
    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder

    forward_inputs, segments_seen = [], []
    original_forward, original_encode = SynchformerEncoder.forward, SynchformerEncoder.encode_segments

    def forward(self, frames, *args, **kwargs):
        forward_inputs.append(frames.clone())
        return original_forward(self, frames, *args, **kwargs)

    def encode_segments(self, segments):
        segments_seen.append(segments.clone())
        return original_encode(self, segments)

    monkeypatch.setattr(SynchformerEncoder, "forward", forward)
    monkeypatch.setattr(SynchformerEncoder, "encode_segments", encode_segments)
    pipe(video=one_second_video, duration=0.96, num_inference_steps=1, output_type="latent")
    assert len(forward_inputs) == 1
    track = forward_inputs[0]
    assert track.dtype == torch.uint8 and track.shape[:2] == (1, 24)  # 0.96 s at 25 fps, not yet windowed
    segments = torch.cat(segments_seen).transpose(1, 2)  # (segments, frames, 3, size, size)
    expected = pipe.video_processor.preprocess_sync(track[0])
    expected = torch.stack([expected[start : start + 16] for start in (0, 8)])  # (24 - 16) // 8 + 1 = 2 segments
    assert torch.equal(segments, expected)


def test_module_entries_counts_what_it_says():
    """The tracer itself: a jump from one module to another and back counts once per place, repeated calls from one
    line once, calls inside a module never."""
    from foley_toolkit import audio_utils
    from foley_toolkit.video_processor import fit_frames

    frames = torch.zeros(3, 1)
    with ModuleEntries() as trace:
        for _ in range(3):
            audio_utils.sequence_lengths(1.0)  # one line: one entry (it calls its own helpers: not entries)
        audio_utils.num_sync_segments(40)  # another line: a second entry
        fit_frames(frames, 5)
    assert {m: len(s) for m, s in trace.entries.items()} == {
        "foley_toolkit.audio_utils": 2,
        "foley_toolkit.video_processor": 1,
    }
    assert trace.calls["foley_toolkit.audio_utils.num_frames_at_rate"] == 6
