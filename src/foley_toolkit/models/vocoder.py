"""The vocoder: BigVGAN-v2 as diffusers' `MMAudioVocoder`, with Kling-Foley's configs and a fast inference path.

diffusers' `MMAudioVocoder` is BigVGAN-v2's generator in its inference form (weight norm folded in, anti-aliased
Snake-beta activations, no bias and no tanh on the last convolution, output clamped to [-1, 1]): the same module
names as NVIDIA's `bigvgan.py` (`conv_pre`, `ups.{i}.0`, `resblocks.{j}.convs1/convs2/activations`,
`activation_post`, `conv_post`), so public BigVGAN-v2 checkpoints load after folding their weight norms. It consumes
the exact log-mel of `LogMelSpectrogram`.

`MMAudioVocoder` here is a subclass of diffusers' class under the same name (same config, same `_class_name`, same
state dict, so folders saved by either load into either). It only adds a faster forward (`use_fast_path`, on by
default) that computes the same function:

* Anti-aliased activations in polyphase form. The reference upsamples by 2 with a zero-stuffed depthwise
  `conv_transpose1d` (12 Kaiser taps, half of them multiplying zeros; in bf16 at batch 2 this op alone is 6-8x slower
  than at batch 1 on CPU) and downsamples with a strided depthwise convolution on the interleaved signal. Here the
  upsample is one depthwise convolution producing the 2 output phases (6 non-zero taps each) at the input rate,
  Snake-beta runs on the phases (the interleaved signal is never built), and the downsample is one grouped
  convolution reading both phases (the strided filter's even taps read one phase, its odd taps the other). The
  reference's replicate padding becomes a clamp of the signal index, reproduced exactly at both ends.
* Snake-beta `x + 1/(b + 1e-9) * sin(a x)^2` in four in-place passes written straight into the downsample's padded
  input buffer (no temporaries, no separate padding copy).
* On a CPU at inference in float32, the whole network runs on channels-last `(batch, channels, 1, length)`
  signals as 2D convolutions: oneDNN then convolves without reordering every input and output to its blocked layout
  (dense convolutions at ~95% of the float32 matmul rate instead of ~80%). With `compute_dtype="auto"` bfloat16
  weights are computed in float32 on a CPU without AMX tiles, where bfloat16 convolutions run at half the float32
  rate.
* Optional time chunking (`chunk_frames`) with an exact overlap: each chunk carries the network's receptive field
  (`receptive_field_frames`) of context on both sides, so the cropped outputs equal the unchunked call.

`use_fast_path = False` runs diffusers' reference forward. In float32 the two paths agree to ~1e-6 (rounding only).
Stereo runs both channels as one batch (`vocode`).
"""

from __future__ import annotations

import math
import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
# diffusers' pipeline loader looks up `ModelMixin` in a component's module to choose how to load it.
from diffusers import ModelMixin  # noqa: F401
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioActivation1d, MMAudioAMPBlock
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder as _DiffusersMMAudioVocoder
from diffusers.models.autoencoders.vae import DecoderOutput

from ..utils.overlap import process_in_chunks

__all__ = [
    "MMAudioVocoder",
    "bigvgan_v2_44khz_128band_512x_config",
    "tiny_vocoder_config",
    "validate_vocoder_config",
    "build_vocoder",
    "load_vocoder",
    "vocoder_hop_length",
    "vocode",
]


@cache
def _upsample_taps(ratio: int, kernel_size: int, pad: int, pad_left: int) -> tuple[tuple[int, int, int], ...]:
    """`(phase, offset, tap)` triples of a `MMAudioUpSample1d` in polyphase form: output sample `ratio * i + phase`
    is `ratio * sum(filter[tap] * x[clamp(i + offset)])`.

    The reference output `j` is sample `j + pad_left` of
    `conv_transpose1d(replicate_pad(x, pad), filter, stride=ratio)`,
    i.e. `sum_k filter[k] * x_padded[(j + pad_left - k) / ratio]` over the taps `k` that make the index whole.
    """
    taps = []
    for phase in range(ratio):
        shifted = phase + pad_left
        for tap in range(shifted % ratio, kernel_size, ratio):
            taps.append((phase, (shifted - tap) // ratio - pad, tap))
    return tuple(taps)


@cache
def _downsample_taps(ratio: int, kernel_size: int, pad_left: int) -> tuple[tuple[int, int, int], ...]:
    """`(phase, offset, tap)` triples of a strided `MMAudioLowPassFilter1d` reading a signal given as its `ratio`
    phases: output `i` is `sum(filter[tap] * phase_signal[clamp(i + offset)])`, where the reference reads sample
    `ratio * i + tap - pad_left` of the interleaved signal."""
    taps = []
    for tap in range(kernel_size):
        index = tap - pad_left
        phase = index % ratio
        taps.append((phase, (index - phase) // ratio, tap))
    return tuple(taps)


def _polyphase_weight(
    filter: torch.Tensor, taps: tuple[tuple[int, int, int], ...], ratio: int, scale: float
) -> tuple[torch.Tensor, int, int]:
    """`(ratio, width)` weights `scale * filter[tap]` at `[phase, offset - min_offset]` (zeros elsewhere), with the
    smallest and largest offset."""
    low, high = min(t[1] for t in taps), max(t[1] for t in taps)
    index = torch.full((ratio, high - low + 1), -1, dtype=torch.long)
    for phase, offset, tap in taps:
        index[phase, offset - low] = tap
    index = index.to(filter.device)
    taps_1d = filter.reshape(-1)
    weight = torch.where(index >= 0, taps_1d[index.clamp(min=0)] * scale, taps_1d.new_zeros(()))
    return weight, low, high


def polyphase_activation(module: MMAudioActivation1d, x: torch.Tensor) -> torch.Tensor:
    r"""
    `MMAudioActivation1d` (upsample, Snake-beta, downsample) in polyphase form; equal to `module(x)` up to rounding.

    Args:
        module (`MMAudioActivation1d`): Supplies the Snake-beta parameters and both Kaiser filters.
        x (`torch.Tensor` of shape `(batch, channels, length)`).

    Returns:
        `torch.Tensor` of shape `(batch, channels, length)`.
    """
    up, lowpass = module.upsample, module.downsample.lowpass
    ratio = up.ratio
    if lowpass.stride != ratio:
        raise ValueError(f"polyphase_activation needs equal up/down ratios, got {ratio} and {lowpass.stride}.")
    batch, channels, length = x.shape
    training = torch.is_grad_enabled() and (
        x.requires_grad or module.act.alpha.requires_grad or module.act.beta.requires_grad
    )
    up_weight, up_low, up_high, down_weight, down_low, down_high, alpha, inv_beta = _activation_constants(
        module, cache=not training
    )
    # Upsample: each channel -> its `ratio` phases, (batch, channels * ratio, length), at the input rate. Replicate
    # padding of x is the reference's clamp of the input index (the offsets stay within its `pad`).
    phases = F.conv1d(F.pad(x, (-up_low, up_high), mode="replicate"), up_weight, groups=channels)
    phases = phases.view(batch, channels, ratio, length)
    # Snake-beta, then the downsample's padding. The reference clamps the interleaved index, so every phase is
    # padded with the first interleaved sample on the left and the last one on the right.
    if training:
        # Out-of-place (autograd cannot go through `out=`), same arithmetic.
        core = phases + inv_beta * torch.sin(phases * alpha).pow(2)
        left = core[:, :, :1, :1].expand(-1, -1, ratio, -down_low)
        right = core[:, :, -1:, -1:].expand(-1, -1, ratio, down_high)
        padded = torch.cat([left, core, right], dim=-1)
    else:
        # Inference: written straight into the padded buffer, no temporaries and no padding copy.
        padded = phases.new_empty(batch, channels, ratio, length - down_low + down_high)
        core = padded[..., -down_low : padded.shape[-1] - down_high]
        torch.mul(phases, alpha, out=core)
        core.sin_().square_()
        torch.addcmul(phases, core, inv_beta, out=core)
        padded[..., :-down_low] = core[:, :, :1, :1]
        padded[..., padded.shape[-1] - down_high :] = core[:, :, -1:, -1:]
    # Downsample: the strided low-pass filter as one grouped convolution over the phases of each channel.
    return F.conv1d(padded.view(batch, channels * ratio, -1), down_weight, groups=channels)


def _polyphase_activation_channels_last(module: MMAudioActivation1d, x: torch.Tensor) -> torch.Tensor:
    """`polyphase_activation` (inference only) on a channels-last `(batch, channels, 1, length)` signal, computed in
    `x`'s dtype whatever the module's. Each phase is its own tensor: the upsample is one plain depthwise convolution
    per phase and the downsample a sum of one per phase. oneDNN runs plain depthwise convolutions 2-5x faster than the
    channel-multiplier and two-inputs-per-group convolutions that `polyphase_activation` uses (full-size BigVGAN-v2
    shapes, channels-last, 2 threads). Every buffer is written in place in channels-last order, so nothing reorders."""
    dtype = x.dtype
    up_weight, up_low, up_high, down_weight, down_low, down_high, alpha, inv_beta = _activation_constants(
        module, cache=True, dtype=dtype
    )
    batch, channels, _, length = x.shape
    ratio = up_weight.shape[0] // channels
    up_weight = up_weight.view(channels, ratio, 1, 1, -1)  # (channels, phase, 1, 1, taps)
    down_weight = down_weight.view(channels, ratio, 1, 1, -1)
    alpha, inv_beta = alpha.view(1, channels, 1, 1), inv_beta.view(1, channels, 1, 1)
    # Replicate padding written into one channels-last buffer (`torch.cat` would return channels-first).
    buffer = {"dtype": dtype, "device": x.device, "memory_format": torch.channels_last}
    padded_x = torch.empty(batch, channels, 1, length - up_low + up_high, **buffer)
    padded_x[..., -up_low : length - up_low] = x
    padded_x[..., :-up_low] = x[..., :1]
    padded_x[..., length - up_low :] = x[..., -1:]
    padded_phases, cores = [], []
    for phase in range(ratio):
        upsampled = F.conv2d(padded_x, up_weight[:, phase].contiguous(), groups=channels)  # (batch, channels, 1, L)
        padded = torch.empty(batch, channels, 1, length - down_low + down_high, **buffer)
        core = padded[..., -down_low : padded.shape[-1] - down_high]
        torch.mul(upsampled, alpha, out=core)  # Snake-beta, in place in the downsample's padded input
        core.sin_().square_()
        torch.addcmul(upsampled, core, inv_beta, out=core)
        padded_phases.append(padded)
        cores.append(core)
    # The interleaved signal's first sample (phase 0) pads every phase on the left, its last (phase ratio - 1) on
    # the right.
    for padded in padded_phases:
        padded[..., :-down_low] = cores[0][..., :1]
        padded[..., padded.shape[-1] - down_high :] = cores[-1][..., -1:]
    output = F.conv2d(padded_phases[0], down_weight[:, 0].contiguous(), groups=channels)
    for phase in range(1, ratio):
        output += F.conv2d(padded_phases[phase], down_weight[:, phase].contiguous(), groups=channels)
    return output


def _conv_channels_last(conv: torch.nn.Conv1d | torch.nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """A `Conv1d` / `ConvTranspose1d` applied to a channels-last `(batch, channels, 1, length)` signal as the same 2D
    convolution, in `x`'s dtype (the weight is cast per call when the module's dtype differs)."""
    weight = conv.weight.to(x.dtype).unsqueeze(2)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    if isinstance(conv, torch.nn.ConvTranspose1d):
        return F.conv_transpose2d(
            x,
            weight,
            bias,
            stride=(1, conv.stride[0]),
            padding=(0, conv.padding[0]),
            output_padding=(0, conv.output_padding[0]),
            groups=conv.groups,
            dilation=(1, conv.dilation[0]),
        )
    return F.conv2d(
        x, weight, bias, (1, conv.stride[0]), (0, conv.padding[0]), (1, conv.dilation[0]), groups=conv.groups
    )


def _activation_constants(module: MMAudioActivation1d, cache: bool, dtype: torch.dtype | None = None) -> tuple:
    """The per-call constants of `polyphase_activation`: grouped-convolution weights `(channels * ratio, 1, width)`
    and `(channels, ratio, width)` with their offset ranges, `exp(alpha)` and `1 / (exp(beta) + 1e-9)` shaped
    `(channels, 1, 1)`, computed in `dtype` (default: the module's) from the module's values. With `cache`, kept on
    the module until a parameter or buffer changes (in place, in dtype or in device): at inference they are the same
    for every call, and ~10 small ops per activation add up."""
    up, lowpass, snake = module.upsample, module.downsample.lowpass, module.act
    tensors = (snake.alpha, snake.beta, up.filter, lowpass.filter)
    # Inference tensors (made under `torch.inference_mode`) keep no version counter and cannot change in place.
    key = (dtype, *((t.data_ptr(), t.dtype, t.device, None if t.is_inference() else t._version) for t in tensors))
    cached = getattr(module, "_polyphase_constants", None)
    if cache and cached is not None and cached[0] == key:
        return cached[1]
    alpha, beta, up_filter, down_filter = (t if dtype is None else t.to(dtype) for t in tensors)
    ratio, channels = up.ratio, snake.alpha.shape[0]
    up_weight, up_low, up_high = _polyphase_weight(
        up_filter, _upsample_taps(ratio, up_filter.shape[-1], up.pad, up.pad_left), ratio, float(ratio)
    )
    down_weight, down_low, down_high = _polyphase_weight(
        down_filter, _downsample_taps(ratio, down_filter.shape[-1], lowpass.pad_left), ratio, 1.0
    )
    constants = (
        up_weight.unsqueeze(1).repeat(channels, 1, 1),
        up_low,
        up_high,
        down_weight.unsqueeze(0).repeat(channels, 1, 1),
        down_low,
        down_high,
        torch.exp(alpha)[:, None, None],
        1.0 / (torch.exp(beta)[:, None, None] + 1e-9),
    )
    if cache:
        module._polyphase_constants = (key, constants)
    return constants


def _activation_context(module: MMAudioActivation1d) -> int:
    """Input samples on either side that one output sample of a polyphase activation depends on."""
    up, lowpass = module.upsample, module.downsample.lowpass
    up_offsets = [t[1] for t in _upsample_taps(up.ratio, up.filter.shape[-1], up.pad, up.pad_left)]
    down_offsets = [t[1] for t in _downsample_taps(lowpass.stride, lowpass.filter.shape[-1], lowpass.pad_left)]
    return max(map(abs, up_offsets)) + max(map(abs, down_offsets))


def _conv_channels_first(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module itself on a `(batch, channels, length)` signal (the counterpart of `_conv_channels_last`)."""
    return conv(x)


def _amp_block(block: MMAudioAMPBlock, x: torch.Tensor, convolve=_conv_channels_first, activate=polyphase_activation):
    """`MMAudioAMPBlock.forward` with polyphase activations; `convolve` / `activate` are the channels-first functions
    or their channels-last counterparts (`_conv_channels_last`, `_polyphase_activation_channels_last`)."""
    for conv1, conv2, act1, act2 in zip(block.convs1, block.convs2, block.activations[::2], block.activations[1::2]):
        x = convolve(conv2, activate(act2, convolve(conv1, activate(act1, x)))) + x
    return x


class MMAudioVocoder(_DiffusersMMAudioVocoder):
    r"""
    diffusers' [`~diffusers.MMAudioVocoder`] (BigVGAN-v2) with a fast forward computing the same function: polyphase
    anti-aliased activations, in-place Snake-beta, optional exactly-overlapped time chunks (see the module
    docstring). Same config, `_class_name` and state dict as the parent.

    Attributes:
        use_fast_path (`bool`, defaults to `True`): `False` runs diffusers' reference forward.
        chunk_frames (`int`, *optional*): With the fast path, vocode at most this many mel frames per network call,
            each with `receptive_field_frames()` frames of context on both sides (outputs equal the unchunked call).
        compute_dtype (`"auto"` or `torch.dtype`, defaults to `"auto"`): The fast path's arithmetic dtype at
            inference on a CPU. `"auto"` computes in float32 on a CPU without AMX tiles even when the weights are
            bfloat16 (there oneDNN's bfloat16 convolutions are slower than float32 ones, and float32 is the more
            accurate), and in the weights' dtype otherwise; `torch.float32` or the weights' dtype choose one. The
            output keeps the weights' dtype either way. Float32 arithmetic runs channels-last. On other devices and
            under autograd the fast path computes in the weights' dtype.
    """

    use_fast_path: bool = True
    chunk_frames: int | None = None
    compute_dtype: str | torch.dtype = "auto"

    def receptive_field_frames(self) -> int:
        """Mel frames on either side of a frame that its output samples can depend on (an upper bound: the context a
        chunk needs for its cropped output to equal the unchunked call)."""
        context = float(self.conv_pre.padding[0])  # "same" convolutions: the padding is the reach
        rate = 1  # samples per mel frame at the current stage
        for stage, up in enumerate(self.ups):
            transposed = up[0]
            context += math.ceil(transposed.kernel_size[0] / transposed.stride[0]) / rate
            rate *= transposed.stride[0]
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            context += max(self._block_context(block) for block in blocks) / rate
        context += (_activation_context(self.activation_post) + self.conv_post.padding[0]) / rate
        return math.ceil(context) + 1

    @staticmethod
    def _block_context(block: MMAudioAMPBlock) -> int:
        reach = 0
        activations = zip(block.activations[::2], block.activations[1::2])
        for conv1, conv2, (act1, act2) in zip(block.convs1, block.convs2, activations):
            reach += _activation_context(act1) + conv1.padding[0] + _activation_context(act2) + conv2.padding[0]
        return reach

    def resolved_compute_dtype(self) -> torch.dtype:
        """The dtype the fast path computes in: `compute_dtype`, or with `"auto"` float32 on a CPU without AMX tiles
        (where oneDNN's bfloat16 convolutions run at about half its float32 rate) and the weights' dtype elsewhere."""
        weight_dtype = self.conv_pre.weight.dtype
        if self.compute_dtype != "auto":
            if self.compute_dtype not in (torch.float32, weight_dtype):
                raise ValueError(
                    f"`compute_dtype` must be 'auto', torch.float32 or the weights' dtype ({weight_dtype}), got "
                    f"{self.compute_dtype!r}."
                )
            return self.compute_dtype
        if self.conv_pre.weight.device.type == "cpu" and not torch.cpu._is_amx_tile_supported():
            return torch.float32
        return weight_dtype

    def _fast_forward(self, mel: torch.Tensor) -> torch.Tensor:
        dtype = self.resolved_compute_dtype()
        # Channels-last float32 on a CPU at inference: oneDNN runs these convolutions without reordering every input
        # and output, and the per-phase depthwise filters (8 s stereo full-size BigVGAN-v2 on 2 cores: 39.0 s against
        # 54.0 s channels-first; see benchmarks/README.md).
        needs_grad = torch.is_grad_enabled() and (mel.requires_grad or any(p.requires_grad for p in self.parameters()))
        channels_last = mel.device.type == "cpu" and dtype == torch.float32 and not needs_grad
        if channels_last:
            hidden_states = _conv_channels_last(
                self.conv_pre, mel.to(dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last)
            )
            convolve, activate = _conv_channels_last, _polyphase_activation_channels_last
        else:
            hidden_states = self.conv_pre(mel)
            convolve, activate = _conv_channels_first, polyphase_activation
        for stage, up in enumerate(self.ups):
            hidden_states = convolve(up[0], hidden_states)
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            summed = _amp_block(blocks[0], hidden_states, convolve, activate)
            for block in blocks[1:]:
                summed = summed + _amp_block(block, hidden_states, convolve, activate)
            hidden_states = summed / self.num_kernels
        hidden_states = convolve(self.conv_post, activate(self.activation_post, hidden_states))
        if channels_last:
            hidden_states = hidden_states.squeeze(2).contiguous().to(self.conv_pre.weight.dtype)
        return torch.clamp(hidden_states, min=-1.0, max=1.0)

    def _chunked_forward(self, mel: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        hop = math.prod(self.config.upsample_rates)
        return process_in_chunks(self._fast_forward, mel, chunk_frames, self.receptive_field_frames(), scale=hop)

    def forward(self, mel: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        r"""
        Args:
            mel (`torch.Tensor` of shape `(batch_size, num_mels, num_mel_frames)`): Log-mel spectrogram.
            return_dict (`bool`, defaults to `True`): Return a `DecoderOutput` instead of a plain tuple.

        Returns:
            The waveform of shape `(batch_size, 1, num_mel_frames * prod(upsample_rates))` in `[-1, 1]`.
        """
        if not self.use_fast_path:
            return super().forward(mel, return_dict=return_dict)
        if mel.ndim != 3:
            raise ValueError(f"`mel` must be (batch, num_mels, frames), got {tuple(mel.shape)}.")
        chunk_frames = self.chunk_frames
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"`chunk_frames` must be a positive number of mel frames or None, got {chunk_frames}.")
        if chunk_frames is not None and mel.shape[-1] > chunk_frames:
            waveform = self._chunked_forward(mel, chunk_frames)
        else:
            waveform = self._fast_forward(mel)
        if not return_dict:
            return (waveform,)
        return DecoderOutput(sample=waveform)


def bigvgan_v2_44khz_128band_512x_config() -> dict[str, Any]:
    """`MMAudioVocoder` config of NVIDIA's `bigvgan_v2_44khz_128band_512x` (122M parameters): hop product
    8*4*2*2*2*2 = 512, initial width 1536, AMP resblocks with kernels 3/7/11 and dilations 1/3/5."""
    return {
        "num_mels": 128,
        "upsample_initial_channel": 1536,
        "upsample_rates": [8, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    }


def tiny_vocoder_config() -> dict[str, Any]:
    """A tiny but structurally complete config (hop product 512) for tests and quick experiments (~43k params)."""
    return {
        "num_mels": 128,
        "upsample_initial_channel": 32,
        "upsample_rates": [8, 4, 4, 4],
        "upsample_kernel_sizes": [16, 8, 8, 8],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3]],
    }


def validate_vocoder_config(config: dict[str, Any], hop_length: int = 512, num_mels: int = 128) -> dict[str, Any]:
    """Check that a vocoder config fits the mel front end: `prod(upsample_rates) == hop_length` (one mel frame ->
    `hop_length` samples) and `num_mels` bands. Returns the config; raises `ValueError` otherwise."""
    rates = list(config.get("upsample_rates", ()))
    kernels = list(config.get("upsample_kernel_sizes", ()))
    if not rates or math.prod(rates) != hop_length:
        raise ValueError(
            f"The vocoder's `upsample_rates` {rates} multiply to {math.prod(rates) if rates else 0}; they must "
            f"multiply to the mel hop length {hop_length}."
        )
    if len(kernels) != len(rates):
        raise ValueError(f"`upsample_kernel_sizes` {kernels} must have one entry per upsample rate {rates}.")
    if config.get("num_mels", 128) != num_mels:
        raise ValueError(f"The vocoder's `num_mels` ({config.get('num_mels')}) must equal the mel bands ({num_mels}).")
    return config


def build_vocoder(config: dict[str, Any] | None = None, hop_length: int = 512) -> MMAudioVocoder:
    """An untrained `MMAudioVocoder` from `config` (the full BigVGAN-v2 44 kHz 512x config if `None`), validated."""
    config = dict(bigvgan_v2_44khz_128band_512x_config() if config is None else config)
    return MMAudioVocoder(
        **validate_vocoder_config(config, hop_length=hop_length, num_mels=config.get("num_mels", 128))
    )


def vocoder_hop_length(vocoder: torch.nn.Module) -> int:
    """Samples per mel frame of a vocoder: the product of a BigVGAN's upsample rates, a Vocos's STFT hop."""
    if hasattr(vocoder.config, "upsample_rates"):
        return math.prod(vocoder.config.upsample_rates)
    return int(vocoder.config.hop_length)


def load_vocoder(pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs):
    """Load a saved vocoder of either kind (`MMAudioVocoder` or `VocosVocoder`), chosen by the `_class_name` of
    its `config.json`; `kwargs` go to `from_pretrained`."""
    from .vocoder_vocos import VocosVocoder

    classes = {cls.__name__: cls for cls in (MMAudioVocoder, VocosVocoder)}  # this module's MMAudioVocoder
    config = MMAudioVocoder.load_config(pretrained_model_name_or_path, subfolder=subfolder)
    name = config.get("_class_name")
    if name not in classes:
        raise ValueError(
            f"`{pretrained_model_name_or_path}` (subfolder {subfolder!r}) holds a {name!r}, expected one of "
            f"{sorted(classes)}."
        )
    return classes[name].from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


@torch.no_grad()
def vocode(vocoder: MMAudioVocoder, mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    r"""
    Log-mel -> waveform: the (mono) vocoder runs on every channel of every sample, all in one batch.

    Args:
        vocoder (`MMAudioVocoder`): The vocoder.
        mel (`torch.Tensor` of shape `(batch, num_mels, frames)` or `(batch, channels, num_mels, frames)`).
        num_samples (`int`, *optional*): Trim (or zero-pad) the output to this many samples.

    Returns:
        `torch.Tensor` of shape `(batch, channels, samples)` (channels = 1 for a 3-D `mel`), float32 in [-1, 1],
        `samples = frames * hop` unless `num_samples` is given.
    """
    if mel.ndim == 3:
        mel = mel.unsqueeze(1)
    if mel.ndim != 4:
        raise ValueError(
            f"`mel` must be (batch, num_mels, frames) or (batch, channels, num_mels, frames), got {tuple(mel.shape)}."
        )
    batch, channels = mel.shape[:2]
    param = next(vocoder.parameters())
    waveform = vocoder(mel.reshape(batch * channels, *mel.shape[2:]).to(param.device, param.dtype)).sample
    waveform = waveform.float().reshape(batch, channels, -1)
    if num_samples is not None:
        if waveform.shape[-1] >= num_samples:
            waveform = waveform[..., :num_samples]
        else:
            waveform = torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[-1]))
    return waveform
