"""SynchformerEncoder: shapes, segmenting, faithfulness of its attention blocks, batching, save/load."""

import pytest
import torch
from torch import nn

from foley_toolkit import SynchformerEncoder
from foley_toolkit.models.encoders import synchformer_vit_b_16_config, tiny_synchformer_config
from foley_toolkit.models.encoders.synchformer import SynchformerDividedAttention
from utils import RELOAD_ATOL, RELOAD_RTOL, assert_same_weights


def _tiny(**overrides) -> SynchformerEncoder:
    config = tiny_synchformer_config()
    config.update(overrides)
    return SynchformerEncoder(**config).eval()


def _frames(batch: int, num_frames: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_frames, 3, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("num_frames", [16, 23, 24, 40, 100])
def test_output_shape_follows_segment_formula(num_frames):
    model = _tiny()
    with torch.no_grad():
        out = model(_frames(2, num_frames))
    segments = (num_frames - 16) // 8 + 1
    assert model.num_segments(num_frames) == segments
    assert out.shape == (2, segments * 8, 32)
    assert torch.isfinite(out).all()


def test_segment_batching_and_batch_consistency():
    model = _tiny()
    frames = _frames(2, 56)  # 6 segments per sample
    with torch.no_grad():
        reference = model(frames, segment_batch_size=None)
        for chunk in (1, 4, 7):
            torch.testing.assert_close(model(frames, segment_batch_size=chunk), reference, rtol=1e-5, atol=1e-6)
        # each sample alone gives its rows of the batched result
        for index in range(2):
            alone = model(frames[index : index + 1])
            torch.testing.assert_close(alone, reference[index : index + 1], rtol=1e-5, atol=1e-6)


def test_segments_see_only_their_own_frames():
    model = _tiny()
    frames = _frames(1, 40)  # segments cover frames [0, 16), [8, 24), [16, 32), [24, 40)
    changed = frames.clone()
    changed[:, 32:] = torch.rand_like(changed[:, 32:])  # only the last segment sees frames 32-39
    with torch.no_grad():
        before, after = model(frames), model(changed)
    torch.testing.assert_close(after[:, :24], before[:, :24])
    assert (after[:, 24:] - before[:, 24:]).abs().max() > 1e-3


def _reference_divided_attention(attn: SynchformerDividedAttention, x, num_frames, num_patches, group):
    """MotionFormer's DividedAttention written out with explicit loops and softmax (no SDPA, no reshapes)."""
    heads, head_dim = attn.heads, attn.head_dim
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    out = torch.zeros_like(q)
    scale = head_dim**-0.5

    def attend(query, keys, values):  # (n_q, dim), (n_k, dim) -> (n_q, dim), per head
        result = []
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            weights = torch.softmax(query[:, sl] @ keys[:, sl].T * scale, dim=-1)
            result.append(weights @ values[:, sl])
        return torch.cat(result, dim=-1)

    for b in range(x.shape[0]):
        out[b, :1] = attend(q[b, :1], k[b], v[b])  # CLS: every token
        token = lambda t, s: 1 + t * num_patches + s  # noqa: E731  (time-major layout)
        if group == "time":
            groups = [[token(t, s) for t in range(num_frames)] for s in range(num_patches)]
        else:
            groups = [[token(t, s) for s in range(num_patches)] for t in range(num_frames)]
        for members in groups:
            keys = [0] + members  # each group also attends to the CLS token
            out[b, members] = attend(q[b, members], k[b, keys], v[b, keys])
    return attn.to_out[0](out)


@pytest.mark.parametrize("group", ["time", "space"])
def test_divided_attention_matches_motionformer_definition(group):
    torch.manual_seed(0)
    attn = SynchformerDividedAttention(dim=16, num_heads=2).eval()
    num_frames, num_patches = 3, 5
    x = torch.randn(2, 1 + num_frames * num_patches, 16)
    with torch.no_grad():
        fast = attn(x, num_frames, num_patches, group=group)
        slow = _reference_divided_attention(attn, x, num_frames, num_patches, group)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_spatial_pooling_matches_pre_ln_transformer_encoder_layer():
    """The pooling layer is Synchformer's nn.TransformerEncoderLayer (norm_first, GELU) over [CLS, patches]."""
    model = _tiny()
    pool = model.spatial_pool
    dim = 32
    layer = nn.TransformerEncoderLayer(
        d_model=dim, nhead=4, dim_feedforward=4 * dim, dropout=0.0, activation=nn.GELU(),
        layer_norm_eps=1e-6, batch_first=True, norm_first=True,
    ).eval()
    with torch.no_grad():
        projections = (pool.attn.to_q, pool.attn.to_k, pool.attn.to_v)
        layer.self_attn.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        layer.self_attn.out_proj.weight.copy_(pool.attn.to_out[0].weight)
        layer.self_attn.out_proj.bias.copy_(pool.attn.to_out[0].bias)
        layer.linear1.load_state_dict(pool.ff.net[0].proj.state_dict())
        layer.linear2.load_state_dict(pool.ff.net[2].state_dict())
        layer.norm1.load_state_dict(pool.norm1.state_dict())
        layer.norm2.load_state_dict(pool.norm2.state_dict())
        patches = torch.randn(6, 4, dim)
        expected = layer(torch.cat([pool.cls_token.expand(6, -1, -1), patches], dim=1))[:, 0]
        torch.testing.assert_close(pool(patches), expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = SynchformerEncoder.from_pretrained(tmp_path).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    frames = _frames(1, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames), model(frames), atol=RELOAD_ATOL, rtol=RELOAD_RTOL)
    assert_same_weights(loaded, model)


def test_gradient_checkpointing_gives_same_gradients():
    model = _tiny().train()
    frames = _frames(1, 24)

    def gradients():
        model.zero_grad()
        model(frames).square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise_value_error():
    model = _tiny()
    bad = {
        "4-D": torch.zeros(16, 3, 32, 32),
        "channels": torch.zeros(1, 16, 4, 32, 32),
        "size": torch.zeros(1, 16, 3, 64, 64),
        "too few frames": torch.zeros(1, 15, 3, 32, 32),
        "uint8": torch.zeros(1, 16, 3, 32, 32, dtype=torch.uint8),
    }
    for case, frames in bad.items():
        with pytest.raises(ValueError, match="`frames`"):
            model(frames)
    with pytest.raises(ValueError, match="`segment_batch_size`"):
        model(_frames(1, 16), segment_batch_size=0)
    with pytest.raises(ValueError, match="`image_size`"):
        SynchformerEncoder(image_size=30, patch_size=16)


def test_default_config_is_synchformer_vit_b_16():
    config = synchformer_vit_b_16_config()
    assert (config["hidden_size"], config["num_layers"], config["num_attention_heads"]) == (768, 12, 12)
    assert (config["image_size"], config["patch_size"], config["temporal_patch_size"]) == (224, 16, 2)
    assert (config["segment_frames"], config["segment_stride"], config["mlp_ratio"]) == (16, 8, 4.0)
    with torch.device("meta"):
        model = SynchformerEncoder()
    assert model.num_patches == 196 and model.tokens_per_segment == 8
    assert model.patch_embed.proj.kernel_size == (2, 16, 16)
    assert model.blocks[0].ff.net[0].proj.out_features == 3072
    # 12 blocks x (2 attentions + MLP) + embeddings + pooling layer
    num_parameters = sum(p.numel() for p in model.parameters())
    assert 121_000_000 < num_parameters < 123_000_000, num_parameters
    # 8 s of video at 25 fps: 200 frames -> 24 segments -> 192 tokens (24 per second)
    assert model.num_segments(200) * model.tokens_per_segment == 192


def test_frame_transform_runs_once_per_chunk_on_the_frames_it_covers():
    """The encoder is the one place that windows a video: uint8 frames with a `frame_transform` give exactly the
    features of the transformed video, for any chunking, and each chunk's frames are transformed once."""
    from foley_toolkit.video_processor import FoleyVideoProcessor

    model = _tiny()
    processor = FoleyVideoProcessor(sync_image_size=32)
    generator = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (2, 56, 3, 224, 224), dtype=torch.uint8, generator=generator)  # 6 segments each
    seen = []

    def transform(span):
        seen.append(span.shape[0])
        return processor.preprocess_sync(span)

    with torch.no_grad():
        reference = model(processor.preprocess_sync(frames), segment_batch_size=None)
        for chunk in (None, 1, 4, 7):
            seen.clear()
            out = model(frames, segment_batch_size=chunk, frame_transform=transform)
            # windows overlap by 8 frames, but the frames of one chunk go through the transform once: all at once,
            # 56 frames per sample; in chunks, the frames two chunks share twice
            assert seen == {None: [56, 56], 1: [16] * 12, 4: [40, 24, 24, 40], 7: [56, 16, 48]}[chunk]
            if chunk is None:
                torch.testing.assert_close(out, reference, rtol=0, atol=0)
            else:
                torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="frame_transform"):
            model(frames, frame_transform=lambda span: span)  # uint8 224 px out: not what the encoder takes
