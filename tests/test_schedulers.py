"""Kling-Foley's sampling schedule (`foley_toolkit.schedulers`) against the computation the pipeline used to do
inline, and the pieces training shares."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift

from foley_toolkit.audio_utils import sequence_lengths
from foley_toolkit.schedulers import (
    calculate_shift,
    kling_foley_sigmas,
    retrieve_kling_foley_timesteps,
    shift_sigmas,
)


def previous_inline_sigmas(scheduler, num_inference_steps, latent_frames):
    """What `KlingFoleyPipeline._set_timesteps` computed before the schedule had a module: its own `mu` formula and
    `linspace(1, 1/N, N)` through `set_timesteps(sigmas=...)`."""
    kwargs = {}
    config = scheduler.config
    if config.use_dynamic_shifting:
        slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
        kwargs["mu"] = config.base_shift + slope * (latent_frames - config.base_image_seq_len)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps), **kwargs)
    return scheduler.sigmas.clone(), scheduler.timesteps.clone()


@pytest.mark.parametrize("num_inference_steps", [1, 10, 20, 33])
@pytest.mark.parametrize("duration", [1.0, 8.0, 10.0])
@pytest.mark.parametrize("config", [{}, {"shift": 3.0}, {"use_dynamic_shifting": True}])
def test_schedule_equals_previous_inline_computation(num_inference_steps, duration, config):
    latent_frames = sequence_lengths(duration)["audio_tokens"]
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    expected_sigmas, expected_timesteps = previous_inline_sigmas(scheduler, num_inference_steps, latent_frames)
    timesteps, steps = retrieve_kling_foley_timesteps(scheduler, num_inference_steps, "cpu", latent_frames)
    assert steps == num_inference_steps and len(timesteps) == num_inference_steps
    if config.get("use_dynamic_shifting"):
        # Flux's `calculate_shift` orders the same arithmetic differently: equal up to float64 rounding of mu.
        torch.testing.assert_close(scheduler.sigmas, expected_sigmas, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(timesteps, expected_timesteps, rtol=1e-6, atol=1e-4)
    else:
        assert torch.equal(scheduler.sigmas, expected_sigmas)
        assert torch.equal(timesteps, expected_timesteps)
    assert scheduler.sigmas[0] == 1.0 or config  # unshifted schedules start at pure noise
    assert scheduler.sigmas[-1] == 0.0


def test_default_sigmas_are_uniform_euler_steps():
    sigmas = kling_foley_sigmas(20)
    np.testing.assert_allclose(np.diff(np.append(sigmas, 0.0)), -0.05, atol=1e-12)  # the paper's dt = 0.05
    assert sigmas[0] == 1.0 and sigmas.shape == (20,)
    with pytest.raises(ValueError, match="num_inference_steps"):
        kling_foley_sigmas(0)


def test_dynamic_shift_needs_latent_frames_and_grows_with_length():
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="latent_frames"):
        retrieve_kling_foley_timesteps(scheduler, 10)
    assert calculate_shift(345) == diffusers_calculate_shift(345)
    retrieve_kling_foley_timesteps(scheduler, 10, latent_frames=44)
    short = scheduler.sigmas[1:-1].clone()
    retrieve_kling_foley_timesteps(scheduler, 10, latent_frames=4096)
    assert (scheduler.sigmas[1:-1] > short).all()  # longer audio spends more steps at high noise


def test_custom_sigmas_and_timesteps_pass_through():
    scheduler = FlowMatchEulerDiscreteScheduler()
    retrieve_kling_foley_timesteps(scheduler, 99, sigmas=torch.tensor([1.0, 0.5, 0.25]))
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.5, 0.25, 0.0]))
    timesteps, steps = retrieve_kling_foley_timesteps(scheduler, 99, timesteps=[900.0, 300.0])
    assert steps == 2 and timesteps.tolist() == [900.0, 300.0]
    with pytest.raises(ValueError, match="Only one"):
        retrieve_kling_foley_timesteps(scheduler, 2, sigmas=[1.0, 0.5], timesteps=[900.0, 300.0])


def test_scheduler_without_custom_sigmas_keeps_its_spacing():
    scheduler = FlowMatchHeunDiscreteScheduler()
    timesteps, steps = retrieve_kling_foley_timesteps(scheduler, 4, latent_frames=345)
    reference = FlowMatchHeunDiscreteScheduler()
    reference.set_timesteps(4)
    assert torch.equal(timesteps, reference.timesteps)


def test_shift_sigmas_is_the_schedulers_static_shift():
    sigmas = torch.linspace(1.0, 0.1, 10, dtype=torch.float64)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=sigmas.numpy())
    torch.testing.assert_close(shift_sigmas(sigmas, 3.0).float(), scheduler.sigmas[:-1])
    assert shift_sigmas(sigmas, 1.0) is sigmas
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(sigmas, 0.0)
