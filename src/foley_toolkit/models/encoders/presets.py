"""Configurations and builders for Kling-Foley's conditioning encoders, with no downloads.

* text: transformers `T5EncoderModel` at T5-Base size (paper 3.1) + a T5 tokenizer,
* vision: transformers `CLIPVisionModelWithProjection` at MetaCLIP ViT-bigG-14-quickgelu size (paper 3.1),
* sync: `SynchformerEncoder` at the official Synchformer (MotionFormer ViT-B/16) size.

The full-size builders create untrained models from these configs (pretrained weights are loaded with the
usual `from_pretrained` of each class); `device="meta"` builds them without allocating memory, e.g. to count
parameters or to load weights later. The tiny configs exist for tests and demos.

`build_tiny_t5_tokenizer()` builds a small T5 (Unigram, SentencePiece-style) tokenizer entirely in memory: a
few hundred pieces (common sound-description words, every ASCII letter, digit and punctuation mark, with and
without the word-start marker) so that it tokenises any English caption (other characters map to `<unk>`). Its
ids follow T5's conventions (`<pad>` 0, `</s>` 1, `<unk>` 2) and stay below 32,128, so it also drives a
full-size T5 encoder.
"""

import inspect
import string
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, T5Config, T5EncoderModel, T5Tokenizer

from diffusers import ModelMixin  # noqa: F401  (component modules import diffusers at top level)

from .synchformer import SynchformerEncoder


# ----------------------------------------------------------------------------------------------------------
# Text encoder: T5-Base
# ----------------------------------------------------------------------------------------------------------


def t5_base_config() -> T5Config:
    """T5-Base (`google-t5/t5-base`) encoder: d_model 768, 12 layers, 12 heads, d_ff 3072, vocab 32,128,
    relative position buckets 32 / max distance 128, ReLU feed-forward. ~110M encoder parameters."""
    return T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=True,
    )


def tiny_t5_config() -> T5Config:
    """A 2-layer, 32-wide T5 encoder whose vocabulary matches `build_tiny_t5_tokenizer()` (tests, demos)."""
    return T5Config(
        vocab_size=len(_tiny_t5_vocab()),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


# ----------------------------------------------------------------------------------------------------------
# Vision encoder: MetaCLIP ViT-bigG-14-quickgelu
# ----------------------------------------------------------------------------------------------------------


def metaclip_bigg_14_quickgelu_config() -> CLIPVisionConfig:
    """MetaCLIP ViT-bigG-14-quickgelu vision tower (open_clip `ViT-bigG-14-quickgelu`): width 1664, 48 layers,
    16 heads, MLP 8192, patch 14, 224 px, QuickGELU, projection to 1280. ~1.84B parameters."""
    return CLIPVisionConfig(
        hidden_size=1664,
        intermediate_size=8192,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_channels=3,
        image_size=224,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=1280,
    )


def clip_vit_b_16_config() -> CLIPVisionConfig:
    """OpenAI CLIP ViT-B/16's vision tower (`openai/clip-vit-base-patch16`): width 768, 12 layers, 12 heads, MLP 3072,
    patch 16, 224 px, QuickGELU, projection to 512. ~86M parameters: a lighter choice than MetaCLIP bigG for CPU
    users (35 GFLOP per frame against 968; the same OpenAI CLIP mean / std normalisation). A transformer must be
    trained on its features (`clip_dim=512`)."""
    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=512,
    )


def tiny_metaclip_config() -> CLIPVisionConfig:
    """A 2-layer, 32-wide CLIP vision tower on 224 px frames (patch 32) for tests and demos."""
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
    )


# ----------------------------------------------------------------------------------------------------------
# Sync encoder: Synchformer
# ----------------------------------------------------------------------------------------------------------


def synchformer_vit_b_16_config() -> Dict[str, Any]:
    """Official Synchformer visual encoder (MotionFormer ViT-B/16): `SynchformerEncoder(**config)`. ~122M."""
    signature = inspect.signature(SynchformerEncoder.__init__)
    return {name: p.default for name, p in signature.parameters.items() if name != "self"}


def tiny_synchformer_config() -> Dict[str, Any]:
    """Tiny Synchformer on 32 px frames (2x2 patches), 2 layers, width 32, same segmenting (16 frames, stride 8)."""
    config = synchformer_vit_b_16_config()
    config.update(image_size=32, patch_size=16, hidden_size=32, num_layers=2, num_attention_heads=4)
    return config


# ----------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------


def _build(model_cls, config, device: Optional[Union[str, torch.device]], dtype: Optional[torch.dtype]):
    # under a device context the weights are created there directly (no multi-GB CPU detour, nothing on "meta")
    with torch.device(device if device is not None else "cpu"):
        model = model_cls(config) if not isinstance(config, dict) else model_cls(**config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_text_encoder(
    config: Optional[T5Config] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> T5EncoderModel:
    """Untrained `T5EncoderModel` (default: `t5_base_config()`); `device="meta"` allocates nothing."""
    return _build(T5EncoderModel, config if config is not None else t5_base_config(), device, dtype)


def build_vision_encoder(
    config: Optional[CLIPVisionConfig] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> CLIPVisionModelWithProjection:
    """Untrained `CLIPVisionModelWithProjection` (default: MetaCLIP bigG-14-quickgelu); `device="meta"` allocates
    nothing (the full size is 1.84B parameters, 7.4 GB in float32)."""
    config = config if config is not None else metaclip_bigg_14_quickgelu_config()
    return _build(CLIPVisionModelWithProjection, config, device, dtype)


def build_sync_encoder(
    config: Optional[Dict[str, Any]] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> SynchformerEncoder:
    """Untrained `SynchformerEncoder` (default: `synchformer_vit_b_16_config()`)."""
    return _build(SynchformerEncoder, config if config is not None else synchformer_vit_b_16_config(), device, dtype)


# ----------------------------------------------------------------------------------------------------------
# Tokenizer that needs no files
# ----------------------------------------------------------------------------------------------------------

_WORD_START = "\u2581"  # SentencePiece's "▁" marks the start of a word

# words that recur in sound / foley captions; everything else falls back to letters
_TINY_T5_WORDS = (
    "a an the of on in at to from with and or by for into onto over under near while then as is are was "
    "be it its this that one two three few many some no not very slowly quickly loud loudly quiet softly "
    "sound sounds noise music voice speech man woman child people crowd dog cat bird birds horse cow engine "
    "car truck train plane motor motorcycle wind rain water thunder fire door glass metal wood paper plastic "
    "stone floor table ground street road wall window footsteps steps step walking running knocking "
    "knock hits hit hitting falls falling drops dropping breaks breaking shatters crash crashing bang "
    "banging clicks click clicking ticking rings ringing bell phone alarm siren whistle laughs laughing "
    "talking speaks speaking sings singing claps clapping applause cheering barking meows chirping "
    "splashing pouring flowing dripping boiling frying sizzling typing keyboard guitar piano drum drums "
    "playing plays passing passes starts stops idling revving honking buzzing humming whooshing "
    "rustling crackling scraping squeaking creaking opens closes opening closing slams slamming "
    "background distant close left right small large heavy light high low"
).split()


def _tiny_t5_vocab() -> List[Tuple[str, float]]:
    """`(piece, log-probability)` pairs; whole words score higher than spelling them out."""
    vocab: List[Tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = set()

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for word in _TINY_T5_WORDS:
        add(_WORD_START + word, -2.0)
    add(_WORD_START, -4.0)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add(_WORD_START + char, -4.0)
        add(char, -5.0)
    return vocab


def build_tiny_t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A small T5 tokenizer built in memory (no files, no downloads), see the module docstring.

    Uses `T5Tokenizer(vocab=[(piece, score), ...], extra_ids=0)` (transformers >= 5: a `tokenizers` Unigram
    model); `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip it through `tokenizer.json`.
    """
    return T5Tokenizer(vocab=_tiny_t5_vocab(), extra_ids=0, model_max_length=model_max_length)


__all__ = [
    "t5_base_config",
    "tiny_t5_config",
    "metaclip_bigg_14_quickgelu_config",
    "tiny_metaclip_config",
    "synchformer_vit_b_16_config",
    "tiny_synchformer_config",
    "build_text_encoder",
    "build_vision_encoder",
    "build_sync_encoder",
    "build_tiny_t5_tokenizer",
]
