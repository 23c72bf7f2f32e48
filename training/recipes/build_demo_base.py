"""Build the untrained demo pipeline (every component at its demo size) and save it as a pipeline folder.

The demo pipeline is trained on the synthetic dataset of `foley_toolkit.synthetic` on 2 CPU cores
(`training/recipes/demo.sh`). It keeps every part of Kling-Foley (T5 text encoder, CLIP vision encoder,
Synchformer, MM-DiT transformer, MelVAE, BigVGAN-v2 vocoder, Mono2Stereo) but at sizes that train in
minutes and ship in a few MB:

* the three conditioning encoders are small and stay frozen at a random initialisation: the
  synthetic world has four event classes on a plain background, so fixed random features of the
  frames (brightness, where the objects are) and of the caption words already separate what the
  transformer must see; training real encoders is the paper's pre-training, not the demo's job.
  The vision and sync encoders are re-drawn with variance-growing weights (`rescale_random_encoder`):
  at the usual ViT initialisation (std 0.02) their outputs barely change from frame to frame (the
  Synchformer's features varied by 0.2% over a clip), too little signal for the transformer to find;
  the demo run whose encoders kept that initialisation learned to ignore the video;
* the MelVAE, vocoder, transformer and Mono2Stereo are trained by the project's own scripts.

Usage: `python training/recipes/build_demo_base.py --output_dir outputs/demo/base`
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import CLIPVisionConfig, T5Config

from foley_toolkit import FoleyMMDiTTransformer, KlingFoleyPipeline, MelVAE, Mono2Stereo
from foley_toolkit.models.encoders.presets import (
    build_sync_encoder,
    build_text_encoder,
    build_tiny_t5_tokenizer,
    build_vision_encoder,
    synchformer_vit_b_16_config,
)
from foley_toolkit.models.vocoder import build_vocoder

LATENT_CHANNELS = 16
FRAME_SIZE = 112  # CLIP and Synchformer frames are resized to this (the synthetic videos are 96-128 px)


def rescale_random_encoder(encoder: torch.nn.Module, generator: torch.Generator, gain: float = 2.0) -> None:
    """Re-draw every linear/conv weight of a random encoder as N(0, gain^2 / fan_in) with zero bias, so that
    differences between frames survive the depth of the network (gain > 1 grows them through each layer)."""
    for module in encoder.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / fan_in**0.5)
                if module.bias is not None:
                    module.bias.zero_()


def build_demo_components(seed: int = 0) -> dict:
    """Untrained demo components: `KlingFoleyPipeline(**build_demo_components())`."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_t5_tokenizer()
    text_encoder = build_text_encoder(
        T5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=64,
            dropout_rate=0.0, feed_forward_proj="relu", is_encoder_decoder=True,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )
    vision_encoder = build_vision_encoder(
        CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=FRAME_SIZE, patch_size=16, hidden_act="quick_gelu", projection_dim=64,
        )
    )
    sync_config = synchformer_vit_b_16_config()
    sync_config.update(image_size=FRAME_SIZE, patch_size=16, hidden_size=64, num_layers=2, num_attention_heads=4)
    sync_encoder = build_sync_encoder(sync_config)

    transformer = FoleyMMDiTTransformer(
        in_channels=LATENT_CHANNELS,
        text_dim=text_encoder.config.d_model,
        clip_dim=vision_encoder.config.projection_dim,
        sync_dim=sync_encoder.config.hidden_size,
        num_attention_heads=4,
        attention_head_dim=32,
        num_joint_layers=2,
        num_single_layers=2,
        mlp_ratio=2.0,
        timestep_embedding_dim=128,
        max_seconds=32,
    )
    vae = MelVAE(latent_channels=LATENT_CHANNELS, block_out_channels=(64, 128), layers_per_block=2, kernel_size=5)
    vocoder = build_vocoder(
        {
            "num_mels": 128,
            "upsample_initial_channel": 64,
            "upsample_rates": [8, 8, 4, 2],
            "upsample_kernel_sizes": [16, 16, 8, 4],
            "resblock_kernel_sizes": [3, 7],
            "resblock_dilation_sizes": [[1, 3], [1, 3]],
        }
    )
    mono2stereo = Mono2Stereo(
        hidden_channels=64, num_layers=2, kernel_size=5, video_feature_dim=vision_encoder.config.projection_dim
    )
    # A separate generator: the other components' initialisation does not depend on this step.
    encoder_generator = torch.Generator().manual_seed(seed + 1)
    rescale_random_encoder(vision_encoder, encoder_generator)
    rescale_random_encoder(sync_encoder, encoder_generator)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vision_encoder": vision_encoder,
        "sync_encoder": sync_encoder,
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "vocoder": vocoder,
        "mono2stereo": mono2stereo,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="Where the untrained pipeline folder goes.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation.")
    args = parser.parse_args()
    pipeline = KlingFoleyPipeline(**build_demo_components(args.seed))
    pipeline.save_pretrained(args.output_dir)
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            print(f"{name:15s} {sum(p.numel() for p in component.parameters()) / 1e6:7.3f} M parameters")


if __name__ == "__main__":
    main()
