"""MetaCLIP (open_clip format) vision tower -> transformers `CLIPVisionModelWithProjection`.

MetaCLIP ViT-bigG-14-quickgelu (`G14_fullcc2.5b.pt`, or any open_clip `VisionTransformer` with the `tok` pool and
no layer scale) is a state dict, possibly wrapped as `{"state_dict": ...}` with DistributedDataParallel's `module.`
prefix. Only its `visual.*` keys are converted (the text tower is not used by Kling-Foley):

| open_clip | transformers |
|---|---|
| `visual.conv1.weight` | `vision_model.embeddings.patch_embedding.weight` |
| `visual.class_embedding` | `vision_model.embeddings.class_embedding` |
| `visual.positional_embedding` | `vision_model.embeddings.position_embedding.weight` |
| `visual.ln_pre` / `visual.ln_post` | `vision_model.pre_layrnorm` / `vision_model.post_layernorm` |
| `visual.transformer.resblocks.{i}.ln_1` / `ln_2` | `vision_model.encoder.layers.{i}.layer_norm1` / `layer_norm2` |
| `...attn.in_proj_{weight,bias}` (q, k, v stacked) | `...self_attn.{q,k,v}_proj.{weight,bias}` |
| `...attn.out_proj` | `...self_attn.out_proj` |
| `...mlp.c_fc` / `mlp.c_proj` | `...mlp.fc1` / `mlp.fc2` |
| `visual.proj` (width, embed_dim) | `visual_projection.weight`, transposed |

The activation is not stored in the checkpoint: MetaCLIP v1 uses QuickGELU, which the target config must say
(`hidden_act="quick_gelu"`, the default config here). Frames are normalised with the OpenAI CLIP mean/std
(`foley_toolkit.video_processor.CLIP_MEAN/CLIP_STD`).
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ..models.encoders.presets import metaclip_bigg_14_quickgelu_config
from .common import (
    check_state_dict,
    load_checkpoint,
    prepare_output_dir,
    print_licence,
    quiet_transformers_loading,
    resolve_checkpoint_file,
    unwrap_state_dict,
)

__all__ = ["map_metaclip_state_dict", "convert_metaclip_state_dict", "convert_metaclip"]

_TOP_LEVEL = {
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_PER_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _visual_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """The vision tower's keys without the `visual.` prefix: a whole CLIP (`visual.*` + text tower) or a bare
    `VisionTransformer` state dict."""
    visual = {key[len("visual.") :]: value for key, value in state_dict.items() if key.startswith("visual.")}
    if visual:
        return visual
    if "conv1.weight" in state_dict:
        return dict(state_dict)
    raise ValueError(
        f"{source} has no open_clip vision tower: no `visual.*` keys and no `conv1.weight` "
        f"(first keys: {', '.join(list(state_dict)[:5])})."
    )


def map_metaclip_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "MetaCLIP checkpoint"
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """open_clip vision-tower keys -> `CLIPVisionModelWithProjection` keys (table in the module docstring). Returns
    the converted dict and, for error messages, each converted key's checkpoint key. Unknown `visual.*` keys raise."""
    visual = _visual_state_dict(state_dict, source)
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}  # converted key -> checkpoint key, for error messages
    unknown = []
    for key, value in visual.items():
        if key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = value
            origin[_TOP_LEVEL[key]] = f"visual.{key}"
        elif key == "proj":
            if value.ndim != 2:
                raise ValueError(
                    f"{source}: `visual.proj` has shape {tuple(value.shape)}, expected (width, embed_dim)."
                )
            converted["visual_projection.weight"] = value.t().contiguous()
            origin["visual_projection.weight"] = "visual.proj (transposed)"
        elif key.startswith("transformer.resblocks."):
            index, rest = key[len("transformer.resblocks.") :].split(".", 1)
            prefix = f"vision_model.encoder.layers.{index}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                if value.shape[0] % 3:
                    raise ValueError(
                        f"{source}: `visual.{key}` has {value.shape[0]} rows, not a multiple of 3 (q, k, v)."
                    )
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    converted[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                    origin[f"{prefix}self_attn.{name}.{kind}"] = f"visual.{key}"
                continue
            module, _, param = rest.rpartition(".")
            if module in _PER_LAYER:
                converted[f"{prefix}{_PER_LAYER[module]}.{param}"] = value
                origin[f"{prefix}{_PER_LAYER[module]}.{param}"] = f"visual.{key}"
            else:
                unknown.append(f"visual.{key}")
        else:
            unknown.append(f"visual.{key}")
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(
            f"{source} has vision-tower keys with no counterpart in CLIPVisionModelWithProjection: "
            f"{', '.join(unknown[:5])}{more} (layer scale, attention pooling and other open_clip variants are not "
            "supported)."
        )
    return converted, origin


def convert_metaclip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: CLIPVisionConfig, source: str = "MetaCLIP checkpoint"
) -> CLIPVisionModelWithProjection:
    """A `CLIPVisionModelWithProjection(config)` holding the open_clip vision tower of `state_dict`."""
    converted, origin = map_metaclip_state_dict(state_dict, source)
    with torch.device("meta"):  # only names and shapes: the full bigG is 7.4 GB in float32
        skeleton = CLIPVisionModelWithProjection(config)
    check_state_dict(converted, skeleton, source, origin=origin)
    # transformers builds the model without allocating it twice and fills the weights from the converted dict
    # (non-persistent buffers such as position_ids are created as usual); every key was checked above.
    with quiet_transformers_loading():
        model = CLIPVisionModelWithProjection.from_pretrained(
            None, config=config, state_dict={k: v.float() for k, v in converted.items()}
        )
    return model.eval()


def convert_metaclip(
    checkpoint: str | os.PathLike,
    output_dir: Optional[str | os.PathLike] = None,
    config: Optional[str | os.PathLike | CLIPVisionConfig] = None,
) -> CLIPVisionModelWithProjection:
    r"""
    Convert an open_clip MetaCLIP checkpoint's vision tower and (optionally) `save_pretrained` it.

    Args:
        checkpoint (`str` or `os.PathLike`): An open_clip `.pt` / `.bin` / `.safetensors` (e.g. `G14_fullcc2.5b.pt`),
            a folder holding `open_clip_model.safetensors`, or such a Hub repo id.
        output_dir (`str` or `os.PathLike`, *optional*): Empty or new folder for `save_pretrained` (loads with
            `CLIPVisionModelWithProjection.from_pretrained(dir)` or the pipeline's `subfolder="vision_encoder"`).
        config (`CLIPVisionConfig`, or a path to its JSON / a folder, *optional*): Target architecture; defaults to
            MetaCLIP ViT-bigG-14-quickgelu (`metaclip_bigg_14_quickgelu_config()`).

    Returns:
        [`~transformers.CLIPVisionModelWithProjection`] in eval mode.
    """
    output_dir = prepare_output_dir(output_dir)
    path = resolve_checkpoint_file(checkpoint, "open_clip_model.safetensors")
    if config is None:
        config = metaclip_bigg_14_quickgelu_config()
    elif not isinstance(config, CLIPVisionConfig):
        if not os.path.exists(config):
            raise FileNotFoundError(f"`config` {os.fspath(config)!r} does not exist.")
        config = CLIPVisionConfig.from_pretrained(os.fspath(config))
    state_dict = unwrap_state_dict(load_checkpoint(path), path, wrappers=("state_dict",), strip_prefixes=("module.",))
    model = convert_metaclip_state_dict(state_dict, config, source=f"MetaCLIP checkpoint {path!r}")
    if output_dir is not None:
        model.save_pretrained(output_dir)
    print_licence("metaclip")
    return model
