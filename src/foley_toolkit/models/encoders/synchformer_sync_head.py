"""The training head of Synchformer's sync objective: an audio encoder and an offset classifier.

Synchformer (Iashin et al., 2024) trains its visual encoder by predicting the temporal offset between a video
window and an audio window: both are cut into the same 16-frame segments (0.64 s, stride 0.32 s), each
segment becomes 8 tokens, and a transformer over ``[CLS; visual tokens; audio tokens]`` classifies the offset
(21 classes, -2..+2 s in 0.2 s steps, in the paper). Kling-Foley keeps only the visual encoder
(`SynchformerEncoder`); this head exists to train it (``training/train_sync_encoder.py``) and is not part of
the pipeline.

* Audio branch: the log-mel of the audio window (`LogMelSpectrogram`, 86.1 frames/s) -> a residual 1-D conv
  stack -> average-pooled onto the visual tubelet grid (2 video frames = 0.08 s per step) -> cut into the
  same overlapping segments as the video (8 steps per segment, a new segment every 4 steps), so audio token
  ``8 s + t`` covers the same time span as visual token ``8 s + t``. (Synchformer's audio branch is an AST
  over spectrogram patches; a conv stack is enough for the short clips this head is trained on.)
* Classifier: Synchformer's is a transformer over ``[CLS; visual tokens; audio tokens]``. Trained from scratch on
  a CPU it stayed at chance for hundreds of steps, even fed an oracle visual signal (frame brightness): it must
  first learn to compare positions across the two streams. This head builds that comparison in: the visual
  tokens are averaged onto the tubelet grid (overlapping segments cover each step twice), both streams are
  projected into `num_heads` spaces, and the cosine similarity of visual step ``i`` with audio step ``j`` is
  averaged along each diagonal ``j - i`` in ``[-max_lag, max_lag]``: a learned cross-correlation, which an MLP
  maps to offset logits. The gradient reaches the visual encoder through the similarities, so its tokens learn
  to mark the times at which something is heard.
* Segment-level contrastive learning (Synchformer's first stage) is available as `contrastive_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..adapters import AttentionFreeModelMixin


class _ResidualConvBlock(nn.Module):
    """GroupNorm -> GELU -> Conv1d, twice, plus the input (time length kept)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        padding = kernel_size // 2
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.norm2 = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.conv1(F.gelu(self.norm1(hidden_states)))
        hidden_states = self.conv2(F.gelu(self.norm2(hidden_states)))
        return residual + hidden_states


class SynchformerSyncHead(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""Audio encoder + offset classifier that trains a `SynchformerEncoder` with Synchformer's sync objective.

    Args:
        visual_dim (`int`): width of the visual tokens (the sync encoder's `hidden_size`).
        num_classes (`int`, defaults to 11): offset classes.
        num_mels (`int`, defaults to 128): mel bands of the log-mel input.
        audio_channels (`int`, defaults to 128): width of the audio conv stack.
        audio_layers (`int`, defaults to 3): residual conv blocks of the audio branch.
        audio_kernel_size (`int`, defaults to 5): conv kernel (mel frames).
        hidden_size (`int`, defaults to 32): width of each correlation head's projection.
        num_heads (`int`, defaults to 4): correlation heads.
        max_lag (`int`, defaults to 8): largest audio-visual lag, in tubelet steps (0.08 s), that is correlated.
        mlp_hidden_size (`int`, defaults to 128): hidden width of the classifier MLP.
        tokens_per_segment (`int`, defaults to 8): tokens per segment (`segment_frames / temporal_patch_size`).
        segment_token_stride (`int`, defaults to 4): tubelet steps between segment starts
            (`segment_stride / temporal_patch_size`).
        contrastive_dim (`int`, defaults to 128): width of the segment embeddings of `contrastive_loss`.

    The model has no attention layer: `set_attention_backend` raises a `ValueError` (there is no attention to route).
    """

    @register_to_config
    def __init__(
        self,
        visual_dim: int,
        num_classes: int = 11,
        num_mels: int = 128,
        audio_channels: int = 128,
        audio_layers: int = 3,
        audio_kernel_size: int = 5,
        hidden_size: int = 32,
        num_heads: int = 4,
        max_lag: int = 8,
        mlp_hidden_size: int = 128,
        tokens_per_segment: int = 8,
        segment_token_stride: int = 4,
        contrastive_dim: int = 128,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
        if audio_kernel_size % 2 != 1:
            raise ValueError(f"`audio_kernel_size` must be odd (same-length convs), got {audio_kernel_size}.")
        if max_lag < 0:
            raise ValueError(f"`max_lag` must be >= 0, got {max_lag}.")
        self.audio_stem = nn.Conv1d(num_mels, audio_channels, audio_kernel_size, padding=audio_kernel_size // 2)
        self.audio_blocks = nn.ModuleList(
            [_ResidualConvBlock(audio_channels, audio_kernel_size) for _ in range(audio_layers)]
        )
        self.audio_norm = nn.LayerNorm(audio_channels)
        self.visual_norm = nn.LayerNorm(visual_dim)
        self.visual_proj = nn.Linear(visual_dim, num_heads * hidden_size)
        self.audio_proj = nn.Linear(audio_channels, num_heads * hidden_size)
        self.classifier = nn.Sequential(
            nn.Linear(num_heads * (2 * max_lag + 1), mlp_hidden_size),
            nn.GELU(),
            nn.Linear(mlp_hidden_size, num_classes),
        )
        # Segment-level contrastive learning: a segment's 8 tokens, flattened in time order so that where an event
        # falls inside the segment counts, are projected to one embedding.
        self.visual_segment_proj = nn.Linear(tokens_per_segment * visual_dim, contrastive_dim)
        self.audio_segment_proj = nn.Linear(tokens_per_segment * audio_channels, contrastive_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's temperature init

    def grid_steps(self, num_segments: int) -> int:
        """Tubelet steps covered by `num_segments` overlapping segments."""
        return (num_segments - 1) * self.config.segment_token_stride + self.config.tokens_per_segment

    def audio_grid(self, mel: torch.Tensor, num_segments: int) -> torch.Tensor:
        """`(batch, num_mels, mel_frames)` log-mel -> `(batch, grid_steps, audio_channels)`: the conv stack's
        output average-pooled onto the tubelet grid of the window."""
        config = self.config
        grid = self.grid_steps(num_segments)
        if mel.ndim != 3 or mel.shape[1] != config.num_mels:
            raise ValueError(f"`mel` must be (batch, {config.num_mels}, frames), got {tuple(mel.shape)}.")
        if mel.shape[-1] < grid:
            raise ValueError(f"`mel` has {mel.shape[-1]} frames, fewer than the {grid} tubelet steps of the window.")
        hidden_states = self.audio_stem(mel)
        for block in self.audio_blocks:
            hidden_states = block(hidden_states)
        return self.audio_norm(F.adaptive_avg_pool1d(hidden_states, grid).transpose(1, 2))

    def encode_audio(self, mel: torch.Tensor, num_segments: int) -> torch.Tensor:
        """`(batch, num_mels, mel_frames)` -> `(batch, num_segments * tokens_per_segment, audio_channels)`: the
        audio grid cut into overlapping segments like the video, so audio token ``8 s + t`` covers the same time as
        visual token ``8 s + t``."""
        config = self.config
        grid = self.audio_grid(mel, num_segments)
        starts = range(0, num_segments * config.segment_token_stride, config.segment_token_stride)
        return torch.cat([grid[:, s : s + config.tokens_per_segment] for s in starts], dim=1)

    def visual_grid(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, segments * 8, visual_dim)` -> `(batch, grid_steps, visual_dim)`: each tubelet step is the mean of
        the (one or two) segment tokens that cover it."""
        num_segments = self._check_visual(visual_tokens)
        config = self.config
        steps = torch.arange(config.tokens_per_segment, device=visual_tokens.device)
        starts = torch.arange(num_segments, device=visual_tokens.device) * config.segment_token_stride
        index = (starts[:, None] + steps).flatten()  # grid step of every token, segment-major
        grid = visual_tokens.new_zeros(visual_tokens.shape[0], self.grid_steps(num_segments), visual_tokens.shape[-1])
        grid = grid.index_add(1, index, visual_tokens)
        counts = torch.bincount(index, minlength=grid.shape[1]).to(grid.dtype)
        return grid / counts[None, :, None]

    def _check_visual(self, visual_tokens: torch.Tensor) -> int:
        """Validates `(batch, segments * 8, visual_dim)` tokens; returns the number of segments."""
        config = self.config
        if visual_tokens.ndim != 3 or visual_tokens.shape[-1] != config.visual_dim:
            raise ValueError(
                f"`visual_tokens` must be (batch, tokens, {config.visual_dim}), got {tuple(visual_tokens.shape)}."
            )
        num_tokens = visual_tokens.shape[1]
        if num_tokens == 0 or num_tokens % config.tokens_per_segment:
            raise ValueError(
                f"`visual_tokens` must hold whole segments of {config.tokens_per_segment} tokens, got {num_tokens}."
            )
        return num_tokens // config.tokens_per_segment

    @staticmethod
    def _center(tokens: torch.Tensor) -> torch.Tensor:
        # The offset is in how the tokens change over the window: remove their window mean. A young encoder's tokens
        # are mostly a constant (at ViT initialisation they vary by ~5% over a clip); centred and then normalised,
        # the changes reach the head at full scale.
        return tokens - tokens.mean(dim=1, keepdim=True)

    def correlations(self, visual_tokens: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        r"""Learned audio-visual cross-correlation.

        Returns:
            `(batch, num_heads, 2 * max_lag + 1)`: for lag ``l`` (index ``l + max_lag``), the mean over visual steps
            ``i`` of the cosine similarity between visual step ``i`` and audio step ``i + l`` (a sound heard ``l``
            steps after it is seen, in the window's coordinates).
        """
        num_segments = self._check_visual(visual_tokens)
        if mel.shape[0] != visual_tokens.shape[0]:
            raise ValueError(f"`mel` has batch {mel.shape[0]}, `visual_tokens` has {visual_tokens.shape[0]}.")
        config = self.config
        batch, heads = visual_tokens.shape[0], config.num_heads
        visual = self.visual_proj(self.visual_norm(self._center(self.visual_grid(visual_tokens))))
        audio = self.audio_proj(self._center(self.audio_grid(mel, num_segments)))
        visual = F.normalize(visual.view(batch, -1, heads, config.hidden_size), dim=-1).transpose(1, 2)
        audio = F.normalize(audio.view(batch, -1, heads, config.hidden_size), dim=-1).transpose(1, 2)
        similarity = visual @ audio.transpose(-1, -2)  # (batch, heads, visual step, audio step)
        steps = similarity.shape[-1]
        lags = []
        for lag in range(-config.max_lag, config.max_lag + 1):
            if abs(lag) < steps:
                lags.append(torch.diagonal(similarity, offset=lag, dim1=-2, dim2=-1).mean(-1))
            else:  # the window is shorter than this lag
                lags.append(similarity.new_zeros(batch, heads))
        return torch.stack(lags, dim=-1)

    def segment_embeddings(self, visual_tokens: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Unit-norm segment embeddings for segment-level audio-visual contrastive learning.

        Args:
            visual_tokens (`torch.Tensor`): `(batch, segments * 8, visual_dim)`.
            mel (`torch.Tensor`): `(batch, num_mels, mel_frames)`, the *aligned* audio window.

        Returns:
            `(visual, audio)`, each `(batch, segments, contrastive_dim)`.
        """
        num_segments = self._check_visual(visual_tokens)
        batch, tokens = visual_tokens.shape[0], self.config.tokens_per_segment
        visual = self.visual_norm(self._center(visual_tokens)).reshape(batch, num_segments, -1)
        audio = self.encode_audio(mel, num_segments).reshape(batch, num_segments, tokens * self.config.audio_channels)
        return (
            F.normalize(self.visual_segment_proj(visual), dim=-1),
            F.normalize(self.audio_segment_proj(audio), dim=-1),
        )

    def contrastive_loss(self, visual_tokens: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between the visual and audio embeddings of every segment of the batch: a segment's
        positive is the audio of the same time; the negatives are the other times of its window and of the other
        clips."""
        visual, audio = self.segment_embeddings(visual_tokens, mel)
        visual, audio = visual.flatten(0, 1), audio.flatten(0, 1)
        logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * visual @ audio.T
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target))

    def forward(self, visual_tokens: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            visual_tokens (`torch.Tensor`): `(batch, segments * 8, visual_dim)`, `SynchformerEncoder` output of the
                video window.
            mel (`torch.Tensor`): `(batch, num_mels, mel_frames)` log-mel of the audio window (same length as the
                video window, shifted by the offset to classify).

        Returns:
            `torch.Tensor` `(batch, num_classes)`: offset logits.
        """
        return self.classifier(self.correlations(visual_tokens, mel).flatten(1))
