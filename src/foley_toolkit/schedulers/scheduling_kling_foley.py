# Copyright 2025 The foley_toolkit authors. Licensed under the Apache License, Version 2.0.
r"""
Kling-Foley's sampling schedule for diffusers' flow-match schedulers.

Kling-Foley samples its flow (`x_t = (1 - sigma) * x0 + sigma * noise`, velocity `noise - x0`, timestep
`sigma * num_train_timesteps`) with N Euler steps of exactly `dt = 1 / N` from pure noise: the noise levels are

    sigma_i = 1 - i / N,  i = 0 ... N - 1   (then the final 0 the scheduler appends)

i.e. `linspace(1, 1 / N, N)`, the schedule Flux passes to `FlowMatchEulerDiscreteScheduler` (20 steps = the paper's
`dt = 0.05`). The scheduler object stays a plain diffusers scheduler (saved pipelines name
`FlowMatchEulerDiscreteScheduler` and keep loading); what is Kling-Foley's is which sigmas it is given, and, for a
scheduler configured with `use_dynamic_shifting`, the shift `mu` that depends on the number of audio latent frames
(Flux's resolution-dependent shift with latent frames in place of image tokens). Its static `shift` (the config's
`shift`, 1.0 in the released configs) is applied by the scheduler; training draws its noise levels through the same
`shift_sigmas`.

`retrieve_kling_foley_timesteps` is the one call that sets a scheduler to this schedule; the pipeline and training
use it.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch


# Copied from diffusers.pipelines.flux.pipeline_flux.calculate_shift
def calculate_shift(
    image_seq_len,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
):
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    mu = image_seq_len * m + b
    return mu


# Copied from diffusers.pipelines.flux.pipeline_flux.retrieve_timesteps
def retrieve_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
    **kwargs,
):
    r"""
    Calls the scheduler's `set_timesteps` method and retrieves timesteps from the scheduler after the call. Handles
    custom timesteps. Any kwargs will be supplied to `scheduler.set_timesteps`.

    Args:
        scheduler (`SchedulerMixin`):
            The scheduler to get timesteps from.
        num_inference_steps (`int`):
            The number of diffusion steps used when generating samples with a pre-trained model. If used, `timesteps`
            must be `None`.
        device (`str` or `torch.device`, *optional*):
            The device to which the timesteps should be moved to. If `None`, the timesteps are not moved.
        timesteps (`list[int]`, *optional*):
            Custom timesteps used to override the timestep spacing strategy of the scheduler. If `timesteps` is passed,
            `num_inference_steps` and `sigmas` must be `None`.
        sigmas (`list[float]`, *optional*):
            Custom sigmas used to override the timestep spacing strategy of the scheduler. If `sigmas` is passed,
            `num_inference_steps` and `timesteps` must be `None`.

    Returns:
        `tuple[torch.Tensor, int]`: A tuple where the first element is the timestep schedule from the scheduler and the
        second element is the number of inference steps.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None:
        accepts_timesteps = "timesteps" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accepts_timesteps:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" timestep schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        accept_sigmas = "sigmas" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accept_sigmas:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" sigmas schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


def kling_foley_sigmas(num_inference_steps: int) -> np.ndarray:
    r"""
    Kling-Foley's noise levels for `num_inference_steps` Euler steps: `linspace(1, 1 / N, N)` (float64), the scheduler
    appends the final 0, so every step has `dt = 1 / N`.

    Args:
        num_inference_steps (`int`): N >= 1.

    Returns:
        `np.ndarray` of shape `(N,)`, from 1 down to `1 / N`.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
    return np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)


def shift_sigmas(sigmas: torch.Tensor | np.ndarray, shift: float) -> torch.Tensor | np.ndarray:
    r"""
    The static time shift of `FlowMatchEulerDiscreteScheduler` (its `shift` config): `shift * s / (1 + (shift - 1) *
    s)`; `shift > 1` moves noise levels towards 1 (more time at high noise), `shift = 1` is the identity. Training
    applies it to the noise levels it samples so that training and sampling agree on what a `shift` means.

    Args:
        sigmas (`torch.Tensor` or `np.ndarray`): Noise levels in [0, 1], any shape.
        shift (`float`): > 0.

    Returns:
        The shifted levels, same type and shape (`sigmas` itself when `shift == 1`).
    """
    if not shift > 0:
        raise ValueError(f"`shift` must be > 0, got {shift}.")
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def kling_foley_mu(scheduler, latent_frames: int) -> float | None:
    r"""
    The dynamic shift `mu` of a scheduler configured with `use_dynamic_shifting` (Flux's `calculate_shift` with the
    audio's latent frame count as the sequence length and the scheduler's `base/max_image_seq_len` and
    `base/max_shift`); `None` for a scheduler without dynamic shifting.
    """
    config = scheduler.config
    if not getattr(config, "use_dynamic_shifting", False):
        return None
    return calculate_shift(
        latent_frames,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )


def retrieve_kling_foley_timesteps(
    scheduler,
    num_inference_steps: int,
    device: str | torch.device | None = None,
    latent_frames: int | None = None,
    sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
    timesteps: list[float] | np.ndarray | torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    r"""
    Set `scheduler` to Kling-Foley's schedule and return its timesteps (`retrieve_timesteps` with Kling-Foley's
    defaults).

    Without custom `sigmas` / `timesteps`, a scheduler whose `set_timesteps` takes `sigmas` (every diffusers
    flow-match scheduler that does) gets `kling_foley_sigmas(num_inference_steps)`; others keep their own spacing for
    `num_inference_steps`. A scheduler with `use_dynamic_shifting` also gets `mu = kling_foley_mu(scheduler,
    latent_frames)`.

    Args:
        scheduler (`SchedulerMixin`): A flow-match scheduler, e.g. `FlowMatchEulerDiscreteScheduler`.
        num_inference_steps (`int`): Steps when neither `sigmas` nor `timesteps` is given.
        device (`str` or `torch.device`, *optional*): Device of the returned timesteps.
        latent_frames (`int`, *optional*): Audio latent frames of the generation (needed with dynamic shifting).
        sigmas (*optional*): Custom decreasing noise levels in (0, 1] instead of the default.
        timesteps (*optional*): Custom timesteps instead of sigmas (not both).

    Returns:
        `(timesteps, num_inference_steps)` as `retrieve_timesteps` returns them; `scheduler.sigmas` holds the noise
        levels (with the final 0).
    """
    kwargs = {}
    mu = kling_foley_mu(scheduler, latent_frames) if latent_frames is not None else None
    if mu is None and getattr(scheduler.config, "use_dynamic_shifting", False):
        raise ValueError("`latent_frames` is required: the scheduler uses dynamic shifting, which depends on it.")
    if mu is not None:
        kwargs["mu"] = mu
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().numpy()
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    if sigmas is None and timesteps is None and "sigmas" in inspect.signature(scheduler.set_timesteps).parameters:
        sigmas = kling_foley_sigmas(num_inference_steps)
    return retrieve_timesteps(scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas, **kwargs)
