"""`KlingFoleyPipeline` used the way a diffusers user tries it: low-precision loading on CPU, the generic
`DiffusionPipeline.from_pretrained` entry point (local and Hub-cache folders), `prompt_embeds` / `sigmas` /
`timesteps` arguments, safetensors-only loading and a vocoder whose hop does not fit the mel."""

import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import DiffusionPipeline, FlowMatchHeunDiscreteScheduler, MMAudioVocoder
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

from foley_toolkit import KlingFoleyPipeline, VocosVocoder, tiny_vocos_config
from foley_toolkit.models.vocoder import vocoder_hop_length
from foley_toolkit.pipelines.kling_foley.testing import TINY_VOCODER_CONFIG

from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights, get_dummy_components, make_test_video


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("videos") / "short.mp4", duration=1.0, fps=25)


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("generator", generator(0))
    return pipe(**kwargs).audios


# ----------------------------------------------------------------------------------------------------------------
# Low precision on CPU
# ----------------------------------------------------------------------------------------------------------------


def rms_envelope_db(audio: np.ndarray, frame: int = 2048) -> np.ndarray:
    """Per-channel RMS level in dB of consecutive `frame`-sample frames (46 ms at 44.1 kHz)."""
    usable = audio.shape[-1] // frame * frame
    frames = audio[..., :usable].reshape(*audio.shape[:-1], -1, frame)
    return 20 * np.log10(np.sqrt((frames.astype(np.float64) ** 2).mean(-1)) + 1e-9)


# Tolerances of a half-precision run against float32. bf16 keeps 8 mantissa bits (unit round-off 2^-9 = 0.2 %);
# through the tiny pipeline's encoders, 2 flow steps, the VAE, Mono2Stereo and the vocoder the waveform measured
# 1.1 % relative L2 error (fp16: 0.15 %) and 0.04 dB on the RMS envelope. 3 % / 0.2 dB leave 3-5x headroom for
# other CPUs' kernels, while a real fault is far outside: the same fp32 pipeline with another noise seed already
# differs by 17 % / 0.66 dB (asserted below, so these bounds can fail), and lost conditions or silence by more.
HALF_REL_L2 = 0.03
HALF_ENVELOPE_DB = 0.2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_video_to_audio_on_cpu_matches_float32(pipe_dir, pipe, short_video, dtype):
    reference = run(pipe, video=short_video)
    half = KlingFoleyPipeline.from_pretrained(pipe_dir, dtype=dtype)
    half.set_progress_bar_config(disable=True)
    assert half.transformer.dtype == dtype and half.sync_encoder.dtype == dtype
    audio = run(half, video=short_video)

    assert audio.dtype == np.float32 and audio.shape == reference.shape
    assert np.isfinite(audio).all()
    peak_db = 20 * np.log10(np.abs(audio).max())
    assert peak_db > -20.0  # not silence: the tiny pipeline peaks around -10 dBFS
    relative = np.linalg.norm(audio - reference) / np.linalg.norm(reference)
    assert relative < HALF_REL_L2, relative
    assert np.abs(rms_envelope_db(audio) - rms_envelope_db(reference)).max() < HALF_ENVELOPE_DB

    # The bounds separate precision noise from a different result.
    other_seed = run(pipe, video=short_video, generator=generator(1))
    assert np.linalg.norm(other_seed - reference) / np.linalg.norm(reference) > HALF_REL_L2
    assert np.abs(rms_envelope_db(other_seed) - rms_envelope_db(reference)).max() > HALF_ENVELOPE_DB


# ----------------------------------------------------------------------------------------------------------------
# The generic entry point: DiffusionPipeline.from_pretrained
# ----------------------------------------------------------------------------------------------------------------


def assert_same_pipeline_audio(loaded, reference, video):
    """Same classes, bit-identical weights, and the same audio (within the reload tolerance: other buffers)."""
    assert type(loaded) is KlingFoleyPipeline
    assert {n: type(c) for n, c in loaded.components.items()} == {n: type(c) for n, c in reference.components.items()}
    for name, component in reference.components.items():
        if isinstance(component, torch.nn.Module):
            assert_same_weights(loaded.components[name], component)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(
        run(loaded, video=video, prompt="a door slams"),
        run(reference, video=video, prompt="a door slams"),
        atol=RELOAD_ATOL,
        rtol=RELOAD_RTOL,
    )


def test_saved_pipeline_carries_the_code_files_diffusers_resolves(tmp_path, pipe_dir, pipe, short_video):
    index = json.loads((pipe_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_kling_foley", "KlingFoleyPipeline"]
    assert (pipe_dir / "pipeline_kling_foley.py").read_text() == KlingFoleyPipeline.reexport_file_text(
        "foley_toolkit.pipelines.kling_foley.pipeline_kling_foley", "KlingFoleyPipeline"
    )
    ours = {name: entry for name, entry in index.items() if isinstance(entry, list) and entry[0].startswith("foley_")}
    # the vocoder too: foley_toolkit's MMAudioVocoder (diffusers' class with the fast anti-aliased forward)
    assert set(ours) == {"mono2stereo", "sync_encoder", "transformer", "vae", "vocoder"}
    for name, (module, class_name) in ours.items():
        text = (pipe_dir / name / f"{module}.py").read_text()
        assert text == KlingFoleyPipeline.reexport_file_text(module, class_name)
    # The check a Hub download makes (`DiffusionPipeline.download`): every component library is either one diffusers
    # knows or a code file in the repository.
    files = [p.relative_to(pipe_dir).as_posix() for p in pipe_dir.rglob("*") if p.is_file()]
    custom_components, _ = _get_custom_components_and_folders("someone/kling-foley-tiny", index, files)
    assert custom_components == {name: entry[0] for name, entry in ours.items()}

    # Folders written before the code files existed (`"_class_name": "KlingFoleyPipeline"`) still load.
    shutil.copytree(pipe_dir, tmp_path / "pipe", ignore=shutil.ignore_patterns("*.py"))
    index["_class_name"] = "KlingFoleyPipeline"
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    assert_same_pipeline_audio(KlingFoleyPipeline.from_pretrained(tmp_path / "pipe"), pipe, short_video)
    # ... and `write_code_files` upgrades them for the generic entry point.
    KlingFoleyPipeline.write_code_files(tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe").rglob("*.py")) == sorted(p.name for p in pipe_dir.rglob("*.py"))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert_same_pipeline_audio(loaded, pipe, short_video)


def test_diffusion_pipeline_from_pretrained_local_folder(pipe_dir, pipe, short_video):
    # diffusers runs a repository's pipeline file only when asked to; without the flag it says so.
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(pipe_dir)
    loaded = DiffusionPipeline.from_pretrained(pipe_dir, trust_remote_code=True)
    assert_same_pipeline_audio(loaded, pipe, short_video)


def make_hub_cache(cache_dir, repo_id: str, pipeline_dir) -> None:
    """Lay `pipeline_dir` out as the Hugging Face cache holds a downloaded snapshot of `repo_id`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(pipeline_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_from_pretrained_hub_id_from_the_offline_cache(tmp_path, pipe_dir, pipe, short_video, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    make_hub_cache(tmp_path, "someone/kling-foley-tiny", pipe_dir)
    loaded = DiffusionPipeline.from_pretrained("someone/kling-foley-tiny", cache_dir=tmp_path, trust_remote_code=True)
    assert_same_pipeline_audio(loaded, pipe, short_video)
    # The class's own entry point resolves the same snapshot (and trusts its unchanged pipeline file).
    assert_same_pipeline_audio(
        KlingFoleyPipeline.from_pretrained("someone/kling-foley-tiny", cache_dir=tmp_path), pipe, short_video
    )


@pytest.mark.parametrize(
    "code_file", ["pipeline_kling_foley.py", "transformer/foley_toolkit.models.transformers.transformer_foley_mmdit.py"]
)
def test_code_files_are_trusted_only_when_they_only_import_foley_toolkit(tmp_path, pipe_dir, code_file):
    shutil.copytree(pipe_dir, tmp_path / "pipe")
    path = tmp_path / "pipe" / code_file
    original = path.read_text()
    path.write_text("# reworded comment\n" + original)  # comments and layout do not matter
    assert type(KlingFoleyPipeline.from_pretrained(tmp_path / "pipe")) is KlingFoleyPipeline
    path.write_text(original + "print('arbitrary code')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        KlingFoleyPipeline.from_pretrained(tmp_path / "pipe")


# ----------------------------------------------------------------------------------------------------------------
# Safetensors by default
# ----------------------------------------------------------------------------------------------------------------


def test_pickle_only_transformer_is_refused_unless_opted_in(tmp_path, pipe_dir, pipe):
    folder = tmp_path / "pipe"
    shutil.copytree(pipe_dir, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(safetensors.torch.load_file(weights), folder / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()

    with pytest.raises(FileNotFoundError, match=r"`transformer`.*diffusion_pytorch_model\.bin.*use_safetensors=None"):
        KlingFoleyPipeline.from_pretrained(folder)
    loaded = KlingFoleyPipeline.from_pretrained(folder, use_safetensors=None)
    assert_same_weights(loaded.transformer, pipe.transformer)


# ----------------------------------------------------------------------------------------------------------------
# A vocoder must fit the mel hop
# ----------------------------------------------------------------------------------------------------------------


def test_vocoder_with_another_hop_is_refused_when_built_and_loaded(tmp_path, pipe_dir):
    wrong = MMAudioVocoder(**{**TINY_VOCODER_CONFIG, "upsample_rates": [32, 32], "upsample_kernel_sizes": [64, 64]})
    assert vocoder_hop_length(wrong) == 1024
    components = get_dummy_components()
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        KlingFoleyPipeline(**{**components, "vocoder": wrong})
    vocos = VocosVocoder(**{**tiny_vocos_config(), "hop_length": 1024})
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        KlingFoleyPipeline(**{**components, "vocoder": vocos})
    # A component swapped in after construction is refused before generating.
    pipe = KlingFoleyPipeline(**components)
    pipe.vocoder = wrong
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        pipe(prompt="a door slams", duration=0.5, num_inference_steps=1)

    folder = tmp_path / "pipe"
    shutil.copytree(pipe_dir, folder)
    shutil.rmtree(folder / "vocoder")
    wrong.save_pretrained(folder / "vocoder")
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        KlingFoleyPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


# ----------------------------------------------------------------------------------------------------------------
# prompt_embeds / negative_prompt_embeds, sigmas / timesteps
# ----------------------------------------------------------------------------------------------------------------


def test_prompt_embeds_give_the_same_audio_as_the_prompt(pipe, short_video):
    embeds, mask, negative, negative_mask = pipe.encode_prompt("a door slams", negative_prompt="music")
    with_text = run(pipe, video=short_video, prompt="a door slams", negative_prompt="music")
    with_embeds = run(
        pipe,
        video=short_video,
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask,
    )
    # The same modules on the same call path: exactly the same numbers.
    np.testing.assert_array_equal(with_embeds, with_text)
    # Text-to-audio, and a text prompt mixed with precomputed negative embeddings.
    np.testing.assert_array_equal(
        run(pipe, prompt_embeds=embeds, prompt_attention_mask=mask, duration=0.5),
        run(pipe, prompt="a door slams", duration=0.5),
    )
    np.testing.assert_array_equal(
        run(pipe, video=short_video, prompt="a door slams", negative_prompt_embeds=negative,
            negative_prompt_attention_mask=negative_mask),  # fmt: skip
        with_text,
    )
    # The embeddings are used: other embeddings, other audio.
    other, other_mask, _, _ = pipe.encode_prompt("rain on a tin roof", do_classifier_free_guidance=False)
    changed = run(pipe, video=short_video, prompt_embeds=other, prompt_attention_mask=other_mask,
                  negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)  # fmt: skip
    assert np.abs(changed - with_text).max() > 1e-3


def test_batch_one_prompt_embeds_are_shared_by_all_videos(pipe, short_video):
    embeds, mask, _, _ = pipe.encode_prompt("a door slams", do_classifier_free_guidance=False)
    videos = [short_video, short_video]
    shared = run(pipe, video=videos, prompt_embeds=embeds, prompt_attention_mask=mask, num_waveforms_per_prompt=2,
                 generator=[generator(i) for i in range(4)])  # fmt: skip
    repeated = run(pipe, video=videos, prompt_embeds=embeds.repeat(2, 1, 1), prompt_attention_mask=mask.repeat(2, 1),
                   num_waveforms_per_prompt=2, generator=[generator(i) for i in range(4)])  # fmt: skip
    assert shared.shape[0] == 4
    np.testing.assert_array_equal(shared, repeated)


def test_custom_sigmas_and_timesteps_equal_to_the_default_schedule(pipe, short_video):
    default = run(pipe, video=short_video, num_inference_steps=3)
    np.testing.assert_array_equal(run(pipe, video=short_video, sigmas=[1.0, 2 / 3, 1 / 3]), default)
    np.testing.assert_array_equal(run(pipe, video=short_video, sigmas=torch.tensor([1.0, 2 / 3, 1 / 3])), default)
    np.testing.assert_array_equal(run(pipe, video=short_video, timesteps=np.linspace(1000, 1000 / 3, 3)), default)
    # The count of sigmas sets the number of steps, and another schedule gives other audio.
    steps = []
    run(pipe, video=short_video, sigmas=[1.0, 0.9, 0.5, 0.2], callback_on_step_end=lambda p, i, t, kw: steps.append(
        float(t)) or {})  # fmt: skip
    assert steps == pytest.approx([1000.0, 900.0, 500.0, 200.0])
    other = run(pipe, video=short_video, sigmas=[1.0, 0.9, 0.1])
    assert np.abs(other - default).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": "x", "prompt_embeds": "EMB", "prompt_attention_mask": "MASK"}, "`prompt` or `prompt_embeds`"),
        ({"negative_prompt": "x", "negative_prompt_embeds": "EMB", "negative_prompt_attention_mask": "MASK"},
         "`negative_prompt` or `negative_prompt_embeds`"),  # fmt: skip
        ({"prompt_embeds": "EMB"}, "needs `prompt_attention_mask`"),
        ({"negative_prompt_embeds": "EMB"}, "needs `negative_prompt_attention_mask`"),
        ({"prompt_attention_mask": "MASK"}, "`prompt_attention_mask` was given without `prompt_embeds`"),
        ({"prompt_embeds": "EMB", "prompt_attention_mask": "SHORT_MASK"}, "`prompt_attention_mask` must have shape"),
        ({"prompt_embeds": "FLAT", "prompt_attention_mask": "MASK"}, r"`prompt_embeds` must be a tensor of shape"),
        ({"prompt_embeds": "NARROW", "prompt_attention_mask": "MASK"}, "`prompt_embeds` has 8 features per token"),
        ({"prompt_embeds": "EMB", "prompt_attention_mask": "MASK", "negative_prompt_embeds": "SHORT",
          "negative_prompt_attention_mask": "SHORT_MASK"}, "same number of tokens"),  # fmt: skip
        ({"prompt_embeds": "EMB3", "prompt_attention_mask": "MASK3", "video": ["V", "V"]},
         "`prompt_embeds` has batch size 3"),  # fmt: skip
        ({"sigmas": [1.0, 0.5], "timesteps": [1000, 500]}, "`sigmas` or `timesteps`, not both"),
        ({"sigmas": [0.5, 1.0]}, "`sigmas` must decrease strictly"),
        ({"sigmas": [1.5, 0.5]}, "`sigmas` must decrease strictly"),
        ({"sigmas": [1.0, float("nan")]}, "`sigmas` must be a non-empty 1-D sequence of finite numbers"),
        ({"sigmas": []}, "`sigmas` must be a non-empty"),
        ({"timesteps": [1000, 0]}, "`timesteps` must decrease strictly"),
        ({"sigmas": [1.0, 0.5], "scheduler": "HEUN"}, "`sigmas`: the scheduler FlowMatchHeunDiscreteScheduler"),
    ],
)
def test_bad_embeddings_and_schedules_raise_naming_the_argument(pipe, short_video, kwargs, match):
    embeds, mask, _, _ = pipe.encode_prompt("a door slams", do_classifier_free_guidance=False)
    values = {
        "EMB": embeds,
        "MASK": mask,
        "EMB3": embeds.repeat(3, 1, 1),
        "MASK3": mask.repeat(3, 1),
        "SHORT": embeds[:, :5],
        "SHORT_MASK": mask[:, :5],
        "FLAT": embeds[0],
        "NARROW": embeds[..., :8],
        "V": short_video,
    }
    kwargs = {k: ([values.get(x, x) for x in v] if isinstance(v, list) else values.get(v, v)) if isinstance(
        v, (str, list)) else v for k, v in kwargs.items()}  # fmt: skip
    kwargs.setdefault("video", short_video)
    target = pipe
    if kwargs.pop("scheduler", None) == "HEUN":
        target = KlingFoleyPipeline(**{**pipe.components, "scheduler": FlowMatchHeunDiscreteScheduler()})
    with pytest.raises(ValueError, match=match):
        run(target, **kwargs)
