"""Shared training pieces: losses, schedules and timestep sampling used by the scripts in ``training/``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Codec training (MelVAE: margin KL, mel MSE, GAN, R1, Algorithm 2 stepping schedule)
# ---------------------------------------------------------------------------------------------

# Imports of this section live here so that the two sections can be edited independently.
from dataclasses import dataclass as _dataclass  # noqa: E402
from typing import Iterable as _Iterable  # noqa: E402


@_dataclass(frozen=True)
class CodecLossWeights:
    r"""
    Loss weights of one MelVAE training step (paper Algorithm 2).

    Args:
        stage (`int`): 1 base reconstruction, 2 KL ramp, 3 adversarial ramp, 4 decoder refinement.
        mse (`float`): Weight of the mel MSE (always 1).
        kl (`float`): Weight of the margin KL.
        gan (`float`): Weight of the adversarial losses, generator and discriminator alike (the paper's
            gamma_step in eq. 5 / Algorithm 2); 0 means "do not train the discriminator yet".
        freeze_encoder (`bool`): Stage 4: encoder and posterior projection frozen, only decoder and discriminator train.
    """

    stage: int
    mse: float
    kl: float
    gan: float
    freeze_encoder: bool


def codec_loss_weights(
    step: int,
    stage1_end: int,
    stage2_end: int,
    stage3_end: int,
    kl_upper: float,
    gan_upper: float,
) -> CodecLossWeights:
    r"""
    The multi-stage stepping schedule of the paper's Algorithm 2, exactly:

    - `step <= stage1_end`: `L = L_mse`;
    - `step <= stage2_end`: `L = L_mse + gamma * L_kl`, `gamma = kl_upper * min(1, (step - stage1_end) / (stage2_end - stage1_end))`;
    - `step <= stage3_end`: `L = L_mse + kl_upper * L_kl + gamma * (L_g + L_d)`,
      `gamma = gan_upper * min(1, (step - stage2_end) / (stage3_end - stage2_end))`;
    - otherwise: `L = L_mse + kl_upper * L_kl + gan_upper * (L_g + L_d)`, encoder and VAE posterior frozen.

    Args:
        step (`int`): Current training step (>= 0).
        stage1_end, stage2_end, stage3_end (`int`): Phase transition steps, `0 <= stage1_end < stage2_end < stage3_end`.
        kl_upper, gan_upper (`float`): Maximum loss weights (>= 0).
    """
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}.")
    if not 0 <= stage1_end < stage2_end < stage3_end:
        raise ValueError(
            "Stage bounds must satisfy 0 <= stage1_end < stage2_end < stage3_end, got "
            f"{stage1_end}, {stage2_end}, {stage3_end}."
        )
    if kl_upper < 0 or gan_upper < 0:
        raise ValueError(f"`kl_upper` and `gan_upper` must be >= 0, got {kl_upper} and {gan_upper}.")
    if step <= stage1_end:
        return CodecLossWeights(stage=1, mse=1.0, kl=0.0, gan=0.0, freeze_encoder=False)
    if step <= stage2_end:
        kl = kl_upper * min(1.0, (step - stage1_end) / (stage2_end - stage1_end))
        return CodecLossWeights(stage=2, mse=1.0, kl=kl, gan=0.0, freeze_encoder=False)
    if step <= stage3_end:
        gan = gan_upper * min(1.0, (step - stage2_end) / (stage3_end - stage2_end))
        return CodecLossWeights(stage=3, mse=1.0, kl=float(kl_upper), gan=gan, freeze_encoder=False)
    return CodecLossWeights(stage=4, mse=1.0, kl=float(kl_upper), gan=float(gan_upper), freeze_encoder=True)


def set_codec_encoder_trainable(vae: torch.nn.Module, trainable: bool) -> None:
    """Algorithm 2, stage 4: (un)freeze the MelVAE's encoder and its posterior projection (`quant_conv`), leaving
    `post_quant_conv` and the decoder trainable."""
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(trainable)


def mel_mse_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper eq. 3, `MSE(A_in, A_d)` on log-mels `(batch, mel_bins, frames)`. The decoder returns an even number of
    frames (`2 * ceil(T / 2)`): the reconstruction is cropped to the target's frames."""
    if reconstruction.shape[:-1] != target.shape[:-1] or reconstruction.shape[-1] < target.shape[-1]:
        raise ValueError(
            f"`reconstruction` {tuple(reconstruction.shape)} must match `target` {tuple(target.shape)} with at least "
            "as many frames."
        )
    return F.mse_loss(reconstruction[..., : target.shape[-1]].float(), target.float())


def margin_kl_loss(posterior, margin: float = 0.0, per_element: bool = True) -> torch.Tensor:
    r"""
    Paper eq. 2: `L_kl = max(0, KL[N(mu, sigma^2) || N(0, I)] - delta)`, against KL collapse.

    Args:
        posterior (`DiagonalGaussianDistribution1D` or `torch.Tensor`): The MelVAE posterior, or per-sample KL values
            `(batch,)` already summed over latent elements.
        margin (`float`, defaults to 0): The margin `delta`, in the unit chosen by `per_element`.
        per_element (`bool`, defaults to `True`): Measure the KL in nats per latent element (sum / (channels * frames)),
            so `delta` does not depend on clip length; `False` uses the per-sample sum.

    Returns:
        Scalar: the hinge applied per sample, then averaged over the batch.
    """
    if margin < 0:
        raise ValueError(f"`margin` must be >= 0, got {margin}.")
    if isinstance(posterior, torch.Tensor):
        kl = posterior.float()
        if per_element:
            raise ValueError("Pass the posterior (not summed KL values) when `per_element=True`.")
    else:
        kl = posterior.kl().float()
        if per_element:
            kl = kl / posterior.mean[0].numel()
    return torch.clamp(kl - margin, min=0.0).mean()


def _as_logit_list(logits) -> list[torch.Tensor]:
    if isinstance(logits, torch.Tensor):
        return [logits]
    if hasattr(logits, "logits"):
        return list(logits.logits)
    return list(logits)


def hinge_discriminator_loss(real_logits, fake_logits) -> torch.Tensor:
    r"""
    Paper eq. 6: `L_adv = E[max(0, 1 - D(A_in))] + E[max(0, 1 + D(A_d))]`, averaged over discriminator scales.

    Args:
        real_logits, fake_logits: A logit tensor, a list of per-scale logit maps, or a `MelDiscriminatorOutput`
            (compute `fake_logits` on the detached reconstruction).
    """
    real, fake = _as_logit_list(real_logits), _as_logit_list(fake_logits)
    if len(real) != len(fake):
        raise ValueError(
            f"`real_logits` and `fake_logits` must have as many logit maps, got {len(real)} and {len(fake)}."
        )
    losses = [F.relu(1.0 - r.float()).mean() + F.relu(1.0 + f.float()).mean() for r, f in zip(real, fake)]
    return torch.stack(losses).mean()


def generator_adversarial_loss(fake_logits) -> torch.Tensor:
    """Paper eq. 4: `L_g = -E[D(A_d)]`, averaged over discriminator scales."""
    return torch.stack([-f.float().mean() for f in _as_logit_list(fake_logits)]).mean()


def least_squares_discriminator_loss(real_logits, fake_logits) -> torch.Tensor:
    r"""
    Least-squares GAN discriminator loss of HiFi-GAN / BigVGAN: `sum_k E[(1 - D_k(x))^2] + E[D_k(G(s))^2]`, summed
    over sub-discriminators `k` (periods and resolutions), as HiFi-GAN does.

    Args:
        real_logits, fake_logits: A logit tensor, a list of per-sub-discriminator logits, or a discriminator output
            with `.logits` (compute `fake_logits` on the detached generated waveform).
    """
    real, fake = _as_logit_list(real_logits), _as_logit_list(fake_logits)
    if len(real) != len(fake) or not real:
        raise ValueError(
            f"`real_logits` and `fake_logits` must hold as many (>= 1) logit maps, got {len(real)} and {len(fake)}."
        )
    losses = [(1.0 - r.float()).pow(2).mean() + f.float().pow(2).mean() for r, f in zip(real, fake)]
    return torch.stack(losses).sum()


def least_squares_generator_loss(fake_logits) -> torch.Tensor:
    """Least-squares GAN generator loss of HiFi-GAN / BigVGAN: `sum_k E[(1 - D_k(G(s)))^2]` over sub-discriminators."""
    fake = _as_logit_list(fake_logits)
    if not fake:
        raise ValueError("`fake_logits` holds no logit map.")
    return torch.stack([(1.0 - f.float()).pow(2).mean() for f in fake]).sum()


def r1_gradient_penalty(real_logits, real_mel: torch.Tensor) -> torch.Tensor:
    r"""
    R1 penalty (paper eq. 7, Mescheder et al. 2018): `E[ ||grad_x D(x)||^2 ]` on real mels, which keeps the
    discriminator smooth around the data. The paper writes the gradient through `AudioDecoder(z)`; the standard R1
    (used here) differentiates the discriminator's output on real inputs.

    Args:
        real_logits: The discriminator's output on `real_mel` (tensor, list or `MelDiscriminatorOutput`).
        real_mel (`torch.Tensor` of shape `(batch, mel_bins, frames)`): The real input, with `requires_grad=True` set
            before the discriminator call.

    Returns:
        Scalar: per-sample squared gradient norm, averaged over the batch (multiply by `lambda_R1`).
    """
    if not real_mel.requires_grad:
        raise ValueError("`real_mel` must have requires_grad=True before it goes through the discriminator.")
    total = sum(logit.float().sum() for logit in _as_logit_list(real_logits))
    (gradients,) = torch.autograd.grad(outputs=total, inputs=real_mel, create_graph=True)
    return gradients.float().pow(2).reshape(gradients.shape[0], -1).sum(dim=1).mean()


def feature_matching_loss(real_features, fake_features, reduction: str = "mean") -> torch.Tensor:
    """L1 feature matching between discriminator activations on real (detached) and generated inputs: the mean L1 of
    each activation map, then their mean (`reduction="mean"`) or their sum (`"sum"`, HiFi-GAN's L_FM)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")
    real_features = real_features.features if hasattr(real_features, "features") else real_features
    fake_features = fake_features.features if hasattr(fake_features, "features") else fake_features
    losses = [
        F.l1_loss(fake.float(), real.detach().float())
        for real_scale, fake_scale in zip(real_features, fake_features)
        for real, fake in zip(real_scale, fake_scale)
    ]
    if not losses:
        raise ValueError("`real_features` / `fake_features` hold no discriminator features to match.")
    return torch.stack(losses).sum() if reduction == "sum" else torch.stack(losses).mean()


def mono2stereo_loss(
    left_mel: torch.Tensor, right_mel: torch.Tensor, left_target: torch.Tensor, right_target: torch.Tensor
) -> torch.Tensor:
    """Mono2Stereo training loss: MSE of both predicted log-mels against the recorded left/right log-mels."""
    left_error = F.mse_loss(left_mel.float(), left_target.float())
    return 0.5 * (left_error + F.mse_loss(right_mel.float(), right_target.float()))


@torch.no_grad()
def latent_statistics(latents: torch.Tensor | _Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
    r"""
    Per-channel mean and std of MelVAE latents for `MelVAE.set_latent_statistics`.

    Args:
        latents (`torch.Tensor` of shape `(batch, channels, frames)` or an iterable of such tensors, any lengths).

    Returns:
        `(latents_mean, latents_std)`, lists of `channels` floats.
    """
    batches = [latents] if isinstance(latents, torch.Tensor) else list(latents)
    if not batches:
        raise ValueError("`latents` must not be empty.")
    count, total, total_sq = 0, None, None
    for z in batches:
        if z.ndim != 3:
            raise ValueError(f"`latents` must have shape (batch, channels, frames), got {tuple(z.shape)}.")
        z = z.double().transpose(0, 1).reshape(z.shape[1], -1)
        total = z.sum(1) if total is None else total + z.sum(1)
        total_sq = z.pow(2).sum(1) if total_sq is None else total_sq + z.pow(2).sum(1)
        count += z.shape[1]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


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



def multi_resolution_stft_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    resolutions: _Sequence[tuple[int, int, int]] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048)),
) -> torch.Tensor:
    r"""
    Multi-resolution STFT loss for waveform generators (Parallel WaveGAN): spectral convergence plus L1 of log
    magnitudes, averaged over `(n_fft, hop_length, win_length)` resolutions.

    Args:
        prediction, target (`torch.Tensor` of shape `(batch, num_samples)` or `(batch, 1, num_samples)`).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` shape {tuple(prediction.shape)} != `target` shape {tuple(target.shape)}.")
    prediction = prediction.reshape(-1, prediction.shape[-1]).float()
    target = target.reshape(-1, target.shape[-1]).float()
    losses = []
    for n_fft, hop_length, win_length in resolutions:
        window = torch.hann_window(win_length, device=prediction.device)
        magnitudes = []
        for waveform in (prediction, target):
            spectrum = torch.stft(waveform, n_fft, hop_length, win_length, window, return_complex=True)
            magnitudes.append(torch.sqrt(spectrum.real.pow(2) + spectrum.imag.pow(2) + 1e-7))
        predicted, reference = magnitudes
        spectral_convergence = torch.linalg.norm(reference - predicted) / torch.linalg.norm(reference).clamp_min(1e-7)
        log_magnitude = F.l1_loss(torch.log(predicted), torch.log(reference))
        losses.append(spectral_convergence + log_magnitude)
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# Outputs of training runs: atomic writes, non-finite checks, model cards
# ---------------------------------------------------------------------------------------------

# Imports of this section live here so that the sections can be edited independently.
import contextlib as _contextlib  # noqa: E402
import os as _os  # noqa: E402
import shutil as _shutil  # noqa: E402
import tempfile as _tempfile  # noqa: E402
from pathlib import Path as _Path  # noqa: E402
from typing import Any as _Any  # noqa: E402
from typing import Iterator as _Iterator  # noqa: E402

TEMPORARY_MARKER = ".tmp"


def replace_path(tmp: str | _os.PathLike, path: str | _os.PathLike) -> None:
    """Rename the complete `tmp` (a file or folder in the same folder) to `path`. A folder already at `path`
    (``os.replace`` cannot overwrite a non-empty one) is first renamed aside and removed after the swap, so `path`
    always holds a whole version."""
    tmp, path = _Path(tmp), _Path(path)
    if tmp.is_dir() and path.exists():
        old = path.with_name(f".{path.name}.old{TEMPORARY_MARKER}")
        if old.exists():
            _shutil.rmtree(old)
        _os.replace(path, old)
        _os.replace(tmp, path)
        _shutil.rmtree(old)
    else:
        _os.replace(tmp, path)


def _error_naming(error: OSError, path: str | _os.PathLike) -> OSError:
    """`error` again (same errno, so the same subclass: a full disk stays an ENOSPC `OSError`) with `path` named."""
    reason = error.strerror or str(error)
    return OSError(error.errno, f"{reason} (while writing {_os.fspath(path)})")


@_contextlib.contextmanager
def atomic_output(path: str | _os.PathLike, is_dir: bool = False) -> _Iterator[str]:
    r"""
    Write an output file (or folder) under a temporary name in the same folder and rename it onto `path` once the
    writer has finished: a reader polling `path`, a concurrent run or a crash never sees a partial or empty output.

    The temporary name keeps the extension (``.{name}.XXXX.tmp{ext}``), so writers that pick the format from it
    (soundfile, safetensors) behave the same. A folder is swapped in with two renames when `path` already exists.
    On failure the temporary output is removed; an `OSError` (a full disk, a read-only folder) is raised again with
    the same errno and the path it was writing.

    Args:
        path (`str` or `os.PathLike`): The final file or folder.
        is_dir (`bool`): Yield an empty temporary folder instead of a file path.

    Yields:
        `str`: The temporary path to write to.
    """
    path = _Path(path).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            tmp = _tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_MARKER, dir=path.parent)
        else:
            suffix = TEMPORARY_MARKER + path.suffix
            handle, tmp = _tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            _os.close(handle)
    except OSError as error:
        raise _error_naming(error, path) from error
    try:
        yield tmp
        # mkstemp/mkdtemp make private entries: give them the mode of a normal new file or folder.
        umask = _os.umask(0)
        _os.umask(umask)
        _os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        replace_path(tmp, path)
    except BaseException as error:
        if is_dir:
            _shutil.rmtree(tmp, ignore_errors=True)
        else:
            with _contextlib.suppress(FileNotFoundError):
                _os.remove(tmp)
        if isinstance(error, OSError) and _os.fspath(path) not in str(error):
            raise _error_naming(error, path) from error
        raise


def atomic_write_text(path: str | _os.PathLike, text: str) -> str:
    """Write `text` (UTF-8) to `path` through `atomic_output`; returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return _os.fspath(path)


def atomic_save_pretrained(module: _Any, folder: str | _os.PathLike, **kwargs) -> str:
    """``module.save_pretrained`` into a temporary folder renamed onto `folder` (see `atomic_output`)."""
    with atomic_output(folder, is_dir=True) as tmp:
        module.save_pretrained(tmp, **kwargs)
    return _os.fspath(folder)


def non_finite_tensors(tensors: dict[str, _Any]) -> list[str]:
    """Names of the floating-point tensors of `tensors` holding a NaN or an infinity (other values are ignored)."""
    return [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
