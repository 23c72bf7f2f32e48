"""`set_attention_backend` is never accepted and ignored outside the transformer either.

The Synchformer sync encoder routes all its attention (divided space-time attention in every block, the spatial
pooling) through diffusers' `dispatch_attention_fn`: the backend set on it is the one that runs, with the same
features and gradients as the plain `F.scaled_dot_product_attention` it used before. The models without attention
(Vocos vocoder, the three discriminators, the sync head) raise a `ValueError` instead of doing nothing.

`pipe.transformer.set_attention_backend(name)` chooses the kernel of every denoising step of `pipe(...)` (the bare
transformer, MelVAE and Mono2Stereo are covered in tests/test_lora_components.py).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend

from foley_toolkit import (
    MelDiscriminator,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    SynchformerEncoder,
    VocosVocoder,
    tiny_vocos_config,
)
from foley_toolkit.models.encoders import tiny_synchformer_config
from foley_toolkit.models.encoders.synchformer import SynchformerDividedAttention, SynchformerPoolingAttention
from foley_toolkit.models.encoders.synchformer_sync_head import SynchformerSyncHead


@pytest.fixture(autouse=True)
def restore_attention_backend():
    # `set_attention_backend` also sets diffusers' process-wide active backend: put it back for the other tests.
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def counting(monkeypatch, backend: AttentionBackendName) -> list:
    """Wrap the registered function of `backend` so that each call is recorded (its query shape and dropout)."""
    calls = []
    original = _AttentionBackendRegistry._backends[backend]

    def wrapper(**kwargs):
        calls.append((tuple(kwargs["query"].shape), kwargs.get("dropout_p", 0.0)))
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, wrapper)
    return calls


# ----------------------------------------------------------------------------------------------------------------
# The sync encoder's attention before the dispatcher: plain SDPA in (batch, heads, length, head_dim) layout.
# ----------------------------------------------------------------------------------------------------------------


class PlainSDPADividedProcessor:
    """The divided attention as SynchformerDividedAttention computed it with `F.scaled_dot_product_attention`."""

    def __call__(self, attn, hidden_states, num_frames, num_patches, group):
        batch = hidden_states.shape[0]
        heads, head_dim = attn.heads, attn.head_dim
        dropout_p = attn.attention_dropout if attn.training else 0.0

        def split_heads(x):
            return x.view(batch, x.shape[1], heads, head_dim).transpose(1, 2)

        q, k, v = (split_heads(proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=dropout_p)

        def to_groups(x):
            x = x[:, :, 1:].reshape(batch, heads, num_frames, num_patches, head_dim)
            x = x.permute(0, 3, 1, 2, 4) if group == "time" else x.permute(0, 2, 1, 3, 4)
            return x.reshape(-1, heads, x.shape[-2], head_dim)

        num_groups = num_patches if group == "time" else num_frames
        cls_k = k[:, :, :1].unsqueeze(1).expand(-1, num_groups, -1, -1, -1).reshape(-1, heads, 1, head_dim)
        cls_v = v[:, :, :1].unsqueeze(1).expand(-1, num_groups, -1, -1, -1).reshape(-1, heads, 1, head_dim)
        out = F.scaled_dot_product_attention(
            to_groups(q), torch.cat([cls_k, to_groups(k)], 2), torch.cat([cls_v, to_groups(v)], 2), dropout_p=dropout_p
        )
        out = out.reshape(batch, num_groups, heads, -1, head_dim)
        out = out.permute(0, 2, 3, 1, 4) if group == "time" else out.permute(0, 2, 1, 3, 4)
        out = out.reshape(batch, heads, num_frames * num_patches, head_dim)
        out = torch.cat([cls_out, out], dim=2).transpose(1, 2).reshape(batch, -1, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


class PlainSDPAPoolingProcessor:
    """The pooling token's attention as SynchformerSpatialPooling computed it with `F.scaled_dot_product_attention`."""

    def __call__(self, attn, tokens):
        batch, _, dim = tokens.shape

        def split_heads(x):
            return x.view(batch, -1, attn.heads, dim // attn.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split_heads(attn.to_q(tokens[:, :1])),
            split_heads(attn.to_k(tokens)),
            split_heads(attn.to_v(tokens)),
            dropout_p=attn.attention_dropout if attn.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, 1, dim)
        return attn.to_out[1](attn.to_out[0](out))


def plain_sdpa_copy(model: SynchformerEncoder) -> SynchformerEncoder:
    """A copy of `model` (same weights) whose attention layers compute attention the old way."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, SynchformerDividedAttention):
            module.set_processor(PlainSDPADividedProcessor())
        elif isinstance(module, SynchformerPoolingAttention):
            module.set_processor(PlainSDPAPoolingProcessor())
    return reference


def make_sync_encoder(**overrides) -> SynchformerEncoder:
    torch.manual_seed(0)
    return SynchformerEncoder(**{**tiny_synchformer_config(), **overrides}).eval()


FRAMES = torch.rand(2, 24, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 2 segments per sample


def expected_calls(model: SynchformerEncoder, num_segments: int) -> list[tuple[int, ...]]:
    """Query shapes (batch, length, heads, head_dim) of every attention call of one forward over `num_segments`
    segments (one chunk): per block, temporal then spatial attention, each the CLS query then the grouped queries;
    then the pooling token of each time step."""
    config = model.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    time, patches = model.tokens_per_segment, model.num_patches
    block = [
        (num_segments, 1, heads, head_dim),
        (num_segments * patches, time, heads, head_dim),  # temporal groups: one per patch
        (num_segments, 1, heads, head_dim),
        (num_segments * time, patches, heads, head_dim),  # spatial groups: one per time step
    ]
    return block * config.num_layers + [(num_segments * time, 1, heads, head_dim)]


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_sync_encoder_set_attention_backend_runs_that_backend(monkeypatch, backend):
    model = make_sync_encoder()
    with torch.no_grad():
        reference = plain_sdpa_copy(model)(FRAMES, segment_batch_size=None)

    other = "_native_math" if backend == "native" else "native"
    calls = counting(monkeypatch, AttentionBackendName(backend))
    other_calls = counting(monkeypatch, AttentionBackendName(other))
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(other))  # the model's setting must win
    model.set_attention_backend(backend)
    assert {processor._attention_backend for processor in model.attn_processors.values()} == {
        AttentionBackendName(backend)
    }
    with torch.no_grad():
        output = model(FRAMES, segment_batch_size=None)

    assert [shape for shape, _ in calls] == expected_calls(model, num_segments=4) and other_calls == []
    # Same attention as the plain SDPA of before, up to float32 summation order (math vs fused kernel).
    assert output.shape == reference.shape == (2, 16, 32)
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)

    # After a reset the model follows the process-wide backend again (`set_attention_backend` also set that one).
    model.reset_attention_backend()
    assert all(processor._attention_backend is None for processor in model.attn_processors.values())
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(other))
    with torch.no_grad():
        model(FRAMES, segment_batch_size=None)
    assert len(other_calls) == len(calls)


def test_sync_encoder_follows_the_attention_backend_context_manager(monkeypatch):
    model = make_sync_encoder()
    calls = counting(monkeypatch, AttentionBackendName._NATIVE_MATH)
    with attention_backend("_native_math"), torch.no_grad():
        model(FRAMES, segment_batch_size=None)
    assert [shape for shape, _ in calls] == expected_calls(model, num_segments=4)

    with pytest.raises(ValueError, match="must be one of"):
        model.set_attention_backend("no_such_backend")


def test_sync_encoder_gradients_and_attention_dropout_through_the_dispatcher(monkeypatch):
    """Training (train_sync_encoder.py) backpropagates through the dispatched attention: the same gradients as the
    plain SDPA; attention dropout reaches the kernel in training mode only."""
    model = make_sync_encoder()
    reference = plain_sdpa_copy(model)
    model.set_attention_backend("_native_math")
    for module in (model, reference):
        module.zero_grad()
        (module(FRAMES).square().mean()).backward()
    for (name, parameter), (_, expected) in zip(model.named_parameters(), reference.named_parameters()):
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name
        torch.testing.assert_close(parameter.grad, expected.grad, atol=1e-6, rtol=1e-4, msg=name)

    model = make_sync_encoder(attention_dropout=0.25)
    model.set_attention_backend("_native_math")
    calls = counting(monkeypatch, AttentionBackendName._NATIVE_MATH)
    with torch.no_grad():
        model(FRAMES[:1, :16])
        assert {dropout for _, dropout in calls} == {0.0}  # eval: no dropout
        calls.clear()
        model.train()
        torch.manual_seed(0)
        first = model(FRAMES[:1, :16])
        torch.manual_seed(1)
        second = model(FRAMES[:1, :16])
    assert {dropout for _, dropout in calls} == {0.25}
    assert (first - second).abs().max() > 1e-4  # the dropout really ran


# ----------------------------------------------------------------------------------------------------------------
# Models without attention
# ----------------------------------------------------------------------------------------------------------------

ATTENTION_FREE = {
    "vocos": lambda: VocosVocoder(**tiny_vocos_config()),
    "mel_discriminator": lambda: MelDiscriminator(num_scales=2, channels=(4, 8)),
    "multi_period_discriminator": lambda: MultiPeriodDiscriminator(periods=[2, 3], channels=[4, 8], kernel_size=5),
    "multi_resolution_discriminator": lambda: MultiResolutionDiscriminator(
        resolutions=[[256, 64, 256]], channels=4, num_strided=2
    ),
    "sync_head": lambda: SynchformerSyncHead(visual_dim=16, num_classes=5, audio_channels=8, audio_layers=1),
}


@pytest.mark.parametrize("name", sorted(ATTENTION_FREE))
def test_set_attention_backend_on_a_model_without_attention_raises(name):
    model = ATTENTION_FREE[name]()
    assert not any(hasattr(module, "processor") for module in model.modules())  # really no attention layer
    active = _AttentionBackendRegistry._active_backend
    with pytest.raises(ValueError, match=rf"`backend`: {type(model).__name__} has no attention layers"):
        model.set_attention_backend("_native_math")
    with pytest.raises(ValueError, match="no attention backend to reset"):
        model.reset_attention_backend()
    # Nothing changed on the way to the error (diffusers' own method would set the process-wide backend).
    assert _AttentionBackendRegistry._active_backend == active


# ----------------------------------------------------------------------------------------------------------------
# The transformer inside a pipeline
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_pipe_transformer_set_attention_backend_chooses_the_kernel_of_every_denoising_step(monkeypatch, backend):
    """`pipe.transformer.set_attention_backend(name)` is what runs in `pipe(...)`: every attention layer of every
    step goes through that backend's registered function (a direct `F.scaled_dot_product_attention` call would leave
    the counter empty), none through the process-wide one."""
    from foley_toolkit import KlingFoleyPipeline

    from utils import get_dummy_components

    pipe = KlingFoleyPipeline(**get_dummy_components(stereo=False))
    pipe.set_progress_bar_config(disable=True)

    def generate():
        kwargs = {"prompt": "a door slams", "duration": 1.0, "num_inference_steps": 2, "output_type": "latent"}
        return pipe(generator=torch.Generator().manual_seed(0), **kwargs).audios

    reference = generate()
    other = "_native_math" if backend == "native" else "native"
    calls = counting(monkeypatch, AttentionBackendName(backend))
    other_calls = counting(monkeypatch, AttentionBackendName(other))
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(other))
    pipe.transformer.set_attention_backend(backend)
    output = generate()

    config = pipe.transformer.config
    layers = config.num_joint_layers + config.num_single_layers
    # One transformer call per step (CFG batched as [uncond, cond]): batch 2 in every layer.
    assert [shape[0] for shape, _ in calls] == [2] * (2 * layers) and other_calls == []
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)
