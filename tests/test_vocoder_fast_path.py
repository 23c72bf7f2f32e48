"""The fast BigVGAN-v2 path of `foley_toolkit.models.vocoder.MMAudioVocoder` equals diffusers' reference forward.

Tolerances: float32 fast vs float32 reference 1e-5 max abs (measured ~4e-7 on the tiny vocoder, rounding only; the
issue's bar is 1e-3). bfloat16 weights and input vs the float32 reference: 2e-2 max abs and at most twice the
error of diffusers' own bfloat16 forward (measured 4.4e-3 fast, 4.9e-3 reference). Chunked vs unchunked: 1e-6.
"""

import pytest
import torch
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioActivation1d
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder as DiffusersMMAudioVocoder

from foley_toolkit.models.vocoder import MMAudioVocoder, build_vocoder, polyphase_activation, tiny_vocoder_config


def perturbed_tiny_vocoder() -> MMAudioVocoder:
    """The tiny vocoder with its Snake-beta parameters spread around 0 (at init they are all 0: a = b = 1 on every
    channel, which would hide a channel mix-up)."""
    vocoder = build_vocoder(tiny_vocoder_config()).eval()
    with torch.no_grad():
        for name, parameter in vocoder.named_parameters():
            if name.endswith((".alpha", ".beta")):
                parameter.normal_(0.0, 0.5)
    return vocoder


def reference(vocoder: MMAudioVocoder, mel: torch.Tensor) -> torch.Tensor:
    vocoder.use_fast_path = False
    try:
        return vocoder(mel).sample
    finally:
        vocoder.use_fast_path = True


@pytest.mark.parametrize("batch,length", [(1, 1), (1, 2), (2, 5), (2, 33), (1, 100)])
def test_polyphase_activation_equals_reference(batch, length):
    activation = MMAudioActivation1d(6)
    with torch.no_grad():
        activation.act.alpha.normal_(0.0, 0.5)
        activation.act.beta.normal_(0.0, 0.5)
        x = 3 * torch.randn(batch, 6, length)
        expected = activation(x)
        fast = polyphase_activation(activation, x)
    assert fast.shape == expected.shape == (batch, 6, length)
    assert expected.abs().max() > 1.0  # not a near-zero signal that any path would match
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    # The edges (where the reference's replicate padding acts) are part of the comparison: a zero-padded variant
    # differs there.
    assert (fast[..., :3] - expected[..., :3]).abs().max() < 1e-5


@pytest.mark.parametrize("batch,frames", [(1, 1), (1, 7), (2, 13)])
def test_fast_path_equals_reference_fp32(batch, frames):
    vocoder = perturbed_tiny_vocoder()
    assert vocoder.use_fast_path  # on by default
    mel = torch.randn(batch, 128, frames) * 2 - 5
    with torch.no_grad():
        expected, fast = reference(vocoder, mel), vocoder(mel).sample
    assert fast.shape == expected.shape == (batch, 1, frames * 512)
    peak = expected.abs().max().item()
    assert 0.05 < peak and (expected.abs() >= 1.0).float().mean() < 0.5, peak  # a real, mostly unclamped waveform
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    # Batch of 2 = two batch-1 calls (the pipeline vocodes both stereo channels as one batch).
    if batch == 2:
        with torch.no_grad():
            torch.testing.assert_close(vocoder(mel[1:]).sample, fast[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("compute_dtype", ["auto", torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2])
def test_fast_path_bf16_within_stated_tolerance_of_fp32_reference(batch, compute_dtype):
    vocoder = perturbed_tiny_vocoder()
    vocoder.compute_dtype = compute_dtype  # bfloat16: the channels-first bfloat16 path, whatever the CPU
    mel = torch.randn(batch, 128, 9) * 2 - 5
    with torch.no_grad():
        expected = reference(vocoder, mel)
        vocoder.to(torch.bfloat16)
        fast = vocoder(mel.bfloat16()).sample
        reference_bf16 = reference(vocoder, mel.bfloat16())
    assert fast.dtype == torch.bfloat16 and fast.shape == expected.shape
    fast_error = (fast.float() - expected).abs().max().item()
    reference_error = (reference_bf16.float() - expected).abs().max().item()
    assert fast_error < 2e-2 and fast_error <= 2 * reference_error + 1e-3, (fast_error, reference_error)


def test_chunked_fast_path_equals_unchunked_and_needs_its_context(monkeypatch):
    vocoder = perturbed_tiny_vocoder()
    mel = torch.randn(2, 128, 23) * 2 - 5
    with torch.no_grad():
        whole = vocoder(mel).sample
        vocoder.chunk_frames = 4  # 6 chunks, each with receptive_field_frames() of context on both sides
        chunked = vocoder(mel).sample
        assert vocoder.receptive_field_frames() < mel.shape[-1]  # the context really crops something
        torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
        # Too little context: the chunk seams differ, so the receptive field is what makes chunking exact.
        monkeypatch.setattr(MMAudioVocoder, "receptive_field_frames", lambda self: 1)
        assert (vocoder(mel).sample - whole).abs().max() > 1e-3
        vocoder.chunk_frames = 0
        with pytest.raises(ValueError, match="chunk_frames"):
            vocoder(mel)


def test_fast_path_gradients_equal_reference():
    vocoder = perturbed_tiny_vocoder().train()
    mel = torch.randn(1, 128, 5) * 2 - 5
    gradients = []
    for fast in (False, True):
        vocoder.zero_grad()
        vocoder.use_fast_path = fast
        (vocoder(mel).sample * torch.linspace(-1, 1, 5 * 512)).sum().backward()
        gradients.append({name: p.grad.clone() for name, p in vocoder.named_parameters()})
    for name, expected in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], expected, atol=1e-4, rtol=1e-4, msg=name)
    assert gradients[0]["resblocks.0.activations.0.act.alpha"].abs().max() > 0


def test_saved_folder_is_diffusers_compatible(tmp_path):
    vocoder = perturbed_tiny_vocoder()
    assert isinstance(vocoder, DiffusersMMAudioVocoder)
    vocoder.save_pretrained(tmp_path)
    plain = DiffusersMMAudioVocoder.from_pretrained(tmp_path).eval()  # diffusers' class, reference forward only
    assert plain.config["_class_name"] == "MMAudioVocoder"
    reloaded = MMAudioVocoder.from_pretrained(tmp_path).eval()
    mel = torch.randn(1, 128, 6) * 2 - 5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(mel).sample, plain(mel).sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("has_amx", [False, True])
def test_auto_compute_dtype_is_float32_for_bf16_weights_on_a_cpu_without_amx(monkeypatch, has_amx):
    # "auto": bfloat16 weights on a CPU without AMX compute in float32, i.e. exactly what a float32 vocoder holding
    # the same (bfloat16-rounded) weights computes, then rounded to the weights' dtype; with AMX, in bfloat16.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_amx)
    vocoder = perturbed_tiny_vocoder().to(torch.bfloat16)
    rounded_fp32 = perturbed_tiny_vocoder()
    rounded_fp32.load_state_dict({k: v.float() for k, v in vocoder.state_dict().items()})
    mel = (torch.randn(2, 128, 11) * 2 - 5).bfloat16()
    with torch.no_grad():
        auto = vocoder(mel).sample
        vocoder.compute_dtype = torch.float32
        forced = vocoder(mel).sample
        as_fp32 = rounded_fp32(mel.float()).sample
    assert vocoder.conv_pre.weight.dtype == auto.dtype == torch.bfloat16
    assert torch.equal(forced, as_fp32.bfloat16())
    vocoder.compute_dtype = "auto"
    assert vocoder.resolved_compute_dtype() == (torch.bfloat16 if has_amx else torch.float32)
    assert torch.equal(auto, forced) != has_amx
    for bad in ("float32", torch.float16):  # a string, and a dtype that is neither float32 nor the weights'
        vocoder.compute_dtype = bad
        with pytest.raises(ValueError, match="compute_dtype"):
            vocoder(mel)


def test_channels_last_path_runs_at_inference_and_equals_channels_first(monkeypatch):
    # At inference on a CPU in float32 the fast path convolves channels-last signals; with autograd on it keeps the
    # channels-first path (its in-place buffers have no backward). Both equal each other within float32 rounding.
    vocoder = perturbed_tiny_vocoder()
    mel = torch.randn(2, 128, 7) * 2 - 5
    seen = []
    hook = vocoder.conv_post.register_forward_hook(lambda m, args, out: seen.append("conv_post called"))
    calls = []
    original = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(a[0].ndim) or original(*a, **k))
    with torch.no_grad():
        channels_last = vocoder(mel).sample
    assert calls and seen == []  # 2D convolutions on 4D signals, not the Conv1d modules
    calls.clear()
    channels_first = vocoder(mel).sample.detach()  # grad enabled, parameters require grad
    hook.remove()
    assert calls == [] and seen == ["conv_post called"]
    assert channels_last.is_contiguous() and channels_last.shape == channels_first.shape == (2, 1, 7 * 512)
    torch.testing.assert_close(channels_last, channels_first, atol=1e-5, rtol=0)


def test_weights_made_under_inference_mode_run_the_fast_path():
    # Tensors made under `torch.inference_mode` have no version counter; the activation-constant cache must not
    # need one.
    with torch.inference_mode():
        vocoder = perturbed_tiny_vocoder().to(torch.bfloat16)
        mel = (torch.randn(1, 128, 3) * 2 - 5).bfloat16()
        first, second = vocoder(mel).sample, vocoder(mel).sample
    assert torch.equal(first, second) and first.abs().max() > 0.01
