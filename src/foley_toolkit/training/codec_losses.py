"""Losses of the codec models (MelVAE, vocoders, Mono2Stereo) and the MelVAE's multi-stage schedule (Algorithm 2).

MelVAE (paper section 4.5.2): mel MSE (eq. 3), margin KL (eq. 2), hinge GAN (eq. 4-6) with the R1 penalty (eq. 7),
weighted per step by `Algorithm2Schedule`. Vocoders (HiFi-GAN / BigVGAN recipe): least-squares GAN, summed feature
matching, multi-resolution STFT. Mono2Stereo: MSE of the left/right log-mels.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
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
    - `step <= stage2_end`: `L = L_mse + gamma * L_kl`,
      `gamma = kl_upper * min(1, (step - stage1_end) / (stage2_end - stage1_end))`;
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


class Algorithm2Schedule:
    r"""
    The MelVAE's multi-stage stepping schedule (paper Algorithm 2) for one run: the loss weights of each step
    (`codec_loss_weights`) and the stage-4 freezing of the encoder, applied to the model only when it changes.

    Args:
        stage1_end, stage2_end, stage3_end (`int`): Last steps of stages 1-3,
            `0 <= stage1_end < stage2_end < stage3_end`.
        kl_upper, gan_upper (`float`): Final KL and GAN weights (>= 0).

    Steps count from 1, as in the paper: pass `weights(global_step + 1)` for the step about to run.
    """

    def __init__(self, stage1_end: int, stage2_end: int, stage3_end: int, kl_upper: float, gan_upper: float):
        self.bounds = (stage1_end, stage2_end, stage3_end)
        self.kl_upper, self.gan_upper = kl_upper, gan_upper
        self._encoder_frozen: bool | None = None
        self.weights(0)  # bad bounds or weights fail here, before any work

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Algorithm2Schedule":
        """From ``--stage1_end``, ``--stage2_end``, ``--stage3_end``, ``--kl_upper`` and ``--gan_upper``."""
        return cls(args.stage1_end, args.stage2_end, args.stage3_end, args.kl_upper, args.gan_upper)

    def weights(self, step: int) -> CodecLossWeights:
        """The `CodecLossWeights` of `step` (1-based)."""
        return codec_loss_weights(step, *self.bounds, self.kl_upper, self.gan_upper)

    def step(self, vae: torch.nn.Module, step: int) -> CodecLossWeights:
        """The weights of `step`, after (un)freezing `vae`'s encoder when the stage asks for a change."""
        weights = self.weights(step)
        if self._encoder_frozen != weights.freeze_encoder:
            set_codec_encoder_trainable(vae, not weights.freeze_encoder)
            self._encoder_frozen = weights.freeze_encoder
        return weights


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
def latent_statistics(latents: torch.Tensor | Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
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


def multi_resolution_stft_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    resolutions: Sequence[tuple[int, int, int]] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048)),
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
