"""A `KlingFoleyPipeline` from converted parts (`foley-toolkit convert ...` folders) plus a new or trained
transformer and MelVAE: `assemble_pipeline(...)`, `KlingFoleyPipeline.from_components(...)` and
`foley-toolkit assemble`.

The frozen encoders and the vocoder come from their folders; the transformer is either loaded (its input widths
must match the encoders) or built from a named preset with its input widths taken from the encoders' configs
(`text_dim` = T5 `d_model`, `clip_dim` = CLIP `projection_dim`, `sync_dim` = Synchformer `hidden_size`,
`in_channels` = MelVAE `latent_channels`, `sync_tokens_per_segment` = Synchformer tokens per segment). The MelVAE
is loaded or new (default config), and so is the Mono2Stereo (or left out for mono output). New parts are randomly
initialised, to be trained.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, CLIPVisionModelWithProjection, T5EncoderModel

from ..models.autoencoders.autoencoder_mel_vae import MelVAE
from ..models.encoders.synchformer import SynchformerEncoder
from ..models.mono2stereo import Mono2Stereo
from ..models.transformers.transformer_foley_mmdit import FoleyMMDiTTransformer
from ..models.vocoder import load_vocoder
from .common import prepare_output_dir, quiet_transformers_loading

__all__ = ["transformer_config_for_components", "assemble_pipeline"]

PathLike = Union[str, os.PathLike]


def _folder(path: PathLike, argument: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`{argument}` {path!r} is not a folder (expected a `foley-toolkit convert` output).")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"`{argument}` {path!r} holds no config.json (not a save_pretrained folder).")
    return path


def _condition_widths(text_encoder, vision_encoder, sync_encoder) -> Dict[str, Any]:
    """The transformer config entries fixed by the encoders."""
    sync = sync_encoder.config
    return {
        "text_dim": int(text_encoder.config.d_model),
        "clip_dim": int(vision_encoder.config.projection_dim),
        "sync_dim": int(sync.hidden_size),
        "sync_tokens_per_segment": int(sync.segment_frames // sync.temporal_patch_size),
    }


def transformer_config_for_components(
    preset: str, text_encoder, vision_encoder, sync_encoder, vae: MelVAE
) -> Dict[str, Any]:
    """`FoleyMMDiTTransformer.preset_config(preset)` with its input widths replaced by those of the given
    encoders and its latent channels by the MelVAE's."""
    config = FoleyMMDiTTransformer.preset_config(preset)
    config.update(_condition_widths(text_encoder, vision_encoder, sync_encoder))
    config["in_channels"] = int(vae.config.latent_channels)
    return config


def _check_transformer(transformer: FoleyMMDiTTransformer, expected: Dict[str, Any], argument: str) -> None:
    for key, value in expected.items():
        if key in transformer.config and transformer.config[key] != value:
            raise ValueError(
                f"`{argument}`: the transformer's `{key}` is {transformer.config[key]}, but the components need {value}."
            )


def assemble_pipeline(
    vocoder: PathLike,
    sync_encoder: PathLike,
    vision_encoder: PathLike,
    text_encoder: PathLike,
    transformer_preset: Optional[str] = None,
    transformer: Optional[PathLike] = None,
    vae: Optional[PathLike] = None,
    mono2stereo: Optional[PathLike] = None,
    stereo: bool = True,
    output_dir: Optional[PathLike] = None,
    seed: int = 0,
):
    r"""
    Build a [`KlingFoleyPipeline`] from converted parts and (optionally) `save_pretrained` it.

    Args:
        vocoder, sync_encoder, vision_encoder, text_encoder (`str` or `os.PathLike`): `save_pretrained` folders of
            the vocoder (`MMAudioVocoder`/`VocosVocoder`), `SynchformerEncoder`, `CLIPVisionModelWithProjection`, and
            T5 encoder + tokenizer (one folder, as `convert_t5` writes it). The vision encoder may be any
            `CLIPVisionModelWithProjection` folder (MetaCLIP bigG as converted, or e.g. a lighter ViT-B/16 CLIP for
            CPU use, see benchmarks/README.md): a new transformer and Mono2Stereo take its `projection_dim`. Frames
            are normalised with the OpenAI CLIP mean / std, which MetaCLIP and OpenAI's CLIPs share.
        transformer_preset (`str`, *optional*): New `FoleyMMDiTTransformer` of this size (`small`,
            `kling-foley-1.5b`, `kling-foley-3b`, `kling-foley-6b`), input widths from the encoders.
        transformer (`str` or `os.PathLike`, *optional*): A trained transformer folder instead (exactly one of the two).
        vae (`str` or `os.PathLike`, *optional*): A trained `MelVAE` folder; default a new `MelVAE()`.
        mono2stereo (`str` or `os.PathLike`, *optional*): A trained `Mono2Stereo` folder; default a new one
            (identity at initialisation) unless `stereo=False`.
        stereo (`bool`, defaults to `True`): Include a Mono2Stereo (else the pipeline returns mono audio).
        output_dir (`str` or `os.PathLike`, *optional*): New or empty folder for the pipeline.
        seed (`int`, defaults to 0): Seed of the new parts' random initialisation.

    Returns:
        [`KlingFoleyPipeline`].
    """
    from ..pipelines.kling_foley.pipeline_kling_foley import KlingFoleyPipeline

    if (transformer_preset is None) == (transformer is None):
        raise ValueError("Pass exactly one of `transformer_preset` (a new transformer) and `transformer` (a folder).")
    if mono2stereo is not None and not stereo:
        raise ValueError("`mono2stereo` was given together with `stereo=False`.")
    output_dir = prepare_output_dir(output_dir)
    torch.manual_seed(seed)

    # Frozen, pretrained parts: safetensors only (never unpickled).
    text_dir = _folder(text_encoder, "text_encoder")
    tokenizer_model = AutoTokenizer.from_pretrained(text_dir)
    with quiet_transformers_loading():
        text_model = T5EncoderModel.from_pretrained(text_dir, use_safetensors=True).eval()
    if len(tokenizer_model) > text_model.config.vocab_size:
        raise ValueError(
            f"`text_encoder` {text_dir!r}: the tokenizer has {len(tokenizer_model)} tokens, more than the encoder's "
            f"vocab_size {text_model.config.vocab_size}."
        )
    with quiet_transformers_loading():
        vision_model = CLIPVisionModelWithProjection.from_pretrained(
            _folder(vision_encoder, "vision_encoder"), use_safetensors=True
        ).eval()
    sync_model = SynchformerEncoder.from_pretrained(_folder(sync_encoder, "sync_encoder"), use_safetensors=True).eval()
    vocoder_model = load_vocoder(_folder(vocoder, "vocoder"), use_safetensors=True).eval()

    vae_model = MelVAE.from_pretrained(_folder(vae, "vae"), use_safetensors=True) if vae is not None else MelVAE()
    vocoder_mels = getattr(vocoder_model.config, "num_mels", None)
    if vocoder_mels is not None and vocoder_mels != vae_model.config.mel_bins:
        raise ValueError(
            f"`vocoder` reads {vocoder_mels} mel bands but the MelVAE produces {vae_model.config.mel_bins}."
        )

    if transformer is not None:
        transformer_model = FoleyMMDiTTransformer.from_pretrained(
            _folder(transformer, "transformer"), use_safetensors=True
        )
        expected = _condition_widths(text_model, vision_model, sync_model)
        expected["in_channels"] = int(vae_model.config.latent_channels)
        _check_transformer(transformer_model, expected, "transformer")
    else:
        config = transformer_config_for_components(transformer_preset, text_model, vision_model, sync_model, vae_model)
        transformer_model = FoleyMMDiTTransformer(**config)

    mono2stereo_model = None
    if mono2stereo is not None:
        mono2stereo_model = Mono2Stereo.from_pretrained(_folder(mono2stereo, "mono2stereo"), use_safetensors=True)
        if mono2stereo_model.config.video_feature_dim not in (None, vision_model.config.projection_dim):
            raise ValueError(
                f"`mono2stereo`: its `video_feature_dim` {mono2stereo_model.config.video_feature_dim} differs from the "
                f"vision encoder's projection_dim {vision_model.config.projection_dim}."
            )
    elif stereo:
        mono2stereo_model = Mono2Stereo(
            mel_bins=vae_model.config.mel_bins, video_feature_dim=vision_model.config.projection_dim
        )

    pipeline = KlingFoleyPipeline(
        tokenizer=tokenizer_model,
        text_encoder=text_model,
        vision_encoder=vision_model,
        sync_encoder=sync_model,
        transformer=transformer_model.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae_model.eval(),
        vocoder=vocoder_model,
        mono2stereo=None if mono2stereo_model is None else mono2stereo_model.eval(),
    )
    if output_dir is not None:
        pipeline.save_pretrained(output_dir)
        _pipeline_card(pipeline, transformer, vae, mono2stereo).save(os.path.join(output_dir, "README.md"))
    return pipeline


def _pipeline_card(pipeline, transformer, vae, mono2stereo):
    """The model card of an assembled pipeline: the converted parts as pretrained (with their licences), the
    given folders as trained, the new parts as untrained."""
    from ..model_cards import PUBLIC_COMPONENTS, pipeline_card

    trained = {
        name: f"`{os.fspath(folder)}`"
        for name, folder in (("transformer", transformer), ("vae", vae), ("mono2stereo", mono2stereo))
        if folder is not None
    }
    return pipeline_card(
        pipeline.components,
        pretrained=[name for name in PUBLIC_COMPONENTS if pipeline.components.get(name) is not None],
        trained=trained,
        title="Kling-Foley pipeline assembled from public parts (foley_toolkit)",
    )
