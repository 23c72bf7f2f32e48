r"""The interface every evaluation extractor implements, and the one place where audio is brought to its input.

An extractor wraps a pretrained audio model (PANNs CNN14, ...) for the distribution metrics: ``embed`` gives the
clip embedding FD is computed on, ``classify`` the class probabilities of models with a tagging head, and
``extract`` both (plus the raw class logits that KL and IS need) from one forward pass.

Every input goes through `AudioPreparer.prepare` (`AudioFeatureExtractor.prepare` / `.load`): channels averaged to
mono, DC offset removed, resampled to the extractor's rate (`foley_toolkit.audio_utils.resample`, band-limited
polyphase) and cropped to `max_seconds` -- av-benchmark's ``AudioDataset`` does the same (mono, minus the mean, resample, crop to
``audio_length`` = 8 s) before PANNs, PaSST and VGGish.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ...audio_utils import load_audio, resample


@dataclass(frozen=True)
class AudioPreparer:
    r"""
    Brings any clip to an extractor's input: mono, DC removed, at `sample_rate`, cropped to `max_seconds`.

    Args:
        sample_rate (`int`): The extractor's rate.
        max_seconds (`float`, *optional*): Crop; None keeps whole clips.
        min_seconds (`float`): Shorter clips raise a ValueError.
        name (`str`): The extractor's name (for messages).
    """

    sample_rate: int
    max_seconds: float | None
    min_seconds: float
    name: str

    def prepare(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        r"""
        Args:
            audio (`np.ndarray` or `torch.Tensor` of shape `(samples,)` or `(channels, samples)`): Waveform.
            sample_rate (`int`): Its sample rate.

        Returns:
            `torch.Tensor` of shape `(1, samples')`, float32.
        """
        waveform = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
        waveform = waveform.detach().to("cpu", torch.float32)
        if waveform.ndim == 2:
            waveform = waveform.mean(dim=0)
        if waveform.ndim != 1:
            raise ValueError(f"`audio` must be (samples,) or (channels, samples), got {tuple(waveform.shape)}.")
        if not torch.isfinite(waveform).all():
            raise ValueError("`audio` holds NaN or infinite samples.")
        waveform = waveform - waveform.mean()
        waveform = resample(waveform, int(sample_rate), self.sample_rate)
        if self.max_seconds is not None:
            waveform = waveform[: int(self.sample_rate * self.max_seconds)]
        seconds = waveform.shape[-1] / self.sample_rate
        if seconds < self.min_seconds:
            raise ValueError(f"`audio` lasts {seconds:.3f} s; {self.name} needs at least {self.min_seconds:.3f} s.")
        return waveform[None]

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """Read an audio (or video) file and `prepare` it. Raises FileNotFoundError / ValueError naming the file."""
        audio = load_audio(path, sample_rate=self.sample_rate, mono=True)
        try:
            return self.prepare(audio, self.sample_rate)
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)!r}: {error}") from error


class AudioFeatureExtractor(ABC):
    r"""
    Base class of the evaluation extractors.

    Subclasses set `name`, `sample_rate`, `embedding_dim`, `num_classes` (None without a tagging head) and
    implement `_forward` (a `(1, samples)` waveform at `sample_rate` -> ``{"embedding": (1, embedding_dim),
    "logits": (1, num_classes)}``), and `_weights_fingerprint` when their weights are not one `self.model`.

    Args:
        max_seconds (`float`, *optional*, defaults to 8.0): Clips are cropped to this many seconds (av-benchmark's
            ``audio_length``); None keeps whole clips.
        min_seconds (`float`, defaults to 0.0): Shorter clips are refused with a ValueError (models with a fixed
            pooling depth need a minimum length).
    """

    name: str = "extractor"
    sample_rate: int = 16000
    embedding_dim: int = 0
    num_classes: int | None = None

    def __init__(self, max_seconds: float | None = 8.0, min_seconds: float = 0.0):
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"`max_seconds` must be positive or None, got {max_seconds}.")
        self.max_seconds = max_seconds
        self.min_seconds = float(min_seconds)
        self._cache_key: str | None = None

    # ----------------------------------------------------------------------------------------------- input
    @property
    def preparer(self) -> "AudioPreparer":
        """The extractor's input preparation alone (picklable, no model): what data-loading workers run."""
        return AudioPreparer(self.sample_rate, self.max_seconds, self.min_seconds, self.name)

    def prepare(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """See `AudioPreparer.prepare`."""
        return self.preparer.prepare(audio, sample_rate)

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """See `AudioPreparer.load`."""
        return self.preparer.load(path)

    # ----------------------------------------------------------------------------------------------- model
    @abstractmethod
    def _forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(1, samples)` at `sample_rate` -> ``{"embedding": (1, D), "logits": (1, C)}`` (no logits without a head)."""

    def _weights_fingerprint(self) -> str:
        """A string that changes whenever the weights change (part of the cache key): a SHA-256 of the names and bytes
        of `self.model`'s state dict. Extractors whose weights are not one `model` override it."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()

    def config(self) -> dict:
        """Everything besides the weights that changes the output (part of the cache key)."""
        return {"name": self.name, "sample_rate": self.sample_rate, "max_seconds": self.max_seconds}

    @property
    def cache_key(self) -> str:
        """``<name>-<16 hex>``: the extractor, its preprocessing and its weights."""
        if self._cache_key is None:
            payload = json.dumps({"config": self.config(), "weights": self._weights_fingerprint()}, sort_keys=True)
            self._cache_key = f"{self.name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"
        return self._cache_key

    @torch.inference_mode()
    def extract(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
        r"""
        Returns:
            ``{"embedding": (embedding_dim,), "logits": (num_classes,)}`` float32 on the CPU (``"logits"`` only for
            models with a tagging head).
        """
        return self.extract_prepared(self.prepare(audio, sample_rate))

    @torch.inference_mode()
    def extract_prepared(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        """`extract` for a waveform already returned by `prepare` / `load`."""
        outputs = self._forward(waveform)
        return {key: value[0].detach().to("cpu", torch.float32) for key, value in outputs.items()}

    def embed(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """`(embedding_dim,)` clip embedding (the features FD is computed on)."""
        return self.extract(audio, sample_rate)["embedding"]

    def classify(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """`(num_classes,)` class probabilities, with the model's own output activation (`probabilities`)."""
        if self.num_classes is None:
            raise ValueError(f"{self.name} has no classification head.")
        return self.probabilities(self.extract(audio, sample_rate)["logits"])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's output activation (softmax unless the subclass is multi-label)."""
        return logits.softmax(dim=-1)
