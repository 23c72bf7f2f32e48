"""Synchformer converter: equivalence with a reference MotionFormer written from the published description (with
the ORIGINAL module names, saved in the original checkpoint format), input conventions, and refusals."""

import re

import pytest
import torch
from torch import nn

from foley_toolkit import SynchformerEncoder
from foley_toolkit.audio_utils import SYNC_FRAME_RATE, SYNC_SEGMENT_FRAMES, SYNC_SEGMENT_STRIDE
from foley_toolkit.conversion.synchformer import (
    original_key_name,
    convert_synchformer,
    convert_synchformer_state_dict,
    extract_visual_state_dict,
    synchformer_config_from_state_dict,
)
from foley_toolkit.models.encoders import synchformer_vit_b_16_config
from foley_toolkit.video_processor import preprocess_sync_frames


# ----------------------------------------------------------------------------------------------------------
# Reference: Synchformer's visual branch as described by its paper / MotionFormer `divided_224_16x4`, with the
# original parameter names. Attention is written with explicit softmax, heads folded into the batch and the
# query pre-scaled, as MotionFormer's `DividedAttention` does; the pooling layer is torch's own
# `nn.TransformerEncoderLayer` (norm_first, GELU, eps 1e-6) with a learned CLS token.
# ----------------------------------------------------------------------------------------------------------


def _softmax_attention(q, k, v):
    return torch.einsum("bij,bjd->bid", torch.einsum("bid,bjd->bij", q, k).softmax(dim=-1), v)


class _RefDividedAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, group, frames, patches):
        b, n, dim = x.shape
        h, d = self.heads, dim // self.heads
        q, k, v = (t.reshape(b, n, h, d).permute(0, 2, 1, 3).reshape(b * h, n, d) for t in self.qkv(x).chunk(3, -1))
        q = q * d**-0.5
        cls_out = _softmax_attention(q[:, :1], k, v)  # the CLS token attends to every token

        def split(t):  # 'b (f n) d -> (b f) n d' (space) or '-> (b n) f d' (time)
            t = t[:, 1:].reshape(b * h, frames, patches, d)
            t = t if group == "space" else t.transpose(1, 2)
            return t.reshape(-1, t.shape[2], d)

        q_, k_, v_ = split(q), split(k), split(v)
        r = q_.shape[0] // (b * h)
        k_ = torch.cat([k[:, :1].repeat_interleave(r, 0), k_], 1)  # every group also attends to the CLS token
        v_ = torch.cat([v[:, :1].repeat_interleave(r, 0), v_], 1)
        out = _softmax_attention(q_, k_, v_).reshape(b * h, r, -1, d)
        out = out if group == "space" else out.transpose(1, 2)
        out = torch.cat([cls_out, out.reshape(b * h, frames * patches, d)], 1)
        return self.proj(out.reshape(b, h, n, d).permute(0, 2, 1, 3).reshape(b, n, dim))


class _RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _RefBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _RefDividedAttention(dim, heads)
        self.timeattn = _RefDividedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _RefMlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, frames, patches):
        x = x + self.timeattn(self.norm3(x), "time", frames, patches)  # time, then space, then MLP
        x = x + self.attn(self.norm1(x), "space", frames, patches)
        return x + self.mlp(self.norm2(x))


class _RefSpatialPool(nn.TransformerEncoderLayer):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__(dim, heads, int(mlp_ratio * dim), dropout=0.0, activation=nn.GELU(), layer_norm_eps=1e-6,
                         batch_first=True, norm_first=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):  # (n, patches, dim) -> (n, dim): the CLS token's output
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return super().forward(x)[:, 0]


class _RefPatchEmbed(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.proj = conv


class _RefMotionFormer(nn.Module):
    """`vfeat_extractor` of Synchformer: (B, S, C, T, H, W) -> (B, S, T / 2, D)."""

    def __init__(self, image_size=224, patch=16, tubelet=2, frames=16, dim=768, depth=12, heads=12, mlp_ratio=4.0):
        super().__init__()
        self.grid, self.steps = image_size // patch, frames // tubelet
        self.patch_embed = _RefPatchEmbed(nn.Conv2d(3, dim, patch, patch))  # unused, but in every checkpoint
        self.patch_embed_3d = _RefPatchEmbed(nn.Conv3d(3, dim, (tubelet, patch, patch), (tubelet, patch, patch)))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.steps, dim))
        self.blocks = nn.ModuleList(_RefBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.spatial_attn_agg = _RefSpatialPool(dim, heads, mlp_ratio)

    def forward(self, x):
        b, s, c, t, height, width = x.shape
        x = self.patch_embed_3d.proj(x.reshape(b * s, c, t, height, width)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b * s, -1, -1), x], 1)
        patches = self.grid**2
        position = self.pos_embed[:, 1:].repeat(1, self.steps, 1) + self.temp_embed.repeat_interleave(patches, 1)
        x = x + torch.cat([self.pos_embed[:, :1], position], 1)
        for block in self.blocks:
            x = block(x, self.steps, patches)
        x = self.norm(x[:, 1:])  # CLS dropped, then the final norm
        pooled = self.spatial_attn_agg(x.reshape(b * s * self.steps, patches, -1))
        return pooled.reshape(b, s, self.steps, -1)  # temporal aggregation: identity


def _tiny_reference(seed: int = 0, dim: int = 32, depth: int = 2, heads: int = 4) -> _RefMotionFormer:
    torch.manual_seed(seed)
    model = _RefMotionFormer(image_size=32, patch=16, dim=dim, depth=depth, heads=heads).eval()
    # the original init is degenerate (zero tubelet conv and qkv, proj = 1): randomise every tensor
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_norm_weight = "norm" in name and name.endswith("weight")
            parameter.copy_((1.0 if is_norm_weight else 0.0) + 0.2 * torch.randn_like(parameter))
    return model


def _original_checkpoint(reference: _RefMotionFormer) -> dict:
    """The training checkpoint layout: `{'model': whole Synchformer state dict, ...}`."""
    state = {f"vfeat_extractor.{key}": value.clone() for key, value in reference.state_dict().items()}
    state["afeat_extractor.patch_embed.proj.weight"] = torch.randn(8, 1, 16, 16)  # audio branch: dropped
    state["transformer.blocks.0.attn.qkv.weight"] = torch.randn(24, 8)
    state["vproj.weight"] = torch.randn(8, 32)
    return {"model": state, "epoch": 3, "metrics": {"val_acc": 0.5}}


def _segments(frames: torch.Tensor) -> torch.Tensor:
    """(B, frames, C, H, W) -> (B, S, C, 16, H, W): MMAudio's 16-frame windows with stride 8."""
    count = (frames.shape[1] - SYNC_SEGMENT_FRAMES) // SYNC_SEGMENT_STRIDE + 1
    windows = [frames[:, s * SYNC_SEGMENT_STRIDE : s * SYNC_SEGMENT_STRIDE + SYNC_SEGMENT_FRAMES] for s in range(count)]
    return torch.stack(windows, 1).permute(0, 1, 3, 2, 4, 5)


@pytest.mark.parametrize("layout", ["training", "mmaudio"])
def test_converted_encoder_matches_reference(tmp_path, capsys, layout):
    reference = _tiny_reference()
    checkpoint = _original_checkpoint(reference)
    if layout == "mmaudio":  # synchformer_state_dict.pth: the `model` dict saved on its own
        checkpoint = checkpoint["model"]
    path = tmp_path / "synchformer.pth"
    torch.save(checkpoint, path)

    model = convert_synchformer(str(path), str(tmp_path / "out"), num_attention_heads=4)
    assert "MIT" in capsys.readouterr().out  # the licence is printed
    reloaded = SynchformerEncoder.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.hidden_size == 32 and reloaded.config.num_layers == 2
    assert reloaded.config.image_size == 32 and reloaded.config.segment_frames == 16

    frames = torch.rand(2, 32, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 3 segments
    with torch.no_grad():
        expected = reference(_segments(frames)).flatten(1, 2)  # (B, S * 8, D)
        got = reloaded(frames)
        direct = model(frames)
    assert got.shape == expected.shape == (2, 24, 32)
    assert expected.std() > 0.1  # a real signal, not a constant
    max_diff = (got - expected).abs().max().item()
    print(f"Synchformer converter equivalence: max |diff| = {max_diff:.3e}")
    assert max_diff < 1e-4
    torch.testing.assert_close(direct, got)


def test_cli_converts_with_heads_of_64_channels(tmp_path, capsys):
    """`foley-toolkit convert synchformer` (no head count given: hidden_size // 64, as in ViT-B/16)."""
    from foley_toolkit.cli import main

    reference = _tiny_reference(dim=128, depth=1, heads=2)
    torch.save(_original_checkpoint(reference)["model"], tmp_path / "synchformer_state_dict.pth")
    out = tmp_path / "sync_encoder"
    assert main(["convert", "synchformer", "--checkpoint", str(tmp_path), "--out", str(out)]) == 0
    assert "Licence" in capsys.readouterr().out
    encoder = SynchformerEncoder.from_pretrained(out).eval()
    assert encoder.config.num_attention_heads == 2 and encoder.config.hidden_size == 128
    frames = torch.rand(1, 16, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert (encoder(frames) - reference(_segments(frames)).flatten(1, 2)).abs().max() < 1e-4


def test_full_size_conversion_matches_public_config():
    """The public ViT-B/16 shapes (pos_embed (1, 197, 768), temp_embed (1, 8, 768), 12 blocks) convert to the
    encoder's default config; every tensor but the unused 2-D patch embedding is used (checked on meta)."""
    with torch.device("meta"):
        reference = _RefMotionFormer()
    original_state = {f"vfeat_extractor.{key}": value for key, value in reference.state_dict().items()}
    visual = extract_visual_state_dict({"model": original_state})
    assert visual["pos_embed"].shape == (1, 197, 768) and visual["temp_embed"].shape == (1, 8, 768)
    config = synchformer_config_from_state_dict(visual)
    public = synchformer_vit_b_16_config()
    assert {key: public[key] for key in config} == config
    converted, _ = convert_synchformer_state_dict(visual, config["num_layers"])
    with torch.device("meta"):
        encoder = SynchformerEncoder(**public)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in encoder.state_dict().items()}
    # a missing tensor is reported under its original name: every encoder key maps back to a checkpoint key
    assert {original_key_name(key) for key in encoder.state_dict()} == set(visual) - {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    }
    original = sum(v.numel() for k, v in visual.items() if not k.startswith("patch_embed."))
    ours = sum(p.numel() for p in encoder.parameters())
    print(f"Synchformer visual encoder: {ours:,} parameters (original without the 2-D patch embedding: {original:,})")
    assert ours == original


def test_input_conventions_match_synchformer():
    """25 fps, 224 px centre crops, RGB in [0, 1] normalised with mean 0.5 / std 0.5."""
    assert SYNC_FRAME_RATE == 25 and SYNC_SEGMENT_FRAMES == 16 and SYNC_SEGMENT_STRIDE == 8
    assert synchformer_vit_b_16_config()["image_size"] == 224
    frames = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
    torch.testing.assert_close(preprocess_sync_frames(frames), (frames.float() / 255 - 0.5) / 0.5)
    wide = torch.rand(2, 3, 256, 320)  # short side to 224, then a 224 centre crop
    out = preprocess_sync_frames(wide)
    assert out.shape == (2, 3, 224, 224)
    assert -1.0 - 1e-4 <= out.min() and out.max() <= 1.0 + 1e-4


# ----------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_checkpoint(tmp_path):
    checkpoint = _original_checkpoint(_tiny_reference())
    return tmp_path, checkpoint


def test_refuses_truncated_file(saved_checkpoint):
    tmp_path, checkpoint = saved_checkpoint
    path = tmp_path / "full.pth"
    torch.save(checkpoint, path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pth.*could not be read as a checkpoint"):
        convert_synchformer(str(truncated), str(tmp_path / "out"), num_attention_heads=4)
    assert not (tmp_path / "out").exists()


def test_refuses_renamed_key(saved_checkpoint):
    tmp_path, checkpoint = saved_checkpoint
    state = checkpoint["model"]
    state["vfeat_extractor.blocks.1.timeattn.qkv_renamed.weight"] = state.pop(
        "vfeat_extractor.blocks.1.timeattn.qkv.weight"
    )
    torch.save(checkpoint, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"unexpected key 'vfeat_extractor\.blocks\.1\.timeattn\.qkv_renamed\.weight'"):
        convert_synchformer(str(tmp_path / "renamed.pth"), str(tmp_path / "out"), num_attention_heads=4)


def test_refuses_missing_key(saved_checkpoint):
    tmp_path, checkpoint = saved_checkpoint
    del checkpoint["model"]["vfeat_extractor.spatial_attn_agg.linear2.bias"]
    torch.save(checkpoint, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing .*vfeat_extractor\.spatial_attn_agg\.linear2\.bias"):
        convert_synchformer(str(tmp_path / "missing.pth"), str(tmp_path / "out"), num_attention_heads=4)


@pytest.mark.parametrize(
    "key, shape",
    [
        ("vfeat_extractor.blocks.0.attn.qkv.weight", (96, 16)),
        ("vfeat_extractor.spatial_attn_agg.linear1.weight", (64, 32)),
    ],
)
def test_refuses_changed_shape(saved_checkpoint, key, shape):
    tmp_path, checkpoint = saved_checkpoint
    checkpoint["model"][key] = torch.randn(shape)
    torch.save(checkpoint, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=re.escape(f"{key}' has shape {shape}")):
        convert_synchformer(str(tmp_path / "shape.pth"), str(tmp_path / "out"), num_attention_heads=4)


def test_refuses_non_checkpoint_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint at all\n" * 10)
    with pytest.raises(ValueError, match="notes.pth"):
        convert_synchformer(str(text), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        convert_synchformer(str(tmp_path / "absent.pth"), str(tmp_path / "out"))
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.pth")  # a checkpoint of something else
    with pytest.raises(ValueError, match="no Synchformer visual encoder"):
        convert_synchformer(str(tmp_path / "other.pth"), str(tmp_path / "out"))


class _TrainingConfig:  # a training config object: weights_only refuses it, the converter never falls back
    lr = 1e-4


def test_refuses_pickled_objects_without_unpickling(tmp_path):
    checkpoint = {"model": {"vfeat_extractor.cls_token": torch.zeros(1, 1, 4)}, "args": _TrainingConfig()}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"weights_only=True.*re-save only the state dict"):
        convert_synchformer(str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
