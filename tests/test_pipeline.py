"""KlingFoleyPipeline: save/load round trip, output lengths for any duration and frame rate, text/video/both,
batching, classifier-free guidance, schedulers, component overrides, callbacks, output types, mono/stereo, input
errors and LoRA. Tiny real components (tests/utils.py), 1-2 flow steps, tiny videos."""

import json
import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from foley_toolkit import KlingFoleyPipeline, KlingFoleyPipelineOutput

from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights, get_dummy_components, make_test_video


SAMPLE_RATE = 44100
DURATIONS = (1.7, 8.0, 12.3)
FRAME_RATES = (12, 24, 25, 29.97, 60)


def exact_video_duration(duration: float, fps: float) -> Fraction:
    """The duration `make_test_video` writes: round(duration * fps) frames at the (NTSC-exact) rate."""
    rate = Fraction(30000, 1001) if fps == 29.97 else Fraction(fps)
    return Fraction(round(duration * fps)) / rate


def expected_samples(duration) -> int:
    return int(round(float(duration) * SAMPLE_RATE))


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)



@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def short_video(video_dir):
    return make_test_video(video_dir / "short.mp4", duration=1.0, fps=25)


@pytest.fixture(scope="module")
def other_short_video(video_dir):
    # Same duration, different picture (portrait instead of landscape).
    return make_test_video(video_dir / "short_portrait.mp4", duration=1.0, fps=25, size=(48, 64))


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("generator", generator(0))
    return pipe(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_audio(tmp_path, short_video):
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    before = run(pipe, video=short_video, prompt="glass shatters").audios

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_kling_foley", "KlingFoleyPipeline"]  # diffusers' out-of-tree form
    assert index["transformer"] == [
        "foley_toolkit.models.transformers.transformer_foley_mmdit",
        "FoleyMMDiTTransformer",
    ]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]

    loaded = KlingFoleyPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert {name: type(c) for name, c in loaded.components.items()} == {
        name: type(c) for name, c in pipe.components.items()
    }
    after = run(loaded, video=short_video, prompt="glass shatters").audios
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert_same_weights(loaded.components[name], component)
    np.testing.assert_allclose(after, before, atol=RELOAD_ATOL, rtol=RELOAD_RTOL)


def test_from_pretrained_hub_id_goes_through_snapshot_download(pipe_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(repo_id)
        return str(pipe_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    pipe = KlingFoleyPipeline.from_pretrained("someone/kling-foley-tiny")
    assert calls == ["someone/kling-foley-tiny"]
    assert isinstance(pipe, KlingFoleyPipeline)


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        KlingFoleyPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        KlingFoleyPipeline.from_pretrained(tmp_path)


def test_from_pretrained_component_overrides(pipe_dir, short_video):
    heun = FlowMatchHeunDiscreteScheduler()
    pipe = KlingFoleyPipeline.from_pretrained(pipe_dir, scheduler=heun, mono2stereo=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler is heun
    assert pipe.mono2stereo is None
    audios = run(pipe, video=short_video, guidance_scale=1.0).audios
    assert audios.shape == (1, 1, SAMPLE_RATE)


# ----------------------------------------------------------------------------------------------------------------
# Lengths and channels for any duration and frame rate
# ----------------------------------------------------------------------------------------------------------------


# Full waveforms for one frame rate per duration; the log-mels (same path up to the vocoder, whose length is
# fixed at 512 samples per frame) for all 15 combinations.
WAVEFORM_COMBOS = {(1.7, 29.97), (8.0, 25), (12.3, 60)}


@pytest.mark.parametrize("fps", FRAME_RATES)
@pytest.mark.parametrize("duration", DURATIONS)
def test_output_length_and_channels(pipe, video_dir, duration, fps):
    path = make_test_video(video_dir / f"clip_{duration}s_{fps}fps.mp4", duration=duration, fps=fps)
    num_samples = expected_samples(exact_video_duration(duration, fps))
    if (duration, fps) in WAVEFORM_COMBOS:
        audios = run(pipe, video=path, num_inference_steps=1, guidance_scale=1.0).audios
        assert audios.shape == (1, 2, num_samples)
        assert audios.dtype == np.float32
        assert np.isfinite(audios).all() and np.abs(audios).max() <= 1.0
    else:
        mel = run(pipe, video=path, num_inference_steps=1, guidance_scale=1.0, output_type="mel").audios
        assert mel.shape == (1, 2, 128, math.ceil(num_samples / 512))


def test_duration_shortens_the_video(pipe, video_dir):
    path = make_test_video(video_dir / "shorten.mp4", duration=2.0, fps=30)
    audios = run(pipe, video=path, duration=1.3, num_inference_steps=1).audios
    assert audios.shape == (1, 2, expected_samples(1.3))


# ----------------------------------------------------------------------------------------------------------------
# Modalities, batching, guidance
# ----------------------------------------------------------------------------------------------------------------


def test_text_to_audio(pipe):
    audios = run(pipe, prompt="rain on a tin roof", duration=1.3).audios
    assert audios.shape == (1, 2, expected_samples(1.3))


def test_video_text_and_both_use_their_conditions(pipe, short_video, other_short_video):
    # Compared on latents, what the conditions act on (decoding is tested elsewhere).
    common = dict(output_type="latent")
    outputs = [
        run(pipe, video=short_video, **common).audios,
        run(pipe, video=short_video, prompt="a dog barks", **common).audios,
        run(pipe, video=short_video, prompt="an engine starts", **common).audios,
        run(pipe, video=other_short_video, prompt="a dog barks", **common).audios,
        run(pipe, prompt="a dog barks", duration=1.0, **common).audios,
    ]
    for output in outputs:
        assert tuple(output.shape) == (1, pipe.transformer.config.in_channels, math.ceil(SAMPLE_RATE / 1024))
    # Every condition reaches the audio: changing any one of them changes the result.
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert (outputs[i] - outputs[j]).abs().max() > 1e-6, (i, j)


def test_videos_of_different_durations_need_a_duration(pipe, video_dir, short_video):
    longer = make_test_video(video_dir / "longer.mp4", duration=1.2, fps=25)
    with pytest.raises(ValueError, match="different durations"):
        pipe(video=[short_video, longer], num_inference_steps=1)
    latents = run(pipe, video=[short_video, longer], duration=1.0, output_type="latent").audios
    assert tuple(latents.shape) == (2, pipe.transformer.config.in_channels, math.ceil(SAMPLE_RATE / 1024))
    with pytest.raises(FileNotFoundError, match=r"`video\[1\]`"):
        pipe(video=[short_video, video_dir / "missing.mp4"], num_inference_steps=1)


def test_very_short_clips(pipe, video_dir):
    # 3 frames: fewer than one CLIP frame (1/8 s) and one Synchformer segment (16 frames) -> padded, still works.
    tiny_clip = make_test_video(video_dir / "blink.mp4", duration=0.1, fps=30)
    assert run(pipe, video=tiny_clip, num_inference_steps=1).audios.shape == (1, 2, expected_samples(0.1))
    assert run(pipe, prompt="click", duration=0.01, num_inference_steps=1).audios.shape == (1, 2, 441)


def test_encode_helpers(pipe, short_video):
    clip, sync, duration = pipe.encode_video([short_video, short_video])
    lengths = {"clip_frames": 8, "sync_tokens": ((25 - 16) // 8 + 1) * 8}
    assert duration == pytest.approx(1.0)
    assert clip.shape == (2, lengths["clip_frames"], pipe.vision_encoder.config.projection_dim)
    assert sync.shape == (2, lengths["sync_tokens"], pipe.sync_encoder.config.hidden_size)
    torch.testing.assert_close(clip[0], clip[1])
    # Encoding in small chunks (bounded memory for long videos) gives the same features.
    pipe.vision_batch_size, pipe.sync_segment_batch_size = 3, 1
    try:
        chunked_clip, chunked_sync, _ = pipe.encode_video([short_video, short_video])
    finally:
        del pipe.vision_batch_size, pipe.sync_segment_batch_size
    torch.testing.assert_close(chunked_clip, clip)
    torch.testing.assert_close(chunked_sync, sync)

    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        ["a", "bb"], num_waveforms_per_prompt=2, do_classifier_free_guidance=True, negative_prompt="music"
    )
    assert embeds.shape == (4, 128, pipe.text_encoder.config.d_model) and mask.shape == (4, 128)
    assert negative.shape == embeds.shape and negative_mask.shape == mask.shape
    torch.testing.assert_close(embeds[0], embeds[1])
    # Padded positions are zero (so that nothing leaks past the mask).
    assert bool((embeds[mask == 0] == 0).all())


def test_batch_consistency(pipe, short_video, other_short_video):
    videos, prompts = [short_video, other_short_video], ["a dog barks", "glass shatters"]
    common = dict(output_type="mel")  # the vocoder after it is a plain conv net, batch-independent
    batched = run(pipe, video=videos, prompt=prompts, generator=[generator(0), generator(1)], **common).audios
    assert batched.shape == (2, 2, 128, math.ceil(SAMPLE_RATE / 512))
    for index in range(2):
        single = run(pipe, video=videos[index], prompt=prompts[index], generator=generator(index), **common).audios
        np.testing.assert_allclose(batched[index], single[0], atol=1e-4)


def test_num_waveforms_per_prompt_and_broadcasting(pipe, short_video):
    audios = run(pipe, video=short_video, prompt=["a", "b"], num_waveforms_per_prompt=2).audios
    assert audios.shape == (4, 2, SAMPLE_RATE)
    # Different noise per waveform.
    assert np.abs(audios[0] - audios[1]).max() > 1e-6


class ForwardSpy:
    """Records the batch size of every transformer forward."""

    def __init__(self, transformer, monkeypatch):
        self.batch_sizes = []
        original = transformer.forward

        def forward(hidden_states, *args, **kwargs):
            self.batch_sizes.append(hidden_states.shape[0])
            return original(hidden_states, *args, **kwargs)

        monkeypatch.setattr(transformer, "forward", forward)


def test_guidance_scale_one_halves_the_transformer_batch(pipe, short_video, monkeypatch):
    spy = ForwardSpy(pipe.transformer, monkeypatch)
    run(pipe, video=short_video, prompt=["a", "b"], guidance_scale=4.5, output_type="latent")
    assert spy.batch_sizes == [4, 4]  # [uncond, cond] in one call per step
    spy.batch_sizes.clear()
    run(pipe, video=short_video, prompt=["a", "b"], guidance_scale=1.0, output_type="latent")
    assert spy.batch_sizes == [2, 2]


def test_guidance_and_negative_prompt(pipe, short_video):
    kwargs = dict(video=short_video, prompt="a dog barks", output_type="latent")
    no_cfg = run(pipe, guidance_scale=1.0, **kwargs).audios
    cfg = run(pipe, guidance_scale=4.5, **kwargs).audios
    negative = run(pipe, guidance_scale=4.5, negative_prompt="music", **kwargs).audios
    no_cfg_negative = run(pipe, guidance_scale=1.0, negative_prompt="music", **kwargs).audios
    # Video-only with a negative prompt: the conditional half keeps the empty text, the unconditional one gets it.
    video_only = run(pipe, video=short_video, guidance_scale=4.5, output_type="latent").audios
    video_only_negative = run(pipe, video=short_video, negative_prompt="music", output_type="latent").audios
    assert np.abs(video_only_negative - video_only).max() > 1e-6
    assert np.abs(cfg - no_cfg).max() > 1e-6
    assert np.abs(negative - cfg).max() > 1e-6
    np.testing.assert_array_equal(no_cfg, no_cfg_negative)  # without guidance the negative prompt is unused


def test_guidance_is_the_cfg_combination(pipe, short_video):
    """With fixed noise and one Euler step (x0 = x1 - v), the guided result is uncond + s * (cond - uncond)."""
    noise = torch.randn(1, pipe.transformer.config.in_channels, 44, generator=generator(3))
    common = dict(video=short_video, prompt="a dog barks", num_inference_steps=1, output_type="latent")
    cond = run(pipe, latents=noise, guidance_scale=1.0, **common).audios
    guided = run(pipe, latents=noise, guidance_scale=3.0, **common).audios
    # Unconditional: every modality dropped = the transformer's empty embeddings (None inputs).
    sigmas = torch.ones(1)
    with torch.no_grad():
        velocity_uncond = pipe.transformer(noise, sigmas * 1000, seconds_total=torch.tensor([1.0])).sample
    uncond = noise - velocity_uncond
    np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Schedulers, callbacks, output types, mono
# ----------------------------------------------------------------------------------------------------------------


def test_scheduler_swap_to_heun(pipe, short_video, monkeypatch):
    original = pipe.scheduler
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(original.config)
    try:
        spy = ForwardSpy(pipe.transformer, monkeypatch)
        audios = run(pipe, video=short_video, num_inference_steps=2, guidance_scale=1.0).audios
    finally:
        pipe.scheduler = original
    assert isinstance(original, FlowMatchEulerDiscreteScheduler)
    assert len(spy.batch_sizes) == 3  # Heun: 2 evaluations per step, the last step is Euler
    assert audios.shape == (1, 2, SAMPLE_RATE) and np.isfinite(audios).all()


def test_default_schedule_is_uniform_euler(pipe):
    pipe._set_timesteps(20, torch.device("cpu"), latent_frames=345)
    expected = torch.linspace(1.0, 0.05, 20) * 1000
    torch.testing.assert_close(pipe.scheduler.timesteps, expected)


def test_callback_can_modify_latents(pipe, short_video):
    steps_seen = []

    def callback(pipeline, step, timestep, callback_kwargs):
        steps_seen.append(step)
        assert set(callback_kwargs) == {"latents", "velocity"}
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    output = run(
        pipe,
        video=short_video,
        num_inference_steps=3,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "velocity"],
    )
    assert steps_seen == [0, 1, 2]
    assert torch.count_nonzero(output.audios) == 0


def test_output_types(pipe, short_video):
    common = dict(video=short_video, prompt="steps on gravel")
    np_audio = run(pipe, output_type="np", **common)
    pt_audio = run(pipe, output_type="pt", **common)
    latent = run(pipe, output_type="latent", **common)
    mel = run(pipe, output_type="mel", **common)
    as_tuple = run(pipe, output_type="latent", return_dict=False, **common)

    assert isinstance(np_audio, KlingFoleyPipelineOutput) and np_audio.sample_rate == SAMPLE_RATE
    assert isinstance(np_audio.audios, np.ndarray) and np_audio.audios.shape == (1, 2, SAMPLE_RATE)
    assert isinstance(pt_audio.audios, torch.Tensor) and pt_audio.audios.dtype == torch.float32
    np.testing.assert_array_equal(pt_audio.audios.numpy(), np_audio.audios)
    assert tuple(latent.audios.shape) == (1, pipe.transformer.config.in_channels, math.ceil(SAMPLE_RATE / 1024))
    assert mel.audios.shape == (1, 2, 128, math.ceil(SAMPLE_RATE / 512))
    assert isinstance(as_tuple, tuple) and as_tuple[1] == SAMPLE_RATE
    torch.testing.assert_close(as_tuple[0], latent.audios)

    # The stages compose: latents -> decode_latents = "mel"; mel -> vocoder = "np".
    with torch.no_grad():
        mel_from_latent = pipe.decode_latents(latent.audios, pipe.encode_video(short_video)[0])
        np.testing.assert_allclose(mel.audios, mel_from_latent[..., : mel.audios.shape[-1]].numpy(), atol=1e-5)
        waveform = pipe.mel_to_waveform(mel_from_latent, SAMPLE_RATE)  # the untrimmed mel: same receptive field
    np.testing.assert_allclose(waveform.numpy(), np_audio.audios, atol=1e-5)


def test_output_has_no_dc_and_keeps_its_level(pipe, short_video, monkeypatch):
    from foley_toolkit.evaluation import audio_level

    common = dict(video=short_video, prompt="steps on gravel")
    clean = run(pipe, **common).audios

    # The shipped behaviour before DC removal: the vocoder's output as is.
    with monkeypatch.context() as patch:
        patch.setattr(pipe, "remove_dc", lambda waveform: waveform)
        raw = run(pipe, **common).audios

    # A vocoder with a constant bias (a DC offset 100x the demo's -0.0023, on every channel).
    def add_bias(module, args, output):
        output.sample = output.sample - 0.23
        return output

    handle = pipe.vocoder.register_forward_hook(add_bias)
    try:
        biased = run(pipe, **common).audios
    finally:
        handle.remove()
    assert np.abs(biased.mean(axis=-1)).max() < 1e-3 and np.abs(clean.mean(axis=-1)).max() < 1e-3
    # Removing the bias is linear and exact: the biased vocoder's output equals the unbiased one's.
    np.testing.assert_allclose(biased, clean, atol=1e-4)
    # Never rescaled: the loudness (K-weighted, blind to DC and < 38 Hz) of the raw vocoder output is kept.
    level_raw = audio_level(raw[0], SAMPLE_RATE)
    level_biased = audio_level(biased[0], SAMPLE_RATE)
    assert np.isfinite(level_raw["loudness_lufs"])
    assert level_biased["loudness_lufs"] == pytest.approx(level_raw["loudness_lufs"], abs=0.05)
    # What was removed is DC and sub-10 Hz drift, not sound: the raw output minus the returned one is smooth.
    removed = raw[0] - clean[0]
    assert np.abs(np.diff(removed, axis=-1)).max() < 5e-3 * np.abs(np.diff(raw[0], axis=-1)).max()


def test_remove_dc_follows_a_drifting_offset_and_keeps_the_sound(pipe):
    t = torch.arange(4 * SAMPLE_RATE, dtype=torch.float64) / SAMPLE_RATE
    tone = 0.1 * torch.sin(2 * math.pi * 1000 * t)
    # A constant bias plus a slow (0.5 Hz) drift: a single mean would leave the drift, +-0.05 per half second.
    drift = 0.3 + 0.05 * torch.sin(2 * math.pi * 0.5 * t)
    cleaned = pipe.remove_dc((tone + drift).float()[None, None])[0, 0].double()
    assert cleaned.dtype == torch.float64 and cleaned.shape == t.shape
    window_means = cleaned[SAMPLE_RATE // 4 : -SAMPLE_RATE // 4].reshape(-1, SAMPLE_RATE // 4).mean(dim=1)
    assert window_means.abs().max() < 1e-3
    # The 1 kHz tone is untouched (no gain change, no phase shift).
    torch.testing.assert_close(cleaned[SAMPLE_RATE:-SAMPLE_RATE], tone[SAMPLE_RATE:-SAMPLE_RATE], atol=2e-4, rtol=0)


def test_mono_without_mono2stereo(short_video):
    pipe = KlingFoleyPipeline(**get_dummy_components(stereo=False))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.mono2stereo is None
    audios = run(pipe, video=short_video, num_inference_steps=1).audios
    mel = run(pipe, video=short_video, num_inference_steps=1, output_type="mel").audios
    assert audios.shape == (1, 1, SAMPLE_RATE)
    assert mel.shape[:3] == (1, 1, 128)


def test_stereo_channels_differ(pipe, short_video):
    audios = run(pipe, video=short_video).audios
    assert np.abs(audios[:, 0] - audios[:, 1]).max() > 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Input errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(video_dir):
    import av

    not_a_video = video_dir / "notes.mp4"
    not_a_video.write_text("these are not the frames you are looking for")
    no_frames = video_dir / "empty.mp4"
    with av.open(str(no_frames), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # header only, not a single frame
    return {"not_a_video": not_a_video, "no_frames": no_frames}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "`video`, `prompt` or both"),
        ({"video": "/no/such/clip.mp4"}, FileNotFoundError, "`video`"),
        ({"video": "NOT_A_VIDEO"}, ValueError, "`video`"),
        ({"video": "NO_FRAMES"}, ValueError, "`video`"),
        ({"video": np.zeros((0, 48, 64, 3), np.uint8), "video_fps": 25}, ValueError, "`video`"),
        ({"prompt": "rain"}, ValueError, "`duration`"),
        ({"prompt": "rain", "duration": 0}, ValueError, "`duration`"),
        ({"prompt": "rain", "duration": -1.0}, ValueError, "`duration`"),
        ({"prompt": "rain", "duration": 601.0}, ValueError, "`duration`"),
        ({"video": "SHORT", "duration": 2.0}, ValueError, "`duration`"),
        ({"prompt": "rain", "duration": 1.0, "num_inference_steps": 0}, ValueError, "`num_inference_steps`"),
        ({"video": ["SHORT", "SHORT"], "prompt": ["a", "b", "c"]}, ValueError, "batch size"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"], "duration": 1.0}, ValueError, "`negative_prompt`"),
        ({"prompt": "rain", "duration": 1.0, "output_type": "wav"}, ValueError, "`output_type`"),
        ({"prompt": "rain", "duration": 1.0, "guidance_scale": float("nan")}, ValueError, "`guidance_scale`"),
        ({"prompt": "rain", "duration": 1.0, "guidance_scale": float("inf")}, ValueError, "`guidance_scale`"),
        ({"prompt": "rain", "duration": 1.0, "guidance_scale": "4.5"}, ValueError, "`guidance_scale`"),
        ({"prompt": "rain", "duration": 1.0, "num_waveforms_per_prompt": 0}, ValueError, "`num_waveforms_per_prompt`"),
        ({"prompt": "rain", "duration": 1.0, "generator": [torch.Generator()] * 2}, ValueError, "`generator`"),
        ({"prompt": "rain", "duration": 1.0, "latents": torch.zeros(1, 3, 5)}, ValueError, "`latents`"),
        (
            {"prompt": "rain", "duration": 1.0, "callback_on_step_end_tensor_inputs": ["noise"]},
            ValueError,
            "`callback_on_step_end_tensor_inputs`",
        ),
    ],
)
def test_bad_inputs_raise_naming_the_argument(pipe, bad_files, short_video, kwargs, error, match):
    placeholders = {"NOT_A_VIDEO": bad_files["not_a_video"], "NO_FRAMES": bad_files["no_frames"], "SHORT": short_video}

    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return str(placeholders[value]) if isinstance(value, str) and value in placeholders else value

    kwargs = {key: resolve(value) for key, value in kwargs.items()}
    with pytest.raises(error, match=match):
        pipe(num_inference_steps=kwargs.pop("num_inference_steps", 1), **kwargs)


def test_max_duration_is_a_class_attribute(pipe, monkeypatch):
    monkeypatch.setattr(KlingFoleyPipeline, "max_duration_seconds", 1.0)
    with pytest.raises(ValueError, match=r"\(0, 1.0\]"):
        pipe(prompt="rain", duration=1.5, num_inference_steps=1)


# ----------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = get_dummy_components()["transformer"]
    # Random A and B (peft's default B = 0 would make the adapter a no-op).
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    transformer.add_adapter(config)
    directory = tmp_path_factory.mktemp("lora")
    KlingFoleyPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return directory


def test_lora_load_changes_output_and_unload_restores_it(lora_dir):
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    assert os.path.isfile(lora_dir / "pytorch_lora_weights.safetensors")
    kwargs = dict(prompt="a door slams", duration=1.0)
    base = run(pipe, **kwargs).audios
    base_latents = run(pipe, output_type="latent", **kwargs).audios

    pipe.load_lora_weights(lora_dir, adapter_name="slam")
    assert pipe.get_active_adapters() == ["slam"]
    with_lora = run(pipe, **kwargs).audios
    assert np.abs(with_lora - base).max() > 1e-4

    pipe.set_adapters("slam", adapter_weights=0.0)
    torch.testing.assert_close(run(pipe, output_type="latent", **kwargs).audios, base_latents, atol=1e-5, rtol=1e-4)
    pipe.set_adapters("slam", adapter_weights=1.0)

    pipe.unload_lora_weights()
    np.testing.assert_array_equal(run(pipe, **kwargs).audios, base)


def test_lora_fuse_and_unfuse(lora_dir):
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a door slams", duration=1.0, output_type="latent")
    base = run(pipe, **kwargs).audios
    pipe.load_lora_weights(str(lora_dir / "pytorch_lora_weights.safetensors"))  # a file path works too
    with_lora = run(pipe, **kwargs).audios

    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    pipe.unload_lora_weights()  # the adapter layers go, the fused weights stay
    torch.testing.assert_close(run(pipe, **kwargs).audios, with_lora, atol=1e-5, rtol=1e-4)

    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(lora_dir)
    pipe.fuse_lora()
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    torch.testing.assert_close(run(pipe, **kwargs).audios, with_lora, atol=1e-5, rtol=1e-4)
    pipe.disable_lora()
    torch.testing.assert_close(run(pipe, **kwargs).audios, base, atol=1e-5, rtol=1e-4)


def test_lora_missing_file(tmp_path):
    pipe = KlingFoleyPipeline(**get_dummy_components())
    with pytest.raises(FileNotFoundError, match="`weight_name`"):
        pipe.load_lora_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="no LoRA directory"):
        pipe.load_lora_weights(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------------------------


def load_example(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_run_with_tiny_components(tmp_path, short_video):
    import av
    import soundfile as sf

    generate = load_example("generate")
    out = tmp_path / "foley.mp4"
    generate.main(generate.parse_args(["--tiny", "--video", str(short_video), "--steps", "1", "--out", str(out)]))
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]

    custom = load_example("custom_pipeline")
    out = tmp_path / "rain.wav"
    custom.main(custom.parse_args(["--tiny", "--steps", "2", "--duration", "0.5", "--out", str(out)]))
    assert sf.info(out).frames == round(0.5 * SAMPLE_RATE)

    video_parts = ("vision_encoder", "sync_encoder", "mono2stereo")
    pipe = custom.TextToFoleyPipeline(**{k: v for k, v in get_dummy_components().items() if k not in video_parts})
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "custom")
    reloaded = custom.TextToFoleyPipeline.from_pretrained(tmp_path / "custom")
    reloaded.set_progress_bar_config(disable=True)
    first = pipe("rain", 0.5, num_inference_steps=1, generator=generator(0))
    second = reloaded("rain", 0.5, num_inference_steps=1, generator=generator(0))
    torch.testing.assert_close(first, second)
