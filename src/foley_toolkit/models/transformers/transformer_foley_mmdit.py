# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
"""The Kling-Foley flow network: a multimodal diffusion transformer (MM-DiT) over audio latents.

Paper: Kling-Foley (arXiv 2506.19774), sections 3.2-4.4 and Algorithm 1. Structure after diffusers'
`transformer_sd3.py` (joint blocks) and `transformer_flux.py` (single blocks), with MMAudio's conditioning
(1D conv feed-forwards, per-token "sync adaLN" from the Synchformer features, aligned RoPE).

Paper names and where they live here:
- MM-DiT joint blocks: [`FoleyJointTransformerBlock`]; the audio-only blocks after them:
  [`FoleySingleTransformerBlock`].
- sync adaLN: the Synchformer features, projected and upsampled to the audio length
  ([`FoleyMMDiTConditions.sync_adaln_features`]), are added to the global condition to modulate every audio-stream
  [`FoleyAdaLayerNorm`] per token.
- duration embedding: [`FoleyDurationEmbedding`] (`seconds_start`, `seconds_total`).
- aligned RoPE: [`aligned_rope_positions`], [`FoleyMMDiTTransformer.get_rotary_embeddings`].
- learned empty embeddings (Algorithm 1's null conditions for CFG): `empty_{text,clip,sync}_embedding`.

Reading order: building blocks (feed-forward, adaLN, duration embedding, attention processor + module, joint
block, single block), the conditions container, then the one public model class.
"""

import copy
import inspect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, apply_rotary_emb, get_1d_rotary_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale, logging
from diffusers.utils.torch_utils import maybe_allow_in_graph

from ...audio_utils import (
    CLIP_FRAME_RATE,
    SAMPLE_RATE,
    SAMPLES_PER_LATENT_FRAME,
    SYNC_FRAME_RATE,
    SYNC_SEGMENT_FRAMES,
    SYNC_SEGMENT_STRIDE,
    latent_frames_to_seconds,
    sequence_lengths,
)
from ..adapters import FoleyPeftAdapterMixin


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name


# Presets. Paper 6.2: hidden = 64 * heads; 17 heads / depth 23 (1.5B), 23 heads / depth 27 (3B), 32 heads /
# depth 27 (6B). "depth" counts joint + single blocks (as MMAudio's `depth`). With MMAudio-style blocks (SwiGLU
# feed-forwards at ratio 4, a kernel-3 1D conv in the audio and CLIP streams, a kernel-1 MLP for text), a joint block
# holds ~86*D^2 parameters (audio 34, CLIP 34, text 18) and a single block ~34*D^2, so the joint/single split sets
# the size at a given depth. 7 joint blocks (MMAudio-L's count) and the rest single lands every paper preset within
# 2.5% of its nominal size (meta-device counts):
#   1.5b: 7 joint + 16 single, D=1088 -> 1.52B;  3b: 7 + 20, D=1472 -> 3.05B;  6b: 7 + 20, D=2048 -> 5.85B.
# "small" (the default config) has MMAudio-S's shape (hidden 448, 7 heads, 4 joint + 8 single): 150,918,440
# parameters (151M; MMAudio-S itself is reported as 157M).
# Config keys of earlier versions that copied `audio_utils` rates, with the only values they may still carry.
_REMOVED_CONFIG_KEYS = {
    "sample_rate": SAMPLE_RATE,
    "samples_per_latent_frame": SAMPLES_PER_LATENT_FRAME,
    "clip_frame_rate": CLIP_FRAME_RATE,
    "sync_frame_rate": SYNC_FRAME_RATE,
    "sync_segment_frames": SYNC_SEGMENT_FRAMES,
    "sync_segment_stride": SYNC_SEGMENT_STRIDE,
}

_PRESETS = {
    "small": {"num_attention_heads": 7, "num_joint_layers": 4, "num_single_layers": 8},
    "kling-foley-1.5b": {"num_attention_heads": 17, "num_joint_layers": 7, "num_single_layers": 16},
    "kling-foley-3b": {"num_attention_heads": 23, "num_joint_layers": 7, "num_single_layers": 20},
    "kling-foley-6b": {"num_attention_heads": 32, "num_joint_layers": 7, "num_single_layers": 20},
}


def swiglu_inner_dim(dim: int, mlp_ratio: float, multiple_of: int = 256) -> int:
    """Hidden width of a SwiGLU feed-forward with the parameter count of a `mlp_ratio` GELU MLP (2/3 rule), rounded
    up to a multiple of 256 as in MMAudio/LLaMA (matmul-friendly widths)."""
    inner_dim = int(2 * mlp_ratio * dim / 3)
    return multiple_of * math.ceil(inner_dim / multiple_of)


def aligned_rope_positions(
    num_audio_tokens: int, num_clip_frames: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    RoPE positions of the audio tokens and the CLIP frames on one time axis (paper 3.4, "aligned RoPE").

    CLIP runs at 8 fps, audio latents at 43.07 Hz: CLIP positions are scaled by `num_audio_tokens / num_clip_frames`
    so that CLIP frame `i` and the audio token at the same time get the same rotary phase.

    Returns:
        `(audio_positions (num_audio_tokens,), clip_positions (num_clip_frames,))`, float64.
    """
    audio_positions = torch.arange(num_audio_tokens, dtype=torch.float64, device=device)
    clip_positions = torch.arange(num_clip_frames, dtype=torch.float64, device=device)
    clip_positions = clip_positions * (num_audio_tokens / max(num_clip_frames, 1))
    return audio_positions, clip_positions


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


def conv1d_channel_last(conv: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    r"""
    Applies `conv`, an `nn.Conv1d` over `(batch, channels, frames)` (stride 1, "same" padding), to channel-last
    `hidden_states` `(batch, frames, channels)` and returns `(batch, frames, out_channels)`.

    Computed as one matmul over the unfolded frames, whose `(channels, kernel)` order matches the conv weight's
    layout (no weight copy): on CPU oneDNN's bf16 Conv1d runs at about a third of the matmul rate, and the streams
    are channel-last anyway. A wrapped or hooked conv (e.g. a LoRA layer) runs through its own forward instead.
    """
    plain = (
        type(conv) is nn.Conv1d
        and "forward" not in conv.__dict__
        and not conv._forward_hooks
        and not conv._forward_pre_hooks
    )
    if not plain:
        return conv(hidden_states.transpose(1, 2)).transpose(1, 2)
    kernel_size, padding = conv.kernel_size[0], conv.padding[0]
    if kernel_size > 1:
        hidden_states = F.pad(hidden_states, (0, 0, padding, padding)).unfold(1, kernel_size, 1).flatten(2)
    return F.linear(hidden_states, conv.weight.flatten(1), conv.bias)


class FoleyFeedForward(nn.Module):
    r"""
    SwiGLU feed-forward over a token sequence `(batch, frames, dim)`; with `kernel_size > 1` its two projections are
    1D convolutions over time (the paper's "1D convolutions and MLPs" for local temporal structure).

    `proj_in` produces the value and the gate in one matmul/conv (`2 * inner_dim` channels) for speed.
    """

    def __init__(self, dim: int, inner_dim: int, kernel_size: int = 1, dim_out: int | None = None):
        super().__init__()
        dim_out = dim_out or dim
        self.kernel_size = kernel_size
        if kernel_size == 1:
            self.proj_in = nn.Linear(dim, 2 * inner_dim)
            self.proj_out = nn.Linear(inner_dim, dim_out)
        else:
            padding = kernel_size // 2
            self.proj_in = nn.Conv1d(dim, 2 * inner_dim, kernel_size, padding=padding)
            self.proj_out = nn.Conv1d(inner_dim, dim_out, kernel_size, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            hidden_states, gate = self.proj_in(hidden_states).chunk(2, dim=-1)
            return self.proj_out(F.silu(gate) * hidden_states)
        hidden_states, gate = conv1d_channel_last(self.proj_in, hidden_states).chunk(2, dim=-1)
        return conv1d_channel_last(self.proj_out, F.silu(gate) * hidden_states)


class FoleyInputProjection(nn.Module):
    r"""
    Projects one input stream `(batch, frames, in_dim)` into the model width `(batch, frames, dim)`: a linear layer
    (`kernel_size=1`) or a 1D conv, an activation, then a (conv) feed-forward.
    """

    def __init__(
        self, in_dim: int, dim: int, inner_dim: int, kernel_size: int, ff_kernel_size: int, activation: str = "silu"
    ):
        super().__init__()
        self.kernel_size = kernel_size
        if kernel_size == 1:
            self.proj = nn.Linear(in_dim, dim)
        else:
            self.proj = nn.Conv1d(in_dim, dim, kernel_size, padding=kernel_size // 2)
        self.act = nn.SELU() if activation == "selu" else nn.SiLU()
        self.ff = FoleyFeedForward(dim, inner_dim, kernel_size=ff_kernel_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            hidden_states = self.proj(hidden_states)
        else:
            hidden_states = conv1d_channel_last(self.proj, hidden_states)
        return self.ff(self.act(hidden_states))


class FoleyAdaLayerNorm(nn.Module):
    r"""
    LayerNorm (no affine) modulated by a condition: `norm(x) * (1 + scale) + shift`, plus further modulation chunks
    (gates, the feed-forward's shift/scale/gate) for the caller.

    The condition is `(batch, dim)` (global) or `(batch, frames, dim)` (per token: the audio stream's "sync adaLN",
    where the Synchformer features enter). It must already have gone through SiLU: the model applies SiLU once per
    forward instead of once per block. The per-token condition may also come as its distinct rows `(rows, dim)` with
    `index` `(batch, frames)` into them: the projection is then computed once per distinct row and gathered, which
    equals projecting every token (a linear layer acts row by row) at a fraction of the cost where rows repeat.
    """

    def __init__(self, dim: int, num_chunks: int = 6, eps: float = 1e-6):
        super().__init__()
        self.num_chunks = num_chunks
        self.linear = nn.Linear(dim, num_chunks * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)

    def forward(
        self, hidden_states: torch.Tensor, emb: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        modulation = self.linear(emb)
        if index is not None:
            modulation = modulation[index]  # (rows, chunks * dim) -> (batch, frames, chunks * dim)
        elif modulation.ndim == 2:
            modulation = modulation.unsqueeze(1)
        shift, scale, *rest = modulation.chunk(self.num_chunks, dim=-1)
        hidden_states = torch.addcmul(shift, self.norm(hidden_states), 1 + scale)
        return (hidden_states, *rest)


class FoleyDurationEmbedding(nn.Module):
    r"""
    The paper's duration embedding (4.2, "discrete duration embeddings"), used for `seconds_start` and
    `seconds_total`: learnable per-second embeddings of a duration in seconds, one vector
    per whole second `0..max_seconds`, linearly interpolated for fractional seconds (so 10.3 s lies between the 10 s
    and 11 s vectors), values clamped to `[0, max_seconds]`.
    """

    def __init__(self, max_seconds: int, dim: int):
        super().__init__()
        self.max_seconds = max_seconds
        self.embedding = nn.Embedding(max_seconds + 1, dim)

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        seconds = seconds.float().clamp(0, self.max_seconds)
        lower = seconds.floor().long().clamp(max=self.max_seconds - 1)
        fraction = (seconds - lower).unsqueeze(-1).to(self.embedding.weight.dtype)
        return torch.lerp(self.embedding(lower), self.embedding(lower + 1), fraction)


class FoleyAttnProcessor:
    r"""
    Attention processor for [`FoleyAttention`]: joint attention over audio + CLIP + text (paper 4.3) when the extra
    streams are given, audio self-attention otherwise.

    Q/K/V of each stream come from its own projections, get QK RMSNorm, are concatenated as `[audio, clip, text]`,
    rotated by `rotary_emb`, the aligned RoPE `(cos, sin)` of the audio (and CLIP) positions covering the
    concatenated sequence (text rows are the identity), go through one
    attention call and are split back into the streams.

    The attention call is diffusers' `dispatch_attention_fn`, so `model.set_attention_backend(name)` (which sets
    `_attention_backend` on every processor) and the `attention_backend(...)` context manager choose the kernel
    (`"native"` SDPA by default, `"_native_math"`, `"flex"`, `"flash"`, `"sage"`, ...). Padded text gives a boolean
    mask; backends that cannot take a mask (flash-attn, sage) raise a `ValueError` for it rather than ignore it.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self):
        if not hasattr(F, "scaled_dot_product_attention"):
            raise ImportError(f"{self.__class__.__name__} requires PyTorch 2.0 or newer.")

    def __call__(
        self,
        attn: "FoleyAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        clip_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (attn.heads, attn.head_dim))  # (batch, frames, heads, head_dim)

        queries = [attn.norm_q(split_heads(attn.to_q(hidden_states)))]
        keys = [attn.norm_k(split_heads(attn.to_k(hidden_states)))]
        values = [split_heads(attn.to_v(hidden_states))]
        lengths = [hidden_states.shape[1]]
        if clip_hidden_states is not None:
            queries.append(attn.norm_clip_q(split_heads(attn.clip_q_proj(clip_hidden_states))))
            keys.append(attn.norm_clip_k(split_heads(attn.clip_k_proj(clip_hidden_states))))
            values.append(split_heads(attn.clip_v_proj(clip_hidden_states)))
            lengths.append(clip_hidden_states.shape[1])
        if encoder_hidden_states is not None:
            queries.append(attn.norm_added_q(split_heads(attn.add_q_proj(encoder_hidden_states))))
            keys.append(attn.norm_added_k(split_heads(attn.add_k_proj(encoder_hidden_states))))
            values.append(split_heads(attn.add_v_proj(encoder_hidden_states)))
            lengths.append(encoder_hidden_states.shape[1])

        # (batch, frames, heads, head_dim): the layout of diffusers' attention dispatcher
        query = torch.cat(queries, dim=1)
        key = torch.cat(keys, dim=1)
        value = torch.cat(values, dim=1)

        if rotary_emb is not None:
            query = apply_rotary_emb(query, rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if len(lengths) == 1:
            hidden_states = attn.to_out[0](hidden_states)
            return attn.to_out[1](hidden_states)

        outputs = list(hidden_states.split(lengths, dim=1))
        hidden_states = attn.to_out[1](attn.to_out[0](outputs.pop(0)))
        clip_output = outputs.pop(0) if clip_hidden_states is not None else None
        text_output = outputs.pop(0) if encoder_hidden_states is not None else None
        if attn.context_pre_only:
            # Last joint block: the CLIP/text outputs are never used again, so they have no output projection.
            return hidden_states, None, None
        if clip_output is not None:
            clip_output = attn.to_clip_out(clip_output)
        if text_output is not None:
            text_output = attn.to_add_out(text_output)
        return hidden_states, clip_output, text_output


class FoleyAttention(nn.Module, AttentionModuleMixin):
    r"""
    Multi-stream attention with diffusers' projection names: `to_q`, `to_k`, `to_v`, `to_out.0` for the audio stream,
    `add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out` for the text stream (diffusers' `encoder_hidden_states`)
    and `clip_q_proj`, `clip_k_proj`, `clip_v_proj`, `to_clip_out` for the CLIP stream. QK RMSNorm on every stream.

    Parameters:
        query_dim (`int`): Width of the audio stream.
        heads (`int`): Number of attention heads.
        dim_head (`int`): Width of each head.
        added_kv_proj_dim (`int`, *optional*): Width of the text stream; `None` for audio self-attention.
        clip_kv_proj_dim (`int`, *optional*): Width of the CLIP stream; `None` for audio self-attention.
        context_pre_only (`bool`): If `True`, the CLIP/text streams only give keys/values (no output projection).
        eps (`float`): Epsilon of the QK RMSNorm.
    """

    _default_processor_cls = FoleyAttnProcessor
    _available_processors = [FoleyAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(
        self,
        query_dim: int,
        heads: int = 8,
        dim_head: int = 64,
        added_kv_proj_dim: int | None = None,
        clip_kv_proj_dim: int | None = None,
        context_pre_only: bool = False,
        bias: bool = True,
        out_bias: bool = True,
        eps: float = 1e-6,
        processor=None,
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_head
        self.inner_dim = heads * dim_head
        self.query_dim = query_dim
        self.added_kv_proj_dim = added_kv_proj_dim
        self.clip_kv_proj_dim = clip_kv_proj_dim
        self.context_pre_only = context_pre_only

        self.norm_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim, bias=out_bias), nn.Dropout(0.0)])

        if added_kv_proj_dim is not None:
            self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
            self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
            self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=bias)
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=bias)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=bias)
            if not context_pre_only:
                self.to_add_out = nn.Linear(self.inner_dim, added_kv_proj_dim, bias=out_bias)

        if clip_kv_proj_dim is not None:
            self.norm_clip_q = nn.RMSNorm(dim_head, eps=eps)
            self.norm_clip_k = nn.RMSNorm(dim_head, eps=eps)
            self.clip_q_proj = nn.Linear(clip_kv_proj_dim, self.inner_dim, bias=bias)
            self.clip_k_proj = nn.Linear(clip_kv_proj_dim, self.inner_dim, bias=bias)
            self.clip_v_proj = nn.Linear(clip_kv_proj_dim, self.inner_dim, bias=bias)
            if not context_pre_only:
                self.to_clip_out = nn.Linear(self.inner_dim, clip_kv_proj_dim, bias=out_bias)

        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        clip_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ):
        # Pass on only the `attention_kwargs` the processor accepts (as diffusers' FluxAttention does).
        accepted = set(inspect.signature(self.processor.__call__).parameters.keys())
        unused = [k for k in kwargs if k not in accepted]
        if unused:
            logger.warning(f"attention_kwargs {unused} are not expected by {type(self.processor).__name__}; ignored.")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        if clip_hidden_states is not None:
            kwargs["clip_hidden_states"] = clip_hidden_states
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)


@maybe_allow_in_graph
class FoleyJointTransformerBlock(nn.Module):
    r"""
    MM-DiT block (SD3) with three streams — audio, CLIP, text — each with its own adaLN, attention projections and
    feed-forward, sharing one joint attention. The audio stream is modulated per token (sync adaLN: global
    condition + Synchformer features); CLIP and text by the global condition. Audio/CLIP feed-forwards are 1D
    convs over time.

    With `context_pre_only=True` (the last joint block) the CLIP/text streams only provide keys and values.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        ff_inner_dim: int,
        conv_kernel_size: int = 3,
        context_pre_only: bool = False,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.context_pre_only = context_pre_only
        context_chunks = 2 if context_pre_only else 6

        self.norm1 = FoleyAdaLayerNorm(dim, 6, eps=eps)
        self.norm1_clip = FoleyAdaLayerNorm(dim, context_chunks, eps=eps)
        self.norm1_context = FoleyAdaLayerNorm(dim, context_chunks, eps=eps)
        self.attn = FoleyAttention(
            query_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            added_kv_proj_dim=dim,
            clip_kv_proj_dim=dim,
            context_pre_only=context_pre_only,
            eps=eps,
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ff = FoleyFeedForward(dim, ff_inner_dim, kernel_size=conv_kernel_size)
        if not context_pre_only:
            self.norm2_clip = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
            self.ff_clip = FoleyFeedForward(dim, ff_inner_dim, kernel_size=conv_kernel_size)
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
            self.ff_context = FoleyFeedForward(dim, ff_inner_dim, kernel_size=1)

    @staticmethod
    def _feed_forward(hidden_states, attn_output, norm, ff, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        hidden_states = torch.addcmul(hidden_states, gate_msa, attn_output)
        norm_hidden_states = torch.addcmul(shift_mlp, norm(hidden_states), 1 + scale_mlp)
        return torch.addcmul(hidden_states, gate_mlp, ff(norm_hidden_states))

    def forward(
        self,
        hidden_states: torch.Tensor,
        clip_hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        token_temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        token_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""
        Args:
            hidden_states: audio stream `(batch, audio_frames, dim)`.
            clip_hidden_states: CLIP stream `(batch, clip_frames, dim)`.
            encoder_hidden_states: text stream `(batch, text_tokens, dim)`.
            temb: SiLU of the global condition `(batch, dim)`.
            token_temb: SiLU of the per-token condition `(batch, audio_frames, dim)`, or its distinct rows
                `(rows, dim)` with `token_index`.
            rotary_emb: aligned RoPE `(cos, sin)`, each `(audio_frames + clip_frames + text_tokens, head_dim)`.
            attention_mask: boolean `(batch, 1, 1, audio_frames + clip_frames + text_tokens)`, `True` = attend.
            token_index: `(batch, audio_frames)` indices into the rows of `token_temb`, or `None`.
        """
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
            hidden_states, token_temb, token_index
        )
        norm_clip, *clip_mod = self.norm1_clip(clip_hidden_states, temb)
        norm_context, *context_mod = self.norm1_context(encoder_hidden_states, temb)

        attn_output, clip_attn_output, context_attn_output = self.attn(
            hidden_states=norm_hidden_states,
            encoder_hidden_states=norm_context,
            clip_hidden_states=norm_clip,
            attention_mask=attention_mask,
            rotary_emb=rotary_emb,
            **(attention_kwargs or {}),
        )

        hidden_states = self._feed_forward(
            hidden_states, attn_output, self.norm2, self.ff, gate_msa, shift_mlp, scale_mlp, gate_mlp
        )
        if self.context_pre_only:
            return hidden_states, None, None
        clip_hidden_states = self._feed_forward(
            clip_hidden_states, clip_attn_output, self.norm2_clip, self.ff_clip, *clip_mod
        )
        encoder_hidden_states = self._feed_forward(
            encoder_hidden_states, context_attn_output, self.norm2_context, self.ff_context, *context_mod
        )
        return hidden_states, clip_hidden_states, encoder_hidden_states


@maybe_allow_in_graph
class FoleySingleTransformerBlock(nn.Module):
    r"""
    Audio-only block (FLUX-style "single" block, paper 3.2: the joint block with the CLIP and text streams removed,
    joint attention reduced to self-attention), modulated per token, with a 1D conv feed-forward.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        ff_inner_dim: int,
        conv_kernel_size: int = 3,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = FoleyAdaLayerNorm(dim, 6, eps=eps)
        self.attn = FoleyAttention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.ff = FoleyFeedForward(dim, ff_inner_dim, kernel_size=conv_kernel_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states: audio stream `(batch, audio_frames, dim)`.
            token_temb: SiLU of the per-token condition `(batch, audio_frames, dim)`, or its distinct rows
                `(rows, dim)` with `token_index`.
            rotary_emb: audio RoPE `(cos, sin)`, each `(audio_frames, head_dim)`.
            token_index: `(batch, audio_frames)` indices into the rows of `token_temb`, or `None`.
        """
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
            hidden_states, token_temb, token_index
        )
        attn_output = self.attn(hidden_states=norm_hidden_states, rotary_emb=rotary_emb, **(attention_kwargs or {}))
        hidden_states = torch.addcmul(hidden_states, gate_msa, attn_output)
        norm_hidden_states = torch.addcmul(shift_mlp, self.norm2(hidden_states), 1 + scale_mlp)
        return torch.addcmul(hidden_states, gate_mlp, self.ff(norm_hidden_states))


# --------------------------------------------------------------------------------------------------------------------
# Conditions computed once per clip
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FoleyMMDiTConditions:
    r"""
    The timestep-independent part of the transformer's input, from [`FoleyMMDiTTransformer.prepare_conditions`]:
    compute it once per clip and pass it to every denoising step (`forward(..., conditions=...)`).

    Attributes:
        text_hidden_states (`torch.Tensor`): projected text tokens `(batch, text_tokens, dim)`.
        text_attention_mask (`torch.Tensor` or `None`): boolean `(batch, text_tokens)`, `True` = real token;
            `None` when every token is real.
        clip_hidden_states (`torch.Tensor`): projected CLIP frames `(batch, clip_frames, dim)`.
        sync_adaln_features (`torch.Tensor`): projected Synchformer features upsampled to the audio length
            `(batch, audio_frames, dim)`, added to the global condition of the audio stream's adaLN ("sync adaLN").
        pooled_conditions (`torch.Tensor`): pooled CLIP, pooled text, `seconds_start` and `seconds_total`
            embeddings concatenated, `(batch, 4 * dim)` (the global condition without the timestep).
        num_audio_tokens (`int`): the audio length these conditions were prepared for.
        sync_adaln_rows (`torch.Tensor` or `None`): the distinct rows of each sample's `sync_adaln_features`,
            `(rows, dim)`, grouped by sample; with `sync_adaln_index` `(batch, audio_frames)` (indices into them, so
            `sync_adaln_rows[sync_adaln_index]` equals `sync_adaln_features`) and `sync_adaln_row_sample` `(rows,)`
            (the sample of each row). Set by [`~FoleyMMDiTTransformer.prepare_conditions`] when the transformer's
            `deduplicate_modulation` is on; `None` = project every token.
    """

    text_hidden_states: torch.Tensor
    text_attention_mask: torch.Tensor | None
    clip_hidden_states: torch.Tensor
    sync_adaln_features: torch.Tensor
    pooled_conditions: torch.Tensor
    num_audio_tokens: int
    sync_adaln_rows: torch.Tensor | None = None
    sync_adaln_index: torch.Tensor | None = None
    sync_adaln_row_sample: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Samples the conditions were prepared for (`pooled_conditions` is `(batch, 4 * dim)`)."""
        return self.pooled_conditions.shape[0]

    def select(self, samples: Sequence[int] | torch.Tensor) -> "FoleyMMDiTConditions":
        r"""
        The conditions of some samples only, in the given order: e.g. `select(range(batch, 2 * batch))` keeps the
        conditional half of a `[uncond, cond]` classifier-free-guidance batch. Distinct per-token adaLN rows are kept
        for the selected samples and renumbered.

        Args:
            samples (`Sequence[int]` or `torch.Tensor`): Distinct sample indices in `[0, batch_size)`.

        Returns:
            [`FoleyMMDiTConditions`] for `len(samples)` samples.
        """
        device = self.pooled_conditions.device
        samples = torch.as_tensor(list(samples) if not isinstance(samples, torch.Tensor) else samples, device=device)
        samples = samples.long().reshape(-1)
        if samples.numel() == 0 or int(samples.min()) < 0 or int(samples.max()) >= self.batch_size:
            raise ValueError(f"`samples` must be indices in [0, {self.batch_size}), got {samples.tolist()}.")
        if samples.unique().numel() != samples.numel():
            raise ValueError(f"`samples` must be distinct, got {samples.tolist()}.")
        out = copy.copy(self)
        for name in ("text_hidden_states", "text_attention_mask", "clip_hidden_states", "sync_adaln_features",
                     "pooled_conditions"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, value[samples])
        if self.sync_adaln_rows is not None:
            new_sample = torch.full((self.batch_size,), -1, dtype=torch.long, device=device)
            new_sample[samples] = torch.arange(samples.numel(), device=device)
            keep = new_sample[self.sync_adaln_row_sample] >= 0
            new_row = torch.cumsum(keep.long(), dim=0) - 1  # old row -> its index among the kept rows
            out.sync_adaln_rows = self.sync_adaln_rows[keep]
            out.sync_adaln_row_sample = new_sample[self.sync_adaln_row_sample[keep]]
            out.sync_adaln_index = new_row[self.sync_adaln_index[samples]]
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FoleyMMDiTConditions":
        r"""Moves the tensors to `device` and casts the float ones to `dtype` (the mask stays boolean)."""
        out = copy.copy(self)
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if value.is_floating_point() else None
                setattr(out, field.name, value.to(device=device, dtype=cast))
        return out


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class FoleyMMDiTTransformer(ModelMixin, AttentionMixin, ConfigMixin, FoleyPeftAdapterMixin):
    r"""
    The Kling-Foley flow network (arXiv 2506.19774, sections 3.2-4.4, Algorithm 1): an MM-DiT over audio latents
    conditioned on T5 text tokens, MetaCLIP frame features, Synchformer sync features, the flow timestep and the
    clip's `seconds_start` / `seconds_total`.

    Structure: input projections (1D convs + MLPs) → global condition (timestep + pooled CLIP + pooled text +
    duration embeddings through a shallow MLP) and per-token condition ("sync adaLN": global + Synchformer features,
    upsampled nearest-exact to the audio length) → `num_joint_layers` joint blocks (one attention over
    audio + CLIP + text with aligned RoPE on audio and CLIP, none on text, QK RMSNorm, separate weights per
    modality) → `num_single_layers` audio-only blocks → adaLN + LayerNorm + Conv1d → velocity.

    Missing modalities (`None`, or per sample via `drop_*`) are replaced by learned empty embeddings — the null
    condition for classifier-free guidance. Timesteps follow diffusers' flow matching (`sigma * 1000`, the model
    predicts `noise - x0`).

    Presets ([`~FoleyMMDiTTransformer.preset_config`]): `"small"` (hidden 448, 7 heads, 4 joint + 8 single, MMAudio-S
    size) and the paper's scaling presets (section 6.2, hidden = 64 * heads, depth = joint + single):

    | preset | heads | hidden | joint + single | parameters |
    |---|---|---|---|---|
    | `small` (default) | 7 | 448 | 4 + 8 | 151M |
    | `kling-foley-1.5b` | 17 | 1088 | 7 + 16 | 1.52B |
    | `kling-foley-3b` | 23 | 1472 | 7 + 20 | 3.05B |
    | `kling-foley-6b` | 32 | 2048 | 7 + 20 | 5.85B |

    Why this split: with SwiGLU feed-forwards at `mlp_ratio=4` and kernel-3 conv feed-forwards in the audio and CLIP
    streams (MMAudio's blocks), a joint block holds ~86·D² parameters and a single block ~34·D², so at the paper's
    depths the joint/single split sets the size; 7 joint blocks (MMAudio-L's count) and the rest audio-only puts all
    three presets within 2.5% of the paper's sizes.

    Parameters:
        in_channels (`int`, defaults to 40): Latent channels of the MelVAE.
        out_channels (`int`, *optional*): Output channels; defaults to `in_channels`.
        text_dim (`int`, defaults to 768): Width of the text features (T5-Base).
        clip_dim (`int`, defaults to 1280): Width of the CLIP frame features (MetaCLIP ViT-bigG-14 projection).
        sync_dim (`int`, defaults to 768): Width of the Synchformer features.
        num_attention_heads (`int`, defaults to 7): Attention heads; hidden width = heads * `attention_head_dim`.
        attention_head_dim (`int`, defaults to 64): Width of each head.
        num_joint_layers (`int`, defaults to 4): Number of joint (audio + CLIP + text) blocks, N1.
        num_single_layers (`int`, defaults to 8): Number of audio-only blocks, N2.
        mlp_ratio (`float`, defaults to 4.0): Feed-forward size relative to a GELU MLP (SwiGLU 2/3 rule).
        conv_kernel_size (`int`, defaults to 3): Kernel of the conv feed-forwards in the audio and CLIP streams.
        timestep_embedding_dim (`int`, defaults to 256): Sinusoidal timestep features before the MLP.
        max_seconds (`int`, defaults to 512): Largest `seconds_start` / `seconds_total` with its own embedding.
        rope_theta (`float`, defaults to 10000.0): RoPE base.
        sync_tokens_per_segment (`int`, defaults to 8): Synchformer tokens per segment (learned position
            embedding within a segment).
        eps (`float`, defaults to 1e-6): Epsilon of the LayerNorms and QK RMSNorms.
        trained_seconds (`float`, *optional*): Longest clip length in seconds the model was trained on (recorded by
            `training/train_transformer.py`; not used by the forward pass): the pipeline's `window_seconds="auto"`.

    Attention backends: `set_attention_backend(name)` routes every attention layer through that diffusers backend
    (see [`FoleyAttnProcessor`]); unknown names raise a `ValueError`.

    LoRA (diffusers' `PeftAdapterMixin`; keys in pipeline LoRA files start with `transformer.`):
    `default_lora_target_modules` are the audio stream's attention projections `to_q`, `to_k`, `to_v`, `to_out.0` of
    every joint and single block — where a style/domain LoRA changes what the audio attends to, leaving the CLIP and
    text streams' projections as trained (the `training/train_lora.py` default).
    """

    lora_prefix = "transformer"
    default_lora_target_modules = ["to_q", "to_k", "to_v", "to_out.0"]

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FoleyJointTransformerBlock", "FoleySingleTransformerBlock"]
    _skip_layerwise_casting_patterns = ["norm", "embedding"]
    _repeated_blocks = ["FoleyJointTransformerBlock", "FoleySingleTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 40,
        out_channels: int | None = None,
        text_dim: int = 768,
        clip_dim: int = 1280,
        sync_dim: int = 768,
        num_attention_heads: int = 7,
        attention_head_dim: int = 64,
        num_joint_layers: int = 4,
        num_single_layers: int = 8,
        mlp_ratio: float = 4.0,
        conv_kernel_size: int = 3,
        timestep_embedding_dim: int = 256,
        max_seconds: int = 512,
        rope_theta: float = 10000.0,
        sync_tokens_per_segment: int = 8,
        eps: float = 1e-6,
        trained_seconds: float | None = None,
    ):
        super().__init__()
        if num_joint_layers < 1:
            raise ValueError(
                f"`num_joint_layers` must be >= 1 (CLIP and text only enter there), got {num_joint_layers}."
            )
        if attention_head_dim % 2:
            raise ValueError(f"`attention_head_dim` must be even for RoPE, got {attention_head_dim}.")
        self.out_channels = out_channels or in_channels
        self.inner_dim = dim = num_attention_heads * attention_head_dim
        ff_inner_dim = swiglu_inner_dim(dim, mlp_ratio)

        # 1. Input projections (paper: "1D convolutions and MLPs" capture local temporal structure)
        self.audio_input_proj = FoleyInputProjection(in_channels, dim, ff_inner_dim, 7, 7, activation="selu")
        self.clip_input_proj = FoleyInputProjection(clip_dim, dim, ff_inner_dim, 1, 3)
        self.text_input_proj = FoleyInputProjection(text_dim, dim, ff_inner_dim, 1, 1)
        self.sync_input_proj = FoleyInputProjection(sync_dim, dim, ff_inner_dim, 7, 3, activation="selu")
        # Position of each token within its Synchformer segment.
        self.sync_pos_embedding = nn.Parameter(torch.zeros(sync_tokens_per_segment, sync_dim))

        # 2. Learned empty embeddings (paper Algorithm 1: e_v, e_t) for missing modalities / CFG.
        self.empty_text_embedding = nn.Parameter(torch.zeros(1, text_dim))
        self.empty_clip_embedding = nn.Parameter(torch.zeros(clip_dim))
        self.empty_sync_embedding = nn.Parameter(torch.zeros(sync_dim))

        # 3. Global condition: timestep + pooled CLIP + pooled text + seconds_start + seconds_total -> shallow MLP.
        self.time_proj = Timesteps(timestep_embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(timestep_embedding_dim, dim)
        self.seconds_start_embedding = FoleyDurationEmbedding(max_seconds, dim)
        self.seconds_total_embedding = FoleyDurationEmbedding(max_seconds, dim)
        self.global_cond_mlp = nn.Sequential(nn.Linear(5 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))

        # 4. Transformer blocks
        self.transformer_blocks = nn.ModuleList(
            [
                FoleyJointTransformerBlock(
                    dim,
                    num_attention_heads,
                    attention_head_dim,
                    ff_inner_dim,
                    conv_kernel_size=conv_kernel_size,
                    context_pre_only=i == num_joint_layers - 1,
                    eps=eps,
                )
                for i in range(num_joint_layers)
            ]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                FoleySingleTransformerBlock(
                    dim,
                    num_attention_heads,
                    attention_head_dim,
                    ff_inner_dim,
                    conv_kernel_size=conv_kernel_size,
                    eps=eps,
                )
                for _ in range(num_single_layers)
            ]
        )

        # 5. Output: adaLN + LayerNorm + Conv1d
        self.norm_out = FoleyAdaLayerNorm(dim, 2, eps=eps)
        self.proj_out = nn.Conv1d(dim, self.out_channels, kernel_size=7, padding=3)

        self.gradient_checkpointing = False
        # The audio stream's per-token adaLN projections computed once per distinct condition row (exact; see
        # `prepare_conditions`). A runtime switch, not a config entry: it changes no weight and no output.
        self.deduplicate_modulation = True
        # Samples whose noisy latents are bit-identical (the two halves of a batched-CFG call) share one run of the
        # audio input projection (exact; see `_distinct_samples`). Also a runtime switch, not a config entry.
        self.deduplicate_latents = True
        self._rope_cache: dict = {}
        self._initialize_weights()

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # Earlier configs copied six `audio_utils` rates; lengths now come from `audio_utils` itself. Such a config
        # still loads (and computes the same) when its values are those rates; other values could not be honoured.
        config_dict = dict(config_dict)
        for key, value in _REMOVED_CONFIG_KEYS.items():
            config_dict_value = config_dict.pop(key, value)
            if config_dict_value != value:
                raise ValueError(
                    f"The transformer config sets `{key}` to {config_dict_value!r}, but it is no longer a transformer "
                    f"argument: lengths come from `foley_toolkit.audio_utils`, where it is {value!r}. Remove the key "
                    "only if the model was trained with the audio_utils value."
                )
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def preset_config(cls, name: str) -> dict[str, Any]:
        r"""
        Config of a named size, for `FoleyMMDiTTransformer.from_config(...)` or `FoleyMMDiTTransformer(**config)`.

        Args:
            name (`str`): `"small"` (the default config, MMAudio-S's shape, 151M), `"kling-foley-1.5b"`,
                `"kling-foley-3b"` or `"kling-foley-6b"` (paper 6.2; see the class docstring for the joint/single
                split).

        Returns:
            `dict` of `__init__` arguments, with T5-Base (768), MetaCLIP bigG (1280), Synchformer (768) input
            widths and 40 latent channels.
        """
        if name not in _PRESETS:
            raise ValueError(f"Unknown preset `name`={name!r}; valid names: {', '.join(sorted(_PRESETS))}.")
        return {
            "in_channels": 40,
            "text_dim": 768,
            "clip_dim": 1280,
            "sync_dim": 768,
            "attention_head_dim": 64,
            "mlp_ratio": 4.0,
            **_PRESETS[name],
        }

    def _initialize_weights(self):
        # DiT-style: xavier linears, adaLN-zero (every block starts as the identity), zero output layer.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_2.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, FoleyAdaLayerNorm):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        nn.init.normal_(self.seconds_start_embedding.embedding.weight, std=0.02)
        nn.init.normal_(self.seconds_total_embedding.embedding.weight, std=0.02)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    # ---------------------------------------------------------------------------------------------------------------
    # Lengths, positions, validation
    # ---------------------------------------------------------------------------------------------------------------

    @staticmethod
    def audio_seconds(num_audio_tokens: int) -> float:
        """Seconds covered by `num_audio_tokens` latent frames (`audio_utils`' 1024 samples per frame at 44.1 kHz):
        the default `seconds_total`."""
        return latent_frames_to_seconds(num_audio_tokens)

    def default_condition_lengths(self, num_audio_tokens: int) -> dict[str, int]:
        r"""
        Lengths of the empty CLIP and sync sequences used when `clip_features` / `sync_features` is missing: the CLIP
        frames and Synchformer segments that [`~foley_toolkit.audio_utils.sequence_lengths`] gives a clip of
        [`~FoleyMMDiTTransformer.audio_seconds`]`(num_audio_tokens)` seconds (at least one of each), i.e. those of any
        clip with `num_audio_tokens` audio tokens whose duration is a whole number of seconds. Passing `drop_clip` /
        `drop_sync` with features of these lengths gives exactly the output of passing `None`.
        """
        lengths = sequence_lengths(self.audio_seconds(num_audio_tokens))
        return {
            "clip_frames": max(lengths["clip_frames"], 1),
            "sync_tokens": max(lengths["sync_segments"], 1) * self.config.sync_tokens_per_segment,
        }

    def get_rotary_embeddings(
        self, num_audio_tokens: int, num_clip_frames: int, num_text_tokens: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Aligned RoPE `(cos, sin)` for the joint sequence `[audio, clip, text]`, each
        `(num_audio_tokens + num_clip_frames + num_text_tokens, attention_head_dim)` float32. Audio token `j` sits at
        position `j`, CLIP frame `i` at `i * num_audio_tokens / num_clip_frames` (equal times, equal phases); text
        rows are the identity (cos 1, sin 0): text has no time axis. The first `num_audio_tokens` rows are the
        audio-only table of the single blocks. Computed from the lengths at call time (cached per length).
        """
        key = (num_audio_tokens, num_clip_frames, num_text_tokens, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 16:
                self._rope_cache.clear()
            audio_positions, clip_positions = aligned_rope_positions(num_audio_tokens, num_clip_frames)
            positions = torch.cat([audio_positions, clip_positions])
            cos, sin = get_1d_rotary_pos_embed(
                self.config.attention_head_dim,
                positions,
                theta=self.config.rope_theta,
                use_real=True,
                repeat_interleave_real=True,
                freqs_dtype=torch.float64,
            )
            head_dim = self.config.attention_head_dim
            cos = torch.cat([cos, torch.ones(num_text_tokens, head_dim)])
            sin = torch.cat([sin, torch.zeros(num_text_tokens, head_dim)])
            self._rope_cache[key] = (cos.float().to(device), sin.float().to(device))
        return self._rope_cache[key]

    @staticmethod
    def _check_features(name: str, value: torch.Tensor | None, width: int, batch_size: int | None) -> None:
        if value is None:
            return
        if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[-1] != width:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be a tensor of shape (batch, frames, {width}), got {shape}.")
        if value.shape[1] < 1:
            raise ValueError(f"`{name}` must have at least one frame, got shape {tuple(value.shape)}.")
        if batch_size is not None and value.shape[0] != batch_size:
            raise ValueError(f"`{name}` has batch size {value.shape[0]}, expected {batch_size}.")

    @staticmethod
    def _per_sample(name: str, value, batch_size: int, default: float | None, device, dtype) -> torch.Tensor | None:
        """A `(batch,)` tensor from a scalar / `(batch,)` / `(1,)` value; `default` (or `None`) when missing."""
        if value is None:
            return None if default is None else torch.full((batch_size,), default, device=device, dtype=dtype)
        value = torch.as_tensor(value, device=device)
        if value.ndim == 0 or value.shape == (1,):
            value = value.reshape(1).expand(batch_size)
        if value.shape != (batch_size,):
            raise ValueError(f"`{name}` must be a scalar or have shape ({batch_size},), got {tuple(value.shape)}.")
        return value.to(dtype)

    # ---------------------------------------------------------------------------------------------------------------
    # Conditions (timestep-independent, once per clip)
    # ---------------------------------------------------------------------------------------------------------------

    def prepare_conditions(
        self,
        num_audio_tokens: int,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        sync_features: torch.Tensor | None = None,
        seconds_start: torch.Tensor | float | None = None,
        seconds_total: torch.Tensor | float | None = None,
        drop_text: torch.Tensor | None = None,
        drop_clip: torch.Tensor | None = None,
        drop_sync: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> FoleyMMDiTConditions:
        r"""
        Computes everything that does not depend on the timestep or the noisy latent — text/CLIP/sync projections,
        the upsampled sync adaLN features, pooled CLIP/text and duration embeddings — once per clip. Pass the result to
        every denoising step as `forward(latents, t, conditions=conditions)`; the output equals a plain `forward`
        with the same arguments.

        The nine condition arguments below are also those of [`~FoleyMMDiTTransformer.forward`], which passes them
        here; this is where they are documented. Each may be missing (`None`): a missing text, CLIP or sync input is
        the learned empty embedding for every sample.

        Args:
            num_audio_tokens (`int`): Audio latent frames `T_a` the conditions are for.
            encoder_hidden_states (`torch.Tensor`, *optional*): T5 tokens `(batch, text_tokens, text_dim)`.
            encoder_attention_mask (`torch.Tensor`, *optional*): `(batch, text_tokens)`, 1 = real token, 0 = padding
                (padded tokens change nothing: masked in the joint attention and in pooling).
            clip_features (`torch.Tensor`, *optional*): MetaCLIP frame features `(batch, clip_frames, clip_dim)` at
                8 fps; missing -> [`~FoleyMMDiTTransformer.default_condition_lengths`] empty frames.
            sync_features (`torch.Tensor`, *optional*): Synchformer tokens `(batch, sync_tokens, sync_dim)`, the
                input of the sync adaLN; missing -> [`~FoleyMMDiTTransformer.default_condition_lengths`] empty tokens.
            seconds_start (`torch.Tensor` or `float`, *optional*): `(batch,)` or scalar, for the duration embedding;
                defaults to 0.
            seconds_total (`torch.Tensor` or `float`, *optional*): `(batch,)` or scalar, for the duration embedding;
                defaults to the audio length, [`~FoleyMMDiTTransformer.audio_seconds`]`(num_audio_tokens)`.
            drop_text / drop_clip / drop_sync (`torch.Tensor`, *optional*): boolean `(batch,)`; `True` replaces that
                sample's modality by its learned empty embedding (condition dropout, batched CFG).
            batch_size (`int`, *optional*): Needed only when text, CLIP and sync are all missing (defaults to 1).

        Returns:
            [`FoleyMMDiTConditions`]
        """
        try:
            valid = operator.index(num_audio_tokens) >= 1
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(f"`num_audio_tokens` must be a positive int (audio frames), got {num_audio_tokens!r}.")
        num_audio_tokens = operator.index(num_audio_tokens)
        config = self.config
        for name, value, width in (
            ("encoder_hidden_states", encoder_hidden_states, config.text_dim),
            ("clip_features", clip_features, config.clip_dim),
            ("sync_features", sync_features, config.sync_dim),
        ):
            self._check_features(name, value, width, batch_size)
            if value is not None and batch_size is None:
                batch_size = value.shape[0]
        batch_size = batch_size or 1
        device = self.empty_clip_embedding.device
        dtype = self.empty_clip_embedding.dtype

        drops = {}
        for name, value in (("drop_text", drop_text), ("drop_clip", drop_clip), ("drop_sync", drop_sync)):
            drops[name] = self._per_sample(name, value, batch_size, None, device, torch.bool)

        # Text: missing -> one learned empty token; dropped samples keep only that token (the rest is masked).
        if encoder_hidden_states is None:
            text = self.empty_text_embedding.expand(batch_size, 1, -1)
            text_mask = None
        else:
            text = encoder_hidden_states.to(device=device, dtype=dtype)
            text_mask = None
            if encoder_attention_mask is not None:
                if encoder_attention_mask.shape != text.shape[:2]:
                    raise ValueError(
                        f"`encoder_attention_mask` must have shape {tuple(text.shape[:2])} (batch, text_tokens), got "
                        f"{tuple(encoder_attention_mask.shape)}."
                    )
                text_mask = encoder_attention_mask.to(device=device).bool()
            if drops["drop_text"] is not None:
                # Applied even when nothing is dropped, so that training with `drop_*` always has the empty
                # embeddings in the graph (DDP without find_unused_parameters).
                drop = drops["drop_text"]
                empty = F.pad(self.empty_text_embedding, (0, 0, 0, text.shape[1] - 1))  # empty token, then zeros
                text = torch.where(drop[:, None, None], empty.unsqueeze(0), text)
                if text_mask is None:
                    text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
                empty_mask = torch.zeros_like(text_mask[0])
                empty_mask[0] = True
                text_mask = torch.where(drop[:, None], empty_mask, text_mask)
            if text_mask is not None and bool(text_mask.all()):
                text_mask = None  # no padding: let SDPA take its unmasked fast path

        # Empty-sequence lengths are needed (and computed) only for a missing condition.
        lengths = {}
        if clip_features is None or sync_features is None:
            lengths = self.default_condition_lengths(num_audio_tokens)
        clip = self._fill_empty(
            clip_features, self.empty_clip_embedding, drops["drop_clip"], batch_size, lengths.get("clip_frames")
        )
        sync = self._fill_empty(
            sync_features, self.empty_sync_embedding, drops["drop_sync"], batch_size, lengths.get("sync_tokens")
        )

        # Projections into the model width.
        text = self.text_input_proj(text)
        clip = self.clip_input_proj(clip)
        positions = torch.arange(sync.shape[1], device=device) % config.sync_tokens_per_segment
        sync = self.sync_input_proj(sync + self.sync_pos_embedding[positions])
        # sync adaLN: Synchformer runs at 24 tokens/s, audio at 43.07 Hz; nearest-exact upsampling to T_a.
        # Contiguous (frames, dim) rows: the adaLN projections then see the same row-major layout whether every token
        # or only the distinct rows are projected (a transposed layout takes another, differently rounding bf16 GEMM).
        sync_adaln = F.interpolate(sync.transpose(1, 2), size=num_audio_tokens, mode="nearest-exact").transpose(1, 2)
        sync_adaln = sync_adaln.contiguous()
        dedupe = self._distinct_sync_rows(sync, num_audio_tokens) if self.deduplicate_modulation else {}

        # Pooled conditions (text pooling ignores padded tokens).
        clip_pooled = clip.mean(dim=1)
        if text_mask is None:
            text_pooled = text.mean(dim=1)
        else:
            weights = text_mask.to(text.dtype).unsqueeze(-1)
            text_pooled = (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        seconds_start = self._per_sample("seconds_start", seconds_start, batch_size, 0.0, device, torch.float32)
        default_total = self.audio_seconds(num_audio_tokens) if seconds_total is None else None
        seconds_total = self._per_sample(
            "seconds_total", seconds_total, batch_size, default_total, device, torch.float32
        )
        pooled = torch.cat(
            [
                clip_pooled,
                text_pooled,
                self.seconds_start_embedding(seconds_start).to(dtype),
                self.seconds_total_embedding(seconds_total).to(dtype),
            ],
            dim=-1,
        )
        return FoleyMMDiTConditions(
            text_hidden_states=text,
            text_attention_mask=text_mask,
            clip_hidden_states=clip,
            sync_adaln_features=sync_adaln,
            pooled_conditions=pooled,
            num_audio_tokens=num_audio_tokens,
            **dedupe,
        )

    @staticmethod
    def _distinct_sync_rows(sync: torch.Tensor, num_audio_tokens: int) -> dict[str, torch.Tensor]:
        r"""
        The distinct rows of each sample's upsampled sync adaLN features, for computing every per-token adaLN
        projection once per distinct row. Rows repeat because the nearest-exact upsampling copies each of the
        24 tokens/s about 1.8 times, and a dropped or missing sync input (the unconditional CFG sample) is the
        learned empty embedding plus `sync_tokens_per_segment` position embeddings: that many distinct rows away
        from the edges of the input convolutions (`small`, 8 s: 192 distinct rows of 345 in the conditional sample,
        18 in the unconditional one).

        Rows are compared bit for bit (an integer view), so equal rows give bit-identical projections; `index`
        reproduces `F.interpolate(..., mode="nearest-exact")` from the op itself (an arange through it).

        Args:
            sync: projected sync tokens `(batch, sync_tokens, dim)`.
            num_audio_tokens: audio frames `T_a`.

        Returns:
            `sync_adaln_rows` `(rows, dim)`, `sync_adaln_index` `(batch, T_a)`, `sync_adaln_row_sample` `(rows,)`.
        """
        batch_size, num_tokens, dim = sync.shape
        int_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[sync.element_size()]
        flat = sync.reshape(batch_size * num_tokens, dim)
        sample = torch.arange(batch_size, device=sync.device).repeat_interleave(num_tokens)
        keys = torch.cat([sample.to(int_dtype).unsqueeze(1), flat.detach().view(int_dtype)], dim=1)
        unique_keys, inverse = torch.unique(keys, dim=0, return_inverse=True)  # sorted: grouped by sample
        positions = torch.arange(flat.shape[0], device=sync.device)
        first = torch.full((unique_keys.shape[0],), flat.shape[0], device=sync.device, dtype=positions.dtype)
        first = first.scatter_reduce(0, inverse, positions, reduce="amin")
        source = torch.arange(num_tokens, device=sync.device, dtype=torch.float32).view(1, 1, -1)
        upsample = F.interpolate(source, size=num_audio_tokens, mode="nearest-exact").view(-1).long()
        return {
            "sync_adaln_rows": flat[first],
            "sync_adaln_index": inverse.view(batch_size, num_tokens)[:, upsample],
            "sync_adaln_row_sample": sample[first],
        }

    @staticmethod
    def _distinct_samples(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """
        The distinct samples of a batch, compared bit for bit: `(first, inverse)` with `hidden_states[first][inverse]`
        equal to `hidden_states`, or `None` where every sample differs (nothing to share).

        With classifier-free guidance the pipeline calls the transformer on `torch.cat([latents] * 2)`: both halves
        hold the same noisy latents, and the audio input projection (a conv, SELU and a conv feed-forward: 8.4 of the
        `small` preset's 132.7 GFLOP per 8 s CFG step) depends on nothing else. `torch.equal` costs one pass over
        `(batch, frames, in_channels)` values, negligible beside the projection.
        """
        batch_size = hidden_states.shape[0]
        if batch_size < 2 or torch.is_grad_enabled():  # training batches are distinct clips; keep autograd plain
            return None
        first: list[int] = []
        inverse: list[int] = []
        for sample in range(batch_size):
            same = (k for k, kept in enumerate(first) if torch.equal(hidden_states[kept], hidden_states[sample]))
            match = next(same, None)
            if match is None:
                match = len(first)
                first.append(sample)
            inverse.append(match)
        if len(first) == batch_size:
            return None
        device = hidden_states.device
        return torch.tensor(first, device=device), torch.tensor(inverse, device=device)

    @staticmethod
    def _fill_empty(features, empty, drop, batch_size, default_length) -> torch.Tensor:
        """Features with missing (`None`) or dropped samples replaced by the learned empty embedding."""
        if features is None:
            return empty.expand(batch_size, default_length, -1)
        features = features.to(device=empty.device, dtype=empty.dtype)
        if drop is not None:
            features = torch.where(drop[:, None, None], empty, features)
        return features

    # ---------------------------------------------------------------------------------------------------------------
    # Forward
    # ---------------------------------------------------------------------------------------------------------------

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        sync_features: torch.Tensor | None = None,
        seconds_start: torch.Tensor | float | None = None,
        seconds_total: torch.Tensor | float | None = None,
        drop_text: torch.Tensor | None = None,
        drop_clip: torch.Tensor | None = None,
        drop_sync: torch.Tensor | None = None,
        conditions: FoleyMMDiTConditions | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        r"""
        Predicts the flow velocity `noise - x0` for noisy audio latents.

        Args:
            hidden_states (`torch.Tensor`): Noisy latents `(batch, in_channels, audio_frames)`, any length.
            timestep (`torch.Tensor` or `float`): `(batch,)` or scalar in `[0, 1000]` (`sigma * 1000`).
            encoder_hidden_states, encoder_attention_mask, clip_features, sync_features, seconds_start, seconds_total,
            drop_text, drop_clip, drop_sync: The nine condition arguments, documented in
                [`~FoleyMMDiTTransformer.prepare_conditions`].
            conditions ([`FoleyMMDiTConditions`], *optional*): Output of [`~FoleyMMDiTTransformer.prepare_conditions`],
                instead of the nine condition arguments (computed once per clip, reused at every step).
            attention_kwargs (`dict`, *optional*): Passed to the attention processors; `"scale"` scales LoRA layers.
            return_dict (`bool`, defaults to `True`): Return a [`Transformer2DModelOutput`] instead of a tuple.

        Returns:
            [`Transformer2DModelOutput`] with `sample` `(batch, out_channels, audio_frames)`, or `(sample,)`.
        """
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 3:
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"`hidden_states` must have shape (batch, in_channels, audio_frames), got {shape}.")
        batch_size, channels, num_audio_tokens = hidden_states.shape
        if channels != self.config.in_channels:
            raise ValueError(
                f"`hidden_states` has {channels} channels, expected in_channels={self.config.in_channels} "
                "(shape (batch, in_channels, audio_frames))."
            )
        if num_audio_tokens < 1:
            raise ValueError("`hidden_states` must have at least one audio frame.")

        raw_conditions = (
            encoder_hidden_states,
            encoder_attention_mask,
            clip_features,
            sync_features,
            seconds_start,
            seconds_total,
            drop_text,
            drop_clip,
            drop_sync,
        )
        if conditions is None:
            conditions = self.prepare_conditions(num_audio_tokens, *raw_conditions, batch_size=batch_size)
        else:
            if any(value is not None for value in raw_conditions):
                raise ValueError(
                    "Pass either `conditions` or the condition arguments (encoder_hidden_states, clip_features, ...), "
                    "not both."
                )
            if conditions.batch_size != batch_size or conditions.num_audio_tokens != num_audio_tokens:
                raise ValueError(
                    f"`conditions` were prepared for batch {conditions.batch_size} and {conditions.num_audio_tokens} "
                    f"audio frames, but `hidden_states` has batch {batch_size} and {num_audio_tokens} frames."
                )

        dtype = self.proj_out.weight.dtype
        if timestep is None:
            raise ValueError("`timestep` is required: a scalar or a (batch,) tensor in [0, 1000].")
        timestep = self._per_sample("timestep", timestep, batch_size, None, hidden_states.device, torch.float32)

        # 1. Global condition (timestep + cached pooled conditions) and per-token condition (sync adaLN).
        timestep_emb = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        global_cond = self.global_cond_mlp(torch.cat([timestep_emb, conditions.pooled_conditions], dim=-1))
        temb = F.silu(global_cond)
        token_index = conditions.sync_adaln_index
        if token_index is None:
            token_temb = F.silu(global_cond.unsqueeze(1) + conditions.sync_adaln_features)
        else:  # distinct rows only: (rows, dim), each with its sample's global condition
            token_temb = F.silu(global_cond[conditions.sync_adaln_row_sample] + conditions.sync_adaln_rows)

        # 2. Streams
        hidden_states = hidden_states.to(dtype).transpose(1, 2)  # (batch, frames, in_channels)
        distinct = self._distinct_samples(hidden_states) if self.deduplicate_latents else None
        if distinct is None:
            hidden_states = self.audio_input_proj(hidden_states)  # (batch, frames, dim)
        else:  # the projection sees only the latents, so equal samples give equal rows: run it once per distinct one
            first, inverse = distinct
            hidden_states = self.audio_input_proj(hidden_states[first])[inverse]
        clip_hidden_states = conditions.clip_hidden_states
        encoder_hidden_states = conditions.text_hidden_states
        num_clip_frames, num_text_tokens = clip_hidden_states.shape[1], encoder_hidden_states.shape[1]

        # 3. Aligned RoPE tables for this length, joint attention mask for padded text.
        cos, sin = self.get_rotary_embeddings(num_audio_tokens, num_clip_frames, num_text_tokens, hidden_states.device)
        joint_rotary_emb = (cos, sin)
        audio_rotary_emb = (cos[:num_audio_tokens], sin[:num_audio_tokens])
        attention_mask = None
        if conditions.text_attention_mask is not None:
            keep_av = torch.ones(
                batch_size, num_audio_tokens + num_clip_frames, dtype=torch.bool, device=hidden_states.device
            )
            attention_mask = torch.cat([keep_av, conditions.text_attention_mask], dim=1)[:, None, None, :]

        # 4. Joint blocks, then audio-only blocks
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states, clip_hidden_states, encoder_hidden_states = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    clip_hidden_states,
                    encoder_hidden_states,
                    temb,
                    token_temb,
                    joint_rotary_emb,
                    attention_mask,
                    attention_kwargs,
                    token_index,
                )
            else:
                hidden_states, clip_hidden_states, encoder_hidden_states = block(
                    hidden_states,
                    clip_hidden_states,
                    encoder_hidden_states,
                    temb,
                    token_temb,
                    joint_rotary_emb,
                    attention_mask,
                    attention_kwargs,
                    token_index,
                )

        for block in self.single_transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, token_temb, audio_rotary_emb, attention_kwargs, token_index
                )
            else:
                hidden_states = block(hidden_states, token_temb, audio_rotary_emb, attention_kwargs, token_index)

        # 5. Output: adaLN (per token) + LayerNorm + Conv1d
        hidden_states = self.norm_out(hidden_states, token_temb, token_index)[0]
        output = conv1d_channel_last(self.proj_out, hidden_states).transpose(1, 2)  # (batch, out_channels, frames)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
