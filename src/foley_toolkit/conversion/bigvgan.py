"""NVIDIA BigVGAN-v2 generator checkpoint -> diffusers `MMAudioVocoder` (weight norm folded).

`bigvgan_generator.pt` (e.g. `nvidia/bigvgan_v2_44khz_128band_512x`) is `{"generator": state_dict}` whose
convolutions carry weight norm, spelled either `*.weight_g` / `*.weight_v` (`torch.nn.utils.weight_norm`, NVIDIA's
code) or `*.parametrizations.weight.original0` / `original1` (`torch.nn.utils.parametrizations.weight_norm`).
`MMAudioVocoder` uses the same module names with plain convolutions, so each pair becomes
`weight = g * v / ||v||` (norm over every dimension but 0, `torch._weight_norm(v, g, 0)`); Snake-beta `alpha` /
`beta`, biases and the anti-aliasing filters copy over unchanged.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

import torch
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder

from ..models.autoencoders.autoencoder_mel_vae import LogMelSpectrogram
from ..models.vocoder import bigvgan_v2_44khz_128band_512x_config
from .common import (
    check_state_dict,
    load_checkpoint,
    prepare_output_dir,
    print_licence,
    resolve_checkpoint_file,
    unwrap_state_dict,
)

__all__ = ["bigvgan_config_to_vocoder_config", "fold_weight_norm", "convert_bigvgan_state_dict", "convert_bigvgan"]

WEIGHT_NORM_SPELLINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)

# The one BigVGAN variant `MMAudioVocoder` implements: AMP block "1", log-scale Snake-beta, no tanh and no bias at
# the end. A config asking for anything else would convert into a network that computes something different.
_REQUIRED_BIGVGAN_SETTINGS = {
    "resblock": "1",
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
}


def bigvgan_config_to_vocoder_config(bigvgan_config: Mapping[str, Any]) -> Dict[str, Any]:
    """`MMAudioVocoder` config from a BigVGAN `config.json` dict; refuses a variant `MMAudioVocoder` cannot express
    and mel settings that differ from the toolkit's `LogMelSpectrogram` (the vocoder must read the same mel)."""
    for key, wanted in _REQUIRED_BIGVGAN_SETTINGS.items():
        if key in bigvgan_config and bigvgan_config[key] != wanted:
            raise ValueError(
                f"BigVGAN config `{key}`={bigvgan_config[key]!r} is not supported; MMAudioVocoder needs {wanted!r}."
            )
    missing = [
        key
        for key in (
            "num_mels",
            "upsample_initial_channel",
            "upsample_rates",
            "upsample_kernel_sizes",
            "resblock_kernel_sizes",
            "resblock_dilation_sizes",
        )
        if key not in bigvgan_config
    ]
    if missing:
        raise ValueError(f"BigVGAN config lacks {', '.join(missing)}.")
    mel = LogMelSpectrogram()
    expected_mel = {
        "sampling_rate": mel.sample_rate,
        "n_fft": mel.n_fft,
        "win_size": mel.n_fft,
        "num_mels": mel.num_mels,
        "fmin": 0,
        "fmax": None,
    }
    for key, wanted in expected_mel.items():
        if key in bigvgan_config and bigvgan_config[key] != wanted:
            raise ValueError(
                f"BigVGAN config `{key}`={bigvgan_config[key]!r} differs from the toolkit's mel front end ({wanted!r})."
            )
    rates = list(bigvgan_config["upsample_rates"])
    if "hop_size" in bigvgan_config and bigvgan_config["hop_size"] != math.prod(rates):
        raise ValueError(
            f"BigVGAN config `hop_size` {bigvgan_config['hop_size']} != product of `upsample_rates` {rates}."
        )
    return {
        "num_mels": int(bigvgan_config["num_mels"]),
        "upsample_initial_channel": int(bigvgan_config["upsample_initial_channel"]),
        "upsample_rates": rates,
        "upsample_kernel_sizes": list(bigvgan_config["upsample_kernel_sizes"]),
        "resblock_kernel_sizes": list(bigvgan_config["resblock_kernel_sizes"]),
        "resblock_dilation_sizes": [list(d) for d in bigvgan_config["resblock_dilation_sizes"]],
    }


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Replace every weight-norm pair (either spelling) by the plain `weight` it stands for; other keys unchanged.
    A pair with only one half present raises `ValueError` naming the key."""
    folded: Dict[str, torch.Tensor] = {}
    consumed = set()
    for g_suffix, v_suffix in WEIGHT_NORM_SPELLINGS:
        for key in state_dict:
            if not key.endswith("." + g_suffix) and key != g_suffix:
                continue
            prefix = key[: -len(g_suffix)]
            v_key = prefix + v_suffix
            if v_key not in state_dict:
                raise ValueError(f"weight-norm magnitude `{key}` has no direction `{v_key}` in the checkpoint.")
            g, v = state_dict[key].float(), state_dict[v_key].float()
            if g.shape[0] != v.shape[0] or g.numel() != g.shape[0]:
                raise ValueError(
                    f"weight-norm magnitude `{key}` has shape {tuple(g.shape)}, expected ({v.shape[0]}, 1, ...) for `{v_key}`."
                )
            folded[prefix + "weight"] = torch._weight_norm(v, g, 0)
            consumed.update((key, v_key))
    for key, value in state_dict.items():
        if key in consumed:
            continue
        if key.endswith(("weight_v", "parametrizations.weight.original1")):
            raise ValueError(f"weight-norm direction `{key}` has no magnitude in the checkpoint.")
        folded[key] = value
    return folded


def convert_bigvgan_state_dict(
    state_dict: Mapping[str, torch.Tensor], vocoder_config: Dict[str, Any], source: str = "BigVGAN checkpoint"
) -> MMAudioVocoder:
    """An `MMAudioVocoder(**vocoder_config)` holding `state_dict` (a BigVGAN generator state dict) after folding."""
    folded = fold_weight_norm(state_dict)
    vocoder = MMAudioVocoder(**vocoder_config)
    check_state_dict(folded, vocoder, source)
    vocoder.load_state_dict({k: v.to(torch.float32) for k, v in folded.items()}, strict=True)
    return vocoder.eval()


def _read_json(path: str, argument: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{argument}` {path!r} is not valid JSON: {error}") from error


def convert_bigvgan(
    checkpoint: str | os.PathLike,
    output_dir: Optional[str | os.PathLike] = None,
    config: Optional[str | os.PathLike | Mapping[str, Any]] = None,
) -> MMAudioVocoder:
    r"""
    Convert a BigVGAN-v2 generator into an `MMAudioVocoder` and (optionally) `save_pretrained` it.

    Args:
        checkpoint (`str` or `os.PathLike`): `bigvgan_generator.pt` (or `.safetensors`), a folder holding it, or a
            Hub repo id such as `nvidia/bigvgan_v2_44khz_128band_512x`.
        output_dir (`str` or `os.PathLike`, *optional*): Empty or new folder for `save_pretrained` (loads with
            `MMAudioVocoder.from_pretrained(dir)` or the pipeline's `subfolder="vocoder"`).
        config (`str`, `os.PathLike` or `dict`, *optional*): BigVGAN `config.json` (path or dict). Defaults to the
            `config.json` next to the checkpoint, else the 44 kHz 128-band 512x config.

    Returns:
        [`MMAudioVocoder`] in eval mode.
    """
    output_dir = prepare_output_dir(output_dir)
    path = resolve_checkpoint_file(checkpoint, "bigvgan_generator.pt", companions=("config.json",))
    if config is None:
        sibling = os.path.join(os.path.dirname(path), "config.json")
        if os.path.isfile(sibling):
            config = sibling
    if config is None:
        vocoder_config = bigvgan_v2_44khz_128band_512x_config()
    else:
        if not isinstance(config, Mapping):
            if not os.path.isfile(config):
                raise FileNotFoundError(f"`config` {os.fspath(config)!r} does not exist.")
            config = _read_json(os.fspath(config), "config")
        vocoder_config = bigvgan_config_to_vocoder_config(config)
    state_dict = unwrap_state_dict(load_checkpoint(path), path, wrappers=("generator",))
    vocoder = convert_bigvgan_state_dict(state_dict, vocoder_config, source=f"BigVGAN checkpoint {path!r}")
    if output_dir is not None:
        vocoder.save_pretrained(output_dir)
    print_licence("bigvgan")
    return vocoder
