"""`foley-toolkit assemble` / `assemble_pipeline` / `KlingFoleyPipeline.from_components`: a pipeline from tiny
parts converted from the original formats (BigVGAN, open_clip MetaCLIP, Synchformer training checkpoint, T5) plus a
trained-size transformer and MelVAE, loaded back with `from_pretrained` and run."""

import numpy as np
import pytest
import torch
from test_conversion import (
    TINY_BIGVGAN_CONFIG,
    _open_clip_checkpoint,
    _reference_bigvgan,
    _reference_open_clip,
    _tiny_clip_vision_config,
    _tiny_t5_folder,
)
from test_conversion_synchformer import _original_checkpoint, _tiny_reference
from utils import assert_cli_error, make_test_video

from foley_toolkit import FoleyMMDiTTransformer, KlingFoleyPipeline, MelVAE
from foley_toolkit.cli import main as cli_main
from foley_toolkit.conversion import (
    convert_bigvgan,
    convert_metaclip,
    convert_synchformer,
    convert_t5,
    transformer_config_for_components,
)
from foley_toolkit.pipelines.kling_foley.testing import _randomize_zero_parameters

SAMPLE_RATE = 44100


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Converted tiny parts and a trained-size (tiny) transformer + MelVAE whose widths fit them."""
    root = tmp_path_factory.mktemp("parts")
    torch.save({"generator": _reference_bigvgan().state_dict()}, root / "bigvgan_generator.pt")
    vocoder = convert_bigvgan(str(root / "bigvgan_generator.pt"), str(root / "vocoder"), config=TINY_BIGVGAN_CONFIG)
    _open_clip_checkpoint(_reference_open_clip(), root / "metaclip.pt", wrap=True)
    vision = convert_metaclip(str(root / "metaclip.pt"), str(root / "vision"), config=_tiny_clip_vision_config())
    torch.save(_original_checkpoint(_tiny_reference()), root / "synchformer.pt")
    sync = convert_synchformer(str(root / "synchformer.pt"), str(root / "sync"))
    _tiny_t5_folder(root / "t5")
    text, _ = convert_t5(str(root / "t5"), str(root / "text"))

    torch.manual_seed(0)
    vae = MelVAE(latent_channels=8, block_out_channels=(16, 16), layers_per_block=1, kernel_size=3)
    transformer = FoleyMMDiTTransformer(
        in_channels=8,
        text_dim=text.config.d_model,
        clip_dim=vision.config.projection_dim,
        sync_dim=sync.config.hidden_size,
        num_attention_heads=2,
        attention_head_dim=8,
        num_joint_layers=1,
        num_single_layers=1,
        mlp_ratio=1.0,
        timestep_embedding_dim=16,
        max_seconds=32,
    )
    _randomize_zero_parameters(transformer, torch.Generator().manual_seed(1))  # a trained net is not adaLN-zero
    vae.save_pretrained(root / "vae")
    transformer.save_pretrained(root / "transformer")
    assert vocoder.config.num_mels == 128
    return root


def _part_args(root):
    return [
        "--vocoder", root / "vocoder",
        "--sync-encoder", root / "sync",
        "--vision-encoder", root / "vision",
        "--text-encoder", root / "text",
    ]  # fmt: skip


def test_assemble_cli_builds_a_loadable_pipeline_that_generates(parts, tmp_path, capsys):
    out = tmp_path / "pipeline"
    argv = [
        "assemble",
        *_part_args(parts),
        "--transformer",
        parts / "transformer",
        "--vae",
        parts / "vae",
        "--out",
        out,
    ]
    assert cli_main([str(a) for a in argv]) == 0
    assert "Wrote the pipeline" in capsys.readouterr().out

    card = (out / "README.md").read_text()
    assert "CC-BY-NC-4.0" in card and "MetaCLIP" in card  # the vision encoder's non-commercial licence is stated
    assert "BigVGAN" in card and str(parts / "transformer") in card
    pipe = KlingFoleyPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    # the converted parts arrive unchanged
    converted_vocoder = type(pipe.vocoder).from_pretrained(str(parts / "vocoder"))
    for (name, a), b in zip(pipe.vocoder.state_dict().items(), converted_vocoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert pipe.tokenizer.model_max_length == 128
    assert pipe.mono2stereo is not None  # a new one by default

    video = make_test_video(tmp_path / "clip.mp4", duration=1.0, fps=25, size=(64, 48))
    audio = pipe(
        video=video, prompt="a dog barks", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).audios
    assert audio.shape == (1, 2, SAMPLE_RATE)
    assert np.isfinite(audio).all()
    peak_dbfs = 20 * np.log10(np.abs(audio).max() + 1e-12)
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)) + 1e-12)
    print(
        f"assembled pipeline audio: peak {peak_dbfs:.1f} dBFS, RMS {rms_dbfs:.1f} dBFS, DC {float(audio.mean()):.2e}"
    )
    assert peak_dbfs > -60, peak_dbfs  # not silence
    assert abs(float(audio.mean())) < 0.05  # no large DC offset

    text_only = pipe(prompt="rain on a roof", duration=0.5, num_inference_steps=1, guidance_scale=1.0).audios
    assert text_only.shape == (1, 2, SAMPLE_RATE // 2) and np.isfinite(text_only).all()


def test_new_transformer_takes_its_widths_from_the_encoders(parts):
    from foley_toolkit.conversion.assemble import assemble_pipeline

    pipe = KlingFoleyPipeline.from_components(
        vocoder=parts / "vocoder",
        sync_encoder=parts / "sync",
        vision_encoder=parts / "vision",
        text_encoder=parts / "text",
        transformer=parts / "transformer",
        vae=parts / "vae",
        stereo=False,
    )
    assert pipe.mono2stereo is None
    config = transformer_config_for_components(
        "small", pipe.text_encoder, pipe.vision_encoder, pipe.sync_encoder, pipe.vae
    )
    small = FoleyMMDiTTransformer.preset_config("small")
    assert (config["text_dim"], config["clip_dim"], config["sync_dim"], config["in_channels"]) == (32, 16, 32, 8)
    assert (small["text_dim"], small["clip_dim"], small["sync_dim"], small["in_channels"]) == (768, 1280, 768, 40)
    assert config["num_attention_heads"] == small["num_attention_heads"]
    assert config["sync_tokens_per_segment"] == 8

    with pytest.raises(ValueError, match="exactly one of"):
        assemble_pipeline(parts / "vocoder", parts / "sync", parts / "vision", parts / "text")


def test_assemble_refuses_mismatched_transformer_and_missing_parts(parts, tmp_path, capsys):
    wrong = FoleyMMDiTTransformer(
        in_channels=8, text_dim=48, clip_dim=16, sync_dim=32, num_attention_heads=2, attention_head_dim=8,
        num_joint_layers=1, num_single_layers=0, mlp_ratio=1.0, timestep_embedding_dim=16, max_seconds=8,
    )  # fmt: skip
    wrong.save_pretrained(tmp_path / "wrong")
    assert_cli_error(
        [
            "assemble",
            *_part_args(parts),
            "--transformer",
            tmp_path / "wrong",
            "--vae",
            parts / "vae",
            "--out",
            tmp_path / "o",
        ],
        r"`transformer`: the transformer's `text_dim` is 48, but the components need 32",
        capsys,
    )
    assert_cli_error(
        [
            "assemble",
            *_part_args(parts)[:-1],
            tmp_path / "nope",
            "--transformer-preset",
            "small",
            "--out",
            tmp_path / "o",
        ],
        r"`text_encoder` .*nope.* is not a folder",
        capsys,
    )
    assert_cli_error(
        [
            "assemble",
            *_part_args(parts),
            "--transformer-preset",
            "huge",
            "--vae",
            parts / "vae",
            "--out",
            tmp_path / "o",
        ],
        r"Unknown preset .*huge",
        capsys,
    )


def test_any_clip_vision_model_with_projection_sets_the_clip_width(parts, tmp_path):
    # A vision encoder that is not MetaCLIP (another width, projection size, activation; saved by transformers
    # itself, not converted): a new transformer and Mono2Stereo take its projection_dim, and the pipeline runs.
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=64,
        patch_size=16,
        hidden_act="gelu",
        projection_dim=24,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "vit")
    pipe = KlingFoleyPipeline.from_components(
        vocoder=parts / "vocoder",
        sync_encoder=parts / "sync",
        vision_encoder=tmp_path / "vit",
        text_encoder=parts / "text",
        transformer_preset="small",
        vae=parts / "vae",
    )
    assert pipe.transformer.config.clip_dim == 24 and pipe.mono2stereo.config.video_feature_dim == 24
    assert pipe.transformer.config.num_attention_heads == FoleyMMDiTTransformer.preset_config("small")[
        "num_attention_heads"
    ]
    pipe.set_progress_bar_config(disable=True)
    video = make_test_video(tmp_path / "clip.mp4", duration=1.0, fps=25)
    clip_features, _, duration = pipe.encode_video(video)
    assert duration == 1.0 and clip_features.shape == (1, pipe.sequence_lengths(1.0)["clip_frames"], 24)
    audio = pipe(video=video, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).audios
    assert audio.shape == (1, 2, SAMPLE_RATE) and np.isfinite(audio).all()
    assert np.abs(audio).max() > 1e-3  # not silence

    # A trained transformer of another CLIP width is refused, naming the entry.
    with pytest.raises(ValueError, match=r"`clip_dim` is 16, but the components need 24"):
        KlingFoleyPipeline.from_components(
            vocoder=parts / "vocoder",
            sync_encoder=parts / "sync",
            vision_encoder=tmp_path / "vit",
            text_encoder=parts / "text",
            transformer=parts / "transformer",
            vae=parts / "vae",
        )
