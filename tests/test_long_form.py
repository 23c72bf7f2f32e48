"""Long-form generation: window arithmetic, the log-mel cross-fade, chunked vocoding / DC removal with exact overlap,
the streaming writer, and the windowed pipeline and CLI on tiny models."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from training_fixtures import clip_data_dir, feature_dir, tiny_pipeline_dir  # noqa: F401  (fixtures)

from foley_toolkit.models.vocoder_vocos import VocosVocoder
from foley_toolkit.pipelines.kling_foley.long_form import (
    StreamingAudioWriter,
    WindowJoiner,
    equal_power_gains,
    log_domain_crossfade,
    plan_windows,
    vocoder_receptive_radius,
)
from foley_toolkit.utils.overlap import OverlapProcessor


# ---------------------------------------------------------------------------------------------------------------
# Window arithmetic
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, window, overlap, edge",
    [(101, 17, 5, 1), (100, 17, 5, 2), (18, 17, 3, 0), (1000, 431, 86, 23), (431 * 3 - 2 * 86, 431, 86, 23)],
)
def test_windows_cover_every_frame_with_full_length_windows(total, window, overlap, edge):
    plan = plan_windows(total, window, overlap, edge)
    assert plan.starts[0] == 0 and plan.window(plan.num_windows - 1)[1] == total
    covered = np.zeros(total, dtype=int)
    for k in range(plan.num_windows):
        start, end = plan.window(k)
        assert end - start == window  # every window has the trained length, the last one too
        covered[start:end] += 1
    assert covered.min() >= 1
    for k in range(1, plan.num_windows):
        start, end = plan.overlap(k)
        assert end - start >= overlap and plan.starts[k] > plan.starts[k - 1]
        fade_start, fade_end = plan.crossfade(k)
        assert fade_end - fade_start == end - start - 2 * edge >= 1
    # Windows advance by window - overlap frames until the last, which is moved back to end on the last frame.
    assert all(b - a == window - overlap for a, b in zip(plan.starts[:-2], plan.starts[1:-1]))


def test_a_clip_no_longer_than_a_window_is_one_window():
    assert plan_windows(17, 17, 5).starts == (0,)
    assert plan_windows(3, 17, 5).window(0) == (0, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        ((100, 17, 17), "overlap_frames"),
        ((100, 17, 0), "overlap_frames"),
        ((100, 17, 4, 2), "no frame to cross-fade"),
        ((0, 17, 5), "total_frames"),
        ((100, 1.5, 5), "window_frames"),
    ],
)
def test_plan_windows_rejects_bad_lengths(args, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(*args)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 40, 101])
def test_equal_power_gains_keep_the_power_constant(length):
    g_out, g_in = equal_power_gains(length)
    torch.testing.assert_close(g_out.square() + g_in.square(), torch.ones(length, dtype=torch.float64), rtol=0,
                               atol=1e-15)  # fmt: skip
    torch.testing.assert_close(g_in, g_out.flip(0), rtol=0, atol=1e-15)  # symmetric
    assert (torch.diff(g_in) > 0).all()  # a fade, not a dip
    assert g_in[0] < 0.5 * math.sin(math.pi / 2 / length) + 0.5 and g_in[-1] > 0.99 * math.cos(math.pi / 4 / length)


def test_log_domain_crossfade_is_a_power_weighted_geometric_mean():
    frames = 41  # odd: the middle frame has w_out = w_in = 1/2
    loud, quiet = torch.full((3, frames), 2.0, dtype=torch.float64), torch.full((3, frames), -4.0, dtype=torch.float64)
    joined = log_domain_crossfade(loud, quiet)
    g_out, _ = equal_power_gains(frames)
    expected = g_out.square() * 2.0 + (1 - g_out.square()) * -4.0  # log of P_out^w_out * P_in^w_in
    torch.testing.assert_close(joined[0], expected, rtol=0, atol=1e-12)
    assert joined[0, frames // 2].item() == pytest.approx(-1.0, abs=1e-12)
    # Equal inputs come out unchanged (no 3 dB bump of an amplitude cross-fade of correlated signals).
    same = torch.randn(2, frames, dtype=torch.float64)
    torch.testing.assert_close(log_domain_crossfade(same, same.clone()), same, rtol=0, atol=0)
    with pytest.raises(ValueError, match="same shape"):
        log_domain_crossfade(loud, quiet[:, 1:])


def test_a_last_window_that_adds_a_few_frames_fades_after_the_previous_crossfade():
    # 10.72 s at the demo's 6 s windows: the last window adds 9 frames, so moved back to end on the last frame it
    # starts before the end of the first cross-fade (203 + 23 < 236). Its cross-fade starts where that one ends.
    plan = plan_windows(462, 259, 65, 23)
    assert plan.starts == (0, 194, 203)
    assert plan.crossfade(1) == (217, 236) and plan.crossfade(2) == (236, 430)
    for total in range(260, 1400):  # every length: cross-fades in order, disjoint, non-empty, inside the overlap
        plan = plan_windows(total, 259, 65, 23)
        fades = [plan.crossfade(k) for k in range(1, plan.num_windows)]
        assert all(start < end for start, end in fades)
        assert all(a[1] <= b[0] for a, b in zip(fades, fades[1:]))
        assert all(plan.overlap(k)[0] <= fades[k - 1][0] for k in range(1, plan.num_windows))


@pytest.mark.parametrize(
    "total, window, overlap, edge", [(101, 17, 5, 1), (57, 20, 9, 3), (20, 20, 4, 1), (462, 259, 65, 23)]
)
def test_window_joiner_places_every_frame_exactly_once(total, window, overlap, edge):
    plan = plan_windows(total, window, overlap, edge)
    joiner, blocks = WindowJoiner(plan), []
    for k in range(plan.num_windows):
        start, end = plan.window(k)
        # Each window's "mel" holds the stream position of each of its frames (2 mel frames per latent frame): the
        # joined stream must read 0, 1, 2, ... — each position once, in order, whatever the cross-fade weights.
        blocks += joiner.push(k, torch.arange(2 * start, 2 * end, dtype=torch.float64).expand(2, 3, -1))
    blocks += joiner.finish()
    joined = torch.cat(blocks, dim=-1)
    torch.testing.assert_close(joined, torch.arange(2 * total, dtype=torch.float64).expand(2, 3, -1), rtol=0, atol=0)


def test_window_joiner_fades_only_inside_the_crossfade():
    plan = plan_windows(60, 24, 10, 2)
    joiner = WindowJoiner(plan)
    out = []
    for k in range(plan.num_windows):
        start, end = plan.window(k)
        out += joiner.push(k, torch.full((1, 2 * (end - start)), float(k)))
    joined = torch.cat(out + joiner.finish(), dim=-1)[0]
    for k in range(1, plan.num_windows):
        fade_start, fade_end = (2 * f for f in plan.crossfade(k))
        assert joined[fade_start - 1] == k - 1 and joined[fade_end] == k  # hard owners right outside the fade
        inside = joined[fade_start:fade_end]
        assert ((inside > k - 1) & (inside < k)).all() and (torch.diff(inside) > 0).all()
    with pytest.raises(ValueError, match="in order"):
        WindowJoiner(plan).push(1, torch.zeros(1, 48))


# ---------------------------------------------------------------------------------------------------------------
# Chunked vocoding and DC removal
# ---------------------------------------------------------------------------------------------------------------


def _tiny_vocos(num_layers=2, kernel_size=5):
    torch.manual_seed(0)
    vocoder = VocosVocoder(num_mels=128, dim=16, intermediate_dim=32, num_layers=num_layers, kernel_size=kernel_size)
    return vocoder.eval()


def _stream(processor, signal, block):
    outputs = []
    for piece in signal.split(block, dim=-1):
        outputs += processor.push(piece)
    return torch.cat(outputs + processor.finish(), dim=-1)


def test_vocoder_receptive_radius_is_the_smallest_exact_margin():
    vocoder = _tiny_vocos()
    radius = vocoder_receptive_radius(vocoder)
    # Convolutions: the input conv and one depthwise conv per layer, each kernel // 2 frames; the inverse STFT adds
    # the frames whose 2048-sample windows reach into a frame's 512 samples.
    assert radius == 2 * (1 + 2) + 2
    mel = torch.randn(2, 128, 203) * 0.5 - 5.0
    with torch.no_grad():
        whole = vocoder(mel).sample

        def vocode(m):
            return vocoder(m).sample

        exact = _stream(OverlapProcessor(vocode, 29, radius, scale=512), mel, 17)
        short = _stream(OverlapProcessor(vocode, 29, radius - 1, scale=512), mel, 17)
    assert exact.shape == whole.shape
    assert (exact - whole).abs().max() <= 1e-7  # float rounding of different call lengths
    # One frame less context is measurably off (about 1e-5 here: the outermost window taper): the radius is the least.
    assert (short - whole).abs().max() > 1e-6


def test_overlap_processor_holds_a_bounded_buffer():
    signal = torch.arange(10_000, dtype=torch.float64)
    processor = OverlapProcessor(lambda x: 2 * x, chunk=300, margin=50)
    out = _stream(processor, signal, 123)
    torch.testing.assert_close(out, 2 * signal, rtol=0, atol=0)
    assert processor.max_buffered <= 300 + 2 * 50 + 123


def test_chunked_dc_removal_equals_whole_clip_dc_removal(pipe):
    rate = pipe.sample_rate
    t = torch.arange(7 * rate, dtype=torch.float32) / rate
    # A bias that follows the content (louder passage -> larger offset) on top of audio-band tones.
    signal = torch.sin(2 * math.pi * 220 * t) * 0.3 + 0.05 + 0.02 * (t > 3.0) + 0.01 * torch.sin(2 * math.pi * 0.3 * t)
    signal = torch.stack([signal, 0.5 * signal]).unsqueeze(0)
    whole = pipe.remove_dc(signal)
    chunked = _stream(OverlapProcessor(pipe.remove_dc, 2 * rate, rate // 2), signal, 12_345)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # The offset was there, and is gone.
    assert chunked.mean(dim=-1).abs().max() < 0.01 * signal.mean(dim=-1).abs().min()


def test_streaming_writer_writes_blocks_in_order(tmp_path):
    path = tmp_path / "out.wav"
    blocks = [np.random.default_rng(i).uniform(-1.2, 1.2, size=(2, n)).astype(np.float32) for i, n in
              enumerate([5, 1000, 17])]  # fmt: skip
    with StreamingAudioWriter(path, 44_100, channels=2, subtype="FLOAT") as writer:
        for block in blocks:
            writer.write(block)
        with pytest.raises(ValueError, match=r"\(2, samples\)"):
            writer.write(np.zeros((1, 4), dtype=np.float32))
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 44_100 and writer.frames_written == 1022 and writer.max_block_samples == 1000
    np.testing.assert_array_equal(audio.T, np.clip(np.concatenate(blocks, axis=1), -1, 1))


# ---------------------------------------------------------------------------------------------------------------
# The windowed pipeline
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    from utils import make_test_video

    return make_test_video(tmp_path_factory.mktemp("long") / "clip.mp4", duration=3.3, fps=10)


def _call(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 1)
    return pipe(generator=torch.Generator().manual_seed(0), prompt="a knock", **kwargs).audios


def test_windowed_and_unwindowed_outputs_have_the_same_length(pipe, long_video, monkeypatch):
    from foley_toolkit.pipelines.kling_foley import long_form

    calls = []
    original = long_form.generate_long_form
    monkeypatch.setattr(long_form, "generate_long_form", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    for output_type in ("np", "mel", "latent"):
        whole = _call(pipe, video=long_video, output_type=output_type, window_seconds=None)
        windowed = _call(pipe, video=long_video, output_type=output_type, window_seconds=1.0)
        assert windowed.shape == whole.shape, output_type
        assert np.isfinite(windowed).all() and not np.allclose(windowed, whole, atol=1e-4)  # really windowed
    assert len(calls) == 3 and all(plan.num_windows == 4 for plan in calls)  # 3.3 s in 1 s windows, 1/4 s overlap
    # Text-to-audio at an odd length, two waveforms per prompt.
    whole = _call(pipe, duration=2.71, window_seconds=None, num_waveforms_per_prompt=2)
    windowed = _call(pipe, duration=2.71, window_seconds=0.8, num_waveforms_per_prompt=2)
    assert windowed.shape == whole.shape == (2, 2, round(2.71 * 44_100))
    assert np.abs(windowed).max() > 1e-3  # not silence


def test_a_clip_one_window_long_gives_the_same_audio_both_ways(pipe, long_video):
    windowed = _call(pipe, video=long_video, duration=1.5, window_seconds=1.5)
    whole = _call(pipe, video=long_video, duration=1.5, window_seconds=None)
    np.testing.assert_array_equal(windowed, whole)


def test_streamed_blocks_are_the_returned_audio(pipe, long_video):
    for output_type in ("mel", "np"):
        blocks = []
        kwargs = {"video": long_video, "num_inference_steps": 1, "window_seconds": 1.0, "output_type": output_type}
        output = pipe(**kwargs, callback_on_output_block=blocks.append, generator=torch.Generator().manual_seed(0))
        returned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).audios
        assert output.audios is None and len(blocks) >= (2 if output_type == "mel" else 1)  # mel: one per join
        np.testing.assert_array_equal(np.concatenate(blocks, axis=-1), returned)


def test_step_callback_counts_steps_over_all_windows(pipe, long_video):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append((step, p.num_timesteps))
        return {}

    _call(pipe, video=long_video, window_seconds=1.0, callback_on_step_end=callback, num_inference_steps=2)
    assert [s for s, _ in seen] == list(range(4 * 2)) and {n for _, n in seen} == {4 * 2}  # 4 windows x 2 steps


@pytest.mark.parametrize("value", [0, -1.0, "long", float("nan"), True])
def test_bad_window_seconds_is_named(pipe, value):
    with pytest.raises(ValueError, match="window_seconds"):
        pipe(prompt="rain", duration=1.0, num_inference_steps=1, window_seconds=value)


@pytest.mark.parametrize("extension", [".wav", ".mp4"])
def test_cli_streams_a_90_second_video_in_bounded_blocks(pipe_dir, tmp_path, monkeypatch, extension):
    """90 s through `foley-toolkit generate` with 6 s windows: the audio reaches the file (a .wav, or muxed into the
    .mp4 next to the video's copied packets) in blocks of at most a few seconds, the video is decoded a window at a
    time, and the file has exactly the video's length."""
    import av
    from utils import make_test_video

    from foley_toolkit.audio_utils import load_audio
    from foley_toolkit.cli import main
    from foley_toolkit.pipelines.kling_foley import long_form
    from foley_toolkit.utils.video_io import VideoAudioMuxer

    video = make_test_video(tmp_path / "long.mp4", duration=90.0, fps=4, size=(32, 32))
    writes, decoded, muxers = [], [], []
    writer_class = long_form.StreamingAudioWriter if extension == ".wav" else VideoAudioMuxer
    original_write, original_load = writer_class.write, long_form.load_video

    def write(writer, block):
        writes.append(block.shape[-1])
        muxers.append(writer)
        original_write(writer, block)

    def load_video(video, **kwargs):
        decoded.append(kwargs["max_duration"])
        return original_load(video, **kwargs)

    monkeypatch.setattr(writer_class, "write", write)
    monkeypatch.setattr(long_form, "load_video", load_video)
    out = tmp_path / f"long{extension}"
    code = main(["generate", "--model", str(pipe_dir), "--video", video, "--steps", "1", "--guidance", "1",
                 "--window-seconds", "6", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert len(writes) >= 15 and max(writes) <= 5 * 44_100  # DC-removal chunks of 5 s: never the whole 90 s
    # One window of video at a time (a window is a whole number of latent frames: 6 s rounded up to 1024 samples).
    assert len(decoded) >= 90 / 6 and max(decoded) <= 6.0 + 1024 / 44_100
    if extension == ".wav":
        info = sf.info(str(out))
        assert info.frames == 90 * 44_100 and info.channels == 2
        audio, _ = sf.read(str(out), dtype="float32")
        audio = audio.T
    else:
        # Between blocks the muxer held under a second of audio; the video's packets are copied as they are.
        assert muxers[0].max_pending_samples < 44_100 and muxers[0].samples_written == 90 * 44_100
        with av.open(video) as source, av.open(str(out)) as result:
            assert [bytes(p) for p in source.demux(video=0) if p.size] == [
                bytes(p) for p in result.demux(video=0) if p.size
            ]
        audio = load_audio(str(out), sample_rate=44_100, mono=False)
        assert audio.shape[0] == 2 and abs(audio.shape[1] - 90 * 44_100) <= 2 * 1024  # AAC priming / padding
    assert np.abs(audio).max() > 1e-3 and np.abs(audio.mean(axis=1)).max() < 1e-3  # sound, no DC offset


def test_denoise_holds_the_known_prefix_at_every_noise_level(pipe, monkeypatch):
    """Latent-prefix inpainting: at every step the transformer sees the known frames re-noised to that step's sigma
    with the window's own noise, `(1 - sigma) * known + sigma * noise`; the other frames follow the model."""
    pipe._guidance_scale, pipe._attention_kwargs, pipe._interrupt = 1.0, None, False
    frames, overlap, channels = 20, 6, pipe.transformer.config.in_channels
    conditions = pipe.prepare_transformer_conditions(
        frames, 1, frames * 1024 / 44_100, None, None, None, None, None, None, False, torch.device("cpu"), torch.float32
    )
    timesteps = pipe._set_timesteps(4, torch.device("cpu"), frames)
    noise, known = torch.randn(1, channels, frames), torch.randn(1, channels, overlap)
    seen, forward = [], pipe.transformer.forward

    def recording_forward(hidden_states, timestep, **kwargs):
        seen.append((hidden_states.clone(), float(timestep[0])))
        return forward(hidden_states, timestep, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", recording_forward)
    pipe.denoise(noise.clone(), conditions, timesteps, known=known)
    assert [t for _, t in seen] == [float(t) for t in timesteps] and len(seen) == 4
    for inputs, t in seen:
        sigma = t / pipe.scheduler.config.num_train_timesteps
        torch.testing.assert_close(inputs[..., :overlap], (1 - sigma) * known + sigma * noise[..., :overlap])
    assert (seen[-1][0][..., overlap:] - noise[..., overlap:]).abs().max() > 1e-3  # the rest moved with the model


# ---------------------------------------------------------------------------------------------------------------
# trained_seconds: recorded by training, read by window_seconds="auto"
# ---------------------------------------------------------------------------------------------------------------


def test_trained_seconds_is_saved_and_old_configs_load_as_none(tmp_path):
    import json

    from foley_toolkit.models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer
    from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components

    transformer = get_dummy_components()["transformer"]
    assert transformer.config.trained_seconds is None
    transformer.register_to_config(trained_seconds=7.5)
    transformer.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["trained_seconds"] == 7.5
    assert FoleyMMDiTTransformer.from_pretrained(tmp_path / "new").config.trained_seconds == 7.5
    # A config written before the argument existed.
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    del config["trained_seconds"]
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    assert FoleyMMDiTTransformer.from_pretrained(tmp_path / "new").config.trained_seconds is None


def test_train_transformer_records_the_longest_clip_and_auto_windows_follow_it(
    tmp_path, pipe, tiny_pipeline_dir, feature_dir, monkeypatch
):
    import json

    import train_transformer
    from training_fixtures import reset_accelerate_state

    from foley_toolkit import KlingFoleyPipeline
    from foley_toolkit.pipelines.kling_foley import long_form

    entries = [json.loads(line) for line in (feature_dir / "index.jsonl").read_text().splitlines() if line.strip()]
    longest = max(entry["duration"] for entry in entries)
    assert 1.0 < longest < pipe.default_window_seconds  # the cached segments (1.5 s), not the 10 s default
    output = tmp_path / "run"
    argv = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--feature_dir", feature_dir, "--output_dir", output,
            "--train_batch_size", 2, "--max_train_steps", 1, "--use_ema"]  # fmt: skip
    reset_accelerate_state()
    try:
        train_transformer.main(train_transformer.parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate_state()
    for folder in ("transformer", "transformer_ema", "pipeline/transformer"):
        assert json.loads((output / folder / "config.json").read_text())["trained_seconds"] == longest, folder

    trained = KlingFoleyPipeline.from_pretrained(output / "pipeline")
    trained.set_progress_bar_config(disable=True)
    plans = []
    original = long_form.plan_for_duration
    monkeypatch.setattr(long_form, "plan_for_duration", lambda *a: plans.append(a[2]) or original(*a))
    kwargs = {"prompt": "a knock", "duration": 2.5 * longest, "num_inference_steps": 1, "window_seconds": "auto"}
    audio = trained(**kwargs, generator=torch.Generator().manual_seed(0)).audios
    assert plans == [longest] and audio.shape[-1] == round(2.5 * longest * 44_100)
    # Without a recorded length (an older config) "auto" is the 10 s default: the same call is one pass.
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    assert plans == [longest]
