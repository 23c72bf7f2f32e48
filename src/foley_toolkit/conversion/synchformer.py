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

`convert_synchformer_offset_classifier` converts the other half of the same checkpoint -- the audio branch
(``afeat_extractor.*``: AST + frequency pooling), ``vproj`` / ``aproj`` and the offset classifier (``transformer.*``) --
into a [`SynchformerOffsetClassifier`] (``foley-toolkit convert synchformer ... --head-out DIR``), what DeSync runs.
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


# ------------------------------------------------------------------------------------------------------------------
# Audio branch (AST + frequency pooling) and offset classifier -> SynchformerOffsetClassifier
# ------------------------------------------------------------------------------------------------------------------

AFEAT_PREFIX = "afeat_extractor."
# Top-level (non-visual) modules of the public Synchformer; everything else but `vfeat_extractor.*` is unexpected.
OFFSET_CLASSIFIER_PREFIXES = (AFEAT_PREFIX, "vproj.", "aproj.", "transformer.")

# (original regex, new key template); `{0}` is the first group (a layer index) when there is one. Fused query/key/value
# matrices (`in_proj_*` of torch's MultiheadAttention) are split by `_OFFSET_QKV_RULES`.
_OFFSET_RULES = [
    (r"afeat_extractor\.ast\.embeddings\.patch_embeddings\.projection\.(weight|bias)", "patch_embed.{0}"),
    (r"afeat_extractor\.ast\.embeddings\.cls_token", "audio_cls_token"),
    (r"afeat_extractor\.ast\.embeddings\.distillation_token", "audio_dist_token"),
    (r"afeat_extractor\.ast\.embeddings\.position_embeddings", "audio_pos_embed"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", "audio_layers.{0}.norm1.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", "audio_layers.{0}.norm2.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", "audio_layers.{0}.attn.to_q.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", "audio_layers.{0}.attn.to_k.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)", "audio_layers.{0}.attn.to_v.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", "audio_layers.{0}.attn.to_out.0.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "audio_layers.{0}.ff.net.0.proj.{1}"),
    (r"afeat_extractor\.ast\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", "audio_layers.{0}.ff.net.2.{1}"),
    (r"afeat_extractor\.ast\.layernorm\.(weight|bias)", "audio_final_norm.{0}"),
    (r"afeat_extractor\.freq_attn_agg\.cls_token", "freq_pool.cls_token"),
    (r"afeat_extractor\.freq_attn_agg\.norm1\.(weight|bias)", "freq_pool.layer.norm1.{0}"),
    (r"afeat_extractor\.freq_attn_agg\.norm2\.(weight|bias)", "freq_pool.layer.norm2.{0}"),
    (r"afeat_extractor\.freq_attn_agg\.self_attn\.out_proj\.(weight|bias)", "freq_pool.layer.attn.to_out.0.{0}"),
    (r"afeat_extractor\.freq_attn_agg\.linear1\.(weight|bias)", "freq_pool.layer.ff.net.0.proj.{0}"),
    (r"afeat_extractor\.freq_attn_agg\.linear2\.(weight|bias)", "freq_pool.layer.ff.net.2.{0}"),
    (r"vproj\.(weight|bias)", "visual_proj.{0}"),
    (r"aproj\.(weight|bias)", "audio_proj.{0}"),
    (r"transformer\.vis_in_lnorm\.(weight|bias)", "visual_norm.{0}"),
    (r"transformer\.aud_in_lnorm\.(weight|bias)", "audio_norm.{0}"),
    (r"transformer\.OFF_tok", "offset_token"),
    (r"transformer\.MOD_tok", "modality_token"),
    (r"transformer\.pos_emb_cfg\.pos_emb", "pos_embed"),
    (r"transformer\.blocks\.(\d+)\.ln1\.(weight|bias)", "layers.{0}.norm1.{1}"),
    (r"transformer\.blocks\.(\d+)\.ln2\.(weight|bias)", "layers.{0}.norm2.{1}"),
    (r"transformer\.blocks\.(\d+)\.attn\.query\.(weight|bias)", "layers.{0}.attn.to_q.{1}"),
    (r"transformer\.blocks\.(\d+)\.attn\.key\.(weight|bias)", "layers.{0}.attn.to_k.{1}"),
    (r"transformer\.blocks\.(\d+)\.attn\.value\.(weight|bias)", "layers.{0}.attn.to_v.{1}"),
    (r"transformer\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", "layers.{0}.attn.to_out.0.{1}"),
    (r"transformer\.blocks\.(\d+)\.mlp\.0\.(weight|bias)", "layers.{0}.ff.net.0.proj.{1}"),
    (r"transformer\.blocks\.(\d+)\.mlp\.2\.(weight|bias)", "layers.{0}.ff.net.2.{1}"),
    (r"transformer\.ln_f\.(weight|bias)", "final_norm.{0}"),
    (r"transformer\.off_head\.(weight|bias)", "offset_head.{0}"),
]
_OFFSET_QKV_RULES = [
    (r"afeat_extractor\.freq_attn_agg\.self_attn\.in_proj_(weight|bias)", "freq_pool.layer.attn.{part}.{0}"),
]


def extract_offset_classifier_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The audio-branch and classifier tensors (``afeat_extractor.*``, ``vproj``, ``aproj``, ``transformer.*``) of a
    loaded Synchformer checkpoint, with their original names; ``{"model": state_dict}`` and ``module.`` prefixes are
    unwrapped, the visual branch (``vfeat_extractor.*``) is left out."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            "`checkpoint` must hold a Synchformer state dict (a dict of tensors, or a dict with a 'model' state "
            f"dict), got {type(checkpoint).__name__}."
        )
    if all(isinstance(key, str) and key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    state = {key: value for key, value in checkpoint.items() if not str(key).startswith(VFEAT_PREFIX)}
    if not any(str(key).startswith(AFEAT_PREFIX) for key in state) or "transformer.off_head.weight" not in state:
        raise ValueError(
            "`checkpoint` has no Synchformer audio branch and offset head: expected keys starting with "
            f"'afeat_extractor.' and 'transformer.off_head.weight' (MMAudio's synchformer_state_dict.pth or the "
            f"original training checkpoint); first keys: {list(checkpoint)[:5]}."
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"`checkpoint` key {key!r} is a {type(value).__name__}, not a tensor.")
    return state


def convert_offset_classifier_state_dict(
    state: Mapping[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], list]:
    """Rename the original audio-branch / classifier keys to [`SynchformerOffsetClassifier`] names (the frequency
    pooling's fused ``in_proj`` split into query / key / value thirds).

    Returns ``(converted, origin, unexpected)``: the new state dict, the original key of each new key, and the
    original keys that have no place in the model."""
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unexpected = []
    for key, tensor in state.items():
        for pattern, template in _OFFSET_RULES:
            match = re.fullmatch(pattern, key)
            if match:
                new_key = template.format(*match.groups())
                converted[new_key], origin[new_key] = tensor, key
                break
        else:
            for pattern, template in _OFFSET_QKV_RULES:
                match = re.fullmatch(pattern, key)
                if match:
                    for part, piece in zip(("to_q", "to_k", "to_v"), _split_qkv(key, tensor)):
                        new_key = template.format(*match.groups(), part=part)
                        converted[new_key], origin[new_key] = piece, key
                    break
            else:
                unexpected.append(key)
    return converted, origin, unexpected


def offset_classifier_config_from_state_dict(
    state: Mapping[str, torch.Tensor],
    num_attention_heads: int = 8,
    audio_num_attention_heads: Optional[int] = None,
    num_mel_bins: int = 128,
) -> Dict[str, Any]:
    """[`SynchformerOffsetClassifier`] config read from the shapes of the original audio-branch / classifier tensors.

    Not stored in weights: the heads (classifier 8, AST ``hidden // 64`` = 12), the mel bands (128) and the patch
    strides (10); the spectrogram length per segment follows from the AST position embedding, the window length from
    the classifier's."""

    def get(key: str, ndim: int) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"Synchformer checkpoint is missing key {key!r}.")
        if state[key].ndim != ndim:
            raise ValueError(f"Synchformer checkpoint key {key!r} has shape {tuple(state[key].shape)}; expected {ndim} dims.")
        return state[key]

    patch = get("afeat_extractor.ast.embeddings.patch_embeddings.projection.weight", 4)  # (hidden, 1, p, p)
    audio_pos = get("afeat_extractor.ast.embeddings.position_embeddings", 3)  # (1, 2 + f * t, hidden)
    fc1 = get("afeat_extractor.ast.encoder.layer.0.intermediate.dense.weight", 2)  # (intermediate, hidden)
    vproj = get("vproj.weight", 2)  # (hidden, visual_dim)
    pos = get("transformer.pos_emb_cfg.pos_emb", 3)  # (1, 2 + S * (8 + t), hidden)
    head = get("transformer.off_head.weight", 2)  # (classes, hidden)
    hidden, patch_size, stride = patch.shape[0], patch.shape[-1], 10
    freq_patches = (num_mel_bins - patch_size) // stride + 1
    if (audio_pos.shape[1] - 2) % freq_patches:
        raise ValueError(
            f"Synchformer checkpoint key 'afeat_extractor.ast.embeddings.position_embeddings' has shape "
            f"{tuple(audio_pos.shape)}: not 2 + {freq_patches} x time patches for {num_mel_bins} mel bands."
        )
    time_patches = (audio_pos.shape[1] - 2) // freq_patches
    tokens_per_segment = SYNC_SEGMENT_STRIDE  # 8 visual tokens per 16-frame segment (tubelets of 2 frames)
    if (pos.shape[1] - 2) % (tokens_per_segment + time_patches):
        raise ValueError(
            f"Synchformer checkpoint key 'transformer.pos_emb_cfg.pos_emb' has shape {tuple(pos.shape)}: not "
            f"2 + segments x ({tokens_per_segment} + {time_patches}) positions."
        )

    def count(prefix: str) -> int:
        indices = {int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
        if not indices or indices != set(range(max(indices) + 1)):
            raise ValueError(f"Synchformer checkpoint has no contiguous '{prefix}N.*' layers (found {sorted(indices)}).")
        return max(indices) + 1

    return {
        "visual_dim": vproj.shape[1],
        "hidden_size": hidden,
        "audio_num_layers": count("afeat_extractor.ast.encoder.layer."),
        "audio_num_attention_heads": audio_num_attention_heads or max(1, hidden // 64),
        "audio_intermediate_size": fc1.shape[0],
        "num_mel_bins": num_mel_bins,
        "spec_frames": (time_patches - 1) * stride + patch_size,
        "patch_size": patch_size,
        "frequency_stride": stride,
        "time_stride": stride,
        "num_layers": count("transformer.blocks."),
        "num_attention_heads": num_attention_heads,
        "window_segments": (pos.shape[1] - 2) // (tokens_per_segment + time_patches),
        "visual_tokens_per_segment": tokens_per_segment,
        "num_classes": head.shape[0],
    }


def offset_classifier_original_key(key: str) -> str:
    """The original checkpoint key a [`SynchformerOffsetClassifier`] key comes from (for "missing key" messages): the
    renaming rules read backwards."""
    for pattern, template in _OFFSET_RULES + _OFFSET_QKV_RULES:
        target = re.escape(template).replace(r"\{part\}", "to_[qkv]")
        target = re.sub(r"\\\{\d\\\}", "(.+?)", target)
        match = re.fullmatch(target, key)
        if match:
            groups = iter(match.groups())
            # the original pattern with each (group) replaced by the matched text, `\.` unescaped
            return re.sub(r"\([^)]*\)", lambda _: next(groups), pattern).replace("\\.", ".")
    return key


def _original_shape(original_key: str, tensor: torch.Tensor) -> torch.Size:
    # a third of a fused `in_proj_*` is reported with the fused tensor's shape (what the user's file holds)
    fused = original_key.endswith(("in_proj_weight", "in_proj_bias"))
    return torch.Size((tensor.shape[0] * 3, *tensor.shape[1:])) if fused else tensor.shape


def convert_synchformer_offset_classifier(
    checkpoint: Union[str, os.PathLike],
    output_dir: Optional[Union[str, os.PathLike]] = None,
    num_attention_heads: int = 8,
    audio_num_attention_heads: Optional[int] = None,
):
    r"""
    Convert a Synchformer checkpoint's audio branch and offset classifier into a [`SynchformerOffsetClassifier`]
    `save_pretrained` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``): with the visual encoder
    (`convert_synchformer`) it is the public model that av-benchmark's DeSync runs.

    | original | [`SynchformerOffsetClassifier`] |
    |---|---|
    | ``afeat_extractor.ast.embeddings.{patch_embeddings.projection,cls_token,distillation_token,position_embeddings}`` | ``patch_embed``, ``audio_cls_token``, ``audio_dist_token``, ``audio_pos_embed`` |
    | ``afeat_extractor.ast.encoder.layer.i.{layernorm_before,layernorm_after}`` | ``audio_layers.i.{norm1,norm2}`` |
    | ``...layer.i.attention.attention.{query,key,value}``, ``...attention.output.dense`` | ``audio_layers.i.attn.{to_q,to_k,to_v,to_out.0}`` |
    | ``...layer.i.intermediate.dense``, ``...layer.i.output.dense`` | ``audio_layers.i.ff.net.{0.proj,2}`` |
    | ``afeat_extractor.ast.layernorm`` | ``audio_final_norm`` |
    | ``afeat_extractor.freq_attn_agg.{cls_token,norm1,norm2,linear1,linear2}`` | ``freq_pool.{cls_token,layer.norm1,layer.norm2,layer.ff.net.0.proj,layer.ff.net.2}`` |
    | ``afeat_extractor.freq_attn_agg.self_attn.{in_proj_*,out_proj}`` | ``freq_pool.layer.attn.{to_q/k/v,to_out.0}`` (split in thirds) |
    | ``vproj``, ``aproj`` | ``visual_proj``, ``audio_proj`` |
    | ``transformer.{vis_in_lnorm,aud_in_lnorm,OFF_tok,MOD_tok,pos_emb_cfg.pos_emb}`` | ``visual_norm``, ``audio_norm``, ``offset_token``, ``modality_token``, ``pos_embed`` |
    | ``transformer.blocks.i.{ln1,ln2,attn.{query,key,value,proj},mlp.0,mlp.2}`` | ``layers.i.{norm1,norm2,attn.{to_q,to_k,to_v,to_out.0},ff.net.0.proj,ff.net.2}`` |
    | ``transformer.{ln_f,off_head}`` | ``final_norm``, ``offset_head`` |

    Args:
        checkpoint (`str` or `os.PathLike`): MMAudio's ``synchformer_state_dict.pth``, the original training checkpoint
            re-saved as a state dict, a ``.safetensors`` file, a folder holding ``synchformer_state_dict.pth``, or a
            Hub repo id.
        output_dir (`str` or `os.PathLike`, *optional*): A new or empty folder; None converts without saving.
        num_attention_heads (`int`, defaults to 8): Classifier heads (not stored in weights).
        audio_num_attention_heads (`int`, *optional*): AST heads; default ``hidden_size // 64`` (12).

    Returns:
        The converted [`SynchformerOffsetClassifier`] (eval mode).

    Raises:
        FileNotFoundError: `checkpoint` is not found.
        ValueError: `output_dir` is not empty, the file is not a readable checkpoint, or keys are missing, unexpected
            or of the wrong shape (one message listing them with their original names).
    """
    from ..models.encoders.synchformer_offset_classifier import SynchformerOffsetClassifier
    from .common import raise_key_problems

    output_dir = prepare_output_dir(output_dir)
    path = resolve_checkpoint_file(checkpoint, "synchformer_state_dict.pth")
    state = extract_offset_classifier_state_dict(_load_checkpoint_file(path))
    config = offset_classifier_config_from_state_dict(state, num_attention_heads, audio_num_attention_heads)
    converted, origin, unexpected = convert_offset_classifier_state_dict(state)
    model = SynchformerOffsetClassifier(**config)
    expected = model.state_dict()

    def name(key: str) -> str:
        return f"{origin[key]} (-> {key})" if key in origin else key

    raise_key_problems(
        f"Synchformer checkpoint {path!r} does not match SynchformerOffsetClassifier({config})",
        missing=[f"{offset_classifier_original_key(key)} (-> {key})" for key in expected if key not in converted],
        unexpected=unexpected + [name(key) for key in converted if key not in expected],
        mismatched=[
            f"{name(key)}: checkpoint {tuple(_original_shape(origin[key], converted[key]))} "
            f"vs model {tuple(expected[key].shape)}"
            for key in expected
            if key in converted and converted[key].shape != expected[key].shape
        ],
    )
    model.load_state_dict({key: value.float().contiguous() for key, value in converted.items()}, strict=True)
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        print(
            f"Converted the Synchformer audio branch and offset classifier ({num_parameters(model) / 1e6:.1f}M "
            f"parameters, {config['num_classes']} offset classes, {config['window_segments']}-segment window) to "
            f"{output_dir}."
        )
        print_licence("synchformer")
    return model
