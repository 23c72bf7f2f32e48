r"""The public Synchformer's audio branch and offset classifier: what DeSync (av-benchmark) runs on top of the
visual branch ([`SynchformerEncoder`]).

Synchformer (Iashin et al., 2024, github.com/v-iashin/Synchformer) predicts the audio-visual offset of a 4.8 s
window among 21 classes, -2.0 ... +2.0 s in 0.2 s steps. The architecture (from the published model definition):

* **Audio front end** (16 kHz): the window is cut into segments of 10240 samples (0.64 s) every 5120 samples (0.32 s)
  -- the audio twins of the 16-frame / 8-frame video segments; each segment becomes a power mel spectrogram (STFT 1024,
  hann window 400, hop 160, centred with reflect padding, 128 HTK mel bands 0-8 kHz without area normalisation),
  ``log(mel + 1e-6)``, zero-padded from 65 to 66 frames, then ``(x - (-4.2677393)) / (2 * 4.5689974)``.
* **Audio branch**: an AST (Audio Spectrogram Transformer, ViT-B: 16x16 patches with stride 10 in frequency and time
  -> 12 x 6 patches per segment; CLS and distillation tokens; 12 pre-LN layers, eps 1e-12; final LayerNorm) per
  segment; the 72 patch tokens are pooled over frequency by a pre-LN transformer layer with a learned CLS token (GELU,
  eps 1e-6) -> **6 audio tokens per segment**.
* **Offset classifier**: visual and audio tokens go through a linear projection each, a LayerNorm each, and a 3-layer
  pre-LN transformer (8 heads, GELU MLP 4x, eps 1e-5) over ``[OFF; visual tokens; MOD; audio tokens]`` plus a learned
  position embedding (``2 + 14 * (8 + 6) = 198`` positions: the window length is fixed); the OFF token's output,
  after a final LayerNorm, is mapped to the 21 offset logits.

Every attention (AST layers, frequency pooling, classifier) goes through diffusers' `dispatch_attention_fn`, so
`set_attention_backend` chooses the kernel. Convert the public weights with
``foley-toolkit convert synchformer --checkpoint synchformer_state_dict.pth --out ... --head-out ...``
(`foley_toolkit.conversion.synchformer.convert_synchformer_offset_classifier`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn


class SynchformerSelfAttnProcessor:
    r"""Multi-head self-attention of [`SynchformerSelfAttention`] through diffusers' `dispatch_attention_fn` (the
    backend chosen by `set_attention_backend` / `attention_backend(...)`)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: "SynchformerSelfAttention", hidden_states: torch.Tensor) -> torch.Tensor:
        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (attn.heads, -1))  # (batch, length, heads, head_dim): the dispatcher's layout

        attended = dispatch_attention_fn(
            split_heads(attn.to_q(hidden_states)),
            split_heads(attn.to_k(hidden_states)),
            split_heads(attn.to_v(hidden_states)),
            dropout_p=0.0,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        attended = attended.flatten(2, 3).to(hidden_states.dtype)
        for layer in attn.to_out:
            attended = layer(attended)
        return attended


class SynchformerSelfAttention(nn.Module, AttentionModuleMixin):
    """Self-attention with biased `to_q`, `to_k`, `to_v`, `to_out.0`: `(batch, length, dim)` -> same shape."""

    _default_processor_cls = SynchformerSelfAttnProcessor
    _available_processors = [SynchformerSelfAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(self, dim: int, num_heads: int, processor=None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"the width ({dim}) must be divisible by the number of heads ({num_heads}).")
        self.heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.processor(self, hidden_states)


class SynchformerTransformerLayer(nn.Module):
    """Pre-LN transformer layer: ``x + attn(norm1(x))``, then ``x + ff(norm2(x))`` (exact-GELU MLP). It is the AST
    layer, torch's ``TransformerEncoderLayer(norm_first=True)`` and minGPT's block, which differ only in eps."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SynchformerSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ff = FeedForward(dim, inner_dim=ff_dim, activation_fn="gelu", dropout=0.0, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.ff(self.norm2(hidden_states))


class SynchformerTokenPooling(nn.Module):
    """A learned CLS token prepended to a group of tokens, one pre-LN layer, the CLS output kept:
    `(groups, tokens, dim)` -> `(groups, dim)` (Synchformer's frequency aggregation of the AST patch tokens)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, eps: float):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layer = SynchformerTransformerLayer(dim, num_heads, ff_dim, eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1))[:, 0]


def htk_mel_filters(num_freqs: int, num_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """`(num_freqs, num_mels)` triangular filters on the HTK mel scale, peak 1, no area normalisation (the filters of
    torchaudio's ``MelSpectrogram`` defaults)."""

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    freqs = np.linspace(0.0, sample_rate / 2, num_freqs)
    points = 700.0 * (10.0 ** (np.linspace(to_mel(f_min), to_mel(f_max), num_mels + 2) / 2595.0) - 1.0)
    lower = (freqs[:, None] - points[None, :-2]) / np.diff(points)[None, :-1]
    upper = (points[None, 2:] - freqs[:, None]) / np.diff(points)[None, 1:]
    return torch.from_numpy(np.maximum(0.0, np.minimum(lower, upper))).float()


class SynchformerOffsetClassifier(ModelMixin, AttentionMixin, ConfigMixin):
    r"""
    Synchformer's audio branch (AST + frequency pooling) and audio-visual offset classifier.

    Defaults are the public AudioSet model (``24-01-04T16-39-21.pt`` / MMAudio's ``synchformer_state_dict.pth``).

    Args:
        visual_dim (`int`, defaults to 768): width of the visual tokens (`SynchformerEncoder.hidden_size`).
        hidden_size (`int`, defaults to 768): width of the AST and of the classifier.
        audio_num_layers (`int`, defaults to 12): AST layers.
        audio_num_attention_heads (`int`, defaults to 12): AST (and frequency pooling) heads.
        audio_intermediate_size (`int`, defaults to 3072): MLP width of the AST and the frequency pooling.
        audio_layer_norm_eps (`float`, defaults to 1e-12): AST LayerNorm eps.
        pool_layer_norm_eps (`float`, defaults to 1e-6): frequency pooling LayerNorm eps.
        num_mel_bins (`int`, defaults to 128): mel bands.
        spec_frames (`int`, defaults to 66): spectrogram frames per segment (65 computed, zero-padded to 66).
        patch_size (`int`, defaults to 16): AST patch size (frequency and time).
        frequency_stride (`int`, defaults to 10), time_stride (`int`, defaults to 10): AST patch strides.
        num_layers (`int`, defaults to 3): classifier transformer layers.
        num_attention_heads (`int`, defaults to 8): classifier heads.
        layer_norm_eps (`float`, defaults to 1e-5): classifier LayerNorm eps.
        window_segments (`int`, defaults to 14): segments per window (the position embedding's length).
        visual_tokens_per_segment (`int`, defaults to 8): visual tokens per segment.
        num_classes (`int`, defaults to 21): offset classes.
        max_offset (`float`, defaults to 2.0): class ``k`` is ``linspace(-max_offset, max_offset, num_classes)[k]`` s.
        sample_rate (`int`, defaults to 16000): audio rate of the front end.
        n_fft (`int`, defaults to 1024), win_length (`int`, defaults to 400), hop_length (`int`, defaults to 160): STFT.
        segment_samples (`int`, defaults to 10240), segment_stride_samples (`int`, defaults to 5120): audio segments.
        spec_mean (`float`, defaults to -4.2677393), spec_std (`float`, defaults to 4.5689974): the log-mel is
            normalised as ``(x - spec_mean) / (2 * spec_std)``.
    """

    _no_split_modules = ["SynchformerTransformerLayer"]

    @register_to_config
    def __init__(
        self,
        visual_dim: int = 768,
        hidden_size: int = 768,
        audio_num_layers: int = 12,
        audio_num_attention_heads: int = 12,
        audio_intermediate_size: int = 3072,
        audio_layer_norm_eps: float = 1e-12,
        pool_layer_norm_eps: float = 1e-6,
        num_mel_bins: int = 128,
        spec_frames: int = 66,
        patch_size: int = 16,
        frequency_stride: int = 10,
        time_stride: int = 10,
        num_layers: int = 3,
        num_attention_heads: int = 8,
        layer_norm_eps: float = 1e-5,
        window_segments: int = 14,
        visual_tokens_per_segment: int = 8,
        num_classes: int = 21,
        max_offset: float = 2.0,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int = 400,
        hop_length: int = 160,
        segment_samples: int = 10240,
        segment_stride_samples: int = 5120,
        spec_mean: float = -4.2677393,
        spec_std: float = 4.5689974,
    ):
        super().__init__()
        if num_mel_bins < patch_size or spec_frames < patch_size:
            raise ValueError(
                f"`num_mel_bins` ({num_mel_bins}) and `spec_frames` ({spec_frames}) must be >= `patch_size` ({patch_size})."
            )
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
        self.freq_patches = (num_mel_bins - patch_size) // frequency_stride + 1
        self.time_patches = (spec_frames - patch_size) // time_stride + 1
        # AST
        self.patch_embed = nn.Conv2d(1, hidden_size, patch_size, stride=(frequency_stride, time_stride))
        self.audio_cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.audio_dist_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.audio_pos_embed = nn.Parameter(torch.zeros(1, 2 + self.freq_patches * self.time_patches, hidden_size))
        self.audio_layers = nn.ModuleList(
            [
                SynchformerTransformerLayer(
                    hidden_size, audio_num_attention_heads, audio_intermediate_size, audio_layer_norm_eps
                )
                for _ in range(audio_num_layers)
            ]
        )
        self.audio_final_norm = nn.LayerNorm(hidden_size, eps=audio_layer_norm_eps)
        self.freq_pool = SynchformerTokenPooling(
            hidden_size, audio_num_attention_heads, audio_intermediate_size, pool_layer_norm_eps
        )
        # classifier
        self.visual_proj = nn.Linear(visual_dim, hidden_size)
        self.audio_proj = nn.Linear(hidden_size, hidden_size)
        self.visual_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.audio_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.offset_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.modality_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        num_positions = 2 + window_segments * (visual_tokens_per_segment + self.time_patches)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, hidden_size))
        self.layers = nn.ModuleList(
            [
                SynchformerTransformerLayer(hidden_size, num_attention_heads, 4 * hidden_size, layer_norm_eps)
                for _ in range(num_layers)
            ]
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.offset_head = nn.Linear(hidden_size, num_classes)
        # Front end: fixed, not weights (non-persistent: they never enter a checkpoint).
        filters = htk_mel_filters(n_fft // 2 + 1, num_mel_bins, sample_rate, 0.0, sample_rate / 2)
        self.register_buffer("mel_filters", filters, persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    # ---------------------------------------------------------------------------------------------- helpers
    @property
    def offset_grid(self) -> tuple[float, ...]:
        """Offset in seconds of each class (``linspace(-max_offset, max_offset, num_classes)``)."""
        config = self.config
        return tuple(float(x) for x in np.linspace(-config.max_offset, config.max_offset, config.num_classes))

    @property
    def window_samples(self) -> int:
        """Audio samples of one window (76800 = 4.8 s at 16 kHz for the public model)."""
        config = self.config
        return config.segment_samples + (config.window_segments - 1) * config.segment_stride_samples

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, samples)`): Mono audio at `sample_rate`.

        Returns:
            `torch.Tensor` of shape `(batch, segments, num_mel_bins, spec_frames)`: the normalised log-mel of every
            segment (``segments = (samples - segment_samples) // segment_stride_samples + 1``).
        """
        config = self.config
        if waveform.ndim != 2 or waveform.shape[-1] < config.segment_samples:
            raise ValueError(
                f"`waveform` must be (batch, samples) with at least {config.segment_samples} samples, "
                f"got {tuple(waveform.shape)}."
            )
        segments = waveform.float().unfold(-1, config.segment_samples, config.segment_stride_samples)
        batch, num_segments = segments.shape[:2]
        stft = torch.stft(
            segments.reshape(batch * num_segments, -1), config.n_fft, hop_length=config.hop_length,
            win_length=config.win_length, window=self.window.float(), center=True, pad_mode="reflect",
            return_complex=True,
        )  # fmt: skip
        mel = torch.einsum("nft,fm->nmt", stft.abs().pow(2), self.mel_filters.float())
        log_mel = torch.log(mel + 1e-6)
        frames = log_mel.shape[-1]
        # Synchformer pads (with zeros, after the log) or truncates to `spec_frames`.
        log_mel = F.pad(log_mel, (0, config.spec_frames - frames)) if frames < config.spec_frames else log_mel[..., : config.spec_frames]
        log_mel = (log_mel - config.spec_mean) / (2 * config.spec_std)
        return log_mel.reshape(batch, num_segments, config.num_mel_bins, config.spec_frames)

    # ---------------------------------------------------------------------------------------------- branches
    def encode_audio(self, spectrogram: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            spectrogram (`torch.Tensor` of shape `(batch, segments, num_mel_bins, spec_frames)`): `spectrogram` output.

        Returns:
            `torch.Tensor` of shape `(batch, segments, time_patches, hidden_size)`: 6 audio tokens per segment.
        """
        config = self.config
        expected = (config.num_mel_bins, config.spec_frames)
        if spectrogram.ndim != 4 or tuple(spectrogram.shape[2:]) != expected:
            raise ValueError(
                f"`spectrogram` must be (batch, segments, {expected[0]}, {expected[1]}), got {tuple(spectrogram.shape)}."
            )
        batch, num_segments = spectrogram.shape[:2]
        x = spectrogram.reshape(batch * num_segments, 1, *expected).to(self.patch_embed.weight.dtype)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (BS, f * t, D), frequency-major
        n = patches.shape[0]
        tokens = torch.cat([self.audio_cls_token.expand(n, -1, -1), self.audio_dist_token.expand(n, -1, -1), patches], 1)
        tokens = tokens + self.audio_pos_embed
        for layer in self.audio_layers:
            tokens = layer(tokens)
        tokens = self.audio_final_norm(tokens)[:, 2:]  # CLS and distillation tokens are not used
        # Pool over frequency: one group of `freq_patches` tokens per (segment, time patch).
        tokens = tokens.unflatten(1, (self.freq_patches, self.time_patches)).transpose(1, 2)  # (BS, t, f, D)
        pooled = self.freq_pool(tokens.flatten(0, 1))  # (BS * t, D)
        return pooled.view(batch, num_segments, self.time_patches, -1)

    def classify(self, visual_tokens: torch.Tensor, audio_tokens: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            visual_tokens (`torch.Tensor` of shape `(batch, window_segments * 8, visual_dim)`): `SynchformerEncoder`
                tokens of the window's video.
            audio_tokens (`torch.Tensor` of shape `(batch, window_segments, time_patches, hidden_size)`):
                `encode_audio` of the window's audio.

        Returns:
            `torch.Tensor` of shape `(batch, num_classes)`: offset logits.
        """
        config = self.config
        expected_visual = config.window_segments * config.visual_tokens_per_segment
        if visual_tokens.ndim != 3 or visual_tokens.shape[1:] != (expected_visual, config.visual_dim):
            raise ValueError(
                f"`visual_tokens` must be (batch, {expected_visual}, {config.visual_dim}) ({config.window_segments} "
                f"segments, the classifier's fixed window), got {tuple(visual_tokens.shape)}."
            )
        if audio_tokens.ndim != 4 or audio_tokens.shape[1] != config.window_segments:
            raise ValueError(
                f"`audio_tokens` must be (batch, {config.window_segments}, {self.time_patches}, {config.hidden_size}), "
                f"got {tuple(audio_tokens.shape)}."
            )
        batch = visual_tokens.shape[0]
        visual = self.visual_norm(self.visual_proj(visual_tokens.to(self.visual_proj.weight.dtype)))
        audio = self.audio_norm(self.audio_proj(audio_tokens.flatten(1, 2)))
        tokens = torch.cat(
            [self.offset_token.expand(batch, -1, -1), visual, self.modality_token.expand(batch, -1, -1), audio], dim=1
        )
        tokens = tokens + self.pos_embed
        for layer in self.layers:
            tokens = layer(tokens)
        return self.offset_head(self.final_norm(tokens)[:, 0])

    def forward(self, visual_tokens: torch.Tensor, waveform: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            visual_tokens (`torch.Tensor` of shape `(batch, window_segments * 8, visual_dim)`): Tokens of the window's
                video (segments of 16 frames every 8 frames at 25 fps).
            waveform (`torch.Tensor` of shape `(batch, window_samples)`): The window's mono audio at `sample_rate`
                (76800 samples = 4.8 s for the public model), starting with the video window.

        Returns:
            `torch.Tensor` of shape `(batch, num_classes)`: offset logits; class ``k`` is `offset_grid[k]` seconds.
        """
        if waveform.ndim != 2 or waveform.shape[-1] != self.window_samples:
            raise ValueError(
                f"`waveform` must be (batch, {self.window_samples}) ({self.window_samples / self.config.sample_rate:.2f} "
                f"s at {self.config.sample_rate} Hz), got {tuple(waveform.shape)}."
            )
        return self.classify(visual_tokens, self.encode_audio(self.spectrogram(waveform)))
