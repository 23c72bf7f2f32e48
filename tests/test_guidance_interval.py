"""Guidance in a limited interval of noise levels (`pipe(..., guidance_interval=(low, high))`) and the
`FoleyMMDiTConditions.select` it uses for the unguided steps (the conditional half of a `[uncond, cond]` batch)."""

import pytest
import torch
from test_transformer import make_inputs, make_model

from foley_toolkit import KlingFoleyPipeline
from foley_toolkit.pipelines.kling_foley.testing import get_dummy_components


def _prepare(model, inputs):
    latents, timestep = inputs["hidden_states"], inputs["timestep"]
    rest = {k: v for k, v in inputs.items() if k not in ("hidden_states", "timestep")}
    return latents, timestep, model.prepare_conditions(latents.shape[-1], **rest)


@pytest.mark.parametrize("deduplicate", [True, False])
def test_select_gives_the_chosen_samples_conditions(deduplicate):
    torch.manual_seed(0)
    model = make_model()
    model.deduplicate_modulation = deduplicate
    inputs = make_inputs(batch_size=3, duration=1.3)
    inputs["drop_sync"] = torch.tensor([True, False, False])  # sample 0 unconditional: few distinct adaLN rows
    inputs["drop_text"] = torch.tensor([True, False, True])
    with torch.no_grad():
        latents, timestep, conditions = _prepare(model, inputs)
        whole = model(latents, timestep, conditions=conditions).sample
        for samples in ([2], [1, 0], [0, 2, 1]):
            chosen = conditions.select(samples)
            assert chosen.batch_size == len(samples)
            if deduplicate:  # the kept rows are exactly the chosen samples' rows, renumbered
                assert torch.equal(chosen.sync_adaln_rows[chosen.sync_adaln_index],
                                   conditions.sync_adaln_features[samples])  # fmt: skip
                assert sorted(chosen.sync_adaln_row_sample.unique().tolist()) == list(range(len(samples)))
            part = model(latents[samples], timestep[samples], conditions=chosen).sample
            torch.testing.assert_close(part, whole[samples], atol=1e-5, rtol=1e-5)
    model.deduplicate_modulation = True
    for bad in ([3], [-1], [1, 1], []):
        with pytest.raises(ValueError, match="samples"):
            conditions.select(bad)


def _pipe():
    pipe = KlingFoleyPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kwargs):
    kwargs = {"prompt": "a door slams", "duration": 1.0, "num_inference_steps": 4, "output_type": "latent",
              "guidance_scale": 4.0, **kwargs}  # fmt: skip
    batches = []
    hook = pipe.transformer.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        latents = pipe(generator=torch.Generator().manual_seed(0), **kwargs).audios
    finally:
        hook.remove()
    return latents, batches


def test_guidance_interval_guides_only_the_steps_inside_it():
    pipe = _pipe()
    guided, batches = _run(pipe)
    assert batches == [2, 2, 2, 2]
    sigmas = pipe.scheduler.sigmas[:-1].tolist()  # the noise level of each of the 4 steps
    # The whole range: every step guided, the same computation.
    whole, whole_batches = _run(pipe, guidance_interval=(0.0, 1.0))
    assert whole_batches == batches and torch.equal(whole, guided)
    # An interval holding the middle steps: those run the [uncond, cond] batch, the others the cond half alone.
    low, high = sorted(sigmas)[1] - 1e-6, sorted(sigmas)[2] + 1e-6
    partial, partial_batches = _run(pipe, guidance_interval=(low, high))
    assert partial_batches == [2 if low <= s <= high else 1 for s in sigmas] and sorted(partial_batches) == [1, 1, 2, 2]
    unguided, unguided_batches = _run(pipe, guidance_scale=1.0)
    assert unguided_batches == [1, 1, 1, 1]
    assert (partial - guided).abs().max() > 1e-3 and (partial - unguided).abs().max() > 1e-3
    # An interval holding no step: the conditional branch at every step, i.e. no guidance (up to batch rounding).
    none, none_batches = _run(pipe, guidance_interval=(0.0, 0.0))
    assert none_batches == [1, 1, 1, 1]
    torch.testing.assert_close(none, unguided, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [(0.5, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.5,), "low-high", (float("nan"), 1.0)])
def test_guidance_interval_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="guidance_interval"):
        _run(_pipe(), guidance_interval=bad)
