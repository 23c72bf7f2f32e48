"""Shared training pieces: losses, schedules and timestep sampling used by the scripts in ``training/``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Codec training (MelVAE: margin KL, mel MSE, GAN, R1, Algorithm 2 stepping schedule)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Flow-matching training (transformer: logit-normal timesteps, InverseLR, condition dropout, ...)
# ---------------------------------------------------------------------------------------------

# Imports of this section live here so that the two sections can be edited independently.
from typing import Sequence as _Sequence  # noqa: E402

from diffusers.training_utils import compute_density_for_timestep_sampling  # noqa: E402


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
    """Sample noise levels ``sigma`` in (0, 1) for flow-matching training (sigma 1 = pure noise).

    ``weighting_scheme="logit_normal"`` (the default, SD3 / the paper's training) draws
    ``sigma = sigmoid(N(logit_mean, logit_std))``; ``"mode"`` and ``"uniform"`` follow diffusers'
    ``compute_density_for_timestep_sampling``. ``shift > 1`` moves mass towards high noise the way
    ``FlowMatchEulerDiscreteScheduler(shift=...)`` does at inference.

    Returns:
        `torch.Tensor` of shape `(batch,)`, float32, on `device`.
    """
    if weighting_scheme not in ("logit_normal", "mode", "uniform", "none"):
        raise ValueError(
            f"`weighting_scheme` must be one of 'logit_normal', 'mode', 'uniform', got {weighting_scheme!r}."
        )
    if shift <= 0:
        raise ValueError(f"`shift` must be > 0, got {shift}.")
    # Sample where the generator lives so that a CPU generator drives reproducible draws on any device.
    sample_device = generator.device if generator is not None else device
    sigmas = compute_density_for_timestep_sampling(
        weighting_scheme=weighting_scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        device=sample_device,
        generator=generator,
    )
    if shift != 1.0:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.to(device=device, dtype=torch.float32)


def flow_matching_inputs(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy input, velocity target and timesteps in the pipeline's flow-matching convention.

    ``x_t = (1 - sigma) * x0 + sigma * noise``, target ``v = noise - x0``, ``timestep = sigma * 1000``
    (diffusers ``FlowMatchEulerDiscreteScheduler``; the paper's ``t`` runs the other way, ``sigma = 1 - t``).

    Args:
        latents (`torch.Tensor` of shape `(batch, channels, frames)`): clean (normalised) latents ``x0``.
        noise (`torch.Tensor`, same shape): standard normal noise.
        sigmas (`torch.Tensor` of shape `(batch,)`): noise levels in [0, 1].

    Returns:
        `(noisy_latents, target, timesteps)`; `timesteps` has shape `(batch,)`.
    """
    if latents.shape != noise.shape:
        raise ValueError(f"`noise` shape {tuple(noise.shape)} must equal `latents` shape {tuple(latents.shape)}.")
    if sigmas.ndim != 1 or sigmas.shape[0] != latents.shape[0]:
        raise ValueError(f"`sigmas` must have shape ({latents.shape[0]},), got {tuple(sigmas.shape)}.")
    sigmas_b = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    noisy_latents = (1.0 - sigmas_b) * latents + sigmas_b * noise
    target = noise - latents
    return noisy_latents, target, sigmas * 1000.0


def masked_mse_loss(
    prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over valid frames: each sample's mean over its valid elements, then the batch mean.

    Args:
        prediction, target (`torch.Tensor` of shape `(batch, channels, frames)`).
        frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1/True for real frames, 0/False for
            padding (batches of mixed durations padded to the longest); `None` means all frames count.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` shape {tuple(prediction.shape)} != `target` shape {tuple(target.shape)}.")
    squared_error = (prediction.float() - target.float()) ** 2
    if frame_mask is None:
        return squared_error.reshape(squared_error.shape[0], -1).mean(dim=1).mean()
    if frame_mask.shape != (prediction.shape[0], prediction.shape[-1]):
        raise ValueError(
            f"`frame_mask` must have shape {(prediction.shape[0], prediction.shape[-1])}, got {tuple(frame_mask.shape)}."
        )
    mask = frame_mask.to(squared_error.dtype).unsqueeze(1).expand_as(squared_error)
    per_sample = (squared_error * mask).reshape(mask.shape[0], -1).sum(1) / mask.reshape(mask.shape[0], -1).sum(
        1
    ).clamp_min(1.0)
    return per_sample.mean()


def condition_dropout_masks(
    batch_size: int,
    text_dropout: float = 0.1,
    video_dropout: float = 0.1,
    has_text: torch.Tensor | None = None,
    has_video: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample masks for the transformer's learned empty embeddings (Algorithm 1, classifier-free guidance).

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


class InverseLRLambda:
    """Multiplier of the base learning rate for the paper's InverseLR schedule (eq. 8).

    ``LR(t) = max(LR_final, LR_base * (1 + t / inv_gamma) ** -power * (1 - warmup ** (t + 1)))``:
    an inverse (power-law) decay with a smooth exponential warm-up, floored at ``final_lr``.
    A callable object (not a closure) so that ``LambdaLR.state_dict()`` stores its numbers.

    ``steps_per_update`` divides the scheduler's step count: ``accelerator.prepare`` wraps schedulers so they step
    ``num_processes`` times per optimizer step; pass ``accelerator.num_processes`` so ``t`` counts optimizer steps.
    """

    def __init__(
        self,
        base_lr: float,
        inv_gamma: float = 1e6,
        power: float = 0.5,
        warmup: float = 0.99,
        final_lr: float = 0.0,
        steps_per_update: int = 1,
    ):
        if base_lr <= 0:
            raise ValueError(f"`base_lr` must be > 0, got {base_lr}.")
        if inv_gamma <= 0:
            raise ValueError(f"`inv_gamma` must be > 0, got {inv_gamma}.")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"`warmup` must be in [0, 1), got {warmup}.")
        if final_lr < 0:
            raise ValueError(f"`final_lr` must be >= 0, got {final_lr}.")
        if steps_per_update < 1:
            raise ValueError(f"`steps_per_update` must be >= 1, got {steps_per_update}.")
        self.base_lr = float(base_lr)
        self.inv_gamma = float(inv_gamma)
        self.power = float(power)
        self.warmup = float(warmup)
        self.final_lr = float(final_lr)
        self.steps_per_update = int(steps_per_update)

    def learning_rate(self, step: int) -> float:
        """The learning rate of eq. 8 after `step` optimizer steps."""
        decay = (1.0 + step / self.inv_gamma) ** -self.power
        warmup = 1.0 - self.warmup ** (step + 1)
        return max(self.final_lr, self.base_lr * decay * warmup)

    def __call__(self, scheduler_step: int) -> float:
        return self.learning_rate(scheduler_step // self.steps_per_update) / self.base_lr


def get_inverse_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    inv_gamma: float = 1e6,
    power: float = 0.5,
    warmup: float = 0.99,
    final_lr: float = 0.0,
    steps_per_update: int = 1,
    last_epoch: int = -1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """InverseLR (paper eq. 8) as a ``torch.optim.lr_scheduler.LambdaLR``; each parameter group decays from its
    own ``lr`` (``LR_base``) and is floored at the absolute ``final_lr``. See `InverseLRLambda`."""
    lambdas = [
        InverseLRLambda(group["lr"], inv_gamma, power, warmup, final_lr, steps_per_update)
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas, last_epoch=last_epoch)


def pad_sequences(
    sequences: _Sequence[torch.Tensor], dim: int = 0, pad_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of different lengths along `dim`, padding at the end.

    Returns:
        `(padded, mask)`: `padded` has shape `(batch, *shape)` with the longest length at `dim + 1`;
        `mask` has shape `(batch, max_length)`, True where a position holds real data.
    """
    if len(sequences) == 0:
        raise ValueError("`sequences` must not be empty.")
    lengths = [s.shape[dim] for s in sequences]
    max_length = max(lengths)
    padded = []
    for s in sequences:
        pad = [0, 0] * s.ndim
        # F.pad lists pads from the last dimension backwards.
        pad[2 * (s.ndim - 1 - dim) + 1] = max_length - s.shape[dim]
        padded.append(F.pad(s, pad, value=pad_value))
    mask = torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]
    return torch.stack(padded), mask

