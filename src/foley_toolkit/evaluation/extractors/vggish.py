r"""VGGish (Hershey et al., 2017), the embedding of FD_VGG (also called FAD) in the Kling-Foley paper's Table 1.

The network is the public PyTorch port (github.com/harritaylor/torchvggish, ``VGG`` + ``make_layers``) as
av-benchmark uses it: four conv stages (64, 128, 256x2, 512x2, 3x3 convs + ReLU, 2x2 max pooling) on a 96 x 64
log-mel patch, then 12288 -> 4096 -> 4096 -> 128 fully connected layers, the last **without** its ReLU and without
the PCA / 8-bit post-processing (av-benchmark: "not using postprocess following audioldm_eval"). Parameter names
are the port's, so its checkpoint ``vggish-10086976.pth`` loads without renaming.

The front end is ``torchvggish.vggish_input.waveform_to_examples`` (16 kHz, 25 ms Hann window, 10 ms hop, 64 mel
bands over 125-7500 Hz, ``log(mel + 0.01)``, non-overlapping 0.96 s examples): one 128-d embedding per 0.96 s, and
FD_VGG is computed over the embeddings of all examples of all clips (av-benchmark concatenates them).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ...models.adapters import AttentionFreeModelMixin
from .base import AudioFeatureExtractor

VGGISH_SAMPLE_RATE = 16000
VGGISH_EXAMPLE_SECONDS = 0.96


class VGGish(AttentionFreeModelMixin, ModelMixin, ConfigMixin):
    r"""
    VGGish embedding network (no post-processing).

    Args:
        embedding_dim (`int`, defaults to 128): Output width.

    Input `(examples, 1, 96, 64)` log-mel patches; output `(examples, embedding_dim)`.
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 128):
        super().__init__()
        layers, in_channels = [], 1
        for value in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if value == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, value, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = value
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, embedding_dim)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.ndim != 4 or tuple(patches.shape[1:]) != (1, 96, 64):
            raise ValueError(f"`patches` must be (examples, 1, 96, 64) log-mel, got {tuple(patches.shape)}.")
        x = self.features(patches)  # (examples, 512, 6, 4)
        # TensorFlow's flattening order (height, width, channels), which the fully connected weights expect.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def vggish_examples(waveform: np.ndarray) -> torch.Tensor:
    """16 kHz mono waveform -> `(examples, 1, 96, 64)` log-mel patches (torchvggish's front end)."""
    try:
        from torchvggish.vggish_input import waveform_to_examples
    except ImportError as error:  # an optional dependency (`pip install foley-toolkit[eval]`)
        raise ImportError("VGGish needs `torchvggish` (pip install 'foley-toolkit[eval]').") from error
    examples = waveform_to_examples(np.asarray(waveform, dtype=np.float64), VGGISH_SAMPLE_RATE, return_tensor=False)
    return torch.from_numpy(np.asarray(examples, dtype=np.float32))[:, None]


def vggish_from_checkpoint(path: str | os.PathLike) -> VGGish:
    """A `VGGish` with the weights of the port's ``vggish-*.pth`` (read without unpickling code)."""
    from ...conversion.common import check_state_dict, load_checkpoint, unwrap_state_dict

    path = os.fspath(path)
    state = unwrap_state_dict(load_checkpoint(path, "path"), path, wrappers=("state_dict", "model"))
    model = VGGish(embedding_dim=state["embeddings.4.weight"].shape[0] if "embeddings.4.weight" in state else 128)
    check_state_dict(state, model, f"`path` {path!r}")
    model.load_state_dict(state, strict=True)
    return model.eval()


class VGGishExtractor(AudioFeatureExtractor):
    r"""
    VGGish embeddings for FD_VGG: ``extract(...)["embedding"]`` is `(examples, 128)`, one row per 0.96 s.

    Args:
        model (`VGGish`): The network.
        device (`str` or `torch.device`, *optional*): Where it runs.
        max_seconds (`float`, *optional*, defaults to 8.0): Crop (av-benchmark's ``audio_length``).
    """

    name = "vggish"
    sample_rate = VGGISH_SAMPLE_RATE

    def __init__(self, model: VGGish, device: str | torch.device | None = None, max_seconds: float | None = 8.0):
        self.model = model.eval() if device is None else model.to(device).eval()
        self.embedding_dim = int(model.config.embedding_dim)
        super().__init__(max_seconds=max_seconds, min_seconds=VGGISH_EXAMPLE_SECONDS)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, device: str | torch.device | None = None, **kwargs
    ) -> "VGGishExtractor":
        """From the port's ``vggish-10086976.pth``, a folder written by `VGGish.save_pretrained`, or a Hub id."""
        source = os.fspath(path_or_repo_id)
        max_seconds = kwargs.pop("max_seconds", 8.0)
        model = vggish_from_checkpoint(source) if source.endswith((".pth", ".pt")) else VGGish.from_pretrained(source, **kwargs)
        return cls(model, device=device, max_seconds=max_seconds)

    def config(self) -> dict:
        return {**super().config(), "model": {k: v for k, v in self.model.config.items() if not k.startswith("_")}}

    def _forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = vggish_examples(waveform[0].cpu().numpy())
        device = next(self.model.parameters()).device
        return {"embedding": self.model(patches.to(device))[None]}
