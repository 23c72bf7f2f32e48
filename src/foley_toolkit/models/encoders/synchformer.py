"""Synchformer's visual encoder: a MotionFormer ViT-B/16 with divided space-time attention.

Kling-Foley's "align encoder" is Synchformer (Iashin et al., 2024). Its visual branch, used here, is a
MotionFormer (``divided_224_16x4``) feature extractor:

* the video (25 fps, 224 px centre crops, normalised to [-1, 1]) is cut into 16-frame segments (0.64 s) with a
  stride of 8 frames (`audio_utils.num_sync_segments`);
* each segment becomes tubelet tokens (Conv3d, kernel = stride = (2, 16, 16)): 8 time steps x 14 x 14 patches,
  plus one CLS token; positions = a spatial table (CLS + 196 patches) + a temporal table (8 steps);
* 12 pre-LN blocks of divided space-time attention: temporal attention (each patch attends to the same patch in
  the other time steps), then spatial attention (each patch attends to the patches of its own time step), then
  an MLP. In both attentions the CLS token attends to every token, and every group also attends to the CLS
  token (MotionFormer's ``DividedAttention``);
* final LayerNorm on the patch tokens (the CLS token is dropped, as Synchformer does);
* spatial pooling per time step: Synchformer's ``SpatialTransformerEncoderLayer`` — one pre-LN transformer
  layer over a learned pooling token and the 196 patches of a time step; the pooling token's output is the
  time step's feature. Only that token's output is used, so only its query is computed (same result, 1/197
  of the attention cost). The temporal aggregation is the identity, so a segment yields 8 tokens.

Output: ``(batch, segments * 8, hidden_size)``, 24 tokens per second of video on average (a segment of 0.64 s
yields 8 tokens every 0.32 s).

Weight names follow diffusers (``to_q``/``to_k``/``to_v``/``to_out.0``, ``FeedForward.net``). Converting the
official checkpoint is a renaming plus splitting the fused ``qkv`` / ``in_proj`` matrices:
``patch_embed_3d.proj -> patch_embed.proj``, ``temp_embed -> temporal_embed``, ``blocks.i.norm3/timeattn ->
blocks.i.temporal_norm/temporal_attn``, ``blocks.i.norm1/attn -> blocks.i.spatial_norm/spatial_attn``,
``blocks.i.norm2 -> blocks.i.ff_norm``, ``mlp.fc1/fc2 -> ff.net.0.proj/ff.net.2``, ``attn.proj -> to_out.0``,
``spatial_attn_agg.{cls_token,norm1,norm2,linear1,linear2,self_attn} -> spatial_pool.{cls_token,norm1,norm2,
ff.net.0.proj,ff.net.2,attn}``.
"""

from typing import Callable, Optional

import torch
from torch import nn

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ...audio_utils import num_sync_segments


def _trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def _vit_mlp(dim: int, mlp_ratio: float, dropout: float) -> FeedForward:
    # Linear -> exact GELU -> Linear, dropout after each (timm `Mlp`, torch `TransformerEncoderLayer`)
    return FeedForward(dim, inner_dim=int(dim * mlp_ratio), dropout=dropout, activation_fn="gelu", final_dropout=True)


class SynchformerPatchEmbed(nn.Module):
    """Tubelet embedding: `(batch, channels, frames, height, width)` -> `(batch, time * patches, hidden)`.

    Tokens are ordered time-major (all patches of time step 0, then of time step 1, ...).
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, temporal_patch_size: int):
        super().__init__()
        kernel = (temporal_patch_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=kernel, stride=kernel)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        return self.proj(segments).flatten(2).transpose(1, 2)


class SynchformerDividedAttnProcessor:
    r"""
    Attention processor for [`SynchformerDividedAttention`] (MotionFormer's `DividedAttention`).

    Two attention calls: the CLS token over every token, then every group (`"time"`: one per spatial patch, over its
    time steps; `"space"`: one per time step, over its patches) over the CLS token and the group's tokens, the groups
    batched. Both calls are diffusers' `dispatch_attention_fn`, so `model.set_attention_backend(name)` (which sets
    `_attention_backend` on every processor) and the `attention_backend(...)` context manager choose the kernel
    (`"native"` SDPA by default, `"_native_math"`, `"flex"`, `"flash"`, `"sage"`, ...). No mask is needed: every
    group has the same length.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "SynchformerDividedAttention",
        hidden_states: torch.Tensor,
        num_frames: int,
        num_patches: int,
        group: str,
    ) -> torch.Tensor:
        if group not in ("time", "space"):
            raise ValueError(f"`group` must be 'time' or 'space', got {group!r}.")
        batch = hidden_states.shape[0]
        heads, head_dim = attn.heads, attn.head_dim
        dropout_p = attn.attention_dropout if attn.training else 0.0

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, head_dim))  # (batch, length, heads, head_dim): the dispatcher's layout

        q = split_heads(attn.to_q(hidden_states))
        k = split_heads(attn.to_k(hidden_states))
        v = split_heads(attn.to_v(hidden_states))

        def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return dispatch_attention_fn(
                query,
                key,
                value,
                dropout_p=dropout_p,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )

        # the CLS token sees everything (space and time)
        cls_out = attend(q[:, :1], k, v)

        def to_groups(x: torch.Tensor) -> torch.Tensor:
            x = x[:, 1:].reshape(batch, num_frames, num_patches, heads, head_dim)
            if group == "time":  # one group per spatial patch: sequence over time
                x = x.transpose(1, 2)  # (batch, patches, time, heads, head_dim)
            return x.reshape(-1, x.shape[2], heads, head_dim)  # (batch * groups, group length, heads, head_dim)

        num_groups = num_patches if group == "time" else num_frames
        # every group also attends to the CLS key / value
        cls_k = k[:, :1].unsqueeze(1).expand(-1, num_groups, -1, -1, -1).reshape(-1, 1, heads, head_dim)
        cls_v = v[:, :1].unsqueeze(1).expand(-1, num_groups, -1, -1, -1).reshape(-1, 1, heads, head_dim)
        out = attend(to_groups(q), torch.cat([cls_k, to_groups(k)], dim=1), torch.cat([cls_v, to_groups(v)], dim=1))

        # back to (batch, time * patches, heads, head_dim), time-major
        out = out.reshape(batch, num_groups, -1, heads, head_dim)
        if group == "time":
            out = out.transpose(1, 2)  # (batch, time, patches, heads, head_dim)
        out = out.reshape(batch, num_frames * num_patches, heads, head_dim)
        out = torch.cat([cls_out, out], dim=1).flatten(2, 3).to(q.dtype)
        for layer in attn.to_out:
            out = layer(out)
        return out


class SynchformerDividedAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention restricted to groups of tokens, with a global CLS token (MotionFormer).

    The input is `(batch, 1 + time * patches, dim)`: a CLS token followed by time-major patch tokens.
    `group="time"`: a patch token attends to the CLS token and to the same spatial patch at every time step.
    `group="space"`: a patch token attends to the CLS token and to all patches of its own time step.
    The CLS token attends to every token in both cases. The computation is [`SynchformerDividedAttnProcessor`]'s
    (its attention calls go through diffusers' attention dispatcher).
    """

    _default_processor_cls = SynchformerDividedAttnProcessor
    _available_processors = [SynchformerDividedAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        processor=None,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"`hidden_size` ({dim}) must be divisible by `num_attention_heads` ({num_heads}).")
        self.heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = attention_dropout
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(self, hidden_states: torch.Tensor, num_frames: int, num_patches: int, group: str) -> torch.Tensor:
        """`(batch, 1 + num_frames * num_patches, dim)` -> the same shape."""
        return self.processor(self, hidden_states, num_frames, num_patches, group)


class SynchformerDividedSpaceTimeBlock(nn.Module):
    """Pre-LN block: temporal attention, spatial attention, MLP (MotionFormer `DividedSpaceTimeBlock`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        layer_norm_eps: float,
        dropout: float,
        attention_dropout: float,
    ):
        super().__init__()
        self.temporal_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.temporal_attn = SynchformerDividedAttention(dim, num_heads, qkv_bias, dropout, attention_dropout)
        self.spatial_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.spatial_attn = SynchformerDividedAttention(dim, num_heads, qkv_bias, dropout, attention_dropout)
        self.ff_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ff = _vit_mlp(dim, mlp_ratio, dropout)

    def forward(self, hidden_states: torch.Tensor, num_frames: int, num_patches: int) -> torch.Tensor:
        hidden_states = hidden_states + self.temporal_attn(
            self.temporal_norm(hidden_states), num_frames, num_patches, group="time"
        )
        hidden_states = hidden_states + self.spatial_attn(
            self.spatial_norm(hidden_states), num_frames, num_patches, group="space"
        )
        return hidden_states + self.ff(self.ff_norm(hidden_states))


class SynchformerPoolingAttnProcessor:
    r"""
    Attention processor for [`SynchformerPoolingAttention`]: the query of the first (pooling) token over every token,
    through diffusers' `dispatch_attention_fn` (the backend set by `set_attention_backend` / `attention_backend(...)`).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: "SynchformerPoolingAttention", tokens: torch.Tensor) -> torch.Tensor:
        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (attn.heads, -1))  # (batch, length, heads, head_dim): the dispatcher's layout

        query = split_heads(attn.to_q(tokens[:, :1]))
        attended = dispatch_attention_fn(
            query,
            split_heads(attn.to_k(tokens)),
            split_heads(attn.to_v(tokens)),
            dropout_p=attn.attention_dropout if attn.training else 0.0,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        attended = attended.flatten(2, 3).to(query.dtype)
        for layer in attn.to_out:
            attended = layer(attended)
        return attended


class SynchformerPoolingAttention(nn.Module, AttentionModuleMixin):
    """The self-attention of [`SynchformerSpatialPooling`] with only the first token's query:
    `(batch, 1 + patches, dim)` -> `(batch, 1, dim)` (the pooling token's output; the other tokens' outputs are never
    used). Projections `to_q`, `to_k`, `to_v`, `to_out.0` (the split `in_proj` / `out_proj` of torch's
    `MultiheadAttention`)."""

    _default_processor_cls = SynchformerPoolingAttnProcessor
    _available_processors = [SynchformerPoolingAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, attention_dropout: float = 0.0, processor=None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"`hidden_size` ({dim}) must be divisible by `num_attention_heads` ({num_heads}).")
        self.heads = num_heads
        self.attention_dropout = attention_dropout
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.processor(self, tokens)


class SynchformerSpatialPooling(nn.Module):
    """Pools the patches of one time step into one token (Synchformer `SpatialTransformerEncoderLayer`).

    A pre-LN transformer encoder layer (GELU MLP) runs over `[pool_token, patches]`; the pool token's output is
    the result. Only the pool token's query is computed: its output does not depend on the patches' outputs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        layer_norm_eps: float,
        dropout: float,
        attention_dropout: float,
    ):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = SynchformerPoolingAttention(dim, num_heads, dropout, attention_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ff = _vit_mlp(dim, mlp_ratio, dropout)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """`(batch, patches, dim)` -> `(batch, dim)`."""
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        pooled = cls + self.attn(self.norm1(torch.cat([cls, patches], dim=1)))
        pooled = pooled + self.ff(self.norm2(pooled))
        return pooled[:, 0]


class SynchformerEncoder(ModelMixin, AttentionMixin, ConfigMixin):
    r"""Synchformer visual features for Kling-Foley's sync (align) condition.

    Defaults are the official Synchformer visual encoder: MotionFormer ViT-B/16 (hidden 768, 12 layers, 12 heads,
    MLP 3072, 224 px), tubelets of 2 frames, 16-frame segments with stride 8.

    Args:
        in_channels (`int`, defaults to 3): image channels.
        image_size (`int`, defaults to 224): frame height and width.
        patch_size (`int`, defaults to 16): spatial patch size.
        temporal_patch_size (`int`, defaults to 2): frames per tubelet.
        segment_frames (`int`, defaults to 16): frames per segment (0.64 s at 25 fps).
        segment_stride (`int`, defaults to 8): frames between segment starts.
        hidden_size (`int`, defaults to 768): token width (the output feature size).
        num_layers (`int`, defaults to 12): divided space-time blocks.
        num_attention_heads (`int`, defaults to 12): attention heads.
        mlp_ratio (`float`, defaults to 4.0): MLP width / hidden size.
        qkv_bias (`bool`, defaults to True): bias in the query/key/value projections.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        dropout (`float`, defaults to 0.0): dropout after attention projections and in MLPs.
        attention_dropout (`float`, defaults to 0.0): dropout on attention weights.

    Attention backends: every attention call (the divided space-time attention of each block and the spatial pooling)
    goes through diffusers' `dispatch_attention_fn`, so `set_attention_backend(name)` and the
    `attention_backend(...)` context manager choose the kernel; unknown names raise a `ValueError`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SynchformerDividedSpaceTimeBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 224,
        patch_size: int = 16,
        temporal_patch_size: int = 2,
        segment_frames: int = 16,
        segment_stride: int = 8,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}).")
        if segment_frames % temporal_patch_size != 0:
            raise ValueError(
                f"`segment_frames` ({segment_frames}) must be a multiple of "
                f"`temporal_patch_size` ({temporal_patch_size})."
            )
        if segment_stride <= 0:
            raise ValueError(f"`segment_stride` must be positive, got {segment_stride}.")

        self.num_patches = (image_size // patch_size) ** 2
        self.tokens_per_segment = segment_frames // temporal_patch_size

        self.patch_embed = SynchformerPatchEmbed(in_channels, hidden_size, patch_size, temporal_patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        # separate space and time position tables (MotionFormer "separate" embedding); index 0 is the CLS token's
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, hidden_size))
        self.temporal_embed = nn.Parameter(torch.zeros(1, self.tokens_per_segment, hidden_size))
        self.blocks = nn.ModuleList(
            [
                SynchformerDividedSpaceTimeBlock(
                    hidden_size, num_attention_heads, mlp_ratio, qkv_bias, layer_norm_eps, dropout, attention_dropout
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.spatial_pool = SynchformerSpatialPooling(
            hidden_size, num_attention_heads, mlp_ratio, layer_norm_eps, dropout, attention_dropout
        )
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT initialisation (timm / MotionFormer): truncated normal 0.02 for linear layers and embeddings
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _trunc_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for parameter in (self.cls_token, self.pos_embed, self.temporal_embed, self.spatial_pool.cls_token):
            _trunc_normal_(parameter)

    def num_segments(self, num_frames: int) -> int:
        """Segments for `num_frames` frames: `audio_utils.num_sync_segments` with this encoder's `segment_frames`
        and `segment_stride` (0 if shorter than one segment)."""
        return num_sync_segments(num_frames, self.config.segment_frames, self.config.segment_stride)

    def encode_segments(self, segments: torch.Tensor) -> torch.Tensor:
        """`(segments, channels, segment_frames, height, width)` -> `(segments, tokens_per_segment, hidden_size)`."""
        num_frames, num_patches = self.tokens_per_segment, self.num_patches
        hidden_states = self.patch_embed(segments)  # (n, time * patches, hidden), time-major
        spatial = self.pos_embed[:, 1:].repeat(1, num_frames, 1)  # patch s of every time step
        temporal = self.temporal_embed.repeat_interleave(num_patches, dim=1)  # time step t of every patch
        position = spatial + temporal
        hidden_states = hidden_states + position
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(hidden_states.shape[0], -1, -1)
        hidden_states = torch.cat([cls, hidden_states], dim=1)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, num_frames, num_patches)
            else:
                hidden_states = block(hidden_states, num_frames, num_patches)

        # Synchformer drops the CLS token and normalises the patch tokens, then pools each time step
        patches = self.norm(hidden_states[:, 1:])
        patches = patches.reshape(-1, num_patches, patches.shape[-1])  # (n * time, patches, hidden)
        pooled = self.spatial_pool(patches)
        return pooled.view(-1, num_frames, pooled.shape[-1])

    def forward(
        self,
        frames: torch.Tensor,
        segment_batch_size: Optional[int] = 32,
        frame_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        r"""
        Cut the video into segments (`segment_frames` frames, `segment_stride` apart) and encode them. This is the one
        place that windows a video into Synchformer segments.

        Args:
            frames (`torch.Tensor`): `(batch, frames, 3, image_size, image_size)` float, 25 fps, normalised to
                [-1, 1] (`FoleyVideoProcessor.preprocess_sync`); or, with `frame_transform`, whatever it takes (e.g.
                uint8 224 px frames). At least `segment_frames` (16) frames.
            segment_batch_size (`int`, *optional*, defaults to 32): segments encoded per chunk, bounding memory
                for long videos (the result does not depend on it); None encodes all segments at once.
            frame_transform (`Callable`, *optional*): applied to the frames of each chunk (the contiguous frames its
                segments cover, `(frames, ...)`) before encoding, e.g. `FoleyVideoProcessor.preprocess_sync`, so a
                long video is held in float one chunk at a time; must return `(frames, 3, image_size, image_size)`
                float.

        Returns:
            `torch.Tensor` of shape `(batch, segments * 8, hidden_size)` with `segments = num_segments(frames)`;
            segment `s` gives tokens `8 s ... 8 s + 7`. Trailing frames that do not fill a segment are not used.
        """
        config = self.config
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"`frames` must be a torch.Tensor, got {type(frames).__name__}.")
        expected = (config.in_channels, config.image_size, config.image_size)
        if frames.ndim != 5 or (frame_transform is None and tuple(frames.shape[2:]) != expected):
            raise ValueError(
                f"`frames` must have shape (batch, frames, {', '.join(map(str, expected))}), "
                f"got {tuple(frames.shape)}."
            )
        if frame_transform is None and not frames.is_floating_point():
            raise ValueError(
                f"`frames` must be float frames normalised to [-1, 1] (see `preprocess_sync_frames`), "
                f"got {frames.dtype}."
            )
        batch, num_frames = frames.shape[:2]
        if num_frames < config.segment_frames:
            raise ValueError(
                f"`frames` has {num_frames} frames; Synchformer needs at least {config.segment_frames} "
                f"({config.segment_frames / 25:.2f} s at 25 fps). `load_video` pads short clips by repeating "
                "the last frame."
            )
        if segment_batch_size is not None and segment_batch_size <= 0:
            raise ValueError(f"`segment_batch_size` must be a positive integer or None, got {segment_batch_size}.")

        stride, length = config.segment_stride, config.segment_frames
        # `unfold` is the windowing: a view (batch, segments, channels, height, width, segment_frames), no copy
        num_segments = frames.unfold(1, length, stride).shape[1]
        total = batch * num_segments
        chunk = total if segment_batch_size is None else segment_batch_size
        outputs = []
        for first in range(0, total, chunk):
            last = min(first + chunk, total)
            # this chunk's (overlapping) windows, cut sample by sample from the frames they cover (transformed once)
            windows = []
            for sample in range(first // num_segments, (last - 1) // num_segments + 1):
                begin = max(first, sample * num_segments) - sample * num_segments
                end = min(last, (sample + 1) * num_segments) - sample * num_segments
                span = frames[sample, begin * stride : (end - 1) * stride + length]
                if frame_transform is not None:
                    span = frame_transform(span)
                    if tuple(span.shape[1:]) != expected or not span.is_floating_point():
                        raise ValueError(
                            f"`frame_transform` must return float frames of shape (frames, "
                            f"{', '.join(map(str, expected))}), got {span.dtype} {tuple(span.shape)}."
                        )
                span = span.to(dtype=self.dtype)
                # (segments, segment_frames, channels, height, width)
                windows.append(span.unfold(0, length, stride).permute(0, 4, 1, 2, 3))
            segments = torch.cat(windows).transpose(1, 2)  # (n, channels, segment_frames, height, width)
            outputs.append(self.encode_segments(segments))
        tokens = torch.cat(outputs, dim=0)  # (batch * segments, 8, hidden)
        return tokens.reshape(batch, num_segments * self.tokens_per_segment, tokens.shape[-1])
