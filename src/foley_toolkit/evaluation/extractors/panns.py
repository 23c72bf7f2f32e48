r"""PANNs CNN14 (Kong et al., 2020), the audio tagger of FD_PANNs, KL_PANNs and IS in the Kling-Foley paper's Table 1.

The network is the public definition (github.com/qiuqiangkong/audioset_tagging_cnn ``models.Cnn14``, as packaged in
``panns-inference`` and vendored by av-benchmark), written out here because importing ``panns_inference`` downloads
its label file with ``wget`` and imports matplotlib at import time. Parameter names are the public checkpoint's, so
``Cnn14_16k_mAP=0.438.pth`` (Zenodo record 3987831, the checkpoint av-benchmark uses) loads without renaming.

* front end (torchlibrosa): STFT (hann, ``window_size``, ``hop_size``, centred, reflect padding) -> power ->
  log-mel (``mel_bins`` bands in [``fmin``, ``fmax``], 10 log10, amin 1e-10) -> BatchNorm over the mel bands;
* six conv blocks (two 3x3 conv + BN + ReLU each, 64 -> 2048 channels), 2x2 average pooling after the first five;
* mean over mel bands, then max + mean over time -> ``fc1`` (2048) + ReLU = the 2048-d **embedding** (FD_PANNs);
* ``fc_audioset`` -> 527 AudioSet **logits**; the tagger's probabilities are their sigmoid (multi-label).

av-benchmark's configuration (the default here): 16 kHz, window 512, hop 160, 64 mel bands, 50-8000 Hz.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ...models.adapters import AttentionFreeModelMixin
from .base import AudioFeatureExtractor


class Cnn14ConvBlock(nn.Module):
    """(3x3 conv -> BN -> ReLU) x 2, then pooling; no conv bias (BN follows)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.xavier_uniform_(self.conv1.weight)
        nn.init.xavier_uniform_(self.conv2.weight)

    def forward(self, hidden_states: torch.Tensor, pool_size: tuple[int, int] = (2, 2)) -> torch.Tensor:
        hidden_states = F.relu(self.bn1(self.conv1(hidden_states)))
        hidden_states = F.relu(self.bn2(self.conv2(hidden_states)))
        return F.avg_pool2d(hidden_states, kernel_size=pool_size)


class Cnn14(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    PANNs CNN14 audio tagger.

    Args:
        sample_rate (`int`, defaults to 16000): Input rate (the 16 kHz checkpoint; the original 32 kHz one uses
            32000 / 1024 / 320 / 50 / 14000).
        window_size (`int`, defaults to 512): STFT size and window length.
        hop_size (`int`, defaults to 160): STFT hop (100 frames/s at 16 kHz).
        mel_bins (`int`, defaults to 64): Mel bands.
        fmin (`float`, defaults to 50): Lowest mel frequency (Hz).
        fmax (`float`, defaults to 8000): Highest mel frequency (Hz).
        classes_num (`int`, defaults to 527): AudioSet classes.

    The model has no attention layer: `set_attention_backend` raises a `ValueError`.
    """

    channels = (64, 128, 256, 512, 1024, 2048)

    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16000,
        window_size: int = 512,
        hop_size: int = 160,
        mel_bins: int = 64,
        fmin: float = 50.0,
        fmax: float = 8000.0,
        classes_num: int = 527,
    ):
        super().__init__()
        from torchlibrosa.stft import LogmelFilterBank, Spectrogram

        if mel_bins < 32:
            raise ValueError(f"`mel_bins` must be >= 32 (five 2x poolings), got {mel_bins}.")
        self.spectrogram_extractor = Spectrogram(
            n_fft=window_size, hop_length=hop_size, win_length=window_size, window="hann", center=True,
            pad_mode="reflect", freeze_parameters=True,
        )  # fmt: skip
        self.logmel_extractor = LogmelFilterBank(
            sr=sample_rate, n_fft=window_size, n_mels=mel_bins, fmin=fmin, fmax=fmax, ref=1.0, amin=1e-10,
            top_db=None, freeze_parameters=True,
        )  # fmt: skip
        self.bn0 = nn.BatchNorm2d(mel_bins)
        in_channels = (1,) + self.channels[:-1]
        for index, (cin, cout) in enumerate(zip(in_channels, self.channels), start=1):
            setattr(self, f"conv_block{index}", Cnn14ConvBlock(cin, cout))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, classes_num)
        for layer in (self.fc1, self.fc_audioset):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "Cnn14":
        # torchlibrosa fills its STFT and mel weights with `.data = ...`, which fails on the meta device that
        # diffusers' low-memory loading builds models on.
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def min_samples(self) -> int:
        """Shortest input: 32 STFT frames survive the five 2x poolings."""
        return 31 * self.config.hop_size

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, samples)`): Mono audio at `sample_rate`, at least
                `min_samples` long.

        Returns:
            ``{"embedding": (batch, 2048), "logits": (batch, classes_num), "clipwise_output": sigmoid(logits)}``.
        """
        if waveform.ndim != 2:
            raise ValueError(f"`waveform` must be (batch, samples), got {tuple(waveform.shape)}.")
        if waveform.shape[-1] < self.min_samples:
            raise ValueError(f"`waveform` has {waveform.shape[-1]} samples, CNN14 needs >= {self.min_samples}.")
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (batch, 1, frames, mel_bins)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BN over mel bands
        for index in range(1, 7):
            x = getattr(self, f"conv_block{index}")(x, pool_size=(2, 2) if index < 6 else (1, 1))
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over mel bands -> (batch, 2048, frames)
        x = x.max(dim=2).values + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        embedding = F.relu(self.fc1(x))
        logits = self.fc_audioset(F.dropout(embedding, p=0.5, training=self.training))
        return {"embedding": embedding, "logits": logits, "clipwise_output": torch.sigmoid(logits)}


def load_panns_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a public PANNs ``.pth`` checkpoint (``{"model": state_dict, "iteration": ...}``), read
    without unpickling code (`foley_toolkit.conversion.common.load_checkpoint`)."""
    from ...conversion.common import load_checkpoint, unwrap_state_dict

    path = os.fspath(path)
    state = unwrap_state_dict(load_checkpoint(path, "path"), path, wrappers=("model",), strip_prefixes=("module.",))
    if "fc_audioset.weight" not in state:
        raise ValueError(f"`path` {path!r} is not a PANNs CNN14 checkpoint (no `fc_audioset.weight`).")
    return state


def cnn14_from_checkpoint(path: str | os.PathLike, **config) -> Cnn14:
    """A `Cnn14` with the weights of a public ``Cnn14*.pth`` file; `config` overrides the 16 kHz defaults (e.g. the
    32 kHz checkpoint: ``sample_rate=32000, window_size=1024, hop_size=320, fmax=14000``)."""
    from ...conversion.common import check_state_dict

    state = load_panns_checkpoint(path)
    model = Cnn14(classes_num=state["fc_audioset.weight"].shape[0], **config)
    check_state_dict(state, model, f"`path` {os.fspath(path)!r}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_panns_checkpoint(path: str | os.PathLike, output_dir: str | os.PathLike, **config) -> Cnn14:
    """Convert a public ``Cnn14*.pth`` checkpoint to a diffusers-layout folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) that `PANNsExtractor.from_pretrained` and `Cnn14.from_pretrained` load."""
    model = cnn14_from_checkpoint(path, **config)
    model.save_pretrained(output_dir)
    return model


class PANNsExtractor(AudioFeatureExtractor):
    r"""
    CNN14 embeddings (2048-d) and AudioSet logits for FD_PANNs, KL_PANNs and IS_PANNs.

    Args:
        model (`Cnn14`): The network (put in eval mode here).
        device (`str` or `torch.device`, *optional*): Where it runs (default: where it is).
        max_seconds (`float`, *optional*, defaults to 8.0): Crop (av-benchmark's ``audio_length``).
    """

    name = "panns"
    embedding_dim = 2048

    def __init__(self, model: Cnn14, device: str | torch.device | None = None, max_seconds: float | None = 8.0):
        self.model = model.eval() if device is None else model.to(device).eval()
        self.sample_rate = int(model.config.sample_rate)
        self.num_classes = int(model.config.classes_num)
        super().__init__(max_seconds=max_seconds, min_seconds=model.min_samples / self.sample_rate)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, device: str | torch.device | None = None, **kwargs
    ) -> "PANNsExtractor":
        """From a public ``Cnn14*.pth`` file, a folder written by `convert_panns_checkpoint` /
        `Cnn14.save_pretrained`, or a Hub repository id holding one (``subfolder=...`` passes through)."""
        source = os.fspath(path_or_repo_id)
        max_seconds = kwargs.pop("max_seconds", 8.0)
        if source.endswith((".pth", ".pt")):
            model = cnn14_from_checkpoint(source, **kwargs)
        else:
            model = Cnn14.from_pretrained(source, **kwargs)
        return cls(model, device=device, max_seconds=max_seconds)

    def config(self) -> dict:
        # Private entries (`_name_or_path`, `_diffusers_version`) say where the weights came from, not what they are.
        return {**super().config(), "model": {k: v for k, v in self.model.config.items() if not k.startswith("_")}}

    def _forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        outputs = self.model(waveform.to(device))
        return {"embedding": outputs["embedding"], "logits": outputs["logits"]}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # AudioSet tagging is multi-label: CNN14 was trained with per-class sigmoids.
        return torch.sigmoid(logits)
