"""Nothing is accepted and ignored: attention backends really choose the attention kernel (and raise where none
applies), LoRA reaches the MelVAE and the Mono2Stereo as well as the transformer (default target lists, pipeline file
round trip, unload, fuse), keys of unknown components raise, and `load_lora_adapter(directory)` reads the project's
safetensors LoRA file without `weight_name=`.

Tiny real components (tests/utils.py); every comparison states why it is exact or what tolerance it allows.
"""

import re

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from foley_toolkit import KlingFoleyPipeline

from test_transformer import make_inputs, make_model
from utils import RELOAD_ATOL, RELOAD_RTOL, get_dummy_components


COMPONENTS = ("transformer", "vae", "mono2stereo")


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-wide active backend: put it back for the other tests.
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def make_pipe(stereo: bool = True) -> KlingFoleyPipeline:
    pipe = KlingFoleyPipeline(**get_dummy_components(stereo=stereo))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, **kwargs):
    kwargs = {"prompt": "a door slams", "duration": 1.0, "num_inference_steps": 2, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).audios


# Fixed inputs of each component (what the pipeline feeds it), and its output.
LATENTS = torch.randn(1, 8, 20, generator=torch.Generator().manual_seed(1))
MONO_MEL = torch.randn(1, 128, 40, generator=torch.Generator().manual_seed(2)) * 2 - 5


@torch.no_grad()
def component_output(pipe, name: str) -> torch.Tensor:
    if name == "vae":
        return pipe.vae.decode(LATENTS).sample
    if name == "mono2stereo":
        width = pipe.mono2stereo.config.video_feature_dim
        video = torch.randn(1, 8, width, generator=torch.Generator().manual_seed(3))
        return torch.cat(pipe.mono2stereo(MONO_MEL, video_features=video, return_dict=False))
    return run_pipe(pipe, output_type="latent")


def add_random_lora(model, rank: int = 4):
    """The model's default LoRA with random A and B (peft's default B = 0 would be a no-op until trained)."""
    config = model.default_lora_config(rank=rank, init_lora_weights=False)
    model.add_adapter(config)
    return get_peft_model_state_dict(model), config.to_dict()


def save_lora_file(directory, names=COMPONENTS, seed: int = 7) -> dict[str, torch.Tensor]:
    """A LoRA on the components `names`, written by `KlingFoleyPipeline.save_lora_weights`; returns its layers."""
    torch.manual_seed(seed)
    components = get_dummy_components()
    kwargs, layers = {}, {}
    for name in names:
        layers[name], metadata = add_random_lora(components[name])
        kwargs[f"{name}_lora_layers"] = layers[name]
        kwargs[f"{name}_lora_adapter_metadata"] = metadata
    KlingFoleyPipeline.save_lora_weights(directory, **kwargs)
    return layers


# ----------------------------------------------------------------------------------------------------------------
# Attention backends
# ----------------------------------------------------------------------------------------------------------------


def counting(monkeypatch, backend: AttentionBackendName) -> list:
    """Wrap the registered function of `backend` so that each call is recorded (with its mask)."""
    calls = []
    original = _AttentionBackendRegistry._backends[backend]

    def wrapper(**kwargs):
        calls.append(kwargs.get("attn_mask"))
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, wrapper)
    return calls


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_set_attention_backend_routes_every_attention_layer(monkeypatch, backend):
    torch.manual_seed(0)
    model = make_model()
    inputs = make_inputs(batch_size=2, duration=1.0)
    inputs["encoder_attention_mask"] = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])  # padded text -> a mask
    with torch.no_grad():
        reference = model(**inputs).sample

    other = "_native_math" if backend == "native" else "native"
    calls = counting(monkeypatch, AttentionBackendName(backend))
    other_calls = counting(monkeypatch, AttentionBackendName(other))
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(other))  # the model's setting must win
    model.set_attention_backend(backend)
    with torch.no_grad():
        output = model(**inputs).sample

    num_attention_layers = model.config.num_joint_layers + model.config.num_single_layers
    assert len(calls) == num_attention_layers and other_calls == []
    # The joint blocks get the padded-text mask, the audio-only blocks none.
    assert sum(mask is not None for mask in calls) == model.config.num_joint_layers
    # Math kernel vs the default SDPA kernel: the same attention up to float32 summation order.
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)

    model.reset_attention_backend()
    for processor in model.attn_processors.values():
        assert processor._attention_backend is None


def test_attention_backend_context_manager_and_unknown_name(monkeypatch):
    from diffusers.models.attention_dispatch import attention_backend

    torch.manual_seed(0)
    model = make_model()
    inputs = make_inputs(batch_size=1, duration=1.0)
    calls = counting(monkeypatch, AttentionBackendName._NATIVE_MATH)
    with attention_backend("_native_math"), torch.no_grad():
        model(**inputs)
    assert len(calls) == model.config.num_joint_layers + model.config.num_single_layers

    with pytest.raises(ValueError, match="must be one of"):
        model.set_attention_backend("no_such_backend")


@pytest.mark.parametrize("name", ["vae", "mono2stereo"])
def test_attention_backend_on_a_model_without_attention_raises(name):
    model = get_dummy_components()[name]
    active = _AttentionBackendRegistry._active_backend
    with pytest.raises(ValueError, match="no attention layers"):
        model.set_attention_backend("_native_math")
    assert _AttentionBackendRegistry._active_backend == active  # nothing changed on the way to the error


# ----------------------------------------------------------------------------------------------------------------
# LoRA on the MelVAE and the Mono2Stereo
# ----------------------------------------------------------------------------------------------------------------


def test_default_lora_targets():
    components = get_dummy_components()
    vae, mono2stereo = components["vae"], components["mono2stereo"]
    vae.add_adapter(vae.default_lora_config(rank=2))
    mono2stereo.add_adapter(mono2stereo.default_lora_config(rank=2))

    wrapped_vae = sorted(name for name, module in vae.named_modules() if isinstance(module, LoraLayer))
    blocks = vae.config.layers_per_block
    expected_vae = ["decoder.conv_in", "decoder.conv_out"] + [
        f"decoder.{rate}.{i}.conv{j}" for rate in ("latent_rate_blocks", "mel_rate_blocks") for i in range(blocks)
        for j in (1, 2)
    ]
    assert wrapped_vae == sorted(expected_vae)  # decoder convs only: the encoder (latent space) stays as it is

    wrapped = sorted(name for name, module in mono2stereo.named_modules() if isinstance(module, LoraLayer))
    expected = ["mel_in", "ratio_out", "video_proj"] + [
        f"blocks.{i}.conv{j}" for i in range(mono2stereo.config.num_layers) for j in (1, 2)
    ]
    assert wrapped == sorted(expected)

    # The transformer's default is the audio attention projections of every block.
    transformer = make_model()
    transformer.add_adapter(transformer.default_lora_config(rank=2))
    wrapped = {name for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    assert {re.sub(r".*\.attn\.", "", name) for name in wrapped} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert len(wrapped) == 4 * (transformer.config.num_joint_layers + transformer.config.num_single_layers)


@pytest.mark.parametrize("name", ["vae", "mono2stereo"])
def test_component_lora_changes_output_round_trips_and_unloads_exactly(tmp_path, name):
    # The adapted output, on the module that was trained.
    torch.manual_seed(7)
    trained = make_pipe()
    base_trained = component_output(trained, name)
    layers, metadata = add_random_lora(getattr(trained, name))
    adapted = component_output(trained, name)
    assert (adapted - base_trained).abs().max() > 1e-2

    KlingFoleyPipeline.save_lora_weights(
        tmp_path, **{f"{name}_lora_layers": layers, f"{name}_lora_adapter_metadata": metadata}
    )
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(key.startswith(f"{name}.") for key in keys)

    pipe = make_pipe()
    base = component_output(pipe, name)
    pipe.load_lora_weights(tmp_path, adapter_name="style")
    assert pipe.get_list_adapters() == {name: ["style"]}
    # Same weights in other module objects: equal within the reload tolerance (tests/utils.py).
    torch.testing.assert_close(component_output(pipe, name), adapted, atol=RELOAD_ATOL, rtol=RELOAD_RTOL)

    pipe.set_adapters("style", adapter_weights=0.0)
    torch.testing.assert_close(component_output(pipe, name), base, atol=1e-6, rtol=0)
    pipe.set_adapters("style", adapter_weights=1.0)

    # Unloading restores the base module: same module objects, same call path -> exact.
    pipe.unload_lora_weights()
    assert not any(isinstance(module, LoraLayer) for module in getattr(pipe, name).modules())
    torch.testing.assert_close(component_output(pipe, name), base, atol=0, rtol=0)


def test_lora_on_all_components_reaches_the_audio_fuses_and_unloads(tmp_path):
    save_lora_file(tmp_path)
    pipe = make_pipe()
    base = run_pipe(pipe)
    pipe.load_lora_weights(tmp_path)
    # One name for the one LoRA in every component it reaches.
    assert pipe.get_list_adapters() == {name: ["default_0"] for name in COMPONENTS}
    with_lora = run_pipe(pipe)
    assert np.abs(with_lora - base).max() > 1e-3

    pipe.fuse_lora()  # default: every component that holds a LoRA
    for name in COMPONENTS:
        layers = [m for m in getattr(pipe, name).modules() if isinstance(m, LoraLayer)]
        assert layers and all(layer.merged for layer in layers), name
    torch.testing.assert_close(run_pipe(pipe), with_lora, atol=1e-4, rtol=1e-4)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    for name in COMPONENTS:
        assert not any(isinstance(m, LoraLayer) for m in getattr(pipe, name).modules())
    # Unmerging subtracts what merging added: the base weights come back within float32 round-off.
    np.testing.assert_allclose(run_pipe(pipe), base, atol=1e-5, rtol=0)

    # A second, transformer-only LoRA combines with the first through `set_adapters`.
    pipe.load_lora_weights(tmp_path, adapter_name="first")
    save_lora_file(tmp_path / "second", names=("transformer",), seed=8)
    pipe.load_lora_weights(tmp_path / "second")
    expected = {"transformer": ["first", "default_0"], "vae": ["first"], "mono2stereo": ["first"]}
    assert pipe.get_list_adapters() == expected
    pipe.set_adapters("first")
    np.testing.assert_allclose(run_pipe(pipe), with_lora, atol=1e-5, rtol=0)
    pipe.set_adapters(["first", "default_0"], adapter_weights=[1.0, 0.5])
    assert np.abs(run_pipe(pipe) - with_lora).max() > 1e-3


def test_unknown_or_absent_components_raise(tmp_path):
    layers = save_lora_file(tmp_path, names=("transformer",))
    pipe = make_pipe()
    state_dict = {f"transformer.{k}": v for k, v in layers["transformer"].items()}
    extra = {"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(4, 32)}
    with pytest.raises(ValueError, match=r"unknown components \['text_encoder'\]"):
        pipe.load_lora_weights({**state_dict, **extra})
    # Nothing was loaded on the way to the error.
    assert pipe.get_list_adapters() == {}

    mono = make_pipe(stereo=False)
    save_lora_file(tmp_path / "stereo", names=("mono2stereo",))
    with pytest.raises(ValueError, match=r"\['mono2stereo'\].*does not have"):
        mono.load_lora_weights(tmp_path / "stereo")

    with pytest.raises(ValueError, match="Nothing to save"):
        KlingFoleyPipeline.save_lora_weights(tmp_path / "empty")
    with pytest.raises(ValueError, match="`vae_lora_layers` is empty"):
        KlingFoleyPipeline.save_lora_weights(tmp_path / "empty", vae_lora_layers={})


# ----------------------------------------------------------------------------------------------------------------
# load_lora_adapter on a directory
# ----------------------------------------------------------------------------------------------------------------


def test_load_lora_adapter_reads_the_pipeline_file_without_weight_name(tmp_path):
    save_lora_file(tmp_path)
    # A stray pickle next to it is never read (it is not even a valid file).
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"not a pickle")

    by_pipeline = make_pipe()
    by_pipeline.load_lora_weights(tmp_path)
    by_model = make_pipe()
    by_model.transformer.load_lora_adapter(tmp_path)  # prefix defaults to "transformer"
    by_model.vae.load_lora_adapter(tmp_path)  # ... and to "vae"
    by_model.mono2stereo.load_lora_adapter(tmp_path, adapter_name="pan")
    assert by_model.get_list_adapters() == {
        "transformer": ["default_0"],
        "vae": ["default_0"],
        "mono2stereo": ["pan"],
    }
    # Same file, same weights, other module objects: within the reload tolerance.
    np.testing.assert_allclose(run_pipe(by_model), run_pipe(by_pipeline), atol=RELOAD_ATOL, rtol=RELOAD_RTOL)

    model = make_pipe().vae
    with pytest.raises(ValueError, match="no LoRA key of MelVAE starts with 'decoder.'"):
        model.load_lora_adapter(tmp_path, prefix="decoder")
    with pytest.raises(ValueError, match="safetensors files only"):
        model.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.bin")
    with pytest.raises(ValueError, match="safetensors files only"):
        model.load_lora_adapter(tmp_path, use_safetensors=False)
    assert getattr(model, "peft_config", {}) == {}


def test_save_lora_adapter_round_trip_with_prefix_none(tmp_path):
    components = get_dummy_components()
    vae = components["vae"]
    add_random_lora(vae)
    adapted = vae.decode(LATENTS).sample.detach()
    vae.save_lora_adapter(tmp_path)  # keys without a prefix

    fresh = get_dummy_components()["vae"]
    with pytest.raises(ValueError, match="prefix=None"):
        fresh.load_lora_adapter(tmp_path)
    fresh.load_lora_adapter(tmp_path, prefix=None)
    torch.testing.assert_close(fresh.decode(LATENTS).sample.detach(), adapted, atol=RELOAD_ATOL, rtol=RELOAD_RTOL)


def test_a_lora_that_fails_on_one_component_leaves_no_adapter(tmp_path):
    layers = save_lora_file(tmp_path, names=("transformer", "vae"))
    state_dict = {f"transformer.{k}": v for k, v in layers["transformer"].items()}
    # A VAE key of a layer the VAE does not have: the transformer part loads first, then the VAE part fails.
    state_dict["vae.decoder.no_such_layer.lora_A.weight"] = torch.zeros(4, 16, 3)
    state_dict["vae.decoder.no_such_layer.lora_B.weight"] = torch.zeros(16, 4, 1)
    pipe = make_pipe()
    base = component_output(pipe, "transformer")
    with pytest.raises(ValueError):
        pipe.load_lora_weights(state_dict, adapter_name="broken")
    assert "broken" not in getattr(pipe.transformer, "peft_config", {})
    torch.testing.assert_close(component_output(pipe, "transformer"), base, atol=0, rtol=0)
