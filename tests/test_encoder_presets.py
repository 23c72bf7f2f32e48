"""Encoder presets: full-size configs (counted on the meta device), tiny encoders, the offline T5 tokenizer."""

import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionModelWithProjection, T5EncoderModel

from foley_toolkit import (
    SynchformerEncoder,
    build_sync_encoder,
    build_text_encoder,
    build_tiny_t5_tokenizer,
    build_vision_encoder,
    clip_vit_b_16_config,
    metaclip_bigg_14_quickgelu_config,
    preprocess_clip_frames,
    t5_base_config,
    tiny_metaclip_config,
    tiny_synchformer_config,
    tiny_t5_config,
)


def _num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_t5_base_full_size_on_meta_device():
    config = t5_base_config()
    sizes = (config.d_model, config.num_layers, config.num_heads, config.d_ff, config.vocab_size)
    assert sizes == (768, 12, 12, 3072, 32128)
    assert (config.relative_attention_num_buckets, config.feed_forward_proj) == (32, "relu")
    model = build_text_encoder(device="meta")
    assert isinstance(model, T5EncoderModel)
    assert all(p.is_meta for p in model.parameters())
    # T5-Base encoder + shared embedding: 32128*768 + 12 * (4*768*768 + 2*768*3072 + 2*768) + relative bias + norm
    assert _num_parameters(model) == 109_628_544


def test_metaclip_bigg_full_size_on_meta_device():
    config = metaclip_bigg_14_quickgelu_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1664, 48, 16)
    assert (config.intermediate_size, config.patch_size, config.image_size) == (8192, 14, 224)
    assert (config.hidden_act, config.projection_dim) == ("quick_gelu", 1280)
    model = build_vision_encoder(device="meta")
    assert isinstance(model, CLIPVisionModelWithProjection)
    assert all(p.is_meta for p in model.parameters())  # 7.4 GB in float32 if materialised
    assert 1_840_000_000 < _num_parameters(model) < 1_850_000_000
    assert model.visual_projection.weight.shape == (1280, 1664)


def test_clip_vit_b_16_full_size_on_meta_device():
    config = clip_vit_b_16_config()
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size, config.projection_dim) == (768, 12, 16, 512)
    model = build_vision_encoder(config, device="meta")
    # ViT-B/16 vision tower: 85.8M, plus the 768 -> 512 projection (393,216)
    assert 85_000_000 < _num_parameters(model) < 87_000_000
    assert model.visual_projection.weight.shape == (512, 768)


def test_sync_encoder_builder():
    full = build_sync_encoder(device="meta")
    assert isinstance(full, SynchformerEncoder) and full.config.hidden_size == 768
    tiny = build_sync_encoder(tiny_synchformer_config())
    with torch.no_grad():
        assert tiny(torch.zeros(1, 24, 3, 32, 32)).shape == (1, 16, 32)


def test_tokenizer_offline_round_trip(tmp_path):
    tokenizer = build_tiny_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    captions = [
        "A dog barks loudly while rain falls on a metal roof.",
        "Glass shatters on the floor",
        "xylophone #42!",
    ]
    batch = tokenizer(captions, padding=True, return_tensors="pt")
    assert batch.input_ids.max() < len(tokenizer) <= tiny_t5_config().vocab_size < t5_base_config().vocab_size
    assert (batch.input_ids == tokenizer.unk_token_id).sum() == 0  # any ASCII caption is covered
    assert tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True) == captions
    lengths = batch.attention_mask.sum(1)
    assert all(batch.input_ids[i, lengths[i] - 1] == tokenizer.eos_token_id for i in range(len(captions)))
    # known words are single pieces; other words are spelled out
    assert tokenizer.tokenize("dog barks") == ["\u2581dog", "\u2581b", "a", "r", "k", "s"]
    assert tokenizer("caf\u00e9").input_ids[-2] == tokenizer.unk_token_id

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert torch.equal(reloaded(captions, padding=True, return_tensors="pt").input_ids, batch.input_ids)


def test_tiny_text_encoder_respects_padding_mask():
    tokenizer = build_tiny_t5_tokenizer()
    encoder = build_text_encoder(tiny_t5_config())
    captions = ["footsteps on a wooden floor", "a car engine starts and idles in the distance"]
    batch = tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        single = tokenizer(captions[:1], return_tensors="pt")
        alone = encoder(**single).last_hidden_state
    assert hidden.shape == (2, batch.input_ids.shape[1], 32)
    # the padded caption's valid tokens are encoded exactly as without padding
    torch.testing.assert_close(hidden[0, : alone.shape[1]], alone[0], rtol=1e-5, atol=1e-5)


def test_tiny_vision_encoder_on_preprocessed_frames():
    encoder = build_vision_encoder(tiny_metaclip_config())
    frames = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(pixel_values=preprocess_clip_frames(frames, image_size=encoder.config.image_size))
        single = encoder(pixel_values=preprocess_clip_frames(frames[1:2])).image_embeds
    assert out.image_embeds.shape == (3, tiny_metaclip_config().projection_dim)
    assert out.last_hidden_state.shape == (3, 1 + (224 // 32) ** 2, 32)
    torch.testing.assert_close(out.image_embeds[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_builders_cast_dtype(dtype):
    assert build_text_encoder(tiny_t5_config(), dtype=dtype).dtype == dtype
    assert build_sync_encoder(tiny_synchformer_config(), dtype=dtype).dtype == dtype
