from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput


@dataclass
class KlingFoleyPipelineOutput(BaseOutput):
    r"""
    Output of [`KlingFoleyPipeline`].

    Args:
        audios (`np.ndarray` or `torch.Tensor`):
            With `output_type="np"`/`"pt"`: waveforms of shape `(batch, channels, samples)`, float32 in `[-1, 1]`,
            `channels` 2 with a Mono2Stereo component and 1 without, `samples = round(duration * sample_rate)`.
            With `output_type="mel"`: log-mel spectrograms `(batch, channels, 128, mel_frames)`.
            With `output_type="latent"`: the normalised MelVAE latents `(batch, latent_channels, latent_frames)`.
            `batch` is the number of clips/prompts times `num_waveforms_per_prompt`.
        sample_rate (`int`):
            Sample rate of `audios` in Hz (44,100).
    """

    audios: np.ndarray | torch.Tensor
    sample_rate: int
