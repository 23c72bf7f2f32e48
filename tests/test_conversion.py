"""Converters of public checkpoints (`foley_toolkit.conversion`): equivalence with the original implementations
(PyPI `bigvgan`, `open-clip-torch`) on randomly initialised tiny models saved in the original formats, T5 round
trip, and the errors a bad checkpoint must raise."""

import importlib.util
import json
import sys
import types
from unittest import mock

import pytest
import torch

from foley_toolkit.cli import main as cli_main
from foley_toolkit.conversion import convert_bigvgan, convert_metaclip, convert_t5, licence_text
from foley_toolkit.conversion.t5 import T5_MAX_SEQUENCE_LENGTH

# ----------------------------------------------------------------------------------------------------------------
# BigVGAN
# ----------------------------------------------------------------------------------------------------------------

# Tiny BigVGAN-v2 with the real 44 kHz variant's settings (AMP block "1" hard-codes three dilations) and hop 512.
TINY_BIGVGAN_CONFIG = {
    "resblock": "1",
    "num_mels": 128,
    "upsample_rates": [8, 8, 8],
    "upsample_kernel_sizes": [16, 16, 16],
    "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "sampling_rate": 44100,
    "n_fft": 2048,
    "hop_size": 512,
    "win_size": 2048,
    "fmin": 0,
    "fmax": None,
}


def _reference_bigvgan(seed: int = 0):
    """A randomly initialised `bigvgan.BigVGAN` whose weight-norm magnitudes and Snake alpha/beta are random too
    (right after `weight_norm`, g == ||v||, and alpha/beta start at zero: a converter ignoring them would pass)."""
    bigvgan = pytest.importorskip("bigvgan")
    from bigvgan.env import AttrDict

    torch.manual_seed(seed)
    model = bigvgan.BigVGAN(AttrDict(dict(TINY_BIGVGAN_CONFIG)), use_cuda_kernel=False)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight_g"):  # a random factor in [0.5, 1.5) of the initial magnitude ||v||
                parameter.mul_(0.5 + torch.rand(parameter.shape, generator=generator))
            elif name.endswith((".alpha", ".beta")):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _parametrization_spelling(state_dict):
    """The same weights as `torch.nn.utils.parametrizations.weight_norm` stores them (g -> original0, v -> original1)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith("weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("spelling", ["weight_g", "parametrizations"])
def test_bigvgan_conversion_matches_reference(tmp_path, spelling):
    reference = _reference_bigvgan()
    state_dict = reference.state_dict()
    assert any(k.endswith("weight_g") for k in state_dict)
    if spelling == "parametrizations":
        state_dict = _parametrization_spelling(state_dict)
        assert any(k.endswith("parametrizations.weight.original0") for k in state_dict)
    folder = tmp_path / "bigvgan"
    folder.mkdir()
    torch.save({"generator": state_dict}, folder / "bigvgan_generator.pt")
    (folder / "config.json").write_text(json.dumps(TINY_BIGVGAN_CONFIG))

    converted = convert_bigvgan(str(folder), output_dir=str(tmp_path / "vocoder"))
    from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder

    loaded = MMAudioVocoder.from_pretrained(str(tmp_path / "vocoder")).eval()
    mel = torch.randn(2, 128, 12, generator=torch.Generator().manual_seed(3)) - 4.0
    with torch.no_grad():
        expected = reference(mel)
        got = loaded(mel).sample
        got_direct = converted(mel).sample
    assert got.shape == expected.shape == (2, 1, 12 * 512)
    # A real waveform, not clipped everywhere nor silent (clamping would hide differences).
    assert float(expected.abs().lt(0.99).float().mean()) > 0.9
    assert float(expected.std()) > 1e-3
    diff = float((got - expected).abs().max())
    print(f"BigVGAN ({spelling}) max |diff| = {diff:.3e}")
    assert diff < 1e-4
    assert torch.equal(got, got_direct)


def test_bigvgan_conversion_uses_weight_g(tmp_path):
    """Dropping the randomised magnitudes (g := ||v||) must change the output: the test above can fail."""
    reference = _reference_bigvgan()
    state_dict = reference.state_dict()
    for key in list(state_dict):
        if key.endswith("weight_g"):
            v = state_dict[key[: -len("weight_g")] + "weight_v"]
            state_dict[key] = torch.linalg.vector_norm(v.flatten(1), dim=1).view_as(state_dict[key])
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": state_dict}, path)
    converted = convert_bigvgan(str(path), config=TINY_BIGVGAN_CONFIG)
    mel = torch.randn(1, 128, 8, generator=torch.Generator().manual_seed(3)) - 4.0
    with torch.no_grad():
        assert float((converted(mel).sample - reference(mel)).abs().max()) > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# MetaCLIP (open_clip)
# ----------------------------------------------------------------------------------------------------------------


def _open_clip_transformer_module():
    """`open_clip.transformer` (the reference `VisionTransformer`). open_clip's package `__init__` and `utils` import
    torchvision, which has no CPU build on PyPI for this torch (its wheel needs libtorch_cuda); the vision tower uses
    none of it, so without torchvision the module is imported with the package `__init__` skipped and a stand-in
    for the one name `utils` takes from torchvision, both removed from `sys.modules` right after."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open-clip-torch is not installed (pip install foley-toolkit[test])")
    if importlib.util.find_spec("torchvision") is not None:
        import open_clip.transformer as module

        return module
    package = types.ModuleType("open_clip")
    package.__path__ = list(spec.submodule_search_locations)
    torchvision_misc = types.ModuleType("torchvision.ops.misc")
    torchvision_misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    stand_ins = {
        "open_clip": package,
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("torchvision.ops"),
        "torchvision.ops.misc": torchvision_misc,
    }
    with mock.patch.dict(sys.modules, stand_ins):
        module = importlib.import_module("open_clip.transformer")
    return module


TINY_CLIP = {
    "image_size": 32,
    "patch_size": 8,
    "width": 32,
    "layers": 2,
    "heads": 4,
    "mlp_ratio": 2.0,
    "output_dim": 16,
}


def _tiny_clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TINY_CLIP["width"],
        intermediate_size=int(TINY_CLIP["width"] * TINY_CLIP["mlp_ratio"]),
        num_hidden_layers=TINY_CLIP["layers"],
        num_attention_heads=TINY_CLIP["heads"],
        image_size=TINY_CLIP["image_size"],
        patch_size=TINY_CLIP["patch_size"],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=TINY_CLIP["output_dim"],
    )


def _reference_open_clip(seed: int = 0):
    """A tiny open_clip QuickGELU `VisionTransformer` with every tensor random (LayerNorms included)."""
    open_clip_transformer = _open_clip_transformer_module()
    torch.manual_seed(seed)
    model = open_clip_transformer.VisionTransformer(**TINY_CLIP, act_layer=open_clip_transformer.QuickGELU)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / max(parameter.shape[-1], 1) ** 0.5)
    return model.eval()


def _open_clip_checkpoint(reference, path, wrap: bool):
    """Saved like open_clip's training (`{"state_dict": {"module.visual.*", text tower...}}`) or as a bare CLIP."""
    state_dict = {f"visual.{k}": v for k, v in reference.state_dict().items()}
    state_dict["token_embedding.weight"] = torch.randn(10, 8)  # the text tower, not converted
    state_dict["logit_scale"] = torch.tensor(4.6)
    if wrap:
        state_dict = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 32}
    torch.save(state_dict, path)
    return path


@pytest.mark.parametrize("wrap", [True, False])
def test_metaclip_conversion_matches_open_clip(tmp_path, wrap):
    from transformers import CLIPVisionModelWithProjection

    reference = _reference_open_clip()
    path = _open_clip_checkpoint(reference, tmp_path / "metaclip.pt", wrap)
    convert_metaclip(str(path), output_dir=str(tmp_path / "vision"), config=_tiny_clip_vision_config())
    model = CLIPVisionModelWithProjection.from_pretrained(str(tmp_path / "vision")).eval()
    assert model.config.hidden_act == "quick_gelu"
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(images)
        got = model(pixel_values=images).image_embeds
    assert got.shape == expected.shape == (3, 16)
    assert float(expected.std()) > 0.1
    diff = float((got - expected).abs().max())
    print(f"MetaCLIP (wrapped={wrap}) image embeds max |diff| = {diff:.3e}")
    assert diff < 1e-4


def test_metaclip_conversion_needs_transposed_projection(tmp_path):
    """Converting with the untransposed projection (a square one, so shapes still fit) must differ: the
    equivalence test can fail."""
    from foley_toolkit.conversion.metaclip import convert_metaclip_state_dict

    reference = _reference_open_clip()
    config = _tiny_clip_vision_config()
    config.projection_dim = TINY_CLIP["width"]
    reference.proj = torch.nn.Parameter(torch.randn(TINY_CLIP["width"], TINY_CLIP["width"]) / 6)
    state_dict = {f"visual.{k}": v for k, v in reference.state_dict().items()}
    good = convert_metaclip_state_dict(state_dict, config)
    state_dict["visual.proj"] = state_dict["visual.proj"].t()
    bad = convert_metaclip_state_dict(state_dict, config)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(images)
        assert float((good(pixel_values=images).image_embeds - expected).abs().max()) < 1e-4
        assert float((bad(pixel_values=images).image_embeds - expected).abs().max()) > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# T5
# ----------------------------------------------------------------------------------------------------------------


def _tiny_t5_folder(path):
    """A full tiny T5 (encoder + decoder, as `google-t5/t5-base` ships) and the in-memory tokenizer, saved."""
    from transformers import T5ForConditionalGeneration

    from foley_toolkit.models.encoders.presets import build_tiny_t5_tokenizer, tiny_t5_config

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config()).eval()
    tokenizer = build_tiny_t5_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def test_t5_round_trip(tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    original, original_tokenizer = _tiny_t5_folder(tmp_path / "t5")
    convert_t5(str(tmp_path / "t5"), output_dir=str(tmp_path / "text"))
    model = T5EncoderModel.from_pretrained(str(tmp_path / "text")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "text"))
    assert tokenizer.model_max_length == T5_MAX_SEQUENCE_LENGTH
    assert not any(name.startswith("decoder.") for name in model.state_dict())

    captions = ["a dog barks loudly near a metal door", "rain falling on the street, thunder in the distance"]
    ids = tokenizer(captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    reference_ids = original_tokenizer(
        captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt"
    )
    assert torch.equal(ids.input_ids, reference_ids.input_ids)
    assert tokenizer.batch_decode(ids.input_ids, skip_special_tokens=True) == captions
    with torch.no_grad():
        expected = original.encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        got = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    assert float(expected.std()) > 0.01
    diff = float((got - expected).abs().max())
    print(f"T5 encoder max |diff| = {diff:.3e}")
    assert diff < 1e-6


def test_t5_max_length_is_the_pipelines():
    import inspect

    from foley_toolkit import KlingFoleyPipeline

    default = inspect.signature(KlingFoleyPipeline.__call__).parameters["max_sequence_length"].default
    assert T5_MAX_SEQUENCE_LENGTH == default == 128


# ----------------------------------------------------------------------------------------------------------------
# Errors: truncated, renamed key, changed shape, not a checkpoint
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bigvgan_state_dict():
    return _reference_bigvgan().state_dict()


def test_bigvgan_refuses_truncated_checkpoint(tmp_path, bigvgan_state_dict):
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": bigvgan_state_dict}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"bigvgan_generator\.pt.*could not be read as a checkpoint"):
        convert_bigvgan(str(path), config=TINY_BIGVGAN_CONFIG)


def test_bigvgan_refuses_renamed_key(tmp_path, bigvgan_state_dict):
    state_dict = dict(bigvgan_state_dict)
    state_dict["resblocks.0.activations.0.act.alfa"] = state_dict.pop("resblocks.0.activations.0.act.alpha")
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": state_dict}, path)
    with pytest.raises(
        ValueError,
        match=r"missing keys resblocks\.0\.activations\.0\.act\.alpha.*unexpected keys resblocks\.0\.activations\.0\.act\.alfa",
    ):
        convert_bigvgan(str(path), config=TINY_BIGVGAN_CONFIG)


def test_bigvgan_refuses_changed_shape_and_half_weight_norm(tmp_path, bigvgan_state_dict):
    state_dict = dict(bigvgan_state_dict)
    state_dict["conv_pre.bias"] = torch.zeros(17)
    torch.save({"generator": state_dict}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"wrong shapes conv_pre\.bias: checkpoint \(17,\) vs model \(16,\)"):
        convert_bigvgan(str(tmp_path / "a.pt"), config=TINY_BIGVGAN_CONFIG)
    state_dict = dict(bigvgan_state_dict)
    del state_dict["conv_post.weight_g"]
    torch.save({"generator": state_dict}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"conv_post\.weight_v.*has no magnitude"):
        convert_bigvgan(str(tmp_path / "b.pt"), config=TINY_BIGVGAN_CONFIG)


def test_bigvgan_refuses_unsupported_config(tmp_path, bigvgan_state_dict):
    torch.save({"generator": bigvgan_state_dict}, tmp_path / "g.pt")
    with pytest.raises(ValueError, match=r"`activation`='snake'"):
        convert_bigvgan(str(tmp_path / "g.pt"), config={**TINY_BIGVGAN_CONFIG, "activation": "snake"})
    with pytest.raises(ValueError, match=r"`sampling_rate`=24000"):
        convert_bigvgan(str(tmp_path / "g.pt"), config={**TINY_BIGVGAN_CONFIG, "sampling_rate": 24000})


def test_converters_refuse_non_checkpoint_and_pickled_objects(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.pt.*could not be read as a checkpoint"):
        convert_bigvgan(str(text), config=TINY_BIGVGAN_CONFIG)
    with pytest.raises(ValueError, match=r"notes\.pt.*could not be read as a checkpoint"):
        convert_metaclip(str(text), config=_tiny_clip_vision_config())
    # an object that needs arbitrary unpickling is refused, not executed
    torch.save({"generator": {"conv_pre.bias": torch.zeros(1)}, "extra": mock.sentinel.__class__}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt.*could not be read"):
        convert_bigvgan(str(tmp_path / "obj.pt"), config=TINY_BIGVGAN_CONFIG)
    with pytest.raises(FileNotFoundError, match=r"`checkpoint` .*missing\.pt"):
        convert_bigvgan(str(tmp_path / "missing.pt"))
    safetensors_file = tmp_path / "bad.safetensors"
    safetensors_file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"bad\.safetensors.*could not be read"):
        convert_metaclip(str(safetensors_file), config=_tiny_clip_vision_config())


def test_metaclip_refuses_renamed_key_and_changed_shape(tmp_path):
    reference = _reference_open_clip()
    state_dict = {f"visual.{k}": v for k, v in reference.state_dict().items()}
    renamed = dict(state_dict)
    renamed["visual.ln_pre.gamma"] = renamed.pop("visual.ln_pre.weight")
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"visual\.ln_pre\.gamma"):
        convert_metaclip(str(tmp_path / "renamed.pt"), config=_tiny_clip_vision_config())
    reshaped = dict(state_dict)
    reshaped["visual.positional_embedding"] = torch.zeros(10, TINY_CLIP["width"])
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(
        ValueError,
        match=r"position_embedding\.weight \(checkpoint `visual\.positional_embedding`\): checkpoint \(10, 32\) vs model \(17, 32\)",
    ):
        convert_metaclip(str(tmp_path / "reshaped.pt"), config=_tiny_clip_vision_config())
    del state_dict["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(state_dict, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys vision_model\.encoder\.layers\.1\.mlp\.fc1\.bias"):
        convert_metaclip(str(tmp_path / "missing.pt"), config=_tiny_clip_vision_config())


def test_t5_refuses_renamed_key_and_truncated_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny_t5_folder(tmp_path / "t5")
    weights = tmp_path / "t5" / "model.safetensors"
    state_dict = load_file(str(weights))
    state_dict["encoder.final_layer_norm.gain"] = state_dict.pop("encoder.final_layer_norm.weight")
    save_file(state_dict, str(weights), metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"missing keys encoder\.final_layer_norm\.weight.*unexpected keys encoder\.final_layer_norm\.gain",
    ):
        convert_t5(str(tmp_path / "t5"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"T5 checkpoint .* could not be loaded"):
        convert_t5(str(tmp_path / "t5"))
    with pytest.raises(FileNotFoundError, match=r"neither a folder nor a Hub repo id"):
        convert_t5(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def test_cli_convert_bigvgan_and_errors(tmp_path, capsys):
    from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder
    from utils import assert_cli_error

    reference = _reference_bigvgan()
    torch.save({"generator": reference.state_dict()}, tmp_path / "bigvgan_generator.pt")
    (tmp_path / "config.json").write_text(json.dumps(TINY_BIGVGAN_CONFIG))
    out = tmp_path / "vocoder"
    assert cli_main(["convert", "bigvgan", "--checkpoint", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MIT" in printed and "MMAudioVocoder" in printed
    vocoder = MMAudioVocoder.from_pretrained(str(out))
    assert vocoder.config.upsample_rates == [8, 8, 8]

    assert_cli_error(
        ["convert", "bigvgan", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "x"], r"none\.pt", capsys
    )
    assert_cli_error(["convert", "bigvgan", "--checkpoint", tmp_path, "--out", out], r"already exists", capsys)
    (tmp_path / "bad.pt").write_text("hello")
    assert_cli_error(
        ["convert", "metaclip", "--checkpoint", tmp_path / "bad.pt", "--out", tmp_path / "y"],
        r"could not be read",
        capsys,
    )


def test_metaclip_licence_is_flagged_non_commercial(capsys, tmp_path):
    reference = _reference_open_clip()
    path = _open_clip_checkpoint(reference, tmp_path / "m.pt", wrap=True)
    convert_metaclip(str(path), config=_tiny_clip_vision_config())
    assert "CC-BY-NC-4.0" in capsys.readouterr().out and "non-commercial" in licence_text("metaclip")


# ----------------------------------------------------------------------------------------------------------------
# Full-size configs (built on the meta device: nothing allocated, nothing downloaded)
# ----------------------------------------------------------------------------------------------------------------

# Public numbers: BigVGAN-v2 44 kHz 128-band 512x model card "122M parameters"; open_clip ViT-bigG-14 vision tower
# 1.84B; T5-Base 223M with the decoder, ~110M for the encoder with its shared embedding.
BIGVGAN_V2_44K_CONFIG = {
    **TINY_BIGVGAN_CONFIG,
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}


def test_full_size_bigvgan_conversion_matches_public_config(capsys):
    """Every key and shape of a full-size BigVGAN-v2 44 kHz 512x (the original class) maps onto the toolkit's
    full-size vocoder config."""
    bigvgan = pytest.importorskip("bigvgan")
    from bigvgan.env import AttrDict
    from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder

    from foley_toolkit.conversion.bigvgan import bigvgan_config_to_vocoder_config, fold_weight_norm
    from foley_toolkit.conversion.common import check_state_dict
    from foley_toolkit.models.vocoder import bigvgan_v2_44khz_128band_512x_config

    assert bigvgan_config_to_vocoder_config(BIGVGAN_V2_44K_CONFIG) == bigvgan_v2_44khz_128band_512x_config()
    with torch.device("meta"):
        reference = bigvgan.BigVGAN(AttrDict(dict(BIGVGAN_V2_44K_CONFIG)), use_cuda_kernel=False)
        vocoder = MMAudioVocoder(**bigvgan_v2_44khz_128band_512x_config())
    check_state_dict(fold_weight_norm(reference.state_dict()), vocoder, "full-size BigVGAN")
    count = sum(p.numel() for p in vocoder.parameters())
    reference_count = sum(p.numel() for n, p in reference.named_parameters() if not n.endswith("weight_g"))
    print(f"BigVGAN-v2 44k 512x as MMAudioVocoder: {count:,} parameters")
    assert count == reference_count and 121e6 < count < 123e6


def test_full_size_metaclip_conversion_matches_public_config():
    """open_clip's ViT-bigG-14 vision tower (width 1664, 48 layers, head width 104, mlp_ratio 4.9231, output 1280)
    maps key by key and shape by shape onto `metaclip_bigg_14_quickgelu_config()`."""
    from transformers import CLIPVisionModelWithProjection

    from foley_toolkit.conversion.common import check_state_dict
    from foley_toolkit.conversion.metaclip import map_metaclip_state_dict
    from foley_toolkit.models.encoders.presets import metaclip_bigg_14_quickgelu_config

    open_clip_transformer = _open_clip_transformer_module()
    with torch.device("meta"):
        reference = open_clip_transformer.VisionTransformer(
            image_size=224, patch_size=14, width=1664, layers=48, heads=1664 // 104, mlp_ratio=4.9231,
            output_dim=1280, act_layer=open_clip_transformer.QuickGELU,
        )  # fmt: skip
        model = CLIPVisionModelWithProjection(metaclip_bigg_14_quickgelu_config())
    converted, origin = map_metaclip_state_dict({f"visual.{k}": v for k, v in reference.state_dict().items()})
    check_state_dict(converted, model, "full-size MetaCLIP", origin=origin)
    count = sum(p.numel() for p in model.parameters())
    print(f"MetaCLIP ViT-bigG-14-quickgelu as CLIPVisionModelWithProjection: {count:,} parameters")
    assert count == sum(p.numel() for p in reference.parameters())
    assert 1.83e9 < count < 1.85e9


def test_full_size_t5_base_parameter_count():
    from foley_toolkit.models.encoders.presets import build_text_encoder

    model = build_text_encoder(device="meta")
    count = sum(p.numel() for p in model.parameters())
    print(f"T5-Base encoder as T5EncoderModel: {count:,} parameters")
    # 32,128 x 768 shared embedding + 12 layers of (4 x 768^2 attention + 2 x 768 x 3072 FF) + norms + rel. bias
    assert count == 32128 * 768 + 12 * (4 * 768 * 768 + 2 * 768 * 3072 + 2 * 768) + 768 + 32 * 12


def test_cli_convert_every_part(tmp_path, capsys):
    """Each `convert` choice reaches its converter and writes a folder its class loads."""
    from test_conversion_synchformer import _original_checkpoint, _tiny_reference
    from transformers import CLIPVisionModelWithProjection, T5EncoderModel

    from foley_toolkit.models.encoders.synchformer import SynchformerEncoder

    _open_clip_checkpoint(_reference_open_clip(), tmp_path / "metaclip.pt", wrap=True)
    _tiny_clip_vision_config().save_pretrained(tmp_path / "clip_config")
    assert (
        cli_main(
            [
                "convert",
                "metaclip",
                "--checkpoint",
                str(tmp_path / "metaclip.pt"),
                "--config",
                str(tmp_path / "clip_config"),
                "--out",
                str(tmp_path / "vision"),
            ]
        )
        == 0
    )
    assert (
        CLIPVisionModelWithProjection.from_pretrained(str(tmp_path / "vision")).config.hidden_size
        == TINY_CLIP["width"]
    )

    _tiny_t5_folder(tmp_path / "t5")
    assert cli_main(["convert", "t5", "--checkpoint", str(tmp_path / "t5"), "--out", str(tmp_path / "text")]) == 0
    assert T5EncoderModel.from_pretrained(str(tmp_path / "text")).config.d_model == 32

    torch.save(_original_checkpoint(_tiny_reference()), tmp_path / "sync.pt")
    assert (
        cli_main(
            ["convert", "synchformer", "--checkpoint", str(tmp_path / "sync.pt"), "--out", str(tmp_path / "sync")]
        )
        == 0
    )
    assert SynchformerEncoder.from_pretrained(str(tmp_path / "sync")).config.hidden_size == 32
    printed = capsys.readouterr().out
    assert "CC-BY-NC-4.0" in printed and "Apache-2.0" in printed

    from utils import assert_cli_error

    assert_cli_error(
        [
            "convert",
            "t5",
            "--checkpoint",
            tmp_path / "t5",
            "--config",
            tmp_path / "clip_config",
            "--out",
            tmp_path / "z",
        ],
        r"--config is only read by",
        capsys,
    )
