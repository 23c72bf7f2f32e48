"""The flow-matching objective of the transformer (paper Algorithm 1): noise levels, interpolation, velocity target,
condition dropout and the loss, in one class.

Convention (diffusers `FlowMatchEulerDiscreteScheduler`, which the pipeline samples with): ``sigma = 1`` is pure
noise, ``x_t = (1 - sigma) * x0 + sigma * noise``, the model predicts the velocity ``v = noise - x0`` at
``timestep = sigma * 1000``. The paper's ``t`` runs the other way (``sigma = 1 - t``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from accelerate.logging import get_logger
from diffusers.training_utils import compute_density_for_timestep_sampling

from ..schedulers import shift_sigmas

logger = get_logger(__name__)

WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform")


class FlowMatching:
    r"""
    Rectified-flow training objective of `FoleyMMDiTTransformer`, as MMAudio's `FlowMatching` keeps loss, sampling
    and schedule together.

    Args:
        weighting_scheme (`str`, defaults to `"logit_normal"`): Distribution of the training noise levels:
            `"logit_normal"` (SD3, the paper) draws `sigma = sigmoid(N(logit_mean, logit_std))`; `"mode"` and
            `"uniform"` follow diffusers' `compute_density_for_timestep_sampling`.
        logit_mean, logit_std (`float`): Parameters of the logit-normal distribution.
        mode_scale (`float`): Parameter of the `"mode"` distribution.
        shift (`float`, defaults to 1): Static time shift `shift * s / (1 + (shift - 1) * s)` of the sampled levels
            (`foley_toolkit.schedulers.shift_sigmas`, the one `FlowMatchEulerDiscreteScheduler(shift=...)` applies at
            inference); `> 1` moves mass towards noise.
        text_dropout, video_dropout (`float`, defaults to 0.1): Probability that a sample's text (or its CLIP and
            sync features together) is replaced by the transformer's learned empty embedding (classifier-free
            guidance's null condition).
        num_train_timesteps (`int`, defaults to 1000): `timestep = sigma * num_train_timesteps`.
    """

    def __init__(
        self,
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        shift: float = 1.0,
        text_dropout: float = 0.1,
        video_dropout: float = 0.1,
        num_train_timesteps: int = 1000,
    ):
        # "none" is diffusers' name for the uniform draw.
        if weighting_scheme not in (*WEIGHTING_SCHEMES, "none"):
            raise ValueError(f"`weighting_scheme` must be one of {WEIGHTING_SCHEMES}, got {weighting_scheme!r}.")
        if not shift > 0:
            raise ValueError(f"`shift` must be > 0, got {shift}.")
        for name, p in (("text_dropout", text_dropout), ("video_dropout", video_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {p}.")
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.shift = shift
        self.text_dropout, self.video_dropout = text_dropout, video_dropout
        self.num_train_timesteps = num_train_timesteps

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FlowMatching":
        """From the flags of `add_flow_matching_args` (``--weighting_scheme``, ``--timestep_shift``, ...)."""
        return cls(
            weighting_scheme=args.weighting_scheme,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            mode_scale=args.mode_scale,
            shift=args.timestep_shift,
            text_dropout=args.text_dropout,
            video_dropout=args.video_dropout,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Schedule
    # ------------------------------------------------------------------------------------------------------------

    def sample_sigmas(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Noise levels `(batch_size,)` float32 in (0, 1) on `device`, drawn on the generator's device so that a
        CPU generator gives the same draws whatever `device` is."""
        sample_device = generator.device if generator is not None else device
        sigmas = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme,
            batch_size=batch_size,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            device=sample_device,
            generator=generator,
        )
        # the scheduler's static shift, so that training and sampling agree on what `shift` means
        return shift_sigmas(sigmas, self.shift).to(device=device, dtype=torch.float32)

    # ------------------------------------------------------------------------------------------------------------
    # Interpolation and target
    # ------------------------------------------------------------------------------------------------------------

    def interpolate(
        self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(x_t, v, timesteps)`: ``x_t = (1 - sigma) * x0 + sigma * noise``, ``v = noise - x0``,
        ``timesteps = sigma * num_train_timesteps``.

        Args:
            latents (`torch.Tensor` of shape `(batch, channels, frames)`): Clean (normalised) latents `x0`.
            noise (`torch.Tensor`, same shape): Standard normal noise.
            sigmas (`torch.Tensor` of shape `(batch,)`): Noise levels in [0, 1].
        """
        if latents.shape != noise.shape:
            raise ValueError(f"`noise` shape {tuple(noise.shape)} must equal `latents` shape {tuple(latents.shape)}.")
        if sigmas.ndim != 1 or sigmas.shape[0] != latents.shape[0]:
            raise ValueError(f"`sigmas` must have shape ({latents.shape[0]},), got {tuple(sigmas.shape)}.")
        sigmas_b = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
        noisy_latents = (1.0 - sigmas_b) * latents + sigmas_b * noise
        return noisy_latents, noise - latents, sigmas * float(self.num_train_timesteps)

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error over valid frames: each sample's mean over its valid elements, then the batch mean.

        Args:
            prediction, target (`torch.Tensor` of shape `(batch, channels, frames)`).
            frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): True for real frames, False for
                padding (batches of mixed durations padded to the longest); `None`: every frame counts.
        """
        if prediction.shape != target.shape:
            raise ValueError(f"`prediction` shape {tuple(prediction.shape)} != `target` shape {tuple(target.shape)}.")
        squared_error = (prediction.float() - target.float()) ** 2
        if frame_mask is None:
            return squared_error.reshape(squared_error.shape[0], -1).mean(dim=1).mean()
        if frame_mask.shape != (prediction.shape[0], prediction.shape[-1]):
            raise ValueError(
                f"`frame_mask` must have shape {(prediction.shape[0], prediction.shape[-1])}, got "
                f"{tuple(frame_mask.shape)}."
            )
        mask = frame_mask.to(squared_error.dtype).unsqueeze(1).expand_as(squared_error)
        totals = (squared_error * mask).reshape(mask.shape[0], -1).sum(1)
        return (totals / mask.reshape(mask.shape[0], -1).sum(1).clamp_min(1.0)).mean()

    def dropout_masks(
        self,
        batch_size: int,
        has_text: torch.Tensor | None = None,
        has_video: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(drop_text, drop_video)` of `condition_dropout_masks` with this objective's probabilities."""
        return condition_dropout_masks(
            batch_size, self.text_dropout, self.video_dropout, has_text, has_video, generator
        )

    def batch_loss(
        self,
        transformer: torch.nn.Module,
        vae: Any,
        batch: dict[str, Any],
        generator: torch.Generator,
        device: torch.device,
        mask_padding: bool = False,
    ) -> torch.Tensor:
        """Algorithm 1 on a batch of cached features (`foley_toolkit.data.collate_features`): sample latents from
        the cached VAE posterior and normalise them (`vae.normalize_latents`), noise them, drop conditions, predict
        the velocity and return the loss (padded frames masked out when `mask_padding`).

        All randomness comes from `generator` (the run's checkpointed CPU generator), in a fixed order: posterior
        noise, flow noise, noise levels, dropout masks.
        """
        mean, std = batch["latents_mean"], batch["latents_std"]
        batch_size = mean.shape[0]
        posterior_noise = torch.randn(mean.shape, generator=generator).to(device)
        latents = vae.normalize_latents(mean.to(device) + std.to(device) * posterior_noise)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sigmas = self.sample_sigmas(batch_size, generator=generator, device=device)
        drop_text, drop_video = self.dropout_masks(
            batch_size, batch["has_text"].cpu(), batch["has_video"].cpu(), generator
        )
        noisy_latents, target, timesteps = self.interpolate(latents, noise, sigmas)

        has_text_features = batch["text_embeds"] is not None
        has_video_features = batch["clip_features"] is not None
        prediction = transformer(
            noisy_latents,
            timesteps,
            encoder_hidden_states=batch["text_embeds"] if has_text_features else None,
            encoder_attention_mask=batch["text_mask"] if has_text_features else None,
            clip_features=batch["clip_features"] if has_video_features else None,
            sync_features=batch["sync_features"] if has_video_features else None,
            seconds_start=batch["seconds_start"].to(device),
            seconds_total=batch["duration"].to(device),
            drop_text=drop_text.to(device) if has_text_features else None,
            drop_clip=drop_video.to(device) if has_video_features else None,
            drop_sync=drop_video.to(device) if has_video_features else None,
            return_dict=False,
        )[0]
        frame_mask = batch["latent_mask"].to(device) if mask_padding else None
        return self.loss(prediction, target, frame_mask)


def condition_dropout_masks(
    batch_size: int,
    text_dropout: float = 0.1,
    video_dropout: float = 0.1,
    has_text: torch.Tensor | None = None,
    has_video: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample masks for the learned empty embeddings (Algorithm 1, classifier-free guidance).

    Text and video are dropped independently, each with its own probability; video drops CLIP and sync together
    (one modality). Samples without a caption (video-audio pairs) or without video (text-audio pairs) always use
    the empty embedding of the missing modality.

    Returns:
        `(drop_text, drop_video)`, boolean tensors of shape `(batch,)` on the generator's device (CPU by default);
        pass `drop_video` as both `drop_clip` and `drop_sync`.
    """
    for name, p in (("text_dropout", text_dropout), ("video_dropout", video_dropout)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1], got {p}.")
    device = generator.device if generator is not None else "cpu"
    drop_text = torch.rand(batch_size, generator=generator, device=device) < text_dropout
    drop_video = torch.rand(batch_size, generator=generator, device=device) < video_dropout
    if has_text is not None:
        drop_text = drop_text | ~has_text.to(device=device, dtype=torch.bool)
    if has_video is not None:
        drop_video = drop_video | ~has_video.to(device=device, dtype=torch.bool)
    return drop_text, drop_video


# Function forms of the objective's pieces (for code that has no `FlowMatching`).


def sample_flow_matching_sigmas(
    batch_size: int,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`FlowMatching(weighting_scheme, logit_mean, logit_std, mode_scale, shift).sample_sigmas(...)`."""
    objective = FlowMatching(weighting_scheme, logit_mean, logit_std, mode_scale, shift)
    return objective.sample_sigmas(batch_size, generator=generator, device=device)


def flow_matching_inputs(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`FlowMatching().interpolate(latents, noise, sigmas)`: `(noisy_latents, target, timesteps)`."""
    return FlowMatching().interpolate(latents, noise, sigmas)


masked_mse_loss = FlowMatching.loss


def load_latent_normalizer(pretrained_model_name_or_path: str | os.PathLike):
    """The pipeline's MelVAE (on CPU, frozen): training on cached posteriors needs only its `normalize_latents`."""
    from ..models.autoencoders.autoencoder_mel_vae import MelVAE

    vae = MelVAE.from_pretrained(os.path.join(pretrained_model_name_or_path, "vae"))
    vae.requires_grad_(False).eval()
    if vae.config.latents_mean is None:
        logger.warning(
            "The VAE config has no latents_mean/latents_std: latents are only scaled by scaling_factor. "
            "training/train_vae.py writes the statistics."
        )
    return vae
