r"""PaSST (Koutini et al., 2022), the audio tagger of FD_PaSST and KL_PaSST in the Kling-Foley paper's Table 1.

av-benchmark (``av_bench/extraction_models.py`` / ``extract.py``) runs ``hear21passt.base.get_basic_model(mode="all")``:
the AudioSet PaSST-S (``passt_s_swa_p16_128_ap476``: ViT-B with 16x16 patches, stride 10, CLS + distillation
tokens, frequency / time position embeddings) behind its mel front end, on 32 kHz audio cropped to 8 s and
zero-padded to 10 s (320000 samples). The wrapper's output is ``[logits (527), features (768)]``; av-benchmark
computes FD_PaSST on the 768-d features (mean of the CLS and distillation tokens after the final LayerNorm, before the
head) and KL_PaSST on the softmax of the 527 logits (paired, ``KL(reference || generated)``).

The network is hear21passt's own `PaSST` class (``pip install hear21passt``; it imports timm, which needs a
torchvision that matches the installed torch), built without downloading and filled from a local checkpoint
(``passt-s-f128-p16-s10-ap.476-swa.pt`` from the PaSST GitHub release v0.0.1-audioset, a plain state dict; read with
``torch.load(weights_only=True)``). The front end is written here (`passt_log_mel`) because hear21passt's
``AugmentMelSTFT`` needs torchaudio; in eval mode it is:

* pre-emphasis ``y[n] = x[n + 1] - 0.97 x[n]``;
* power STFT: n_fft 1024, symmetric hann window of 800, hop 320, centred (reflect padding);
* 128 Kaldi mel filters (``torchaudio.compliance.kaldi.get_mel_banks``: triangles on the ``1127 ln(1 + f/700)`` mel
  scale, 0 Hz to ``fmax = 16000 - 1000 = 15000`` Hz, the Nyquist bin zero);
* ``(log(mel + 1e-5) + 4.5) / 5``  -> `(batch, 1, 128, 1000)` for 10 s.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .base import AudioFeatureExtractor

PASST_SAMPLE_RATE = 32_000
PASST_INPUT_SAMPLES = 320_000  # av-benchmark pads / crops to 10 s, the model's training length
PASST_ARCH = "passt_s_swa_p16_128_ap476"
PASST_N_FFT, PASST_WIN_LENGTH, PASST_HOP_LENGTH, PASST_NUM_MELS = 1024, 800, 320, 128
PASST_FMAX = PASST_SAMPLE_RATE // 2 - 2000 // 2  # hear21passt: fmax=None -> sr // 2 - fmax_aug_range // 2
PASST_INSTALL_HINT = (
    "PaSST needs the `hear21passt` package and its timm dependency (timm imports torchvision, which must match your "
    "torch): `pip install hear21passt` (or `pip install 'foley-toolkit[eval]'`)."
)


def kaldi_mel_filters(num_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """`(num_mels, n_fft // 2 + 1)` Kaldi mel filters (triangles in mel space on ``1127 ln(1 + f / 700)``, peak 1, no
    normalisation; the Nyquist bin is zero), as ``torchaudio.compliance.kaldi.get_mel_banks`` padded with one zero
    column, through transformers' `mel_filter_bank`."""
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=num_mels, min_frequency=f_min, max_frequency=f_max,
        sampling_rate=sample_rate, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True,
    )  # fmt: skip
    filters = torch.from_numpy(np.asarray(filters, dtype=np.float32)).T.contiguous()
    filters[:, -1] = 0.0  # Kaldi's banks cover n_fft // 2 bins; hear21passt pads the Nyquist column with zeros
    return filters


def passt_log_mel(waveform: torch.Tensor, mel_filters: torch.Tensor | None = None) -> torch.Tensor:
    r"""
    hear21passt's ``AugmentMelSTFT`` in eval mode (see the module docstring).

    Args:
        waveform (`torch.Tensor` of shape `(batch, samples)`): 32 kHz mono audio.
        mel_filters (`torch.Tensor`, *optional*): `kaldi_mel_filters(128, 1024, 32000, 0, 15000)` (computed if None).

    Returns:
        `torch.Tensor` of shape `(batch, 128, frames)`, ``frames = (samples - 1) // 320 + 1``.
    """
    if waveform.ndim != 2 or waveform.shape[-1] < 2:
        raise ValueError(f"`waveform` must be (batch, samples) with >= 2 samples, got {tuple(waveform.shape)}.")
    if mel_filters is None:
        mel_filters = kaldi_mel_filters(PASST_NUM_MELS, PASST_N_FFT, PASST_SAMPLE_RATE, 0.0, PASST_FMAX)
    waveform = waveform.float()
    emphasised = waveform[:, 1:] - 0.97 * waveform[:, :-1]
    window = torch.hann_window(PASST_WIN_LENGTH, periodic=False, device=waveform.device)
    stft = torch.stft(
        emphasised, PASST_N_FFT, hop_length=PASST_HOP_LENGTH, win_length=PASST_WIN_LENGTH, window=window,
        center=True, pad_mode="reflect", normalized=False, return_complex=True,
    )  # fmt: skip
    mel = mel_filters.to(waveform.device) @ stft.abs().pow(2)
    return (torch.log(mel + 1e-5) + 4.5) / 5.0


def load_passt_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a PaSST release checkpoint (a plain state dict, or ``{"model": ...}``), read without
    unpickling code."""
    from ...conversion.common import load_checkpoint, unwrap_state_dict

    path = os.fspath(path)
    state = unwrap_state_dict(load_checkpoint(path, "path"), path, wrappers=("model", "state_dict"), strip_prefixes=("net.", "module."))
    if "time_new_pos_embed" not in state or "head.1.weight" not in state:
        raise ValueError(
            f"`path` {path!r} is not a PaSST checkpoint (no `time_new_pos_embed` / `head.1.weight`); expected e.g. "
            "passt-s-f128-p16-s10-ap.476-swa.pt."
        )
    return state


def passt_from_checkpoint(path: str | os.PathLike, arch: str = PASST_ARCH):
    """hear21passt's `PaSST` network of `arch` (built without downloading) with the weights of a local checkpoint."""
    try:
        from hear21passt.models.passt import get_model
    except ImportError as error:
        raise ImportError(f"{PASST_INSTALL_HINT} ({type(error).__name__}: {error})") from error
    from ...conversion.common import check_state_dict

    state = load_passt_checkpoint(path)
    net = get_model(arch=arch, pretrained=False, n_classes=state["head.1.weight"].shape[0], fstride=10, tstride=10,
                    input_fdim=128, input_tdim=998)  # fmt: skip
    check_state_dict(state, net, f"`path` {os.fspath(path)!r}")
    net.load_state_dict(state, strict=True)
    return net.eval()


class PaSSTExtractor(AudioFeatureExtractor):
    r"""
    PaSST features (768-d) and AudioSet logits for FD_PaSST and KL_PaSST (av-benchmark's ``passt_features_embed`` and
    ``passt_logits``).

    Args:
        net (`torch.nn.Module`): hear21passt's `PaSST` network: ``(batch, 1, 128, frames) -> (logits, features)``.
        device (`str` or `torch.device`, *optional*): Where it runs.
        max_seconds (`float`, *optional*, defaults to 8.0): Crop before the zero padding to 10 s (av-benchmark's
            ``audio_length``).
    """

    name = "passt"
    sample_rate = PASST_SAMPLE_RATE

    def __init__(self, net, device: str | torch.device | None = None, max_seconds: float | None = 8.0):
        if max_seconds is not None and max_seconds > PASST_INPUT_SAMPLES / PASST_SAMPLE_RATE:
            raise ValueError(f"`max_seconds` must be <= 10 (PaSST's input length), got {max_seconds}.")
        self.model = net.eval() if device is None else net.to(device).eval()
        self.embedding_dim = int(getattr(net, "num_features", 768))
        self.num_classes = int(getattr(net, "num_classes", 527))
        self.mel_filters = kaldi_mel_filters(PASST_NUM_MELS, PASST_N_FFT, PASST_SAMPLE_RATE, 0.0, PASST_FMAX)
        super().__init__(max_seconds=max_seconds)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None, **kwargs) -> "PaSSTExtractor":
        """From a local PaSST checkpoint (``passt-s-f128-p16-s10-ap.476-swa.pt``); needs hear21passt."""
        max_seconds = kwargs.pop("max_seconds", 8.0)
        return cls(passt_from_checkpoint(path, **kwargs), device=device, max_seconds=max_seconds)

    def config(self) -> dict:
        return {**super().config(), "arch": PASST_ARCH, "input_samples": PASST_INPUT_SAMPLES}

    def model_input(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(1, samples)` 32 kHz -> `(1, 1, 128, 1000)`: zero-padded (or cut) to 10 s, then `passt_log_mel`."""
        samples = waveform.shape[-1]
        if samples < PASST_INPUT_SAMPLES:
            waveform = F.pad(waveform, (0, PASST_INPUT_SAMPLES - samples))
        return passt_log_mel(waveform[..., :PASST_INPUT_SAMPLES], self.mel_filters)[:, None]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # AudioSet tagging is multi-label: PaSST was trained with per-class sigmoids (KL_PaSST uses the softmax of the
        # logits, as av-benchmark does, through `kl_divergence`).
        return torch.sigmoid(logits)

    def _forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        logits, features = self.model(self.model_input(waveform).to(device))
        return {"embedding": features, "logits": logits}
