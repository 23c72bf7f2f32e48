"""Synchformer visual branch (MotionFormer ViT-B/16) -> [`SynchformerEncoder`].

Accepted checkpoints:

* MMAudio's ``synchformer_state_dict.pth``: the whole Synchformer state dict (``vfeat_extractor.*``,
  ``afeat_extractor.*``, ``vproj``/``aproj``, ``transformer.*``) saved as a plain dict;
* the original Synchformer training checkpoint (v-iashin/Synchformer, e.g. ``24-01-04T16-39-21.pt``), whose
  ``["model"]`` entry is that state dict;
* either of them with the ``vfeat_extractor.`` prefix already removed, or with a ``module.`` prefix (DDP), or as a
  ``.safetensors`` file.

Only the ``vfeat_extractor.*`` tensors are kept. The 2-D ``patch_embed.proj`` of MotionFormer is dropped: it only
exists to count patches, the forward uses the 3-D tubelet embedding ``patch_embed_3d``. The mapping is a renaming
plus splitting the fused ``qkv`` (MotionFormer's ``DividedAttention``) and ``in_proj`` (torch
``MultiheadAttention`` of the spatial pooling layer) matrices into query / key / value thirds:

| original (under ``vfeat_extractor.``) | [`SynchformerEncoder`] |
|---|---|
| ``patch_embed_3d.proj`` | ``patch_embed.proj`` |
| ``cls_token``, ``pos_embed``, ``temp_embed``, ``norm`` | ``cls_token``, ``pos_embed``, ``temporal_embed``, ``norm`` |
| ``blocks.i.norm3`` / ``timeattn.{qkv,proj}`` | ``blocks.i.temporal_norm`` / ``temporal_attn.{to_q/k/v,to_out.0}`` |
| ``blocks.i.norm1`` / ``attn.{qkv,proj}`` | ``blocks.i.spatial_norm`` / ``spatial_attn.{to_q/k/v,to_out.0}`` |
| ``blocks.i.norm2`` / ``mlp.{fc1,fc2}`` | ``blocks.i.ff_norm`` / ``ff.net.{0.proj,2}`` |
| ``spatial_attn_agg.{cls_token,norm1,norm2}`` | ``spatial_pool.{cls_token,norm1,norm2}`` |
| ``spatial_attn_agg.self_attn.{in_proj_*,out_proj}`` | ``spatial_pool.attn.{to_q/k/v,to_out.0}`` |
| ``spatial_attn_agg.{linear1,linear2}`` | ``spatial_pool.ff.net.{0.proj,2}`` |

The architecture is read from the tensor shapes (width, depth, patch and tubelet sizes, frame size, MLP width);
only the number of heads is not stored in a state dict: it defaults to ``hidden_size // 64`` (12 for ViT-B).

Checkpoints are read with ``torch.load(weights_only=True)`` (or safetensors), never with a full unpickler.
"""

import os
import pickle
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..audio_utils import SYNC_SEGMENT_STRIDE
from ..models.encoders.synchformer import SynchformerEncoder
from .common import load_checkpoint, num_parameters, prepare_output_dir, print_licence, resolve_checkpoint_file


VFEAT_PREFIX = "vfeat_extractor."
# MotionFormer's 2-D patch embedding: present in every checkpoint, never used in the forward.
_UNUSED_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias")

_BLOCK_RENAMES = {
    "norm3": "temporal_norm",
    "norm1": "spatial_norm",
    "norm2": "ff_norm",
    "timeattn.proj": "temporal_attn.to_out.0",
    "attn.proj": "spatial_attn.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_BLOCK_QKV = {"timeattn.qkv": "temporal_attn", "attn.qkv": "spatial_attn"}
_POOL_RENAMES = {
    "cls_token": "cls_token",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "linear1.weight": "ff.net.0.proj.weight",
    "linear1.bias": "ff.net.0.proj.bias",
    "linear2.weight": "ff.net.2.weight",
    "linear2.bias": "ff.net.2.bias",
    "self_attn.out_proj.weight": "attn.to_out.0.weight",
    "self_attn.out_proj.bias": "attn.to_out.0.bias",
}
_POOL_QKV = {"self_attn.in_proj_weight": "weight", "self_attn.in_proj_bias": "bias"}
_TOP_RENAMES = {
    "patch_embed_3d.proj.weight": "patch_embed.proj.weight",
    "patch_embed_3d.proj.bias": "patch_embed.proj.bias",
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "temp_embed": "temporal_embed",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}


def _load_checkpoint_file(path: str) -> Any:
    """`load_checkpoint` (safetensors or `torch.load(weights_only=True)`), with the way out for the original
    training checkpoint, whose training config is an object `weights_only` refuses."""
    try:
        return load_checkpoint(path)
    except ValueError as error:
        cause = error.__cause__
        if isinstance(cause, pickle.UnpicklingError) and "weights_only" in str(cause):
            raise ValueError(
                f"`checkpoint` {path!r} holds Python objects that `torch.load(weights_only=True)` refuses to "
                "unpickle (e.g. a training config); this converter never runs a full unpickler. In an environment "
                "you trust, re-save only the state dict (`torch.save(torch.load(path)['model'], "
                "'synchformer_state_dict.pth')`, which is what MMAudio distributes) and convert that."
            ) from error
        raise


def extract_visual_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The MotionFormer (``vfeat_extractor``) tensors of a loaded Synchformer checkpoint, prefix removed.

    Accepts ``{"model": state_dict, ...}`` (training checkpoint) or a state dict, with or without ``module.`` /
    ``vfeat_extractor.`` prefixes.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            "`checkpoint` must hold a Synchformer state dict (a dict of tensors, or a dict with a 'model' state "
            f"dict), got {type(checkpoint).__name__}."
        )
    if all(isinstance(key, str) and key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    if any(str(key).startswith(VFEAT_PREFIX) for key in checkpoint):
        visual = {key[len(VFEAT_PREFIX) :]: value for key, value in checkpoint.items() if key.startswith(VFEAT_PREFIX)}
    elif "patch_embed_3d.proj.weight" in checkpoint:  # already the bare MotionFormer state dict
        visual = dict(checkpoint)
    else:
        raise ValueError(
            "`checkpoint` has no Synchformer visual encoder: expected keys starting with 'vfeat_extractor.' (or a "
            f"bare MotionFormer state dict with 'patch_embed_3d.proj.weight'); first keys: {list(checkpoint)[:5]}."
        )
    for key, value in visual.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"`checkpoint` key {VFEAT_PREFIX + key!r} is a {type(value).__name__}, not a tensor.")
    return visual


def _require(visual: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in visual:
        raise ValueError(f"Synchformer checkpoint is missing key {VFEAT_PREFIX + key!r}.")
    tensor = visual[key]
    if tensor.ndim != ndim:
        raise ValueError(
            f"Synchformer checkpoint key {VFEAT_PREFIX + key!r} has shape {tuple(tensor.shape)}; expected {ndim} dims."
        )
    return tensor


def synchformer_config_from_state_dict(
    visual: Mapping[str, torch.Tensor], num_attention_heads: Optional[int] = None
) -> Dict[str, Any]:
    """[`SynchformerEncoder`] config read from the shapes of a MotionFormer state dict (prefix removed).

    The head count is not stored in weights: `num_attention_heads` (default ``hidden_size // 64``, 12 for ViT-B).
    The segment stride (8 frames) is how Synchformer / MMAudio cut videos, not a weight: the encoder default.
    """
    tubelet = _require(visual, "patch_embed_3d.proj.weight", 5)  # (hidden, channels, time, patch, patch)
    pos_embed = _require(visual, "pos_embed", 3)  # (1, 1 + patches, hidden)
    temp_embed = _require(visual, "temp_embed", 3)  # (1, time steps per segment, hidden)
    fc1 = _require(visual, "blocks.0.mlp.fc1.weight", 2)  # (mlp, hidden)
    hidden, channels, temporal_patch, patch, patch_w = tubelet.shape
    if patch != patch_w:
        raise ValueError(f"Synchformer checkpoint key {VFEAT_PREFIX}patch_embed_3d.proj.weight has non-square "
                         f"patches {tuple(tubelet.shape)}.")
    side = round((pos_embed.shape[1] - 1) ** 0.5)
    if side * side != pos_embed.shape[1] - 1:
        raise ValueError(f"Synchformer checkpoint key {VFEAT_PREFIX}pos_embed has shape {tuple(pos_embed.shape)}; "
                         "expected (1, 1 + n * n, hidden) for square frames.")
    layers = {int(match.group(1)) for key in visual if (match := re.match(r"blocks\.(\d+)\.", key))}
    num_layers = max(layers) + 1
    if layers != set(range(num_layers)):
        raise ValueError(
            f"Synchformer checkpoint is missing key {VFEAT_PREFIX}blocks.{min(set(range(num_layers)) - layers)}.*"
        )
    heads = num_attention_heads if num_attention_heads is not None else max(1, hidden // 64)
    return {
        "in_channels": channels,
        "image_size": side * patch,
        "patch_size": patch,
        "temporal_patch_size": temporal_patch,
        "segment_frames": temp_embed.shape[1] * temporal_patch,
        "segment_stride": SYNC_SEGMENT_STRIDE,
        "hidden_size": hidden,
        "num_layers": num_layers,
        "num_attention_heads": heads,
        "mlp_ratio": fc1.shape[0] / hidden,
        "qkv_bias": "blocks.0.attn.qkv.bias" in visual,
        "layer_norm_eps": 1e-6,
    }


def _split_qkv(key: str, tensor: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # MotionFormer `qkv(x).chunk(3, -1)` and torch `in_proj` both stack query, key, value along the output rows
    if tensor.shape[0] % 3 != 0:
        raise ValueError(
            f"Synchformer checkpoint key {VFEAT_PREFIX + key!r} has shape {tuple(tensor.shape)}; the fused "
            "query/key/value projection needs 3 * hidden_size rows."
        )
    return tensor.chunk(3, dim=0)


def convert_synchformer_state_dict(
    visual: Mapping[str, torch.Tensor], num_layers: int
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Rename / split a MotionFormer state dict (prefix removed) into [`SynchformerEncoder`] names.

    Returns the new state dict and, for each new key, the original key it came from (for error messages).
    Raises `ValueError` naming any original key that has no place in the encoder.
    """
    converted: Dict[str, torch.Tensor] = {}
    source: Dict[str, str] = {}

    def put(new_key: str, tensor: torch.Tensor, old_key: str) -> None:
        converted[new_key] = tensor
        source[new_key] = VFEAT_PREFIX + old_key

    for key, tensor in visual.items():
        if key in _UNUSED_KEYS:
            continue
        if key in _TOP_RENAMES:
            put(_TOP_RENAMES[key], tensor, key)
            continue
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if block and int(block.group(1)) < num_layers:
            index, name, kind = block.groups()
            if name in _BLOCK_QKV:
                for part, piece in zip(("to_q", "to_k", "to_v"), _split_qkv(key, tensor)):
                    put(f"blocks.{index}.{_BLOCK_QKV[name]}.{part}.{kind}", piece, key)
                continue
            if name in _BLOCK_RENAMES:
                put(f"blocks.{index}.{_BLOCK_RENAMES[name]}.{kind}", tensor, key)
                continue
        if key.startswith("spatial_attn_agg."):
            name = key[len("spatial_attn_agg.") :]
            if name in _POOL_RENAMES:
                put(f"spatial_pool.{_POOL_RENAMES[name]}", tensor, key)
                continue
            if name in _POOL_QKV:
                for part, piece in zip(("to_q", "to_k", "to_v"), _split_qkv(key, tensor)):
                    put(f"spatial_pool.attn.{part}.{_POOL_QKV[name]}", piece, key)
                continue
        raise ValueError(f"Synchformer checkpoint has unexpected key {VFEAT_PREFIX + key!r} (not part of the "
                         "MotionFormer visual encoder with spatial-transformer pooling).")
    return converted, source


def load_synchformer_weights(
    model: SynchformerEncoder, converted: Mapping[str, torch.Tensor], source: Mapping[str, str]
) -> None:
    """Copy converted tensors into `model` after checking every key and shape (errors name the original key)."""
    expected = model.state_dict()
    for key, tensor in converted.items():
        if key not in expected:
            raise ValueError(f"Synchformer checkpoint key {source[key]!r} maps to {key!r}, which the encoder "
                             "does not have.")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"Synchformer checkpoint key {source[key]!r} has shape {tuple(_fused_shape(source, key, tensor))}; "
                f"the encoder's {key!r} needs {tuple(expected[key].shape)} (config {dict(model.config)})."
            )
    missing = [key for key in expected if key not in converted]
    if missing:
        originals = list(dict.fromkeys(VFEAT_PREFIX + original_key_name(key) for key in missing))
        raise ValueError(
            f"Synchformer checkpoint is missing key(s) {originals[:5]} (the encoder's {missing[:5]})."
        )
    model.load_state_dict(converted, strict=True, assign=True)


def _fused_shape(source: Mapping[str, str], key: str, tensor: torch.Tensor) -> torch.Size:
    # a split qkv third is reported with the fused tensor's shape (what the user's file holds)
    fused = any(key.endswith(f".{part}.{kind}") for part in ("to_q", "to_k", "to_v") for kind in ("weight", "bias"))
    return torch.Size((tensor.shape[0] * 3, *tensor.shape[1:])) if fused else tensor.shape


def original_key_name(key: str) -> str:
    """The original key a [`SynchformerEncoder`] key comes from (for "missing key" messages)."""
    for old, new in _TOP_RENAMES.items():
        if key == new:
            return old
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if block:
        index, name, kind = block.groups()
        for old, new in _BLOCK_QKV.items():
            if name.startswith(new + ".to_") and name.split(".")[-1] in ("to_q", "to_k", "to_v"):
                return f"blocks.{index}.{old}.{kind}"
        for old, new in _BLOCK_RENAMES.items():
            if name == new:
                return f"blocks.{index}.{old}.{kind}"
    if key.startswith("spatial_pool."):
        name = key[len("spatial_pool.") :]
        for old, new in _POOL_RENAMES.items():
            if name == new:
                return f"spatial_attn_agg.{old}"
        if name.startswith("attn.to_"):
            return f"spatial_attn_agg.self_attn.in_proj_{name.split('.')[-1]}"
    return key


def convert_synchformer(
    checkpoint: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    num_attention_heads: Optional[int] = None,
) -> SynchformerEncoder:
    r"""
    Convert a Synchformer checkpoint's visual encoder into a [`SynchformerEncoder`] `save_pretrained` folder.

    Args:
        checkpoint (`str` or `os.PathLike`): MMAudio's ``synchformer_state_dict.pth``, the original training
            checkpoint (its ``"model"`` entry is used), or a ``.safetensors`` file with the same keys; a local file,
            a folder holding ``synchformer_state_dict.pth``, or a Hub repo id with that file.
        output_dir (`str` or `os.PathLike`): A new or empty folder, where `save_pretrained` writes ``config.json`` and
            ``diffusion_pytorch_model.safetensors`` (load with ``SynchformerEncoder.from_pretrained(output_dir)`` or
            the pipeline's ``subfolder="sync_encoder"``).
        num_attention_heads (`int`, *optional*): Heads per attention layer (not stored in weights); default
            ``hidden_size // 64``, i.e. 12 for the public ViT-B/16.

    Returns:
        The converted [`SynchformerEncoder`] (eval mode). Its input is 25 fps video, 224 px centre crops normalised
        with mean 0.5 / std 0.5 (`foley_toolkit.video_processor.preprocess_sync_frames`), as in Synchformer.

    Raises:
        FileNotFoundError: `checkpoint` is neither a file, a folder holding the file nor a reachable Hub repo.
        ValueError: `output_dir` is not empty, the file is not a readable checkpoint, or a key is missing,
            unexpected or of the wrong shape (the message names the original key).
    """
    output_dir = prepare_output_dir(output_dir)
    path = resolve_checkpoint_file(checkpoint, "synchformer_state_dict.pth")
    visual = extract_visual_state_dict(_load_checkpoint_file(path))
    config = synchformer_config_from_state_dict(visual, num_attention_heads)
    converted, source = convert_synchformer_state_dict(visual, config["num_layers"])
    with torch.device("meta"):  # nothing allocated twice: the checkpoint's tensors are assigned in place
        model = SynchformerEncoder(**config)
    load_synchformer_weights(model, {key: value.float().contiguous() for key, value in converted.items()}, source)
    model.eval()
    model.save_pretrained(output_dir)
    print(
        f"Converted the Synchformer visual encoder ({num_parameters(model) / 1e6:.1f}M parameters, "
        f"{config['num_layers']} layers, width {config['hidden_size']}, {config['image_size']} px) to {output_dir}."
    )
    print_licence("synchformer")
    return model
