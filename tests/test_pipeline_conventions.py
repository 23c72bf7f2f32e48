"""`KlingFoleyPipeline` used the way a diffusers user tries it (issue 12): low-precision loading on CPU, the generic
`DiffusionPipeline.from_pretrained` entry point (local and Hub-cache folders), `prompt_embeds` / `sigmas` /
`timesteps` arguments, safetensors-only loading and a vocoder whose hop does not fit the mel."""

import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import DiffusionPipeline, MMAudioVocoder

from foley_toolkit import KlingFoleyPipeline, VocosVocoder, tiny_vocos_config
from foley_toolkit.models.vocoder import vocoder_hop_length
from foley_toolkit.pipelines.kling_foley.testing import TINY_VOCODER_CONFIG

from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights, get_dummy_components, make_test_video


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("videos") / "short.mp4", duration=1.0, fps=25)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_pipeline")
    KlingFoleyPipeline(**get_dummy_components()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    pipe = KlingFoleyPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def test_saved_pipeline_names_its_class_the_diffusers_way(tmp_path, pipe_dir, pipe, short_video):
    index = json.loads((pipe_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_kling_foley", "KlingFoleyPipeline"]
    assert (pipe_dir / "pipeline_kling_foley.py").read_text() == KlingFoleyPipeline.PIPELINE_FILE_TEXT

    # Folders written before the pipeline file existed (`"_class_name": "KlingFoleyPipeline"`) still load.
    shutil.copytree(pipe_dir, tmp_path / "pipe")
    (tmp_path / "pipe" / "pipeline_kling_foley.py").unlink()
    index["_class_name"] = "KlingFoleyPipeline"
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    assert_same_pipeline_audio(KlingFoleyPipeline.from_pretrained(tmp_path / "pipe"), pipe, short_video)


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


def test_pipeline_file_is_trusted_only_when_it_is_this_packages(tmp_path, pipe_dir):
    shutil.copytree(pipe_dir, tmp_path / "pipe")
    (tmp_path / "pipe" / "pipeline_kling_foley.py").write_text(
        KlingFoleyPipeline.PIPELINE_FILE_TEXT + "print('arbitrary code')\n"
    )
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

    folder = tmp_path / "pipe"
    shutil.copytree(pipe_dir, folder)
    shutil.rmtree(folder / "vocoder")
    wrong.save_pretrained(folder / "vocoder")
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        KlingFoleyPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"`vocoder`.*1024.*512"):
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
