"""Flow-matching training utilities: InverseLR (paper eq. 8), logit-normal sigmas, the pipeline's noising
convention, condition dropout, masked losses."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from foley_toolkit.training_utils import (
    InverseLRLambda,
    condition_dropout_masks,
    flow_matching_inputs,
    get_inverse_lr_scheduler,
    masked_mse_loss,
    multi_resolution_stft_loss,
    pad_sequences,
    sample_flow_matching_sigmas,
)


def eq8(step, base, inv_gamma, power, warmup, final):
    return max(final, base * (1 + step / inv_gamma) ** (-power) * (1 - warmup ** (step + 1)))


def test_inverse_lr_scheduler_follows_equation_8_with_floor():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    config = dict(inv_gamma=50.0, power=0.7, warmup=0.9, final_lr=2e-4)
    scheduler = get_inverse_lr_scheduler(optimizer, **config)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(600):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    expected = [eq8(t, 1e-3, 50.0, 0.7, 0.9, 2e-4) for t in range(601)]
    for lr, ref in zip(lrs, expected):
        assert math.isclose(lr, ref, rel_tol=1e-12)
    # Shape: floor at the start (warm-up below it), rises above it, peaks, decays back to the floor.
    peak = max(range(601), key=lambda t: lrs[t])
    assert lrs[0] == 2e-4 and 0 < peak < 100 and lrs[peak] > 5e-4 and lrs[-1] == 2e-4


def test_inverse_lr_counts_optimizer_steps_under_accelerate_stepping():
    """`accelerator.prepare` steps a scheduler num_processes times per optimizer step; `steps_per_update` undoes it."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    one = torch.optim.SGD([parameter], lr=1.0)
    two = torch.optim.SGD([parameter], lr=1.0)
    single = get_inverse_lr_scheduler(one, inv_gamma=3.0, power=1.0, warmup=0.5)
    double = get_inverse_lr_scheduler(two, inv_gamma=3.0, power=1.0, warmup=0.5, steps_per_update=2)
    for _ in range(5):
        one.step()
        two.step()
        single.step()
        double.step()
        double.step()
        assert single.get_last_lr() == double.get_last_lr()


def test_inverse_lr_state_dict_round_trip_and_per_group_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    scheduler = get_inverse_lr_scheduler(optimizer, inv_gamma=10.0, power=0.5, warmup=0.5)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    assert math.isclose(scheduler.get_last_lr()[0], eq8(7, 1e-3, 10.0, 0.5, 0.5, 0.0))
    assert math.isclose(scheduler.get_last_lr()[1], eq8(7, 1e-4, 10.0, 0.5, 0.5, 0.0))
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["inv_gamma"] == 10.0  # the callable's numbers are saved with it

    fresh_optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    restored = get_inverse_lr_scheduler(fresh_optimizer, inv_gamma=1.0, power=2.0, warmup=0.0)
    restored.load_state_dict(state)
    optimizer.step()
    fresh_optimizer.step()
    scheduler.step()
    restored.step()
    assert restored.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"inv_gamma": 0.0}, "inv_gamma"), ({"warmup": 1.0}, "warmup"), ({"final_lr": -1.0}, "final_lr"),
     ({"steps_per_update": 0}, "steps_per_update")],  # fmt: skip
)
def test_inverse_lr_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InverseLRLambda(1e-3, **kwargs)


def test_logit_normal_sigmas_have_the_requested_logit_distribution():
    generator = torch.Generator().manual_seed(0)
    sigmas = sample_flow_matching_sigmas(40_000, "logit_normal", logit_mean=0.5, logit_std=0.8, generator=generator)
    assert sigmas.shape == (40_000,) and sigmas.dtype == torch.float32
    assert bool(((sigmas > 0) & (sigmas < 1)).all())
    logits = torch.logit(sigmas.double())
    assert abs(logits.mean().item() - 0.5) < 0.02 and abs(logits.std().item() - 0.8) < 0.02
    again = sample_flow_matching_sigmas(40_000, "logit_normal", 0.5, 0.8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, sigmas, rtol=0, atol=0)

    uniform = sample_flow_matching_sigmas(40_000, "uniform", generator=torch.Generator().manual_seed(1))
    assert abs(uniform.mean().item() - 0.5) < 0.01
    shifted = sample_flow_matching_sigmas(40_000, "uniform", shift=3.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, 3.0 * uniform / (1 + 2.0 * uniform))
    with pytest.raises(ValueError, match="weighting_scheme"):
        sample_flow_matching_sigmas(4, "cosine")


def test_flow_matching_inputs_match_the_pipeline_scheduler():
    """Training noises exactly as FlowMatchEulerDiscreteScheduler does, and an Euler step with the training target
    moves a noisy latent onto the same interpolation path."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 10, generator=generator)
    noise = torch.randn(3, 4, 10, generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=[0.9, 0.6, 0.3])
    sigma, next_sigma = scheduler.sigmas[1], scheduler.sigmas[2]
    sigmas = torch.full((3,), float(sigma))

    noisy, target, timesteps = flow_matching_inputs(latents, noise, sigmas)
    torch.testing.assert_close(timesteps, torch.full((3,), float(scheduler.timesteps[1])))
    torch.testing.assert_close(noisy, scheduler.scale_noise(latents, scheduler.timesteps[1:2], noise))
    torch.testing.assert_close(target, noise - latents)
    stepped = scheduler.step(target, scheduler.timesteps[1], noisy, return_dict=False)[0]
    torch.testing.assert_close(stepped, (1 - next_sigma) * latents + next_sigma * noise, rtol=1e-5, atol=1e-5)
    # Endpoints: sigma 0 is data, sigma 1 is noise.
    ends, _, _ = flow_matching_inputs(latents[:2], noise[:2], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends[0], latents[0])
    torch.testing.assert_close(ends[1], noise[1])
    with pytest.raises(ValueError, match="sigmas"):
        flow_matching_inputs(latents, noise, torch.zeros(2))


def test_masked_mse_ignores_padded_frames():
    prediction = torch.zeros(2, 3, 6)
    target = torch.zeros(2, 3, 6)
    target[0, :, :4] = 1.0  # sample 0: 4 real frames, all wrong by 1
    target[0, :, 4:] = 100.0  # padding: must not count
    target[1, :, 5] = 2.0  # sample 1: 6 real frames, one frame wrong by 2
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    loss = masked_mse_loss(prediction, target, mask)
    assert math.isclose(loss.item(), (1.0 + 4.0 / 6.0) / 2.0, rel_tol=1e-6)
    full = masked_mse_loss(prediction[1:], target[1:])
    torch.testing.assert_close(full, torch.nn.functional.mse_loss(prediction[1:], target[1:]))
    with pytest.raises(ValueError, match="frame_mask"):
        masked_mse_loss(prediction, target, mask[:, :5])


def test_condition_dropout_is_independent_per_modality_and_forces_missing_ones():
    generator = torch.Generator().manual_seed(0)
    n = 40_000
    drop_text, drop_video = condition_dropout_masks(n, 0.1, 0.3, generator=generator)
    assert drop_text.dtype == torch.bool and drop_text.shape == (n,)
    assert abs(drop_text.float().mean().item() - 0.1) < 0.01
    assert abs(drop_video.float().mean().item() - 0.3) < 0.01
    assert abs((drop_text & drop_video).float().mean().item() - 0.03) < 0.005  # independent draws

    has_text = torch.tensor([True, False, True, False])
    has_video = torch.tensor([False, True, True, False])
    drop_text, drop_video = condition_dropout_masks(4, 0.0, 0.0, has_text, has_video)
    assert drop_text.tolist() == [False, True, False, True]
    assert drop_video.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="video_dropout"):
        condition_dropout_masks(4, 0.1, 1.5)


def test_pad_sequences_pads_at_the_end_with_masks():
    padded, mask = pad_sequences([torch.ones(2, 3), 2 * torch.ones(4, 3)], pad_value=-1.0)
    assert padded.shape == (2, 4, 3)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert bool((padded[0, 2:] == -1).all()) and bool((padded[1] == 2).all())
    channels_first, mask = pad_sequences([torch.ones(3, 2), torch.ones(3, 5)], dim=1)
    assert channels_first.shape == (2, 3, 5) and mask.sum(1).tolist() == [2, 5]


def test_multi_resolution_stft_loss_is_zero_only_for_equal_waveforms():
    generator = torch.Generator().manual_seed(0)
    waveform = torch.randn(2, 1, 4096, generator=generator) * 0.1
    assert multi_resolution_stft_loss(waveform, waveform).item() < 1e-5
    noisy = waveform + 0.05 * torch.randn(2, 1, 4096, generator=generator)
    quieter = 0.5 * waveform
    assert multi_resolution_stft_loss(noisy, waveform).item() > 0.1
    assert multi_resolution_stft_loss(quieter, waveform).item() > 0.5  # log-magnitude L1 of a 6 dB gap ~ 0.69
