from .presets import (
    build_sync_encoder,
    build_text_encoder,
    build_tiny_t5_tokenizer,
    build_vision_encoder,
    clip_vit_b_16_config,
    metaclip_bigg_14_quickgelu_config,
    synchformer_vit_b_16_config,
    t5_base_config,
    tiny_metaclip_config,
    tiny_synchformer_config,
    tiny_t5_config,
)
from .synchformer import SynchformerEncoder
